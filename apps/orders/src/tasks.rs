//! Background work: the outbox relay (outbox → NATS JetStream) and the maintenance loop
//! (recovery of interrupted placements, restock retries, gauges, pruning).

use std::time::{Duration, Instant};

use chrono::Utc;
use shopstack_events::events::Event;
use tokio::task::JoinHandle;

use crate::repo;
use crate::service::OrderService;

/// Events relayed per round.
const RELAY_BATCH: i64 = 100;
/// How often the relay looks at the outbox when nothing woke it.
const RELAY_POLL: Duration = Duration::from_millis(500);
/// Longest pause between relay attempts while NATS is down.
const RELAY_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often old idempotency records and published events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Published events are kept this long (for inspection), then pruned.
const KEEP_PUBLISHED: chrono::Duration = chrono::Duration::days(1);

/// The service's background tasks; aborted when the last handle is dropped.
pub struct BackgroundTasks(Vec<JoinHandle<()>>);

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Settings of the maintenance loop.
#[derive(Debug, Clone, Copy)]
pub struct Maintenance {
    pub interval: Duration,
    pub recovery_after: Duration,
    pub idempotency_ttl: Duration,
}

pub fn spawn(service: OrderService, maintenance: Maintenance) -> BackgroundTasks {
    BackgroundTasks(vec![
        tokio::spawn(relay_loop(service.clone())),
        tokio::spawn(maintenance_loop(service, maintenance)),
    ])
}

/// Publish outbox events in the order they were written; mark each one published once JetStream
/// acknowledged it. An event whose acknowledgement got lost is published again later; its
/// message id makes JetStream drop the copy.
async fn relay_loop(service: OrderService) {
    let wake = service.relay_wake();
    let mut backoff = Duration::from_millis(100);
    loop {
        match relay_once(&service).await {
            Ok(relayed) => {
                backoff = Duration::from_millis(100);
                if relayed < RELAY_BATCH as usize {
                    // Caught up: sleep until an order is written or the poll interval passes.
                    let _ = tokio::time::timeout(RELAY_POLL, wake.notified()).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "outbox relay: events not published yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RELAY_MAX_BACKOFF);
            }
        }
    }
}

/// One round: returns how many events were published; an error when any could not be.
pub async fn relay_once(service: &OrderService) -> anyhow::Result<usize> {
    let db = service.db();
    let rows = repo::unpublished(db, RELAY_BATCH).await?;
    if rows.is_empty() {
        service.metrics().outbox_backlog.set(0);
        return Ok(0);
    }
    let mut events = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        match serde_json::from_str::<Event>(&row.payload) {
            Ok(event) => {
                events.push(event);
                ids.push(row.id);
            }
            Err(error) => {
                // Cannot happen for rows this service wrote; never let one block the rest.
                tracing::error!(outbox_id = row.id, %error, "unreadable outbox event skipped");
                repo::mark_failed(db, row.id, &format!("unreadable: {error}")).await?;
                repo::mark_published(db, &[row.id]).await?;
            }
        }
    }
    let results = service.bus().publish_all(&events).await;
    let mut published = Vec::with_capacity(ids.len());
    let mut first_error = None;
    for (id, result) in ids.iter().zip(results) {
        match result {
            Ok(()) => published.push(*id),
            Err(error) => {
                let message = error.to_string();
                repo::mark_failed(db, *id, &message).await?;
                first_error.get_or_insert(message);
            }
        }
    }
    repo::mark_published(db, &published).await?;
    service
        .metrics()
        .outbox_backlog
        .set(repo::outbox_backlog(db).await?);
    match first_error {
        Some(error) => Err(anyhow::anyhow!(
            "{} of {} events failed: {error}",
            ids.len() - published.len(),
            ids.len()
        )),
        None => Ok(published.len()),
    }
}

async fn maintenance_loop(service: OrderService, settings: Maintenance) {
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<Instant> = None;
    loop {
        ticker.tick().await;
        if let Err(error) = service.recover(settings.recovery_after).await {
            tracing::warn!(%error, "saga recovery round failed");
        }
        if let Err(error) = service.retry_restocks().await {
            tracing::warn!(%error, "restock retry round failed");
        }
        if let Err(error) = service.refresh_gauges().await {
            tracing::debug!(%error, "gauges not refreshed");
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            let ttl =
                chrono::Duration::from_std(settings.idempotency_ttl).unwrap_or(chrono::Duration::days(1));
            match repo::prune_sagas(service.db(), Utc::now() - ttl).await {
                Ok(pruned) if pruned > 0 => tracing::info!(pruned, "expired idempotency records removed"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "idempotency records not pruned"),
            }
            match repo::prune_outbox(service.db(), Utc::now() - KEEP_PUBLISHED).await {
                Ok(pruned) if pruned > 0 => tracing::info!(pruned, "published outbox events removed"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "outbox not pruned"),
            }
        }
    }
}
