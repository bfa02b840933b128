//! The gateway's own metrics: what it sees of its backends and what its edge policies did.
//! Every label takes values from a bounded set (backend names, configured replica URLs, route
//! templates, fixed reasons).

use shopstack_telemetry::metrics::{HistogramVec, IntCounterVec, IntGaugeVec, LATENCY_BUCKETS, Registry};

#[derive(Clone)]
pub struct EdgeMetrics {
    /// Attempts at a backend (retries included), by outcome.
    pub upstream_requests: IntCounterVec<4>,
    pub upstream_duration: HistogramVec<2>,
    pub retries: IntCounterVec<3>,
    pub retry_budget_exhausted: IntCounterVec<1>,
    pub deadline_exceeded: IntCounterVec<1>,
    pub breaker_state: IntGaugeVec<1>,
    pub breaker_transitions: IntCounterVec<2>,
    pub breaker_rejected: IntCounterVec<1>,
    pub ejections: IntCounterVec<2>,
    pub replica_ejected: IntGaugeVec<2>,
    pub shed: IntCounterVec<1>,
    pub upstream_in_flight: IntGaugeVec<1>,
    pub rate_limited: IntCounterVec<1>,
    pub auth_failures: IntCounterVec<1>,
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

    pub fn new(registry: &Registry) -> shopstack_telemetry::metrics::Result<Self> {
        let metrics = Self::register(registry)?;
        for client in ["user", "ip"] {
            metrics.rate_limited.with_label_values(&[client]);
        }
        for reason in AUTH_FAILURE_REASONS {
            metrics.auth_failures.with_label_values(&[reason]);
        }
        Ok(metrics)
    }

    fn register(registry: &Registry) -> shopstack_telemetry::metrics::Result<Self> {
        Ok(Self {
            upstream_requests: registry.counter_vec(
                "gateway_upstream_requests_total",
                "Attempts at a backend (each retry counts), by upstream, route template, method and status (or timeout/unavailable/bad_gateway).",
                ["upstream", "route", "method", "status"],
            )?,
            upstream_duration: registry.histogram_vec(
                "gateway_upstream_request_duration_seconds",
                "Latency of one attempt at a backend, by upstream and route template.",
                LATENCY_BUCKETS,
                ["upstream", "route"],
            )?,
            retries: registry.counter_vec(
                "gateway_upstream_retries_total",
                "Retries sent to a backend, by upstream, route template and the outcome that caused them.",
                ["upstream", "route", "reason"],
            )?,
            retry_budget_exhausted: registry.counter_vec(
                "gateway_retry_budget_exhausted_total",
                "Retries not sent because the backend's retry budget (RETRY_BUDGET_RATIO of requests) was spent.",
                ["upstream"],
            )?,
            deadline_exceeded: registry.counter_vec(
                "gateway_request_deadline_exceeded_total",
                "Requests answered 504 because REQUEST_DEADLINE ran out, by upstream.",
                ["upstream"],
            )?,
            breaker_state: registry.gauge_vec(
                "gateway_circuit_breaker_state",
                "Circuit breaker per backend: 0 closed, 1 half-open, 2 open.",
                ["upstream"],
            )?,
            breaker_transitions: registry.counter_vec(
                "gateway_circuit_breaker_transitions_total",
                "Circuit breaker state changes, by upstream and the state entered.",
                ["upstream", "to"],
            )?,
            breaker_rejected: registry.counter_vec(
                "gateway_circuit_breaker_rejected_total",
                "Requests failed fast (503) because the backend's breaker was open.",
                ["upstream"],
            )?,
            ejections: registry.counter_vec(
                "gateway_upstream_ejections_total",
                "Replicas taken out of balancing after consecutive failures (outlier detection).",
                ["upstream", "replica"],
            )?,
            replica_ejected: registry.gauge_vec(
                "gateway_upstream_replica_ejected",
                "1 while the replica is ejected from balancing, 0 while it takes traffic.",
                ["upstream", "replica"],
            )?,
            shed: registry.counter_vec(
                "gateway_load_shed_total",
                "Requests refused with a fast 503 because the backend had UPSTREAM_MAX_CONCURRENCY requests in flight.",
                ["upstream"],
            )?,
            upstream_in_flight: registry.gauge_vec(
                "gateway_upstream_in_flight",
                "Requests in flight to a backend (what load shedding counts).",
                ["upstream"],
            )?,
            rate_limited: registry.counter_vec(
                "gateway_rate_limited_total",
                "Requests refused with 429, by how the client was identified (user or ip).",
                ["client"],
            )?,
            auth_failures: registry.counter_vec(
                "gateway_auth_failures_total",
                "Requests refused by edge auth (401, or 404 for another user's resource), by reason.",
                ["reason"],
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
