//! Helpers for the observability stack tests (`tests/`):
//!
//! - [`dashboards`]: read the Grafana dashboards and list every query in them, with the
//!   template variables substituted the way Grafana would for the default selection.
//! - [`prometheus`]: run the real Prometheus binary (Debian's `prometheus` package) on a free
//!   loopback port with a localhost variant of `observability/prometheus/prometheus.yml`, and
//!   query its HTTP API.

pub mod dashboards;
pub mod prometheus;

use std::path::PathBuf;

/// The repository root (this crate lives in `ops/stack-tests`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

/// `observability/…` in the repository.
pub fn observability_path(relative: &str) -> PathBuf {
    repo_root().join("observability").join(relative)
}
