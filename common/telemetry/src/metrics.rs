//! Prometheus metrics shared by every service.
//!
//! Each service owns one [`Registry`] whose constant label `service` is stamped on every series
//! (including the `process_*` ones), so one Prometheus query can slice by service. Labels only
//! ever take values from bounded sets: `route` is the matched route template
//! (`/v1/cart/{user_id}`), never the raw path.
//!
//! `/metrics` speaks two formats ([`Metrics::render`]): OpenMetrics to a scraper that asks for
//! it, with the `trace_id` of a sampled request as the exemplar of each
//! `http_request_duration_seconds` bucket, and the Prometheus text format otherwise.

use std::sync::RwLock;
use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry::trace::TraceId;
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::exemplar::HistogramWithExemplars;

use shopstack_base::config::ServiceIdentity;
pub use shopstack_base::metrics::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, MetricVec, Registry, Result,
};

/// Latency buckets (seconds) wide enough for simulated 20–90 ms work and 5 s upstream timeouts.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `Content-Type` of the OpenMetrics text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text exposition.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exemplar of a latency observation: the trace id of a sampled request, its only label
/// (nothing else about the request is put there). Kept as hex text in place, so recording one
/// allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceExemplar([u8; 32]);

impl TraceExemplar {
    pub fn new(trace_id: TraceId) -> Self {
        let mut hex = [0; 32];
        crate::propagation::write_hex(&mut hex, &trace_id.to_bytes());
        Self(hex)
    }

    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl EncodeLabelSet for TraceExemplar {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> std::fmt::Result {
        [("trace_id", self.trace_id())].encode(encoder)
    }
}

/// A latency histogram whose buckets keep the last sampled request's trace as their exemplar.
pub type LatencyHistogram = HistogramWithExemplars<TraceExemplar>;

/// Record `elapsed` seconds, with `trace` as the bucket's exemplar when the request's trace is
/// sampled (`None` otherwise: a trace nobody records is not worth linking to).
pub fn observe_latency(histogram: &LatencyHistogram, seconds: f64, trace: Option<TraceId>) {
    match trace {
        Some(trace_id) => histogram.observe(
            seconds,
            Some(TraceExemplar::new(trace_id)),
            Some(SystemTime::now()),
        ),
        None => histogram.observe(seconds, None, None),
    }
}

/// The service's registry and the request metrics its middleware feeds.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec<3>,
    pub duration: MetricVec<LatencyHistogram, 2>,
    pub in_flight: IntGauge,
    pub dependency_up: IntGaugeVec<1>,
}

impl Metrics {
    pub fn new(identity: &ServiceIdentity) -> Result<Self> {
        let registry = Registry::with_constant_label("service", identity.name.clone());
        let requests = registry.counter_vec(
            "http_requests_total",
            "HTTP requests served, by method, route template and status.",
            ["method", "route", "status"],
        )?;
        let duration = registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by method and route template.",
            MetricVec::new(["method", "route"], || {
                LatencyHistogram::new(LATENCY_BUCKETS.iter().copied())
            })?,
        )?;
        let in_flight = registry.gauge("http_requests_in_flight", "HTTP requests being served right now.")?;
        let dependency_up = registry.gauge_vec(
            "dependency_up",
            "1 when the dependency answered its last health check, 0 when it did not.",
            ["dependency"],
        )?;
        let info = registry.gauge_vec(
            "service_info",
            "Constant 1, labelled with the build and deployment identity.",
            ["version", "environment", "pod_name"],
        )?;
        info.with_label_values(&[&identity.version, &identity.environment, &identity.pod_name])
            .set(1);
        #[cfg(target_os = "linux")]
        crate::process::register(&registry)?;

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

    /// Everything registered, as OpenMetrics when `request_headers` accept it (with exemplars)
    /// and as the Prometheus text format otherwise.
    pub fn render(&self, request_headers: &HeaderMap) -> Response {
        let openmetrics = accepts_openmetrics(request_headers);
        let mut body = String::with_capacity(16 * 1024);
        let (encoded, content_type) = if openmetrics {
            (
                self.registry.encode_openmetrics(&mut body),
                OPENMETRICS_CONTENT_TYPE,
            )
        } else {
            (self.registry.encode_text(&mut body), TEXT_CONTENT_TYPE)
        };
        if let Err(error) = encoded {
            tracing::error!(%error, "failed to encode metrics");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        let mut response = body.into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }
}

/// Whether `Accept` lists `application/openmetrics-text` with a quality above 0 (Prometheus
/// sends `application/openmetrics-text;version=1.0.0,…,text/plain;version=0.0.4;q=0.5,…`).
pub fn accepts_openmetrics(request_headers: &HeaderMap) -> bool {
    request_headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media_type = parts.next().unwrap_or_default();
            let refused = parts.any(|parameter| {
                parameter
                    .split_once('=')
                    .filter(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                    .is_some_and(|(_, quality)| quality.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            media_type.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
}

/// The request metrics of one route and method, resolved once at start-up, so a hot path
/// records a request without hashing its label values (the service kit's `observe::RouteObserver`).
pub struct RouteMetrics {
    /// `http_requests_total`, by status.
    pub requests: CounterByLastLabel<3>,
    pub duration: LatencyHistogram,
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

/// The series of a counter whose `N` labels are all fixed but the last, by the last label's
/// value: each is resolved on first use and kept (the last label takes values from a bounded
/// set, such as status codes), so incrementing one is a short scan under a read lock instead of
/// hashing every label value.
pub struct CounterByLastLabel<const N: usize> {
    vec: IntCounterVec<N>,
    fixed: Vec<Box<str>>,
    resolved: RwLock<Vec<(Box<str>, IntCounter)>>,
}

impl<const N: usize> CounterByLastLabel<N> {
    /// `fixed` holds the values of the first `N - 1` labels.
    pub fn new(vec: &IntCounterVec<N>, fixed: &[&str]) -> Self {
        Self {
            vec: vec.clone(),
            fixed: fixed.iter().map(|value| Box::from(*value)).collect(),
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
            let labels: [&str; N] =
                std::array::from_fn(|index| self.fixed.get(index).map_or(last, |value| &**value));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_counter_by_last_label_counts_into_the_same_series_as_the_vector() {
        let registry = Registry::with_constant_label("service", "test");
        let vec = registry
            .counter_vec("t_total", "test", ["method", "route", "status"])
            .unwrap();
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

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn openmetrics_is_served_to_whoever_accepts_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(accepts_openmetrics(&accept(prometheus)));
        assert!(accepts_openmetrics(&accept("Application/OpenMetrics-Text")));
        assert!(!accepts_openmetrics(&HeaderMap::new()));
        assert!(!accepts_openmetrics(&accept("text/plain;version=0.0.4")));
        assert!(!accepts_openmetrics(&accept("*/*")));
        assert!(!accepts_openmetrics(&accept("application/openmetrics-text;q=0")));
    }

    #[test]
    fn latency_buckets_carry_the_trace_id_of_a_sampled_request_in_openmetrics_only() {
        let identity = ServiceIdentity {
            name: "cart".into(),
            version: "1".into(),
            environment: "test".into(),
            pod_name: "pod".into(),
            node_name: "node".into(),
        };
        let metrics = Metrics::new(&identity).unwrap();
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let series = metrics.duration.with_label_values(&["GET", "/cart/{user_id}"]);
        observe_latency(&series, 0.004, Some(trace_id));
        observe_latency(&series, 0.2, None);

        let body = |accept_header: &str| {
            let response = metrics.render(&accept(accept_header));
            let content_type = response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_owned();
            let bytes =
                futures::executor::block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap();
            (content_type, String::from_utf8(bytes.to_vec()).unwrap())
        };

        let (content_type, openmetrics) = body("application/openmetrics-text");
        assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        let exemplars: Vec<&str> = openmetrics.lines().filter(|line| line.contains(" # {")).collect();
        assert_eq!(exemplars.len(), 1, "{openmetrics}");
        // The bucket the 4 ms request fell in; OpenMetrics puts `le` first.
        let (sample, exemplar) = exemplars[0].split_once(" # ").unwrap();
        assert!(
            sample.starts_with("http_request_duration_seconds_bucket{le=\"0.005\","),
            "{sample}"
        );
        assert!(
            sample.contains("route=\"/cart/{user_id}\"") && sample.ends_with(" 1"),
            "{sample}"
        );
        assert!(
            exemplar.starts_with("{trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.004 "),
            "{exemplar}"
        );

        let (content_type, text) = body("text/plain");
        assert_eq!(content_type, TEXT_CONTENT_TYPE);
        assert!(
            !text.contains('#') || text.lines().all(|line| !line.contains(" # ")),
            "{text}"
        );
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        assert!(
            text.contains("http_request_duration_seconds_bucket{method=\"GET\",route=\"/cart/{user_id}\",service=\"cart\",le=\"0.005\"} 1\n"),
            "{text}"
        );
    }
}
