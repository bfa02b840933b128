//! A private `nats-server` with JetStream for a test: a free loopback port, stopped by PID.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::wait::eventually;

/// This test's own `nats-server` with JetStream, on a free port with a temporary store; stopped
/// (by PID) and its store removed when dropped. `NATS_SERVER_BIN` names the binary when it is
/// neither on `PATH` nor in `/usr/sbin` (where Debian installs it).
pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
    store: PathBuf,
    /// Served over TLS only (`tls://`), with this certificate and key.
    tls: Option<(PathBuf, PathBuf)>,
}

impl NatsServer {
    /// Start a server; waits (up to 10 s) until a client can connect and flush.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None).await
    }

    /// A server that requires TLS, with `certificates`' server certificate: `url()` is
    /// `tls://127.0.0.1:<port>`; a client must trust `certificates.ca`.
    pub async fn start_tls(certificates: &crate::tls::TestCertificates) -> anyhow::Result<Self> {
        Self::start_with(Some((certificates.cert.clone(), certificates.key.clone()))).await
    }

    async fn start_with(tls: Option<(PathBuf, PathBuf)>) -> anyhow::Result<Self> {
        let port = crate::ports::free_port()?;
        let store = std::env::temp_dir().join(format!("shopstack-nats-{}", uuid::Uuid::new_v4().simple()));
        let mut server = Self {
            port,
            child: None,
            store,
            tls,
        };
        server.restart().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kill the server abruptly (SIGKILL to its PID) and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it (again) on the same port and store; waits until it serves.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let candidates = match std::env::var("NATS_SERVER_BIN") {
            Ok(binary) => vec![binary],
            // Debian installs it in /usr/sbin, which a non-root PATH may lack.
            Err(_) => vec!["nats-server".into(), "/usr/sbin/nats-server".into()],
        };
        let child = candidates
            .iter()
            .find_map(|binary| {
                let mut command = Command::new(binary);
                command
                    .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
                    .arg(&self.store);
                if let Some((cert, key)) = &self.tls {
                    command
                        .arg("--tls")
                        .arg("--tlscert")
                        .arg(cert)
                        .arg("--tlskey")
                        .arg(key);
                }
                command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()
            })
            .with_context(|| format!("nats-server is needed for this test (tried {candidates:?})"))?;
        self.child = Some(child);
        // Up once it accepts connections (a TLS server is checked by its port: the test's client
        // may not trust its certificate).
        let port = self.port;
        let up = eventually(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        anyhow::ensure!(up, "nats-server did not come up on port {}", self.port);
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
