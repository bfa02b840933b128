//! The instances behind each backend and the per-backend edge state: balancing across
//! replicas (power of two choices on requests in flight), outlier ejection (Envoy's
//! consecutive-failure detector, with an active `/livez` probe to bring an instance back), the
//! circuit breaker, the retry budget and the concurrency limit used for load shedding.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Context as _;
use axum::http::HeaderValue;
use axum::http::uri::PathAndQuery;
use rand::Rng;
use reqwest::Url;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::breaker::{Breaker, BreakerSettings};
use crate::metrics::EdgeMetrics;
use crate::pool::ConnectionPool;
use crate::retry::RetryBudget;
use crate::routes::Backend;

/// Longest an ejection lasts before probing starts: `base_ejection` × this.
const MAX_EJECTION_MULTIPLIER: u32 = 10;
/// Timeout of one `/livez` probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct OutlierSettings {
    /// Consecutive failures that eject a replica; 0 = never eject.
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub probe_interval: Duration,
}

/// What a backend needs besides its replicas.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamSettings {
    pub timeout: Duration,
    /// How long a keep-alive connection to a replica may sit idle and still be reused.
    pub idle_timeout: Duration,
    pub max_concurrency: usize,
    pub retry_budget_ratio: f64,
    pub breaker: BreakerSettings,
    pub outlier: OutlierSettings,
}

/// One instance of a backend.
pub struct Replica {
    pub url: Url,
    /// `url` as text: the `replica` label.
    label: String,
    /// `url` taken apart once, so a forwarded request is addressed without parsing.
    host: String,
    port: u16,
    /// The `Host` header of forwarded requests (the port left out when it is 80).
    host_header: HeaderValue,
    /// `url`'s path without its trailing `/`: prefixed to every forwarded path.
    path_prefix: String,
    /// Keep-alive connections to this replica.
    pub pool: ConnectionPool,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejected: AtomicBool,
    ejections: AtomicU32,
    /// What the replica last said of its `Idempotency-Key` store ([`KEY_STORE_UNKNOWN`] until it
    /// says anything).
    key_store: AtomicU8,
}

const KEY_STORE_UNKNOWN: u8 = 0;
const KEY_STORE_LOCAL: u8 = 1;
const KEY_STORE_SHARED: u8 = 2;

/// Where the next attempt of a request may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Any replica (a first attempt).
    Any,
    /// Preferably not this one (it just failed a request safe to send anywhere).
    Avoid(usize),
    /// A keyed write that failed at this replica: back to it, or to another replica only if
    /// both have said their key store is shared.
    KeyedRetry(usize),
    /// This replica and no other, ejected or not (a switch sent to every replica in turn).
    Exactly(usize),
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("url", &self.label)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Fails on a URL without a host or port, or one that is not `http://` (the config refuses
    /// those before this is reached).
    fn new(url: Url, idle_timeout: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(url.scheme() == "http", "a backend URL must be http://");
        let host_text = url.host_str().context("a backend URL needs a host")?;
        // An IPv6 literal is written in brackets in a URL and a Host header, not when connecting.
        let host = host_text
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host_text)
            .to_owned();
        let port = url
            .port_or_known_default()
            .context("a backend URL needs a port")?;
        let host_header = if port == 80 {
            HeaderValue::from_str(host_text)?
        } else {
            HeaderValue::from_str(&format!("{host_text}:{port}"))?
        };
        Ok(Self {
            pool: ConnectionPool::new(host.clone(), port, idle_timeout),
            host,
            port,
            host_header,
            path_prefix: url.path().trim_end_matches('/').to_owned(),
            label: url.to_string(),
            url,
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejections: AtomicU32::new(0),
            key_store: AtomicU8::new(KEY_STORE_UNKNOWN),
        })
    }

    /// Note what an answer said of the replica's key store (`None`: nothing, which changes
    /// nothing: only answers to keyed writes say it).
    pub fn note_key_store(&self, shared: Option<bool>) {
        if let Some(shared) = shared {
            let state = if shared { KEY_STORE_SHARED } else { KEY_STORE_LOCAL };
            self.key_store.store(state, Ordering::Relaxed);
        }
    }

    /// The replica last said its key store is shared with the other replicas.
    pub fn key_store_shared(&self) -> bool {
        self.key_store.load(Ordering::Relaxed) == KEY_STORE_SHARED
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// The origin-form request target of `path_and_query` (as the client sent it) on this
    /// replica: under the replica's base path, if its URL has one.
    pub fn target<'a>(&self, path_and_query: &'a PathAndQuery) -> std::borrow::Cow<'a, str> {
        if self.path_prefix.is_empty() {
            return path_and_query.as_str().into();
        }
        format!("{}{path_and_query}", self.path_prefix).into()
    }
}

/// Counts a request in flight to a replica until dropped.
pub struct InFlight(Arc<Replica>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One backend: its replicas and edge state.
pub struct Upstream {
    pub backend: Backend,
    pub replicas: Vec<Arc<Replica>>,
    pub settings: UpstreamSettings,
    pub breaker: Breaker,
    pub budget: RetryBudget,
    slots: Arc<Semaphore>,
    /// `gateway_upstream_in_flight` of this backend.
    in_flight_gauge: shopstack_telemetry::metrics::IntGauge,
    /// Serialises ejection decisions so two at once can't leave no replica in rotation.
    ejecting: Mutex<()>,
    metrics: EdgeMetrics,
    probe_client: reqwest::Client,
}

/// A load-shedding slot, held for the whole request (retries included).
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: shopstack_telemetry::metrics::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Upstream {
    /// Fails on a backend URL without a host (the config refuses those first).
    pub fn new(
        backend: Backend,
        urls: Vec<Url>,
        settings: UpstreamSettings,
        metrics: EdgeMetrics,
        probe_client: reqwest::Client,
    ) -> anyhow::Result<Self> {
        let name = backend.name();
        let replicas = urls
            .into_iter()
            .map(|url| {
                let replica = Replica::new(url, settings.idle_timeout)?;
                metrics
                    .replica_ejected
                    .with_label_values(&[name, replica.label()])
                    .set(0);
                Ok(Arc::new(replica))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        metrics.upstream_in_flight.with_label_values(&[name]).set(0);
        let labels: Vec<&str> = replicas.iter().map(|replica| replica.label()).collect();
        metrics.init_upstream(name, &labels);
        Ok(Self {
            breaker: Breaker::new(
                name,
                settings.breaker,
                metrics.breaker_state.with_label_values(&[name]),
                metrics.breaker_transitions.clone(),
            ),
            budget: RetryBudget::new(settings.retry_budget_ratio),
            slots: Arc::new(Semaphore::new(settings.max_concurrency)),
            in_flight_gauge: metrics.upstream_in_flight.with_label_values(&[name]),
            ejecting: Mutex::new(()),
            backend,
            replicas,
            settings,
            metrics,
            probe_client,
        })
    }

    pub fn name(&self) -> &'static str {
        self.backend.name()
    }

    /// A load-shedding slot, or `None` when the backend is at its concurrency limit.
    pub fn try_slot(&self) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        let gauge = self.in_flight_gauge.clone();
        gauge.inc();
        Some(Slot {
            _permit: permit,
            gauge,
        })
    }

    /// A replica for the next attempt: the less busy of two random replicas in rotation
    /// (power of two choices), within what `placement` allows: avoiding the one that just failed
    /// when there is another; for a keyed write, the same one unless both it and another have
    /// said their key store is shared (a replica with its own store would run the write again).
    pub fn pick(&self, placement: Placement) -> (usize, InFlight) {
        if let [only] = self.replicas.as_slice() {
            only.in_flight.fetch_add(1, Ordering::AcqRel);
            return (0, InFlight(only.clone()));
        }
        if let Placement::Exactly(index) = placement
            && let Some(replica) = self.replicas.get(index)
        {
            replica.in_flight.fetch_add(1, Ordering::AcqRel);
            return (index, InFlight(replica.clone()));
        }
        if let Placement::KeyedRetry(previous) = placement
            && let Some(replica) = self.replicas.get(previous)
            && !replica.key_store_shared()
        {
            // Even if ejected meanwhile: no other replica would recognise the key.
            replica.in_flight.fetch_add(1, Ordering::AcqRel);
            return (previous, InFlight(replica.clone()));
        }
        let mut candidates: Vec<usize> = (0..self.replicas.len())
            .filter(|&index| !self.replicas[index].is_ejected())
            .collect();
        if candidates.is_empty() {
            // Unreachable by construction (the last replica in rotation is never ejected), but
            // balancing over everything beats refusing.
            candidates = (0..self.replicas.len()).collect();
        }
        match placement {
            Placement::Any => {}
            Placement::Avoid(avoid) => {
                if candidates.len() > 1 {
                    candidates.retain(|&index| index != avoid);
                }
            }
            Placement::KeyedRetry(previous) => {
                // `previous` shares its store: any other replica that says the same will do.
                candidates.retain(|&index| index != previous && self.replicas[index].key_store_shared());
                if candidates.is_empty() {
                    candidates.push(previous);
                }
            }
            // Out of range: taken as any replica.
            Placement::Exactly(_) => {}
        }
        let index = match candidates.len() {
            0 => 0,
            1 => candidates[0],
            n => {
                let mut rng = rand::rng();
                let a = candidates[rng.random_range(0..n)];
                let b = candidates[rng.random_range(0..n)];
                let load = |i: usize| self.replicas[i].in_flight.load(Ordering::Acquire);
                if load(b) < load(a) { b } else { a }
            }
        };
        let replica = self.replicas[index].clone();
        replica.in_flight.fetch_add(1, Ordering::AcqRel);
        (index, InFlight(replica))
    }

    /// The outcome of an attempt at replica `index` (`success`: the replica served it, whatever
    /// the status, short of 502/503/504), for outlier detection. Returns whether it
    /// also counts for the circuit breaker: a success always does; a failure only when no other
    /// replica is in rotation to take over (ejection deals with one bad replica among good
    /// ones, the breaker with a backend that is failing as a whole) or when ejection is off.
    pub fn report(self: &Arc<Self>, index: usize, success: bool) -> bool {
        let Some(replica) = self.replicas.get(index) else {
            return success;
        };
        if success {
            replica.consecutive_failures.store(0, Ordering::Release);
            return true;
        }
        let threshold = self.settings.outlier.consecutive_failures;
        if threshold == 0 {
            return true;
        }
        let failures = replica.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= threshold && !replica.is_ejected() {
            self.eject(index, replica, failures);
        }
        let others_in_rotation = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(other, r)| *other != index && !r.is_ejected())
            .count();
        others_in_rotation == 0 && !replica.is_ejected()
    }

    fn eject(self: &Arc<Self>, index: usize, replica: &Arc<Replica>, failures: u32) {
        let _deciding = self
            .ejecting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let in_rotation = self.replicas.iter().filter(|r| !r.is_ejected()).count();
        if replica.is_ejected() || in_rotation <= 1 {
            // The last replica in rotation stays: the circuit breaker handles a backend that is
            // down as a whole.
            return;
        }
        replica.ejected.store(true, Ordering::Release);
        let ejections = replica.ejections.fetch_add(1, Ordering::AcqRel) + 1;
        let name = self.name();
        self.metrics
            .ejections
            .with_label_values(&[name, replica.label()])
            .inc();
        self.metrics
            .replica_ejected
            .with_label_values(&[name, replica.label()])
            .set(1);
        tracing::warn!(
            upstream = name,
            replica = replica.label(),
            failures,
            ejections,
            "replica ejected after consecutive failures"
        );
        let wait = self.settings.outlier.base_ejection * ejections.min(MAX_EJECTION_MULTIPLIER);
        tokio::spawn(probe_until_back(Arc::downgrade(self), index, wait));
    }
}

/// After `wait`, probe the ejected replica's `/livez` every probe interval until it answers,
/// then put it back in rotation. Ends when the gateway is gone.
async fn probe_until_back(upstream: Weak<Upstream>, index: usize, wait: Duration) {
    tokio::time::sleep(wait).await;
    loop {
        let Some(this) = upstream.upgrade() else {
            return;
        };
        let Some(replica) = this.replicas.get(index).cloned() else {
            return;
        };
        let mut url = replica.url.clone();
        url.set_path(&format!("{}/livez", url.path().trim_end_matches('/')));
        let live = this
            .probe_client
            .get(url)
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if live {
            replica.consecutive_failures.store(0, Ordering::Release);
            replica.ejected.store(false, Ordering::Release);
            this.metrics
                .replica_ejected
                .with_label_values(&[this.name(), replica.label()])
                .set(0);
            tracing::info!(
                upstream = this.name(),
                replica = replica.label(),
                "ejected replica answered its probe; back in rotation"
            );
            return;
        }
        let interval = this.settings.outlier.probe_interval;
        drop(this);
        tokio::time::sleep(interval).await;
    }
}

/// All backends, in [`Backend::ALL`] order.
#[derive(Clone)]
pub struct Upstreams(Arc<Vec<Arc<Upstream>>>);

impl Upstreams {
    pub fn new(upstreams: Vec<Upstream>) -> Self {
        Self(Arc::new(upstreams.into_iter().map(Arc::new).collect()))
    }

    /// The backend's upstream. Every [`Backend`] has one: [`crate::GatewayState::new`] builds
    /// them from the same list.
    pub fn get(&self, backend: Backend) -> &Arc<Upstream> {
        self.0
            .iter()
            .find(|upstream| upstream.backend == backend)
            .unwrap_or_else(|| &self.0[0])
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn replica(url: &str) -> Replica {
        Url::parse(url)
            .map_err(anyhow::Error::from)
            .and_then(|url| Replica::new(url, crate::pool::IDLE_TIMEOUT))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn forwarded_uris_keep_the_base_path_and_the_query_as_sent() {
        let pq = |text: &'static str| PathAndQuery::from_static(text);
        let at_root = replica("http://127.0.0.1:8001");
        assert_eq!(at_root.target(&pq("/catalog/prod-1")), "/catalog/prod-1");
        assert_eq!(at_root.host_header(), "127.0.0.1:8001");
        let under_a_path = replica("http://catalog/base/");
        let query = pq("/catalog?page=2&q=a%20b");
        assert_eq!(under_a_path.target(&query), "/base/catalog?page=2&q=a%20b");
        assert_eq!(
            under_a_path.host_header(),
            "catalog",
            "port 80 is left out of Host"
        );
        assert_eq!((under_a_path.host(), under_a_path.port()), ("catalog", 80));
        let ipv6 = replica("http://[::1]:9000");
        assert_eq!(ipv6.target(&pq("/x")), "/x");
        assert_eq!(
            (ipv6.host(), ipv6.port()),
            ("::1", 9000),
            "connect to the address, no brackets"
        );
        assert_eq!(ipv6.host_header(), "[::1]:9000");
    }

    #[test]
    fn only_plain_http_backends_are_accepted() {
        assert!(
            Url::parse("https://catalog:8443")
                .map_err(anyhow::Error::from)
                .and_then(|url| Replica::new(url, crate::pool::IDLE_TIMEOUT))
                .is_err()
        );
    }
}
