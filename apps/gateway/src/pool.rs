//! Keep-alive connections to one replica, for the proxy path.
//!
//! Idle connections wait on a stack: the most recently used is taken first, so after a burst
//! the ones left at the bottom age out (`UPSTREAM_IDLE_TIMEOUT`, [`IDLE_TIMEOUT`] by default)
//! instead of all staying warm. A
//! connection goes back only after its answer was read in full and said nothing against reuse
//! ([`crate::exchange`]); one that the replica closed while idle is noticed before it is used —
//! its socket turned readable, which costs no system call to check — and replaced. A request is
//! sent again on a new connection only when a reused one ended before any byte of an answer
//! and the request is safe to repeat: otherwise the replica might have acted on it.
//!
//! Why not hyper-util's pooled `Client`: it is general (any host and scheme, HTTP/2 sharing,
//! waiters) and pays for that on every request — its pool is a map keyed by scheme and
//! authority, hashed with SipHash, and a checkout is a future racing a connect. Here a replica
//! owns its pool and a checkout is a pop under an uncontended lock
//! (docs/decisions/0001-hand-written-http1-exchange.md).

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::exchange::{Answer, Connection, ExchangeError, OutboundRequest};

/// Longest wait for a new connection to be established.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default of `UPSTREAM_IDLE_TIMEOUT`: an idle connection older than this is closed instead
/// of reused. Well below the idle timeouts backends commonly keep connections open for (75 s for
/// ShopStack's services and nginx, 60 s for common load balancers), so the gateway is the side
/// that closes an idle connection: the backend closing it first races a request the gateway is
/// just sending on it, which is then lost (or, for a request unsafe to repeat, failed with 502).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per replica; more are closed as they come back.
pub const MAX_IDLE: usize = 256;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: the replica is down or refusing.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The connection broke, or the answer was not acceptable HTTP.
    #[error("exchange: {0}")]
    Exchange(#[source] ExchangeError),
}

struct Idle {
    connection: Connection,
    since: Instant,
}

/// The idle connections to one replica.
pub struct ConnectionPool {
    /// Host (a name or an IP literal, without brackets) and port to connect to.
    host: String,
    port: u16,
    /// Idle connections older than this are closed rather than reused.
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

impl ConnectionPool {
    pub fn new(host: String, port: u16, idle_timeout: Duration) -> Self {
        Self {
            host,
            port,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Idle connections right now.
    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    /// Send `request` and read its whole answer, on a pooled connection or a new one.
    /// `replayable`: the request is safe to send twice, so a reused connection found closed
    /// before any answer is retried on a new one. `now`: the time, for the idle clock (read
    /// once per request by the caller). Dropping the future (a timeout) closes the connection
    /// in use.
    pub async fn send(
        &self,
        request: &OutboundRequest<'_>,
        replayable: bool,
        now: Instant,
    ) -> Result<Answer, SendError> {
        if let Some(mut connection) = self.reuse(now) {
            match connection.exchange(request).await {
                Ok((answer, reusable)) => {
                    if reusable {
                        // Idle since about `now`: a few milliseconds early is nothing to an
                        // idle timeout of seconds.
                        self.release(connection, now);
                    }
                    return Ok(answer);
                }
                Err(ExchangeError::ClosedBeforeAnswer) if replayable => {}
                Err(error) => return Err(SendError::Exchange(error)),
            }
        }
        let mut connection = self.connect().await?;
        let (answer, reusable) = connection.exchange(request).await.map_err(SendError::Exchange)?;
        if reusable {
            self.release(connection, Instant::now());
        }
        Ok(answer)
    }

    /// The most recently used idle connection that is still open and fresh, if any.
    fn reuse(&self, now: Instant) -> Option<Connection> {
        let mut idle = self.idle();
        let fresh = |since: Instant| now.saturating_duration_since(since) <= self.idle_timeout;
        // The oldest may have outlived the idle timeout: close them now, so a pool that shrank
        // back after a burst does not keep those sockets open. (They sit at the bottom of the
        // stack, oldest first.)
        let stale = idle.iter().take_while(|entry| !fresh(entry.since)).count();
        if stale > 0 {
            idle.drain(..stale);
        }
        while let Some(top) = idle.pop() {
            if fresh(top.since) && top.connection.is_idle_and_open() {
                return Some(top.connection);
            }
        }
        None
    }

    fn release(&self, connection: Connection, since: Instant) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(Idle { connection, since });
        }
    }

    async fn connect(&self) -> Result<Connection, SendError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.open_stream())
            .await
            .map_err(|_| SendError::Connect(std::io::ErrorKind::TimedOut.into()))?
            .map_err(SendError::Connect)?;
        Ok(Connection::new(stream))
    }

    async fn open_stream(&self) -> std::io::Result<TcpStream> {
        // An IP literal is used as is; a name is resolved for each new connection, so a
        // replica that moved is found again.
        let stream = match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => TcpStream::connect(SocketAddr::new(ip, self.port)).await?,
            Err(_) => TcpStream::connect((self.host.as_str(), self.port)).await?,
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::body::Bytes;
    use axum::http::{HeaderMap, HeaderValue, Method};

    use super::*;
    use crate::exchange::scripted::{Scripted, Step};

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    const HOST: HeaderValue = HeaderValue::from_static("backend");
    const TRACEPARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    async fn send(pool: &ConnectionPool, method: Method, replayable: bool) -> Result<Answer, SendError> {
        let (headers, body) = (HeaderMap::new(), Bytes::new());
        let request = OutboundRequest {
            method: &method,
            target: "/ping",
            host: &HOST,
            traceparent: TRACEPARENT,
            added: &[],
            headers: &headers,
            forwards: &|_| true,
            body: &body,
            replaced_in_answer: &[],
        };
        pool.send(&request, replayable, Instant::now()).await
    }

    fn pool_for(backend: &Scripted) -> ConnectionPool {
        ConnectionPool::new(backend.addr.ip().to_string(), backend.addr.port(), IDLE_TIMEOUT)
    }

    #[tokio::test]
    async fn connections_are_reused() {
        let backend = Scripted::start(vec![Step::Answer(OK); 100]).await;
        let pool = pool_for(&backend);
        for _ in 0..20 {
            assert_eq!(&send(&pool, Method::GET, true).await.unwrap().body[..], b"ok");
        }
        assert_eq!(backend.accepted(), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_replica_closed_while_idle_is_replaced() {
        // Each connection answers once and then closes (without saying so): the pool must
        // notice before reusing it, whatever the method.
        let backend = Scripted::start(vec![Step::Answer(OK)]).await;
        let pool = pool_for(&backend);
        for _ in 0..10 {
            assert!(send(&pool, Method::POST, false).await.is_ok());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(backend.accepted(), 10);
    }

    #[tokio::test]
    async fn a_reused_connection_closed_on_the_request_is_retried_only_when_safe() {
        // The second request on each connection is met with a close and no answer.
        let backend = Scripted::start(vec![Step::Answer(OK), Step::Close]).await;
        let pool = pool_for(&backend);
        assert!(send(&pool, Method::GET, true).await.is_ok());
        assert!(
            send(&pool, Method::GET, true).await.is_ok(),
            "replayable: sent again on a new connection"
        );
        assert_eq!(backend.accepted(), 2);
        let outcome = send(&pool, Method::POST, false).await;
        assert!(
            matches!(
                outcome,
                Err(SendError::Exchange(ExchangeError::ClosedBeforeAnswer))
            ),
            "a POST is not sent twice: {outcome:?}"
        );
        assert_eq!(backend.accepted(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_answer_closes_is_not_pooled() {
        let backend = Scripted::start(vec![Step::Answer(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        )])
        .await;
        let pool = pool_for(&backend);
        assert!(send(&pool, Method::GET, true).await.is_ok());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_timeout_is_closed_not_reused() {
        let backend = Scripted::start(vec![Step::Answer(OK); 100]).await;
        let pool = ConnectionPool::new(
            backend.addr.ip().to_string(),
            backend.addr.port(),
            Duration::from_secs(2),
        );
        assert!(send(&pool, Method::GET, true).await.is_ok());
        assert!(send(&pool, Method::GET, true).await.is_ok());
        assert_eq!(backend.accepted(), 1, "reused while fresh");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(send(&pool, Method::GET, true).await.is_ok());
        assert_eq!(
            backend.accepted(),
            2,
            "a new connection once the idle one aged out"
        );
        assert_eq!(pool.idle_count(), 1, "the stale one is closed, not kept");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = ConnectionPool::new(addr.ip().to_string(), addr.port(), IDLE_TIMEOUT);
        let error = send(&pool, Method::GET, true).await.err().unwrap();
        assert!(matches!(error, SendError::Connect(_)), "{error}");
    }
}
