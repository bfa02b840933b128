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

/// Variables a service reads that a test's own environment must not leak into a child service
/// (`make` exports `ADMIN_TOKEN`, a developer may have `REDIS_URL` set, …). Callers pass what
/// they mean explicitly.
const SERVICE_VARIABLES: &[&str] = &[
    "PORT",
    "BIND_ADDR",
    "SERVICE_NAME",
    "SERVICE_VERSION",
    "ENVIRONMENT",
    "POD_NAME",
    "NODE_NAME",
    "LOG_LEVEL",
    "LOG_FILE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTLP_ENDPOINT",
    "SIMULATION",
    "SIM_LATENCY_MS",
    "SIM_LATENCY_RATE",
    "SIM_FAILURE_RATE",
    "SIM_FAILURE_STATUS",
    "SIM_APPLIES_TO",
    "SIM_HEADER_FAULTS",
    "ADMIN_TOKEN",
    "STRESS_ENABLED",
    "CATALOG_SERVICE_URL",
    "CART_SERVICE_URL",
    "ORDERS_SERVICE_URL",
    "REDIS_URL",
    "REDIS_ADDR",
    "DATABASE_URL",
    "NATS_URL",
];

/// A service binary running as a child process, for tests that need a real process per service
/// (each process has one global tracer provider, so per-service trace resources need one
/// process each; probes run the binary itself). Killed when dropped.
pub struct ServiceProcess {
    pub addr: SocketAddr,
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServiceProcess {
    /// Start `binary` on a free loopback port (`PORT=0`, `BIND_ADDR=127.0.0.1`) with `env`
    /// on top of the test's environment minus [`SERVICE_VARIABLES`], and wait up to 30 s for
    /// its "listening" log line.
    pub fn spawn(binary: &std::path::Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};

        anyhow::ensure!(
            binary.is_file(),
            "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`; `cargo test --workspace` builds them)",
            binary.display()
        );
        let mut command = Command::new(binary);
        for name in SERVICE_VARIABLES {
            command.env_remove(name);
        }
        command
            .env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env("SHUTDOWN_DRAIN_MS", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .map_err(|error| anyhow::anyhow!("cannot start {}: {error}", binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout pipe"))?;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (found, listening) = std::sync::mpsc::channel::<SocketAddr>();
        let captured = lines.clone();
        // Keep reading until the child exits, so its stdout never fills up.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_addr(&line) {
                    let _ = found.send(addr);
                }
                match captured.lock() {
                    Ok(mut guard) => guard.push(line),
                    Err(poisoned) => poisoned.into_inner().push(line),
                }
            }
        });
        let mut process = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            lines,
        };
        match listening.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(addr) => {
                process.addr = addr;
                Ok(process)
            }
            Err(_) => {
                let status = process.child.try_wait().ok().flatten();
                anyhow::bail!(
                    "{} did not start listening within 30 s (exit status: {status:?}); output:\n{}",
                    binary.display(),
                    process.output().join("\n")
                )
            }
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the service printed on stdout so far (JSON log lines).
    pub fn output(&self) -> Vec<String> {
        match self.lines.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Send SIGTERM (graceful shutdown: readiness fails at once, then the server drains).
    pub fn terminate(&self) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.pid());
        Ok(())
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_for_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The address in a service's "<name> listening" start-up log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let message = value.get("message")?.as_str()?;
    if !message.ends_with(" listening") {
        return None;
    }
    value.get("addr")?.as_str()?.parse().ok()
}

/// What `<binary> healthcheck` reported at each stage of a service's life (see [`probe_lifecycle`]).
#[derive(Debug)]
pub struct ProbeLifecycle {
    /// While the service serves normally.
    pub ready: ProbeRun,
    /// After SIGTERM, while the service drains (still serving, readiness failing).
    pub draining: ProbeRun,
    /// After the process is gone.
    pub stopped: ProbeRun,
}

/// One run of `<binary> healthcheck`.
#[derive(Debug)]
pub struct ProbeRun {
    pub success: bool,
    pub stderr: String,
}

/// Run `binary healthcheck` against `port`.
pub fn run_healthcheck(binary: &std::path::Path, port: u16) -> anyhow::Result<ProbeRun> {
    let mut command = std::process::Command::new(binary);
    for name in SERVICE_VARIABLES {
        command.env_remove(name);
    }
    let output = command
        .arg(crate::probe::HEALTHCHECK_ARG)
        .env("PORT", port.to_string())
        .stdin(std::process::Stdio::null())
        .output()?;
    Ok(ProbeRun {
        success: output.status.success(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Start `binary`, probe it ready, send SIGTERM and probe it while it drains (a 10 s drain
/// window; polled up to 5 s for readiness to fail), then kill it and probe once more.
pub fn probe_lifecycle(binary: &std::path::Path) -> anyhow::Result<ProbeLifecycle> {
    let service = ServiceProcess::spawn(binary, &[("SIMULATION", "off"), ("SHUTDOWN_DRAIN_MS", "10000")])?;
    let port = service.addr.port();
    let ready = run_healthcheck(binary, port)?;
    service.terminate()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let draining = loop {
        let run = run_healthcheck(binary, port)?;
        if !run.success || std::time::Instant::now() >= deadline {
            break run;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    drop(service);
    let stopped = run_healthcheck(binary, port)?;
    Ok(ProbeLifecycle {
        ready,
        draining,
        stopped,
    })
}
