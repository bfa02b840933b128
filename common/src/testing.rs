//! Helpers for tests that run services on port 0 inside the test process.

use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::platform::Platform;
use crate::server::{Front, Server};

/// A service running on a free loopback port until stopped (or the test's runtime ends).
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Bind `app` (a service's router or front) on the port in `platform`'s settings (0 in
    /// [`crate::config::Settings::for_tests`]) and serve it.
    pub async fn start(platform: Platform, app: impl Front) -> anyhow::Result<Self> {
        let server = Server::bind(platform, app).await?;
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

/// A base URL where a connection is accepted and never answered: a hung dependency.
pub async fn black_hole() -> String {
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        return "http://127.0.0.1:9".to_owned();
    };
    let addr = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}")
}

/// A base URL nothing listens on: a dependency that is down.
pub async fn closed_port() -> String {
    let port = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener.local_addr().map(|addr| addr.port()).unwrap_or(9),
        Err(_) => 9,
    };
    format!("http://127.0.0.1:{port}")
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parse the Prometheus text format strictly enough for tests: every non-comment line must be
/// `name{label="value",…} number`; an error names the first line that is not.
pub fn parse_metrics(text: &str) -> Result<Vec<MetricSample>, String> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("no value on line {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().map_err(|_| format!("bad value on line {line:?}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| format!("unclosed labels on line {line:?}"))?;
                (
                    name,
                    parse_labels(body).ok_or_else(|| format!("bad labels on line {line:?}"))?,
                )
            }
            None => (series, Default::default()),
        };
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
        if !valid_name {
            return Err(format!("bad metric name on line {line:?}"));
        }
        samples.push(MetricSample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn parse_labels(body: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let mut labels = std::collections::BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((index, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => {
                    end = Some(index);
                    break;
                }
                other => value.push(other),
            }
        }
        let end = end?;
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// The sum of the samples named `name` whose labels include every pair in `labels`.
pub fn metric_sum(samples: &[MetricSample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
        .sum()
}

/// Checks that every id pattern in an OpenAPI document (a `pattern` over the id alphabet) is
/// [`crate::ids::ID_PATTERN`] with its length bounds, and returns how many there are: utoipa takes
/// only literals, so this is what keeps the services' copies from drifting.
pub fn assert_id_patterns(doc: &serde_json::Value) -> usize {
    fn walk(value: &serde_json::Value, at: &str, found: &mut usize) {
        match value {
            serde_json::Value::Object(members) => {
                if let Some(pattern) = members.get("pattern").and_then(|p| p.as_str())
                    && pattern.contains("@:")
                {
                    assert_eq!(pattern, crate::ids::ID_PATTERN, "id pattern at {at}");
                    assert_eq!(members.get("minLength"), Some(&1.into()), "minLength at {at}");
                    let max = crate::ids::MAX_ID_LEN;
                    assert_eq!(members.get("maxLength"), Some(&max.into()), "maxLength at {at}");
                    *found += 1;
                }
                for (key, member) in members {
                    walk(member, &format!("{at}/{key}"), found);
                }
            }
            serde_json::Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    walk(item, &format!("{at}/{index}"), found);
                }
            }
            _ => {}
        }
    }
    let mut found = 0;
    walk(doc, "#", &mut found);
    found
}

/// A private `redis-server` on a free port, for tests that need a Redis of their own (to kill
/// it, or to own its keys). Stopped by PID on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
}

impl RedisServer {
    pub fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("shopstack-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            port,
            child: None,
            dir,
        };
        server.restart()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start (again) on the same port; waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
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

/// The container probe's contract, for each service's test: `binary healthcheck` exits 0 while
/// the service is ready, fails while it drains (the service still answers, with 503) and once
/// it is gone. Panics (a test assertion) when any of that does not hold.
pub fn assert_healthcheck_follows_readiness(binary: &std::path::Path) -> anyhow::Result<()> {
    let lifecycle = probe_lifecycle(binary)?;
    assert!(
        lifecycle.ready.success,
        "ready service: {}",
        lifecycle.ready.stderr
    );
    assert!(!lifecycle.draining.success, "a draining service is not ready");
    assert!(
        lifecycle.draining.stderr.contains("answered 503"),
        "while draining the service still answers, with 503: {}",
        lifecycle.draining.stderr
    );
    assert!(!lifecycle.stopped.success, "nothing listens any more");
    Ok(())
}

/// The probe refuses an invalid `PORT` without reading the service's config (an invalid
/// service setting must not matter to it), and a port nobody listens on is a plain failure,
/// not a hang. Panics (a test assertion) when either does not hold.
pub fn assert_healthcheck_refuses_bad_and_closed_ports(binary: &std::path::Path) -> anyhow::Result<()> {
    let output = std::process::Command::new(binary)
        .args(["healthcheck"])
        .env("PORT", "not-a-port")
        .env("SIM_FAILURE_RATE", "7")
        .output()?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a port number"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    assert!(!run_healthcheck(binary, port)?.success);
    Ok(())
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
