//! A Redis connection that never makes a request hang.
//!
//! One multiplexed, auto-reconnecting connection per service: to one server, or — when
//! `REDIS_URL` lists several nodes — to a Redis Cluster (the `redis` crate's cluster client,
//! which follows MOVED/ASK redirections and failovers; every script touches one hash slot). A background probe pings Redis;
//! while it is down the probe retries with backoff (100 ms doubling to 2 s, ±10 % jitter) and every command fails at once with [`RedisUnavailable`] — the caller answers a
//! fast 503 — and everything recovers by itself when Redis is back. On a cluster, a failed
//! command makes the probe renew the connection, which learns the cluster's layout after a
//! failover even when no redirection told the client of it. Each command runs in a
//! client span (`redis <op>`), so Redis shows up in traces under the request that used it.

use shopstack_base::config::redis_nodes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use tracing::Instrument;

/// Longest a single command may take before it counts as a failure.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(800);
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Attempts of one command on a cluster (a MOVED/ASK redirection or a failover's TRYAGAIN).
const CLUSTER_RETRIES: u32 = 4;

/// Redis could not serve the command; nothing is known to have changed.
#[derive(Debug, thiserror::Error)]
#[error("redis unavailable: {0}")]
pub struct RedisUnavailable(pub String);

/// A connection to one server or to a cluster; commands and scripts run on either alike.
#[derive(Clone)]
pub enum Connection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Server(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Server(connection) => connection.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Server(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

#[derive(Clone)]
pub struct Redis {
    /// Replaced as a whole when a cluster's connection is renewed ([`Redis::renew_cluster_connection`]).
    connection: Arc<std::sync::RwLock<Connection>>,
    /// What makes a cluster's connection again: a new one learns the cluster's layout as it is now.
    cluster_client: Option<Arc<ClusterClient>>,
    /// A cluster command failed since the probe last looked.
    cluster_command_failed: Arc<AtomicBool>,
    healthy: Arc<AtomicBool>,
    /// Wakes the probe as soon as a command sees Redis fail.
    failed: Arc<tokio::sync::Notify>,
    endpoint: String,
    /// The host and port commands go to, as client spans name them (`server.address`,
    /// `server.port`).
    server: (String, u16),
}

impl Redis {
    /// Set up the connection without waiting for Redis: the service starts even when it's down.
    /// `url`: one server's URL, or a comma-separated list of a cluster's nodes.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let nodes = redis_nodes(url);
        let mut cluster_client = None;
        let connection = match nodes.as_slice() {
            [] => anyhow::bail!("REDIS_URL names no server"),
            [url] => {
                let client = redis::Client::open(url.as_str())
                    .with_context(|| format!("REDIS_URL {url:?} is not valid"))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_min_delay(BACKOFF_START)
                    .set_max_delay(BACKOFF_MAX)
                    .set_exponent_base(2.0)
                    .set_number_of_retries(2);
                Connection::Server(
                    ConnectionManager::new_lazy_with_config(client, config)
                        .context("Failed to set up the Redis connection")?,
                )
            }
            nodes => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(COMMAND_TIMEOUT)
                    // Redirections and a failover's "try again" are retried inside the command's
                    // own time bound ([`COMMAND_TIMEOUT`] in `run`).
                    .retries(CLUSTER_RETRIES)
                    .build()
                    .context("REDIS_URL: not a valid list of Redis Cluster nodes")?;
                let connection = cluster_connection(&client);
                cluster_client = Some(Arc::new(client));
                connection
            }
        };
        let endpoint = nodes
            .iter()
            .map(|node| redacted(node))
            .collect::<Vec<_>>()
            .join(",");
        let redis = Self {
            connection: Arc::new(std::sync::RwLock::new(connection)),
            cluster_client,
            cluster_command_failed: Arc::new(AtomicBool::new(false)),
            healthy: Arc::new(AtomicBool::new(false)),
            failed: Arc::new(tokio::sync::Notify::new()),
            endpoint,
            // A cluster's commands go to the node owning their keys, which the client picks:
            // the spans name the first node given.
            server: server_of(nodes.first().map(String::as_str).unwrap_or_default()),
        };
        if redis.ping().await {
            redis.healthy.store(true, Ordering::SeqCst);
            tracing::info!(endpoint = %redis.endpoint, "connected to redis");
        } else {
            tracing::warn!(endpoint = %redis.endpoint, "redis is not reachable yet; serving 503s for what needs it until it is");
        }
        redis.spawn_probe();
        Ok(redis)
    }

    /// Whether this is a Redis Cluster: a script's keys must then share one hash slot.
    pub fn is_cluster(&self) -> bool {
        self.cluster_client.is_some()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// One PING, bounded by [`COMMAND_TIMEOUT`]; on a cluster, answered by any node.
    pub async fn ping(&self) -> bool {
        ping(self.connection(), COMMAND_TIMEOUT).await
    }

    /// The connection commands go to now (a handle: clones share one connection).
    fn connection(&self) -> Connection {
        match self.connection.read() {
            Ok(connection) => connection.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replace a cluster's connection with a new one when the new one answers. The cluster
    /// client learns a new layout only from a redirection, and a failed-over master's keys may
    /// never draw one: their commands reach the promoted replica by the client's fallback,
    /// while a command spread over several nodes (MGET across slots) keeps going to the dead
    /// node's address and fails. A new connection asks the cluster for its layout.
    async fn renew_cluster_connection(&self) {
        let Some(client) = &self.cluster_client else {
            return;
        };
        let renewed = cluster_connection(client);
        // Connecting to every node and learning the layout takes longer than one command.
        if ping(renewed.clone(), COMMAND_TIMEOUT * 3).await {
            match self.connection.write() {
                Ok(mut connection) => *connection = renewed,
                Err(poisoned) => *poisoned.into_inner() = renewed,
            }
            tracing::debug!(endpoint = %self.endpoint, "redis cluster connection renewed");
        }
    }
}

/// A cluster connection that connects in the background, as a single server's connection does:
/// the service starts while the cluster is still down.
fn cluster_connection(client: &ClusterClient) -> Connection {
    Connection::Cluster(
        client.get_pending_async_connection_with_config(
            ClusterConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(COMMAND_TIMEOUT),
        ),
    )
}

/// One PING on `connection` within `bound`. A cluster is reachable when any of its nodes
/// answers: the client's own PING goes to every master and fails while one is dead, which would
/// mark the whole cluster down (a failed node's commands fail on their own instead; see
/// [`Redis::run`]).
async fn ping(connection: Connection, bound: Duration) -> bool {
    let answered = match connection {
        Connection::Server(mut connection) => {
            tokio::time::timeout(bound, redis::cmd("PING").query_async::<String>(&mut connection))
                .await
                .map(|answer| answer.is_ok())
        }
        Connection::Cluster(mut connection) => {
            let any_node = RoutingInfo::MultiNode((
                MultipleNodeRoutingInfo::AllNodes,
                Some(ResponsePolicy::OneSucceeded),
            ));
            tokio::time::timeout(bound, connection.route_command(redis::cmd("PING"), any_node))
                .await
                .map(|answer| answer.is_ok())
        }
    };
    matches!(answered, Ok(true))
}

impl Redis {
    /// Ping every second while healthy; while down, retry with backoff and jitter. On a
    /// cluster, a failed PING or a failed command since the last look renews the connection.
    fn spawn_probe(&self) {
        let redis = self.clone();
        tokio::spawn(async move {
            let mut backoff = BACKOFF_START;
            loop {
                let wait = if redis.is_healthy() {
                    PROBE_INTERVAL
                } else {
                    jittered(backoff)
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = redis.failed.notified() => {}
                }
                if redis.is_cluster() && redis.cluster_command_failed.swap(false, Ordering::SeqCst) {
                    redis.renew_cluster_connection().await;
                }
                let mut up = redis.ping().await;
                if !up && redis.is_cluster() {
                    redis.renew_cluster_connection().await;
                    up = redis.ping().await;
                }
                let was_up = redis.healthy.swap(up, Ordering::SeqCst);
                match (was_up, up) {
                    (false, true) => {
                        backoff = BACKOFF_START;
                        tracing::info!(endpoint = %redis.endpoint, "redis is reachable again");
                    }
                    (true, false) => tracing::warn!(endpoint = %redis.endpoint, "redis is down"),
                    (false, false) => backoff = (backoff * 2).min(BACKOFF_MAX),
                    (true, true) => {}
                }
            }
        });
    }

    /// Run one command (or script) against Redis in a client span. `command` is the Redis
    /// command sent (`EVALSHA` for a script), `summary` what it does (`cart.write_line`); the
    /// span follows the database semantic conventions. Fails at once while Redis is known to be
    /// down, and after [`COMMAND_TIMEOUT`] at most otherwise.
    pub async fn run<T, F, Fut>(
        &self,
        command: &'static str,
        summary: &'static str,
        run: F,
    ) -> Result<T, RedisUnavailable>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_healthy() {
            return Err(RedisUnavailable("redis is down".into()));
        }
        let span = tracing::info_span!(
            "redis",
            otel.name = %format_args!("{command} {summary}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = "redis",
            db.operation.name = command,
            db.query.summary = %format_args!("{command} {summary}"),
            server.address = %self.server.0,
            server.port = self.server.1,
        );
        let result = tokio::time::timeout(COMMAND_TIMEOUT, run(self.connection()))
            .instrument(span.clone())
            .await;
        let error = match result {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) if !is_connection_error(&error) => {
                // The cluster client's own errors (a command spread over several nodes that got
                // mixed answers) come from a layout it has not learned yet: renew it.
                if self.is_cluster() && error.kind() == redis::ErrorKind::Client {
                    self.cluster_command_failed.store(true, Ordering::SeqCst);
                    self.failed.notify_one();
                }
                // A script or type error is a bug, not an outage: don't mark Redis down.
                span.record("otel.status_code", "ERROR");
                tracing::error!(parent: &span, %error, operation = summary, "redis command failed");
                return Err(RedisUnavailable(error.to_string()));
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {COMMAND_TIMEOUT:?}"),
        };
        span.record("otel.status_code", "ERROR");
        // One server that fails is down for every command. On a cluster one node (its slots)
        // can fail while the rest serve: the probe decides whether the cluster is down, and a
        // command for a failed node's keys fails on its own, bounded by COMMAND_TIMEOUT.
        if self.is_cluster() {
            self.cluster_command_failed.store(true, Ordering::SeqCst);
        } else if self.healthy.swap(false, Ordering::SeqCst) {
            tracing::warn!(endpoint = %self.endpoint, %error, "redis is down");
        }
        self.failed.notify_one();
        Err(RedisUnavailable(error))
    }
}

/// An outage, not a bug: no connection, no answer, or a cluster that cannot serve the key now
/// (CLUSTERDOWN, TRYAGAIN, redirections left over after the retries).
fn is_connection_error(error: &redis::RedisError) -> bool {
    error.is_cluster_error()
        || error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}

/// `delay` ± 10 %.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.9..=1.1))
}

/// The URL without its password, for logs.
/// The host and port of a `redis://` URL (6379 when it names none).
fn server_of(url: &str) -> (String, u16) {
    match reqwest::Url::parse(url) {
        Ok(parsed) => (
            parsed.host_str().unwrap_or_default().to_owned(),
            parsed.port().unwrap_or(6379),
        ),
        Err(_) => (String::new(), 6379),
    }
}

fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_the_servers_host_and_port() {
        assert_eq!(
            server_of("redis://:secret@cache:6380/1"),
            ("cache".to_owned(), 6380)
        );
        assert_eq!(server_of("redis://127.0.0.1/0"), ("127.0.0.1".to_owned(), 6379));
    }

    #[test]
    fn accepts_redis_addr_addresses() {
        assert_eq!(redis_nodes("localhost:6379"), ["redis://localhost:6379"]);
        assert_eq!(redis_nodes("redis://r:6379/2"), ["redis://r:6379/2"]);
    }

    #[test]
    fn hides_passwords() {
        assert_eq!(redacted("redis://:hunter2@r:6379"), "redis://:***@r:6379");
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let delay = jittered(Duration::from_millis(1000));
            assert!(delay >= Duration::from_millis(900) && delay <= Duration::from_millis(1100));
        }
    }
}
