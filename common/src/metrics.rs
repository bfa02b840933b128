//! Prometheus metrics shared by every service.
//!
//! Each service owns one [`Registry`] whose constant label `service` is stamped on every series
//! (including the process collector's), so one Prometheus query can slice by service. Labels
//! only ever take values from bounded sets: `route` is the matched route template
//! (`/v1/cart/{user_id}`), never the raw path.

use std::collections::HashMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::ServiceIdentity;

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

/// Register a collector, returning it; for a service's business metrics at start-up.
pub fn register<C>(registry: &Registry, collector: C) -> prometheus::Result<C>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}
