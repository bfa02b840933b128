//! A real Prometheus for tests: Debian's `prometheus` binary on a free loopback port, with its
//! own storage in a temporary directory, stopped (by its PID) and cleaned up on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

/// The Prometheus binary: `$PROMETHEUS_BIN`, else `prometheus` on `PATH`, else Debian's path.
pub fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PROMETHEUS_BIN") {
        return Ok(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("prometheus"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    let candidate = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    ensure!(
        candidate.is_file(),
        "no Prometheus binary: install Debian's `prometheus` package (`make observability-tools` does) or set PROMETHEUS_BIN"
    );
    Ok(candidate)
}

/// The compose scrape config turned into a loopback one: each `'<service>:<port>'` target in
/// `targets` points at the given address, jobs whose target is not in `targets` are dropped,
/// Prometheus scrapes itself at `self_addr`, the rule files are read from `rules_dir`, and
/// every interval becomes 1 s. Fails if the file no longer has the shape this relies on.
pub fn localhost_config(
    original: &str,
    targets: &[(&str, SocketAddr)],
    self_addr: SocketAddr,
    rules_dir: &Path,
) -> anyhow::Result<String> {
    let mut config = original.to_owned();
    for (from, to) in [
        ("scrape_interval: 5s", "scrape_interval: 1s"),
        ("scrape_timeout: 4s", "scrape_timeout: 1s"),
        ("evaluation_interval: 5s", "evaluation_interval: 1s"),
        ("'localhost:9090'", &format!("'{self_addr}'")),
        ("  - rules/*.yml", &format!("  - '{}/*.yml'", rules_dir.display())),
    ] {
        ensure!(
            config.matches(from).count() == 1,
            "prometheus.yml should contain `{from}` exactly once"
        );
        config = config.replace(from, to);
    }
    for (target, addr) in targets {
        let quoted = format!("'{target}'");
        ensure!(
            config.matches(&quoted).count() == 1,
            "prometheus.yml should scrape {quoted} exactly once"
        );
        config = config.replace(&quoted, &format!("'{addr}'"));
    }
    // Keep the jobs that now point at loopback; the others (collector, Tempo, …) are not
    // running in the test.
    let marker = "\n  - job_name: ";
    let mut parts = config.split(marker);
    let mut kept = parts.next().unwrap_or_default().to_owned();
    for job in parts {
        if job.contains("'127.0.0.1:") {
            kept.push_str(marker);
            kept.push_str(job);
        }
    }
    Ok(kept)
}

/// A free loopback port (bound, then released for the caller to use).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A running Prometheus.
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
    client: reqwest::Client,
}

impl Prometheus {
    /// Write `config` to a fresh temporary directory, start `binary` on `addr` and wait (up to
    /// 30 s) until it is ready.
    pub async fn start(binary: &Path, config: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("shopstack-prometheus-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("data"))?;
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h")
            .arg("--log.level=warn")
            // As docker-compose.yml runs it: the services' latency exemplars are kept.
            .arg("--enable-feature=exemplar-storage")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut prometheus = Self {
            addr,
            child,
            dir,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                bail!("Prometheus exited with {status} at start:\n{}", prometheus.log());
            }
            let ready = prometheus
                .client
                .get(prometheus.url("/-/ready"))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                return Ok(prometheus);
            }
            if Instant::now() >= deadline {
                bail!("Prometheus was not ready within 30 s:\n{}", prometheus.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What Prometheus logged (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<Value> {
        let response = self.client.get(self.url(path)).query(params).send().await?;
        let body: Value = response.json().await?;
        if body.get("status").and_then(Value::as_str) != Some("success") {
            bail!(
                "{}: {}",
                body.get("errorType").and_then(Value::as_str).unwrap_or("error"),
                body.get("error").and_then(Value::as_str).unwrap_or("?")
            );
        }
        Ok(body.get("data").cloned().unwrap_or(Value::Null))
    }

    /// Evaluate `promql` now; the series of the result (a scalar or string counts as one).
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api("/api/v1/query", &[("query", promql)]).await?;
        match data.get("result") {
            Some(Value::Array(series))
                if data.get("resultType").and_then(Value::as_str) != Some("scalar") =>
            {
                Ok(series.clone())
            }
            Some(other) => Ok(vec![other.clone()]),
            None => Ok(Vec::new()),
        }
    }

    /// The label sets of the series matching `selector`.
    pub async fn series(&self, selector: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api("/api/v1/series", &[("match[]", selector)]).await?;
        Ok(data.as_array().cloned().unwrap_or_default())
    }

    /// Every loaded rule (recording and alerting) with its evaluation health and last error.
    pub async fn rules(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let data = self.api("/api/v1/rules", &[]).await?;
        Ok(data
            .get("groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|group| {
                group
                    .get("rules")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|rule| {
                let text = |key: &str| {
                    rule.get(key)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                (text("name"), text("health"), text("lastError"))
            })
            .collect())
    }

    /// The exemplars stored for the series `selector` matches over the last `window`: each
    /// exemplar's labels.
    pub async fn exemplars(&self, selector: &str, window: Duration) -> anyhow::Result<Vec<Value>> {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        let (start, end) = (format!("{:.3}", end - window.as_secs_f64()), format!("{end:.3}"));
        let data = self
            .api(
                "/api/v1/query_exemplars",
                &[("query", selector), ("start", &start), ("end", &end)],
            )
            .await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|series| series.get("exemplars").and_then(Value::as_array))
            .flatten()
            .filter_map(|exemplar| exemplar.get("labels").cloned())
            .collect())
    }

    /// The scrape targets Prometheus knows, with their health.
    pub async fn targets(&self) -> anyhow::Result<Vec<(String, String)>> {
        let data = self.api("/api/v1/targets", &[]).await?;
        Ok(data
            .get("activeTargets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|target| {
                let job = target
                    .pointer("/labels/job")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let health = target
                    .get("health")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                (job, health)
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_config_rewrites_targets_and_drops_the_rest() {
        let original = std::fs::read_to_string(crate::observability_path("prometheus/prometheus.yml"))
            .unwrap_or_default();
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let config = localhost_config(
            &original,
            &[("gateway:8000", addr(1)), ("cart:8002", addr(2))],
            addr(3),
            Path::new("/rules"),
        )
        .unwrap_or_else(|error| panic!("{error:#}"));
        assert!(config.contains("job_name: gateway"));
        assert!(config.contains("'127.0.0.1:1'"));
        assert!(config.contains("job_name: cart"));
        assert!(config.contains("job_name: prometheus"));
        assert!(!config.contains("job_name: tempo"), "{config}");
        assert!(!config.contains("job_name: catalog"), "{config}");
        assert!(config.contains("'/rules/*.yml'"));
        assert!(config.contains("scrape_interval: 1s"));
        assert!(localhost_config(&original, &[("nowhere:1", addr(1))], addr(3), Path::new("/r")).is_err());
    }
}
