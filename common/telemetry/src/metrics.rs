//! Prometheus metrics shared by every service.
//!
//! Each service owns one [`Registry`] whose constant label `service` is stamped on every series
//! (including the process collector's), so one Prometheus query can slice by service. Labels
//! only ever take values from bounded sets: `route` is the matched route template
//! (`/v1/cart/{user_id}`), never the raw path.

use std::collections::HashMap;
use std::sync::RwLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use shopstack_base::config::ServiceIdentity;

/// Latency buckets (seconds) wide enough for simulated 20–90 ms work and 5 s upstream timeouts.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The service's registry and the request metrics its middleware feeds.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub in_flight: IntGauge,
    pub dependency_up: IntGaugeVec,
}

impl Metrics {
    pub fn new(identity: &ServiceIdentity) -> prometheus::Result<Self> {
        let labels = HashMap::from([("service".to_string(), identity.name.clone())]);
        let registry = Registry::new_custom(None, Some(labels))?;

        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests served, by method, route template and status.",
            ),
            &["method", "route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency, by method and route template.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route"],
        )?;
        let in_flight = IntGauge::new("http_requests_in_flight", "HTTP requests being served right now.")?;
        let dependency_up = IntGaugeVec::new(
            Opts::new(
                "dependency_up",
                "1 when the dependency answered its last health check, 0 when it did not.",
            ),
            &["dependency"],
        )?;
        let info = IntGaugeVec::new(
            Opts::new(
                "service_info",
                "Constant 1, labelled with the build and deployment identity.",
            ),
            &["version", "environment", "pod_name"],
        )?;
        info.with_label_values(&[&identity.version, &identity.environment, &identity.pod_name])
            .set(1);

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(dependency_up.clone()))?;
        registry.register(Box::new(info))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        Ok(Self {
            registry,
            requests,
            duration,
            in_flight,
            dependency_up,
        })
    }

    /// Where services register their business metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> Response {
        let encoder = TextEncoder::new();
        let mut body = Vec::with_capacity(16 * 1024);
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut body) {
            tracing::error!(%error, "failed to encode metrics");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        let mut response = body.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }
}

/// The request metrics of one route and method, resolved once at start-up, so a hot path
/// records a request without hashing its label values (the service kit's `observe::RouteObserver`).
pub struct RouteMetrics {
    /// `http_requests_total`, by status.
    pub requests: CounterByLastLabel,
    pub duration: Histogram,
    pub in_flight: IntGauge,
}

impl Metrics {
    pub fn for_route(&self, method: &str, route: &str) -> RouteMetrics {
        RouteMetrics {
            requests: CounterByLastLabel::new(&self.requests, &[method, route]),
            duration: self.duration.with_label_values(&[method, route]),
            in_flight: self.in_flight.clone(),
        }
    }
}

/// The series of a counter whose labels are all fixed but the last, by the last label's value:
/// each is resolved on first use and kept (the last label takes values from a bounded set, such
/// as status codes), so incrementing one is a short scan under a read lock instead of hashing
/// every label value.
pub struct CounterByLastLabel {
    vec: IntCounterVec,
    fixed: Vec<String>,
    resolved: RwLock<Vec<(Box<str>, IntCounter)>>,
}

impl CounterByLastLabel {
    pub fn new(vec: &IntCounterVec, fixed: &[&str]) -> Self {
        Self {
            vec: vec.clone(),
            fixed: fixed.iter().map(|value| (*value).to_owned()).collect(),
            resolved: RwLock::default(),
        }
    }

    /// Add one to the series whose last label is `last`.
    pub fn inc(&self, last: &str) {
        let known = {
            let resolved = self
                .resolved
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            resolved
                .iter()
                .find(|(value, _)| &**value == last)
                .map(|(_, counter)| counter.inc())
                .is_some()
        };
        if !known {
            let mut labels: Vec<&str> = self.fixed.iter().map(String::as_str).collect();
            labels.push(last);
            let counter = self.vec.with_label_values(&labels);
            counter.inc();
            let mut resolved = self
                .resolved
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !resolved.iter().any(|(value, _)| &**value == last) {
                resolved.push((last.into(), counter));
            }
        }
    }
}

/// Register a collector, returning it; for a service's business metrics at start-up.
pub fn register<C>(registry: &Registry, collector: C) -> prometheus::Result<C>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_by_last_label_counts_into_the_same_series_as_the_vector() {
        let vec = IntCounterVec::new(Opts::new("t_total", "test"), &["method", "route", "status"])
            .unwrap_or_else(|e| panic!("{e}"));
        let by_status = CounterByLastLabel::new(&vec, &["GET", "/x/{id}"]);
        for status in ["200", "404", "200", "200"] {
            by_status.inc(status);
        }
        assert_eq!(vec.with_label_values(&["GET", "/x/{id}", "200"]).get(), 3);
        assert_eq!(vec.with_label_values(&["GET", "/x/{id}", "404"]).get(), 1);
        vec.with_label_values(&["GET", "/x/{id}", "404"]).inc();
        by_status.inc("404");
        assert_eq!(
            vec.with_label_values(&["GET", "/x/{id}", "404"]).get(),
            3,
            "one series, however it is reached"
        );
    }
}
