//! Domain events: one envelope ([`Event`], CloudEvents 1.0 in JSON with the W3C trace context
//! as the CloudEvents distributed-tracing extension), one bus ([`EventBus`]) that publishes to
//! NATS JetStream when `NATS_URL` is set and only logs otherwise, and one consumer loop
//! ([`EventBus::consume`]) for durable, explicitly acknowledged consumers.
//!
//! - All ShopStack events go to one stream, [`STREAM_NAME`], on the subjects `cart.>` and
//!   `order.>`; the NATS subject of an event is its type (`order.created`, `cart.cleared`).
//! - Every message carries `Nats-Msg-Id` = the event id, so a publish retried within the
//!   stream's duplicate window ([`DUPLICATE_WINDOW`]) is stored once.
//! - A publish counts as done only when JetStream acknowledged it (the event is on disk).
//! - Consumers get at-least-once delivery; handlers must be idempotent (the event id is the key).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use opentelemetry::trace::TraceContextExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::future::IntoFuture as _;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use shopstack_base::health::Health;
use shopstack_telemetry::metrics::{IntCounterVec, Registry};

/// The one JetStream stream carrying every ShopStack event.
pub const STREAM_NAME: &str = "SHOPSTACK";
/// The subjects [`STREAM_NAME`] captures.
pub const STREAM_SUBJECTS: [&str; 2] = ["cart.>", "order.>"];
/// Window within which a message id seen before is dropped as a duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// How long the stream keeps events.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a publish waits for JetStream's acknowledgement.
pub const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// CloudEvents 1.0 envelope (JSON format) with the distributed-tracing extension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique per event; also the `Nats-Msg-Id`, so consumers and JetStream deduplicate on it.
    pub id: String,
    /// `order.created`, `cart.item.added`, ...; also the NATS subject.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The service that emitted it, e.g. `/shopstack/orders`.
    pub source: String,
    /// What the event is about (an order id, a user id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it happened (RFC 3339, UTC).
    pub time: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// W3C trace context of the operation that caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// The event's own fields (ids, amounts, ...).
    pub data: Value,
}

impl Event {
    /// A new event stamped with a fresh id, the time and the current span's trace context.
    pub fn new(event_type: &str, service: &str, subject: Option<String>, data: Value) -> Self {
        let (traceparent, tracestate) = current_trace_context();
        Self {
            specversion: "1.0".into(),
            id: uuid::Uuid::now_v7().to_string(),
            event_type: event_type.to_owned(),
            source: format!("/shopstack/{service}"),
            subject,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            datacontenttype: "application/json".into(),
            traceparent,
            tracestate,
            data,
        }
    }

    /// The NATS subject this event is published on.
    pub fn nats_subject(&self) -> &str {
        &self.event_type
    }

    /// The trace context the event carries, to continue (as parent) in a consumer span.
    pub fn trace_context(&self) -> opentelemetry::Context {
        let mut carrier = HashMap::new();
        if let Some(traceparent) = &self.traceparent {
            carrier.insert("traceparent".to_owned(), traceparent.clone());
        }
        if let Some(tracestate) = &self.tracestate {
            carrier.insert("tracestate".to_owned(), tracestate.clone());
        }
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier))
    }
}

/// `traceparent` / `tracestate` of the current span, if it belongs to a trace.
pub fn current_trace_context() -> (Option<String>, Option<String>) {
    let context = opentelemetry::Context::new().with_remote_span_context(
        shopstack_telemetry::telemetry::span_context(&tracing::Span::current()),
    );
    let mut carrier: HashMap<String, String> = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    (
        carrier.remove("traceparent"),
        carrier.remove("tracestate").filter(|state| !state.is_empty()),
    )
}

/// Why a publish did not complete. The event may or may not have reached the stream; publishing
/// it again is always safe (same message id).
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the event could not be serialised: {0}")]
    Encode(String),
    #[error("NATS JetStream is unavailable: {0}")]
    Unavailable(String),
}

/// `events_published_total{type,result}` and `events_consumed_total{type,result}`.
#[derive(Clone)]
pub struct EventMetrics {
    pub published: IntCounterVec<2>,
    pub consumed: IntCounterVec<2>,
}

impl EventMetrics {
    pub fn new(registry: &Registry) -> shopstack_telemetry::metrics::Result<Self> {
        Ok(Self {
            published: registry.counter_vec(
                "events_published_total",
                "Events published, by type and result (ok, duplicate, failed, logged).",
                ["type", "result"],
            )?,
            consumed: registry.counter_vec(
                "events_consumed_total",
                "Events consumed, by type and result (ok, ignored, retry, invalid).",
                ["type", "result"],
            )?,
        })
    }
}

/// What a consumer handler decided about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Acted on it.
    Done,
    /// Nothing to do (not relevant, or already handled): acknowledged all the same.
    Ignored,
}

/// A handler failure: the event is redelivered later (negative acknowledgement with a delay).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RetryLater(pub String);

/// An event handler for [`EventBus::consume`].
pub type Handler = Arc<dyn Fn(Event) -> BoxFuture<'static, Result<Handled, RetryLater>> + Send + Sync>;

/// Publishes and consumes events; cheap to clone.
#[derive(Clone)]
pub struct EventBus(Arc<BusInner>);

struct BusInner {
    service: String,
    metrics: EventMetrics,
    nats: Option<Nats>,
}

struct Nats {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// Set once the stream is known to exist; cleared when a publish fails so it is re-checked.
    stream_ready: Mutex<bool>,
    /// `EVENTS_STREAM_REPLICAS`, used when this service creates the stream.
    stream_replicas: usize,
}

/// Where events go: the settings of every service that publishes or consumes them (flattened
/// into its command line).
#[derive(Debug, Clone, clap::Args)]
pub struct EventsConfig {
    /// NATS JetStream for events: one server's URL (nats://127.0.0.1:4222; tls:// for TLS) or a
    /// comma-separated list of a cluster's servers. Unset: events are logged.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,

    /// A NATS credentials file (`.creds`: a user JWT and its NKey seed) to connect with.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,

    /// Replicas of the SHOPSTACK stream when this service creates it: 3 on a 3-node cluster
    /// (a publish is then acknowledged once two servers stored it), 1 on a single server.
    #[arg(long, env = "EVENTS_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub events_stream_replicas: u8,
}

/// The servers of a `NATS_URL`: one, or a cluster's comma-separated list.
fn nats_servers(url: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<async_nats::ServerAddr>()
                .map_err(|error| anyhow::anyhow!("NATS_URL entry {entry:?}: {error}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!servers.is_empty(), "NATS_URL names no server");
    Ok(servers)
}

impl EventBus {
    /// Events are only logged (no `NATS_URL`).
    pub fn log_only(service: &str, registry: &Registry) -> shopstack_telemetry::metrics::Result<Self> {
        Ok(Self(Arc::new(BusInner {
            service: service.to_owned(),
            metrics: EventMetrics::new(registry)?,
            nats: None,
        })))
    }

    /// JetStream as `config` says (see [`EventsConfig`]). Does not wait for the servers: while
    /// they are down the client keeps reconnecting in the background and publishes fail (callers
    /// retry). Registers a `nats` check in `health` (not required for readiness).
    pub async fn connect(
        config: &EventsConfig,
        url: &str,
        service: &str,
        registry: &Registry,
        health: &Health,
    ) -> anyhow::Result<Self> {
        let servers = nats_servers(url)?;
        let mut options = async_nats::ConnectOptions::new()
            .name(service)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * 2u64.saturating_pow(attempts.min(6) as u32)).min(2_000))
            });
        if let Some(path) = &config.nats_creds {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("NATS_CREDS={}: not a readable credentials file", path.display()))?;
        }
        let client = options
            .connect(servers.as_slice())
            .await
            .map_err(|error| anyhow::anyhow!("NATS_URL={url:?}: {error}"))?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(PUBLISH_ACK_TIMEOUT);
        let checked = client.clone();
        health.register("nats", false, move || {
            let connected = checked.connection_state() == async_nats::connection::State::Connected;
            Box::pin(async move { connected })
        });
        tracing::info!(
            servers = servers.len(),
            stream_replicas = config.events_stream_replicas,
            "events go to NATS JetStream"
        );
        Ok(Self(Arc::new(BusInner {
            service: service.to_owned(),
            metrics: EventMetrics::new(registry)?,
            nats: Some(Nats {
                client,
                jetstream,
                stream_ready: Mutex::new(false),
                stream_replicas: usize::from(config.events_stream_replicas),
            }),
        })))
    }

    /// [`EventBus::connect`] when `NATS_URL` is set, else [`EventBus::log_only`].
    pub async fn from_config(
        config: &EventsConfig,
        service: &str,
        registry: &Registry,
        health: &Health,
    ) -> anyhow::Result<Self> {
        match config
            .nats_url
            .as_deref()
            .map(str::trim)
            .filter(|url| !url.is_empty())
        {
            Some(url) => Self::connect(config, url, service, registry, health).await,
            None => {
                tracing::info!("NATS_URL not set: events are logged, not published");
                Ok(Self::log_only(service, registry)?)
            }
        }
    }

    /// True when events go to NATS (false: log only).
    pub fn is_nats(&self) -> bool {
        self.0.nats.is_some()
    }

    pub fn service(&self) -> &str {
        &self.0.service
    }

    pub fn metrics(&self) -> &EventMetrics {
        &self.0.metrics
    }

    /// An event from this service.
    pub fn event(&self, event_type: &str, subject: Option<String>, data: Value) -> Event {
        Event::new(event_type, &self.0.service, subject, data)
    }

    /// Create the stream if it does not exist yet (idempotent).
    pub async fn ensure_stream(&self) -> Result<(), EventError> {
        let Some(nats) = &self.0.nats else {
            return Ok(());
        };
        let mut ready = nats.stream_ready.lock().await;
        if *ready {
            return Ok(());
        }
        let config = jetstream::stream::Config {
            name: STREAM_NAME.to_owned(),
            subjects: STREAM_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
            duplicate_window: DUPLICATE_WINDOW,
            max_age: RETENTION,
            storage: jetstream::stream::StorageType::File,
            num_replicas: nats.stream_replicas,
            ..Default::default()
        };
        let mut stream = nats
            .jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|error| EventError::Unavailable(format!("stream {STREAM_NAME}: {error}")))?;
        // An existing stream keeps its replica count: changing it is an operator's decision
        // (`nats stream edit`), not a side effect of a service's start.
        if let Ok(info) = stream.info().await
            && info.config.num_replicas != nats.stream_replicas
        {
            tracing::warn!(
                existing = info.config.num_replicas,
                configured = nats.stream_replicas,
                "stream {STREAM_NAME} exists with another replica count than EVENTS_STREAM_REPLICAS"
            );
        }
        *ready = true;
        Ok(())
    }

    async fn stream_failed(&self) {
        if let Some(nats) = &self.0.nats {
            *nats.stream_ready.lock().await = false;
        }
    }

    /// Publish one event and wait for JetStream's acknowledgement.
    pub async fn publish(&self, event: &Event) -> Result<(), EventError> {
        self.publish_all(std::slice::from_ref(event))
            .await
            .into_iter()
            .next()
            .unwrap_or(Ok(()))
    }

    /// Publish `events` in order, pipelined (all sent, then the acknowledgements awaited), and
    /// return one result per event, in the same order.
    pub async fn publish_all(&self, events: &[Event]) -> Vec<Result<(), EventError>> {
        let metrics = &self.0.metrics;
        let Some(nats) = &self.0.nats else {
            for event in events {
                tracing::info!(
                    event_type = %event.event_type,
                    event_id = %event.id,
                    subject = event.subject.as_deref().unwrap_or_default(),
                    data = %event.data,
                    "event (log only: NATS_URL not set)"
                );
                metrics
                    .published
                    .with_label_values(&[&event.event_type, "logged"])
                    .inc();
            }
            return events.iter().map(|_| Ok(())).collect();
        };
        if let Err(error) = self.ensure_stream().await {
            for event in events {
                metrics
                    .published
                    .with_label_values(&[&event.event_type, "failed"])
                    .inc();
            }
            return events
                .iter()
                .map(|_| Err(EventError::Unavailable(error.to_string())))
                .collect();
        }
        // One producer span per message, from its send to JetStream's acknowledgement.
        let spans: Vec<tracing::Span> = events.iter().map(publish_span).collect();
        let mut pending = Vec::with_capacity(events.len());
        for (event, span) in events.iter().zip(&spans) {
            pending.push(send(nats, event, span).instrument(span.clone()).await);
        }
        let mut results = Vec::with_capacity(events.len());
        let mut any_failed = false;
        for ((event, sent), span) in events.iter().zip(pending).zip(spans) {
            let result = match sent {
                Ok(ack) => match ack.into_future().instrument(span.clone()).await {
                    Ok(ack) => {
                        let label = if ack.duplicate { "duplicate" } else { "ok" };
                        metrics
                            .published
                            .with_label_values(&[&event.event_type, label])
                            .inc();
                        tracing::debug!(event_type = %event.event_type, event_id = %event.id, sequence = ack.sequence, duplicate = ack.duplicate, "event published");
                        Ok(())
                    }
                    Err(error) => Err(EventError::Unavailable(error.to_string())),
                },
                Err(error) => Err(error),
            };
            if let Err(error) = &result {
                span.record("otel.status_code", "ERROR");
                any_failed = true;
                metrics
                    .published
                    .with_label_values(&[&event.event_type, "failed"])
                    .inc();
                tracing::warn!(event_type = %event.event_type, event_id = %event.id, %error, "event not published (will be retried)");
            }
            results.push(result);
        }
        if any_failed {
            self.stream_failed().await;
        }
        results
    }

    /// Run a durable pull consumer named `durable` on `filter_subject` (e.g. `order.>`; one
    /// subject, so NATS 2.9 servers work too) until the task is
    /// aborted: each event goes to `handler`; `Done`/`Ignored` acknowledge it, `RetryLater`
    /// asks for redelivery after a delay, an unreadable message is terminated (never redelivered).
    /// Survives NATS restarts (re-subscribes with backoff). Without NATS it does nothing.
    pub fn consume(&self, durable: &str, filter_subject: &str, handler: Handler) -> JoinHandle<()> {
        // A consumer of one event type starts its series at 0, so "nothing consumed yet" (or no
        // NATS at all) reads as 0 on a dashboard rather than as no data.
        if !filter_subject.contains(['*', '>']) {
            for result in ["ok", "ignored", "retry", "invalid"] {
                self.0
                    .metrics
                    .consumed
                    .with_label_values(&[filter_subject, result])
                    .inc_by(0);
            }
        }
        let bus = self.clone();
        let durable = durable.to_owned();
        let filter_subject = filter_subject.to_owned();
        tokio::spawn(async move {
            if bus.0.nats.is_none() {
                return;
            }
            let mut backoff = Duration::from_millis(200);
            loop {
                match bus.consume_once(&durable, &filter_subject, &handler).await {
                    Ok(()) => backoff = Duration::from_millis(200),
                    Err(error) => {
                        tracing::warn!(consumer = %durable, %error, "event consumer interrupted; resubscribing");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })
    }

    async fn consume_once(
        &self,
        durable: &str,
        filter_subject: &str,
        handler: &Handler,
    ) -> anyhow::Result<()> {
        let Some(nats) = &self.0.nats else {
            return Ok(());
        };
        self.ensure_stream()
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        let stream = nats
            .jetstream
            .get_stream(STREAM_NAME)
            .await
            .map_err(|error| anyhow::anyhow!("get stream: {error}"))?;
        let consumer = stream
            .get_or_create_consumer(
                durable,
                jetstream::consumer::pull::Config {
                    durable_name: Some(durable.to_owned()),
                    filter_subject: filter_subject.to_owned(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_deliver: 20,
                    ..Default::default()
                },
            )
            .await
            .map_err(|error| anyhow::anyhow!("consumer {durable}: {error}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|error| anyhow::anyhow!("subscribe: {error}"))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|error| anyhow::anyhow!("receive: {error}"))?;
            self.handle_message(durable, &message, handler).await;
        }
        Err(anyhow::anyhow!("message stream ended"))
    }

    async fn handle_message(&self, durable: &str, message: &jetstream::Message, handler: &Handler) {
        let consumed = &self.0.metrics.consumed;
        let event: Event = match serde_json::from_slice(&message.payload) {
            Ok(event) => event,
            Err(error) => {
                consumed
                    .with_label_values(&[message.subject.as_str(), "invalid"])
                    .inc();
                tracing::error!(consumer = durable, subject = %message.subject, %error, "unreadable event dropped");
                if let Err(error) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(%error, "could not terminate an unreadable event");
                }
                return;
            }
        };
        let span = tracing::info_span!(
            "event.consume",
            otel.name = %format_args!("{} process", event.event_type),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.destination.name = %event.event_type,
            messaging.message.id = %event.id,
            messaging.consumer.group.name = durable,
        );
        // The producer's span, from the message headers; the event's own trace context (the
        // operation that caused it) for a message published without them.
        let parent = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("traceparent"))
            .map(|traceparent| {
                let mut carrier = HashMap::new();
                carrier.insert("traceparent".to_owned(), traceparent.as_str().to_owned());
                if let Some(tracestate) = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get("tracestate"))
                {
                    carrier.insert("tracestate".to_owned(), tracestate.as_str().to_owned());
                }
                opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier))
            })
            .unwrap_or_else(|| event.trace_context());
        shopstack_telemetry::telemetry::set_parent(&span, parent);
        let event_type = event.event_type.clone();
        let event_id = event.id.clone();
        let outcome = handler(event).instrument(span.clone()).await;
        let (ack, label) = match &outcome {
            Ok(Handled::Done) => (AckKind::Ack, "ok"),
            Ok(Handled::Ignored) => (AckKind::Ack, "ignored"),
            Err(_) => (AckKind::Nak(Some(Duration::from_secs(1))), "retry"),
        };
        consumed.with_label_values(&[&event_type, label]).inc();
        if let Err(RetryLater(cause)) = &outcome {
            tracing::warn!(parent: &span, consumer = durable, %event_type, %event_id, %cause, "event handling failed; redelivery requested");
        }
        if let Err(error) = message.ack_with(ack).await {
            tracing::warn!(parent: &span, consumer = durable, %event_type, %error, "could not acknowledge an event; it will be redelivered");
        }
    }

    /// The raw NATS client, when connected (tests and diagnostics).
    pub fn nats_client(&self) -> Option<&async_nats::Client> {
        self.0.nats.as_ref().map(|nats| &nats.client)
    }
}

/// The producer span of one publish (the messaging semantic conventions), in the trace of the
/// operation that caused the event — also when the outbox relay publishes it later.
fn publish_span(event: &Event) -> tracing::Span {
    let span = tracing::info_span!(
        "event.publish",
        otel.name = %format_args!("publish {}", event.nats_subject()),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "nats",
        messaging.destination.name = %event.nats_subject(),
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.message.id = %event.id,
    );
    shopstack_telemetry::telemetry::set_parent(&span, event.trace_context());
    span
}

/// Send one event; its headers carry `span`'s trace context (W3C `traceparent`/`tracestate`),
/// so a consumer's span is the producer span's child.
async fn send(
    nats: &Nats,
    event: &Event,
    span: &tracing::Span,
) -> Result<jetstream::context::PublishAckFuture, EventError> {
    let payload = serde_json::to_vec(event).map_err(|error| EventError::Encode(error.to_string()))?;
    let mut message = jetstream::message::PublishMessage::build()
        .payload(payload.into())
        .message_id(&event.id)
        .header("Content-Type", "application/cloudevents+json");
    let context = shopstack_telemetry::telemetry::span_context(span);
    if context.is_valid() {
        let traceparent = shopstack_telemetry::propagation::traceparent_text(
            context.trace_id(),
            context.span_id(),
            context.is_sampled(),
        );
        message = message.header("traceparent", String::from_utf8_lossy(&traceparent).as_ref());
        let tracestate = context.trace_state().header();
        if !tracestate.is_empty() {
            message = message.header("tracestate", tracestate.as_str());
        }
    }
    nats.jetstream
        .send_publish(event.nats_subject().to_owned(), message)
        .await
        .map_err(|error| EventError::Unavailable(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_cloudevents_json() {
        let event = Event::new(
            "order.created",
            "orders",
            Some("order-1".into()),
            serde_json::json!({"order_id": "order-1", "total_amount": 10.5}),
        );
        let json = serde_json::to_value(&event).unwrap_or_default();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "order.created");
        assert_eq!(json["source"], "/shopstack/orders");
        assert_eq!(json["subject"], "order-1");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["data"]["order_id"], "order-1");
        assert!(json["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        let back: Event = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, event);
        assert_eq!(back.nats_subject(), "order.created");
    }

    #[test]
    fn trace_context_round_trips_through_the_envelope() {
        shopstack_testkit::init_telemetry();
        let span = tracing::info_span!("test");
        let trace_id = shopstack_telemetry::telemetry::record_trace_ids(&span);
        let event = span.in_scope(|| Event::new("cart.cleared", "cart", None, Value::Null));
        let traceparent = event.traceparent.clone().unwrap_or_default();
        assert!(trace_id.is_some());
        assert!(
            traceparent.contains(trace_id.as_deref().unwrap_or("missing")),
            "{traceparent}"
        );
        use opentelemetry::trace::TraceContextExt as _;
        let context = event.trace_context();
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            trace_id.unwrap_or_default()
        );
    }
}
