//! A service binary run as a child process on a free loopback port, killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `target/<profile>/<name>`: a binary of the workspace, which `cargo test --workspace` (or
/// `cargo build --workspace --bins`) builds beside the directory of this test's own executable
/// (`target/<profile>/deps/`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().and_then(Path::parent).unwrap_or(Path::new("."));
    dir.join(name)
}

/// Variables a service reads that a test's own environment must not leak into a child service
/// (`make` exports `ADMIN_TOKEN`, a developer may have `REDIS_URL` set, …). Callers pass what
/// they mean explicitly.
pub(crate) const SERVICE_VARIABLES: &[&str] = &[
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
    "SERVICE_AUTH_SECRET",
    "JWT_SECRET",
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
    /// on top of the test's environment minus `SERVICE_VARIABLES`, and wait up to 30 s for
    /// its "listening" log line.
    pub fn spawn(binary: &std::path::Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::spawn_with(binary, env, None)
    }

    /// [`ServiceProcess::spawn`], with the process allowed to run on CPU `cpu` only (`taskset`),
    /// as a service limited to one CPU runs (its runtime then has a single thread).
    pub fn spawn_on_one_cpu(
        binary: &std::path::Path,
        env: &[(&str, &str)],
        cpu: usize,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(binary, env, Some(cpu))
    }

    fn spawn_with(
        binary: &std::path::Path,
        env: &[(&str, &str)],
        cpu: Option<usize>,
    ) -> anyhow::Result<Self> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};

        anyhow::ensure!(
            binary.is_file(),
            "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`; `cargo test --workspace` builds them)",
            binary.display()
        );
        let mut command = match cpu {
            Some(cpu) => {
                let mut taskset = Command::new("taskset");
                taskset.arg("-c").arg(cpu.to_string()).arg(binary);
                taskset
            }
            None => Command::new(binary),
        };
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
