//! Helpers for tests that run services on port 0 inside the test process.

use std::net::SocketAddr;

use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::platform::Platform;
use crate::server::Server;

/// A service running on a free loopback port until stopped (or the test's runtime ends).
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Bind `router` on the port in `platform`'s settings (0 in [`crate::config::Settings::for_tests`]) and serve it.
    pub async fn start(platform: Platform, router: Router) -> anyhow::Result<Self> {
        let server = Server::bind(platform, router).await?;
        let addr = server.local_addr();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Begin graceful shutdown (as SIGTERM would) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Shut down gracefully and wait until the server has stopped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        (&mut self.task).await??;
        Ok(())
    }

    /// Stop abruptly, like a crash: the port closes, in-flight requests are cut.
    pub fn kill(self) {
        self.task.abort();
    }
}
