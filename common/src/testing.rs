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

/// Where a test finds PostgreSQL: `TEST_POSTGRES_URL` when set (a server with trust auth for the
/// URL's user, who may create databases), else this test process's own [`PostgresServer`].
pub const TEST_POSTGRES_URL: &str = "TEST_POSTGRES_URL";

/// What stops a server by its PID (`$1`): SIGQUIT is PostgreSQL's immediate shutdown (no
/// checkpoint: the data is thrown away), then up to 10 s for it to go, then SIGKILL. A zombie
/// counts as gone: in a container whose PID 1 does not reap, the orphaned server stays one.
const STOP_BY_PID: &str = r#"alive() {
  kill -0 "$1" 2>/dev/null || return 1
  read -r _ _ state _ < "/proc/$1/stat" 2>/dev/null || return 0
  [ "$state" != Z ]
}
stop() {
  kill -QUIT "$1" 2>/dev/null || return 0
  i=0
  while alive "$1" && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  kill -KILL "$1" 2>/dev/null || true
}"#;

/// The watchdog's script (`$1`: the test process's PID, `$2`: the server's directory): statics
/// are never dropped, so a server shared by a test binary's tests is stopped from outside once the
/// test process is gone.
const WATCHDOG: &str = r#"trap '' HUP INT TERM
while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
if [ -f "$2/data/postmaster.pid" ]; then
  read -r pid < "$2/data/postmaster.pid" && stop "$pid"
fi
rm -rf "$2""#;

/// A private PostgreSQL server on a free loopback port for tests: Debian's `postgresql`
/// binaries (`initdb`, `pg_ctl`; found on `PATH` or in `/usr/lib/postgresql/<version>/bin`),
/// trust authentication for the `postgres` superuser, data and Unix socket in a temporary
/// directory, durability off (`fsync`, `synchronous_commit`, `full_page_writes`) because the data
/// is thrown away. `initdb` and `pg_ctl` refuse to run as root, so under root the server runs as
/// the `postgres` system user (or `nobody`).
///
/// Stopped by PID and its directory removed on drop, and by a watchdog process when the test
/// process exits (which covers [`PostgresServer::shared_url`]'s server, never dropped).
pub struct PostgresServer {
    pub port: u16,
    pid: Option<u32>,
    dir: std::path::PathBuf,
}

impl PostgresServer {
    /// initdb (about a second) and start a server; waits until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let bin = postgres_bin_dir()?;
        let user = if effective_uid()? == 0 {
            Some(unprivileged_user()?)
        } else {
            None
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("shopstack-postgres-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // From here on the directory is cleaned up by drop and by the watchdog.
        let mut server = Self { port, pid: None, dir };
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&server.dir, std::fs::Permissions::from_mode(0o700))?;
        }
        if let Some(user) = &user {
            std::os::unix::fs::chown(&server.dir, Some(user.uid), Some(user.gid))?;
        }
        spawn_watchdog(&server.dir)?;

        let data = server.dir.join("data");
        let initdb = as_user(user.as_ref(), &bin.join("initdb"), &server.dir)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()?;
        anyhow::ensure!(
            initdb.status.success(),
            "initdb failed ({}): {}{}",
            initdb.status,
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        let settings = format!(
            "\n# A throwaway server for tests.\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nmax_connections = 300\nshared_buffers = 32MB\n",
            server.dir.display()
        );
        {
            use std::io::Write as _;
            std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))?
                .write_all(settings.as_bytes())?;
        }
        let log = server.dir.join("postgres.log");
        let started = as_user(user.as_ref(), &bin.join("pg_ctl"), &server.dir)
            .args(["start", "-w", "-t", "60", "-s", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .output()?;
        let pid = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok());
        server.pid = pid;
        anyhow::ensure!(
            started.status.success() && pid.is_some(),
            "PostgreSQL did not start on port {port} ({}): {}{}\n{}",
            started.status,
            String::from_utf8_lossy(&started.stdout),
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`: the superuser on the maintenance database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The URL of a PostgreSQL server for tests that create their own databases:
    /// `TEST_POSTGRES_URL` when set, else one server per test process, started on first use
    /// (initdb takes a second or two, so the tests of a binary share it) and stopped by the
    /// watchdog when the process exits. Blocks while the server starts.
    pub fn shared_url() -> anyhow::Result<String> {
        static SHARED: std::sync::OnceLock<Result<PostgresServer, String>> = std::sync::OnceLock::new();
        if let Ok(url) = std::env::var(TEST_POSTGRES_URL)
            && !url.is_empty()
        {
            return Ok(url);
        }
        match SHARED.get_or_init(|| Self::start().map_err(|error| format!("{error:#}"))) {
            Ok(server) => Ok(server.url()),
            Err(error) => anyhow::bail!("{error}"),
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = std::process::Command::new("sh")
                .args([
                    "-c",
                    &format!("{STOP_BY_PID}\nstop \"$1\""),
                    "sh",
                    &pid.to_string(),
                ])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory holding PostgreSQL's server programs: the one of `initdb` on `PATH`, else the
/// newest `/usr/lib/postgresql/<version>/bin` (where Debian's package puts them, off `PATH`).
fn postgres_bin_dir() -> anyhow::Result<std::path::PathBuf> {
    let complete = |dir: &std::path::Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|name| dir.join(name).is_file())
    };
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|dir| complete(dir)) {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.split('.').next()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        anyhow::anyhow!(
            "PostgreSQL's server programs (initdb, pg_ctl, postgres) are neither on PATH nor in \
             /usr/lib/postgresql/<version>/bin: install Debian's postgresql package \
             (`apt-get install postgresql`; `.ci/run` does), or set {TEST_POSTGRES_URL} to a server \
             that lets its user create databases"
        )
    })
}

/// This process's effective user id (the third field of `Uid:` in /proc/self/status, else `id -u`).
fn effective_uid() -> anyhow::Result<u32> {
    let from_proc = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        });
    match from_proc {
        Some(uid) => Ok(uid),
        None => id_of(&["-u"]).ok_or_else(|| anyhow::anyhow!("cannot tell this process's user id")),
    }
}

struct Account {
    uid: u32,
    gid: u32,
}

/// The user a server runs as when the tests run as root: Debian's package creates `postgres`.
fn unprivileged_user() -> anyhow::Result<Account> {
    ["postgres", "nobody"]
        .iter()
        .find_map(|name| {
            Some(Account {
                uid: id_of(&["-u", name])?,
                gid: id_of(&["-g", name])?,
            })
        })
        .filter(|account| account.uid != 0)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "running as root, and neither a postgres nor a nobody user exists to run PostgreSQL \
                 as (initdb refuses root): install Debian's postgresql package, which creates the \
                 postgres user"
            )
        })
}

fn id_of(args: &[&str]) -> Option<u32> {
    let output = std::process::Command::new("id").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// `program` run as `user` (through util-linux's `setpriv`) when there is one, in `dir`.
fn as_user(
    user: Option<&Account>,
    program: &std::path::Path,
    dir: &std::path::Path,
) -> std::process::Command {
    let mut command = match user {
        Some(user) => {
            let mut setpriv = std::process::Command::new("setpriv");
            setpriv
                .arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .args(["--clear-groups", "--"])
                .arg(program);
            setpriv
        }
        None => std::process::Command::new(program),
    };
    command.current_dir(dir).stdin(std::process::Stdio::null());
    command
}

/// A shell that waits for this process to exit, then stops the server in `dir` by the PID in its
/// `postmaster.pid` and removes `dir`. In a process group of its own, so Ctrl-C in the terminal
/// does not end it before it has cleaned up.
fn spawn_watchdog(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::os::unix::process::CommandExt as _;
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{STOP_BY_PID}\n{WATCHDOG}"))
        .arg("sh")
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the shell that stops the test PostgreSQL server when the tests end")?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::PostgresServer;

    /// Under root (as in CI) this also covers running the server as an unprivileged user.
    #[test]
    fn a_private_postgres_server_serves_until_dropped_and_leaves_nothing_behind() {
        let server = PostgresServer::start().unwrap();
        let (port, dir) = (server.port, server.dir.clone());
        assert_eq!(
            server.url(),
            format!("postgres://postgres@127.0.0.1:{port}/postgres")
        );
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(dir.join("data").join("PG_VERSION").is_file());
        drop(server);
        assert!(!dir.exists(), "{} is left behind", dir.display());
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
