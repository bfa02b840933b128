//! Binding, serving and stopping gracefully; and [`run`], the whole life of a service binary.
//!
//! Shutdown order on SIGTERM/SIGINT: readiness fails at once; the server keeps serving for
//! `SHUTDOWN_DRAIN_MS` so load balancers stop sending; then it stops accepting and waits up to
//! `SHUTDOWN_GRACE_MS` for in-flight requests; finally telemetry is flushed.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;

use crate::config::{CommonConfig, ServiceDefaults};
use crate::platform::Platform;
use crate::telemetry;

/// A bound, not yet running service (bind first so tests can learn the port).
pub struct Server {
    listener: TcpListener,
    router: Router,
    platform: Platform,
}

impl Server {
    /// Bind the address and port from the platform's settings (port 0: any free port).
    pub async fn bind(platform: Platform, router: Router) -> anyhow::Result<Self> {
        let settings = platform.settings();
        let addr = SocketAddr::new(settings.bind_addr, settings.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("Failed to bind {addr}"))?;
        Ok(Self {
            listener,
            router,
            platform,
        })
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
        } = self;
        platform.start_background_tasks();
        let settings = platform.settings().clone();
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let health = platform.health().clone();
        let graceful = async move {
            shutdown.await;
            health.begin_draining();
            tracing::info!(
                drain_ms = settings.shutdown_drain.as_millis() as u64,
                "shutdown requested: readiness now fails, still serving while load balancers notice"
            );
            tokio::time::sleep(settings.shutdown_drain).await;
            tracing::info!(
                grace_ms = settings.shutdown_grace.as_millis() as u64,
                "no longer accepting connections; waiting for in-flight requests"
            );
            let _ = stopping_tx.send(());
        };
        let serve = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(graceful)
        .into_future();
        let grace = settings.shutdown_grace;
        let deadline = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = serve => result.context("server error")?,
            () = deadline => tracing::warn!("grace period over with requests still in flight; closing them"),
        }
        tracing::info!("server stopped");
        Ok(())
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
pub async fn run<F, Fut>(common: CommonConfig, defaults: ServiceDefaults, build: F) -> ExitCode
where
    F: FnOnce(Platform) -> Fut,
    Fut: Future<Output = anyhow::Result<Router>>,
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
    telemetry.shutdown();
    code
}
