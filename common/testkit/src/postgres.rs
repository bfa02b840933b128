//! A private PostgreSQL server for tests: a free loopback port, stopped by PID (also after the test process is gone).

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
        Self::start_with(None)
    }

    /// [`PostgresServer::start`], with TLS on (`ssl = on`, `certificates`' server certificate):
    /// clients connect with `sslmode=verify-full&sslrootcert=<certificates.ca>`.
    pub fn start_tls(certificates: &crate::tls::TestCertificates) -> anyhow::Result<Self> {
        Self::start_with(Some(certificates))
    }

    fn start_with(tls: Option<&crate::tls::TestCertificates>) -> anyhow::Result<Self> {
        let bin = postgres_bin_dir()?;
        let user = if effective_uid()? == 0 {
            Some(unprivileged_user()?)
        } else {
            None
        };
        let port = crate::ports::free_port()?;
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
        let mut settings = format!(
            "\n# A throwaway server for tests.\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nmax_connections = 300\nshared_buffers = 32MB\n",
            server.dir.display()
        );
        if let Some(certificates) = tls {
            // The server reads its key only if the server's user owns it, unreadable to others.
            let (cert, key) = (server.dir.join("server.pem"), server.dir.join("server.key"));
            std::fs::copy(&certificates.cert, &cert)?;
            std::fs::copy(&certificates.key, &key)?;
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
            }
            if let Some(user) = &user {
                for file in [&cert, &key] {
                    std::os::unix::fs::chown(file, Some(user.uid), Some(user.gid))?;
                }
            }
            settings.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                cert.display(),
                key.display()
            ));
        }
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
