//! Binding, serving and stopping gracefully; and [`run`], the whole life of a service binary.
//!
//! Shutdown order on SIGTERM/SIGINT: readiness fails at once; the server keeps serving for
//! `SHUTDOWN_DRAIN_MS` so load balancers stop sending, each answer now with `Connection:
//! close`; then it stops accepting (serving the connections already queued) and waits up to
//! `SHUTDOWN_GRACE_MS` for in-flight requests; finally telemetry is flushed.
//!
//! Slow and greedy clients: each connection's socket keeps the deadline of what is being read
//! (the head within `HEADER_READ_TIMEOUT`, the body within `BODY_READ_TIMEOUT`, the next request
//! within `IDLE_TIMEOUT`; see [`crate::connection`]); a request head over [`MAX_HEAD_BYTES`]
//! gets 431; at start the soft limit on open files is raised to the hard one, and at most
//! `MAX_CONNECTIONS` connections are served at once — beyond it, accepting waits (new clients
//! queue in the listen backlog) instead of failing for want of file descriptors.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Service;

use crate::connection::{GuardedStream, Tracker, head_timeout_answer};
use crate::platform::Platform;
use shopstack_base::config::{CommonConfig, MAX_CONNECTIONS_CEILING, ServiceDefaults};
use shopstack_base::health::Health;
use shopstack_base::problem::Problem;
use shopstack_telemetry::telemetry;

/// The largest request head (request line and headers) accepted; a larger one gets 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// At shutdown, how long a connection accepted just before the listener closed has to send
/// its first request head before it is closed unanswered (a client sends it within a round
/// trip of connecting; one that only opened a connection in advance is not waited for longer).
const FIRST_HEAD_AT_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(1);

/// File descriptors kept for everything but inbound connections beyond their half (see
/// [`default_max_connections`]): listeners, logs, Redis and database connections.
const FD_HEADROOM: u64 = 64;

/// What a service serves: its axum [`Router`], or a front service of its own (the gateway's
/// edge) that is handed each connection's peer address.
pub trait Front: Clone + Send + Sync + 'static {
    type Service: Service<Request, Response = Response, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static;

    /// The service for one accepted connection from `peer`.
    fn for_connection(&self, peer: SocketAddr) -> Self::Service;
}

impl Front for Router {
    type Service = Router;

    fn for_connection(&self, _peer: SocketAddr) -> Router {
        self.clone()
    }
}

/// One connection's service as hyper calls it: a clone per request (an `Arc` or two), the body
/// as axum's. `Front` services are always ready, so readiness is not awaited. It tells the
/// connection's socket when a head has been read and when the answer is ready.
struct PerRequest<S> {
    service: S,
    tracker: Arc<Tracker>,
    body_timeout_ms: u64,
    health: Health,
}

impl<S> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for PerRequest<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer<S::Future>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.tracker.head_read();
        Answer {
            inner: self.service.clone().call(request.map(Body::new)),
            tracker: self.tracker.clone(),
            body_timeout_ms: self.body_timeout_ms,
            health: self.health.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's answer, or 408 when the request's body did not arrive in time (the
    /// service saw a broken body and answered something else).
    struct Answer<F> {
        #[pin]
        inner: F,
        tracker: Arc<Tracker>,
        body_timeout_ms: u64,
        health: Health,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Answer<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.inner.poll(cx));
        this.tracker.answered();
        if !this.tracker.body_timed_out() {
            // Draining: the connection closes after this answer, so the client's next request
            // goes out on a new connection (to another replica once the load balancer has
            // noticed) instead of racing the close of an idle keep-alive connection at the end
            // of the drain.
            if this.health.is_draining() {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return Poll::Ready(Ok(response));
        }
        tracing::debug!("request body not read within BODY_READ_TIMEOUT: 408");
        let mut response = Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            format!(
                "The request body did not arrive within {} ms.",
                this.body_timeout_ms
            ),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Poll::Ready(Ok(response))
    }
}

/// Raise the soft limit on open files to the hard one (a no-op where there is none); the soft
/// limit then in force, if it can be read.
pub fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::warn!(%error, "cannot raise the limit on open files");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// `MAX_CONNECTIONS` when unset: half the file descriptors (a proxied request may hold a second
/// one, to its backend) less a little headroom; 1024 when the limit is unknown.
pub fn default_max_connections(fd_limit: Option<u64>) -> usize {
    fd_limit.map_or(1024, |limit| {
        let half = limit.saturating_sub(FD_HEADROOM) / 2;
        usize::try_from(half)
            .unwrap_or(MAX_CONNECTIONS_CEILING)
            .clamp(1, MAX_CONNECTIONS_CEILING)
    })
}

/// After a failed `accept`: a connection that broke before it was accepted is nothing; anything
/// else (out of file descriptors, say) is logged, and accepting pauses a moment, as axum does.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}

/// A bound, not yet running service (bind first so tests can learn the port).
pub struct Server<F = Router> {
    listener: TcpListener,
    router: F,
    platform: Platform,
    max_connections: usize,
}

impl<F: Front> Server<F> {
    /// Raise the limit on open files, then bind the address and port from the platform's
    /// settings (port 0: any free port).
    pub async fn bind(platform: Platform, router: F) -> anyhow::Result<Self> {
        let settings = platform.settings();
        let fd_limit = raise_fd_limit();
        let max_connections = settings
            .max_connections
            .unwrap_or_else(|| default_max_connections(fd_limit));
        if let Some(limit) = fd_limit
            && u64::try_from(max_connections).unwrap_or(u64::MAX) > limit.saturating_sub(FD_HEADROOM)
        {
            tracing::warn!(
                max_connections,
                fd_limit = limit,
                "MAX_CONNECTIONS is beyond what the limit on open files allows; accepting may fail for want of file descriptors"
            );
        }
        let addr = SocketAddr::new(settings.bind_addr, settings.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("Failed to bind {addr}"))?;
        Ok(Self {
            listener,
            router,
            platform,
            max_connections,
        })
    }

    /// The connections served at once (`MAX_CONNECTIONS`, or its default).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serve until `shutdown` completes, then drain and stop (see the module docs).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            platform,
            max_connections,
        } = self;
        platform.start_background_tasks();
        let settings = platform.settings().clone();
        let health = platform.health().clone();
        let drain = settings.shutdown_drain;
        let graceful = async move {
            shutdown.await;
            health.begin_draining();
            tracing::info!(
                drain_ms = drain.as_millis() as u64,
                "shutdown requested: readiness now fails, still serving while load balancers notice"
            );
            tokio::time::sleep(drain).await;
            tracing::info!(
                grace_ms = settings.shutdown_grace.as_millis() as u64,
                "no longer accepting connections; waiting for in-flight requests"
            );
        };
        // HTTP/1.1 only (no service speaks HTTP/2; nothing upgrades connections).
        let mut http = hyper::server::conn::http1::Builder::new();
        // An answer's head and body copied into one buffer and sent with one `write`, rather
        // than queued apart for a `writev`: our bodies are small JSON (docs/performance.md).
        http.writev(false);
        // While a request is in flight hyper otherwise reads the socket to notice the client
        // leaving; that read finds the request still holding the read buffer and allocates a new
        // 8 KB one, once per request. Instead a request runs to its end (bounded by its own
        // timeouts) and a client that only shut its sending side still gets its answer. The
        // body timeout relies on it too: a read while a request is served is a read of its body.
        http.half_close(true);
        // A head beyond it gets 431 (hyper answers, then closes).
        http.max_header_size(MAX_HEAD_BYTES);
        let timeouts = settings.connection_timeouts;
        let head_timeout_answer = head_timeout_answer(timeouts.header_read);
        let body_timeout_ms = u64::try_from(timeouts.body_read.as_millis()).unwrap_or(u64::MAX);
        let limit = Arc::new(Semaphore::new(max_connections));
        let mut at_limit = false;
        // Set when the drain is over: each connection then closes once it is idle.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let serve = |stream: tokio::net::TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit| {
            // Answers go out at once, not held back for more to send.
            let _ = stream.set_nodelay(true);
            let tracker = Arc::new(Tracker::default());
            let stream = GuardedStream::new(stream, tracker.clone(), timeouts, head_timeout_answer.clone());
            let service = PerRequest {
                service: router.for_connection(peer),
                tracker: tracker.clone(),
                body_timeout_ms,
                health: platform.health().clone(),
            };
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let mut stopping = stopping.clone();
            tokio::spawn(async move {
                tokio::pin!(connection);
                // hyper's graceful shutdown closes a connection that has not read a byte yet, so
                // a client that connected just before the listener closed would have its request
                // cut; it is asked only once the connection read its first head (or had the
                // time to), and then closes after the answer in progress, or at once if idle.
                let stopped = async {
                    let _ = stopping.wait_for(|stop| *stop).await;
                    let _ = tokio::time::timeout(FIRST_HEAD_AT_SHUTDOWN, tracker.first_head_read()).await;
                };
                let ended = tokio::select! {
                    // The connection first: it is what every wake-up is almost always for.
                    biased;
                    result = connection.as_mut() => Some(result),
                    () = stopped => None,
                };
                let result = match ended {
                    Some(result) => result,
                    None => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                drop(permit);
            });
        };
        tokio::pin!(graceful);
        loop {
            // A permit per connection: at the limit, wait for one to close before accepting.
            if limit.available_permits() == 0 && !at_limit {
                tracing::warn!(
                    max_connections,
                    "serving MAX_CONNECTIONS connections: new ones wait until one closes"
                );
            }
            at_limit = limit.available_permits() == 0;
            let permit = tokio::select! {
                permit = limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = &mut graceful => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_failed(error).await;
                        continue;
                    }
                },
                () = &mut graceful => break,
            };
            serve(stream, peer, permit);
        }
        // Connections the kernel completed before the listener closes are served, not reset
        // with it: take what is queued already, without waiting, then close. A client that
        // connects from now on is refused.
        while let Ok(permit) = limit.clone().try_acquire_owned() {
            let queued = std::future::poll_fn(|cx| Poll::Ready(listener.poll_accept(cx))).await;
            let Poll::Ready(Ok((stream, peer))) = queued else {
                break;
            };
            serve(stream, peer, permit);
        }
        drop(listener);
        let _ = stop.send(true);
        // Every connection holds a permit until it ends: all of them back, all connections done.
        let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
        let grace = settings.shutdown_grace;
        tokio::select! {
            _ = limit.acquire_many(all) => {}
            () = tokio::time::sleep(grace) => tracing::warn!("grace period over with requests still in flight; closing them"),
        }
        tracing::info!("server stopped");
        Ok(())
    }
}

/// The Tokio runtime a service binary runs on: a worker thread per CPU it may use; on a single
/// CPU (a container limited to one, a process pinned to one) the current-thread scheduler,
/// which does the same work without the synchronization between workers that a multi-thread
/// scheduler keeps paying for with one worker (docs/performance.md).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

/// Run `main`, a service binary's whole life, on its `runtime`.
pub fn block_on(main: impl Future<Output = ExitCode>) -> ExitCode {
    match runtime() {
        Ok(runtime) => runtime.block_on(main),
        Err(error) => {
            eprintln!("error: cannot start the Tokio runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// The whole life of a service binary: settings → telemetry → build → bind → serve → flush.
/// Bad settings exit with code 2 before anything is bound.
pub async fn run<B, Fut, F>(common: CommonConfig, defaults: ServiceDefaults, build: B) -> ExitCode
where
    B: FnOnce(Platform) -> Fut,
    Fut: Future<Output = anyhow::Result<F>>,
    F: Front,
{
    let settings = match common.resolve(defaults) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: invalid configuration: {error:#}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init(&settings) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = crate::failpoint::init() {
        eprintln!("error: invalid configuration: {error}");
        return ExitCode::from(2);
    }
    let result = async {
        let platform = Platform::new(settings).context("Failed to set up the service platform")?;
        let router = build(platform.clone())
            .await
            .context("Failed to build the service")?;
        let server = Server::bind(platform.clone(), router).await?;
        let identity = platform.identity();
        tracing::info!(
            addr = %server.local_addr(),
            version = %identity.version,
            environment = %identity.environment,
            simulation = platform.simulation().profile().enabled,
            "{} listening",
            identity.name
        );
        server.run_until_stopped(shutdown_signal()).await
    }
    .await;
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "service failed");
            ExitCode::FAILURE
        }
    };
    // Flushing waits for the span exporter, whose connection this runtime drives: wait on a
    // blocking thread so the runtime (a single thread on one CPU) keeps running meanwhile.
    if tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .is_err()
    {
        eprintln!("error: flushing telemetry at shutdown failed");
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_fd_limit_is_raised_to_the_hard_one() {
        let raised = raise_fd_limit();
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
        assert_eq!(raised, Some(soft));
        #[cfg(target_os = "linux")]
        assert_eq!(soft, hard);
    }

    #[test]
    fn max_connections_defaults_to_half_the_fds_less_headroom() {
        assert_eq!(default_max_connections(Some(1024)), 480);
        assert_eq!(default_max_connections(Some(1_048_576)), 524_256);
        assert_eq!(default_max_connections(Some(10)), 1);
        assert_eq!(default_max_connections(None), 1024);
        assert_eq!(default_max_connections(Some(u64::MAX)), MAX_CONNECTIONS_CEILING);
    }
}
