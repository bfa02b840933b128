//! A private `redis-server` for a test: a free loopback port, stopped by PID.

/// A private `redis-server` on a free port, for tests that need a Redis of their own (to kill
/// it, or to own its keys). Stopped by PID on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
    /// Every write in an append-only file synced before Redis answers it, so a SIGKILL loses
    /// nothing acknowledged and a restart comes back with the data.
    persistent: bool,
    /// Served over TLS only (`rediss://`), with this certificate and key.
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl RedisServer {
    /// A Redis that keeps nothing: every restart comes back empty.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    /// A Redis that keeps its data across a kill and restart (`appendonly yes`, `appendfsync
    /// always`); [`RedisServer::restart_empty`] still starts it empty.
    pub fn start_persistent() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    /// A Redis that speaks TLS only, with `certificates`' server certificate: `url()` is
    /// `rediss://127.0.0.1:<port>`; a client must trust `certificates.ca`.
    pub fn start_tls(certificates: &crate::tls::TestCertificates) -> anyhow::Result<Self> {
        let port = crate::ports::free_port()?;
        let dir = std::env::temp_dir().join(format!("shopstack-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            port,
            child: None,
            dir,
            persistent: false,
            tls: Some((certificates.cert.clone(), certificates.key.clone())),
        };
        server.restart()?;
        Ok(server)
    }

    fn start_with(persistent: bool) -> anyhow::Result<Self> {
        let port = crate::ports::free_port()?;
        let dir = std::env::temp_dir().join(format!("shopstack-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            port,
            child: None,
            dir,
            persistent,
            tls: None,
        };
        server.restart()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Start it again, on the same port, after its data is deleted: a Redis that lost
    /// everything (its disk, or a restart without persistence).
    pub fn restart_empty(&mut self) -> anyhow::Result<()> {
        self.kill();
        std::fs::remove_dir_all(&self.dir)?;
        std::fs::create_dir_all(&self.dir)?;
        self.restart()
    }

    /// Start (again) on the same port, with whatever data it kept; waits until it accepts
    /// connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let persistence: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let mut command = std::process::Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some((cert, key)) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &self.port.to_string(),
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key),
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("Failed to start redis-server (is it installed?)")?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if std::time::Instant::now() > deadline {
                anyhow::bail!("redis-server did not start on port {}", self.port);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kill the server (SIGKILL: a crash, not a shutdown) and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
