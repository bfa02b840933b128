//! The gateway's own metrics: what it sees of its backends and what its edge policies did.
//! Every label takes values from a bounded set (backend names, configured replica URLs, route
//! templates, fixed reasons).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use shopstack_telemetry::metrics::{LATENCY_BUCKETS, register};

#[derive(Clone)]
pub struct EdgeMetrics {
    /// Attempts at a backend (retries included), by outcome.
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub retries: IntCounterVec,
    pub retry_budget_exhausted: IntCounterVec,
    pub deadline_exceeded: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub breaker_rejected: IntCounterVec,
    pub ejections: IntCounterVec,
    pub replica_ejected: IntGaugeVec,
    pub shed: IntCounterVec,
    pub upstream_in_flight: IntGaugeVec,
    pub rate_limited: IntCounterVec,
    pub auth_failures: IntCounterVec,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

/// Every `reason` of `gateway_auth_failures_total`.
pub const AUTH_FAILURE_REASONS: [&str; 11] = [
    "missing_token",
    "malformed",
    "invalid_signature",
    "algorithm",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "missing_claim",
    "not_owner",
    "admin_token",
];

impl EdgeMetrics {
    /// Series whose label values are known up front start at 0, so a dashboard shows a flat
    /// line rather than "no data" until the first retry, trip or refusal.
    pub fn init_upstream(&self, upstream: &str, replicas: &[&str]) {
        for counter in [
            &self.retry_budget_exhausted,
            &self.deadline_exceeded,
            &self.breaker_rejected,
            &self.shed,
        ] {
            counter.with_label_values(&[upstream]);
        }
        for to in ["open", "half_open", "closed"] {
            self.breaker_transitions.with_label_values(&[upstream, to]);
        }
        for replica in replicas {
            self.ejections.with_label_values(&[upstream, replica]);
        }
    }

    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::register(registry)?;
        for client in ["user", "ip"] {
            metrics.rate_limited.with_label_values(&[client]);
        }
        for reason in AUTH_FAILURE_REASONS {
            metrics.auth_failures.with_label_values(&[reason]);
        }
        Ok(metrics)
    }

    fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            upstream_requests: counter(
                registry,
                "gateway_upstream_requests_total",
                "Attempts at a backend (each retry counts), by upstream, route template, method and status (or timeout/unavailable/bad_gateway).",
                &["upstream", "route", "method", "status"],
            )?,
            upstream_duration: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gateway_upstream_request_duration_seconds",
                        "Latency of one attempt at a backend, by upstream and route template.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["upstream", "route"],
                )?,
            )?,
            retries: counter(
                registry,
                "gateway_upstream_retries_total",
                "Retries sent to a backend, by upstream, route template and the outcome that caused them.",
                &["upstream", "route", "reason"],
            )?,
            retry_budget_exhausted: counter(
                registry,
                "gateway_retry_budget_exhausted_total",
                "Retries not sent because the backend's retry budget (RETRY_BUDGET_RATIO of requests) was spent.",
                &["upstream"],
            )?,
            deadline_exceeded: counter(
                registry,
                "gateway_request_deadline_exceeded_total",
                "Requests answered 504 because REQUEST_DEADLINE ran out, by upstream.",
                &["upstream"],
            )?,
            breaker_state: gauge(
                registry,
                "gateway_circuit_breaker_state",
                "Circuit breaker per backend: 0 closed, 1 half-open, 2 open.",
                &["upstream"],
            )?,
            breaker_transitions: counter(
                registry,
                "gateway_circuit_breaker_transitions_total",
                "Circuit breaker state changes, by upstream and the state entered.",
                &["upstream", "to"],
            )?,
            breaker_rejected: counter(
                registry,
                "gateway_circuit_breaker_rejected_total",
                "Requests failed fast (503) because the backend's breaker was open.",
                &["upstream"],
            )?,
            ejections: counter(
                registry,
                "gateway_upstream_ejections_total",
                "Replicas taken out of balancing after consecutive failures (outlier detection).",
                &["upstream", "replica"],
            )?,
            replica_ejected: gauge(
                registry,
                "gateway_upstream_replica_ejected",
                "1 while the replica is ejected from balancing, 0 while it takes traffic.",
                &["upstream", "replica"],
            )?,
            shed: counter(
                registry,
                "gateway_load_shed_total",
                "Requests refused with a fast 503 because the backend had UPSTREAM_MAX_CONCURRENCY requests in flight.",
                &["upstream"],
            )?,
            upstream_in_flight: gauge(
                registry,
                "gateway_upstream_in_flight",
                "Requests in flight to a backend (what load shedding counts).",
                &["upstream"],
            )?,
            rate_limited: counter(
                registry,
                "gateway_rate_limited_total",
                "Requests refused with 429, by how the client was identified (user or ip).",
                &["client"],
            )?,
            auth_failures: counter(
                registry,
                "gateway_auth_failures_total",
                "Requests refused by edge auth (401, or 404 for another user's resource), by reason.",
                &["reason"],
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    /// The edge dashboard only charts metrics the gateway registers.
    #[test]
    fn the_edge_dashboard_names_only_registered_metrics() {
        let dashboard = include_str!("../../../observability/grafana/dashboards/gateway-edge.json");
        let source = include_str!("metrics.rs");
        let mut names: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("gateway_") && word.len() > "gateway_".len())
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 10, "{names:?}");
        for name in names {
            assert!(
                source.contains(&format!("\"{name}\"")),
                "{name} is charted but not registered"
            );
        }
    }
}
