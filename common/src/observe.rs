//! The request middleware every service wears outermost: a server span continuing the caller's
//! trace, `x-request-id`, the request metrics and one JSON log line per request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::IntGauge;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::platform::Platform;
use crate::simulation::InjectedFault;
use crate::{propagation, telemetry};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_TRACE_ID: HeaderName = HeaderName::from_static("x-trace-id");

/// `route` label for requests no route matched (404s): one bounded value, never the raw path.
pub const UNMATCHED_ROUTE: &str = "unmatched";

tokio::task_local! {
    /// The current request's id, so outbound calls made while serving it can forward it.
    pub static REQUEST_ID: String;
}

/// Probe and scrape routes log at DEBUG: a scrape every 5 s is not news.
fn is_quiet_route(route: &str) -> bool {
    matches!(
        route,
        "/metrics" | "/livez" | "/health" | "/readyz" | "/ready" | "/healthz"
    )
}

/// Accept a caller's request id only if it is short and printable; otherwise mint one.
fn request_id_from(request: &Request) -> String {
    request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

struct InFlight(IntGauge);

impl InFlight {
    fn enter(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub async fn observe_request(State(platform): State<Platform>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let request_id = request_id_from(&request);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        request.headers_mut().insert(X_REQUEST_ID, value);
    }

    // Log lines show `http.request.method`, `http.route` and `url.path` as `method`, `route`
    // and `path` (telemetry::log_name); `service` and `pod_name` are here for in-process tests,
    // where several services share one log layer.
    let span = tracing::info_span!(
        telemetry::SERVER_SPAN,
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = %route,
        url.path = %request.uri().path(),
        http.response.status_code = Empty,
        service = %platform.identity().name,
        pod_name = %platform.identity().pod_name,
        request_id = %request_id,
    );
    let _ = span.set_parent(propagation::extract(request.headers()));
    let trace_id = telemetry::record_trace_ids(&span);

    let metrics = platform.metrics();
    let in_flight = InFlight::enter(&metrics.in_flight);
    let mut response = REQUEST_ID
        .scope(request_id.clone(), next.run(request))
        .instrument(span.clone())
        .await;
    drop(in_flight);

    let status = response.status();
    let elapsed = started.elapsed();
    metrics
        .requests
        .with_label_values(&[method.as_str(), route.as_str(), status.as_str()])
        .inc();
    metrics
        .duration
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(elapsed.as_secs_f64());

    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let injected = response.extensions().get::<InjectedFault>().is_some();
    let duration_ms = (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let duration = format!("{duration_ms:.3}ms");
    let status_code = status.as_u16();
    span.in_scope(|| {
        if injected {
            tracing::warn!(
                status = status_code,
                duration_ms,
                duration,
                injected = true,
                "request failed by injected fault"
            );
        } else if status.is_server_error() {
            tracing::error!(status = status_code, duration_ms, duration, "request failed");
        } else if is_quiet_route(&route) {
            tracing::debug!(status = status_code, duration_ms, duration, "request completed");
        } else {
            tracing::info!(status = status_code, duration_ms, duration, "request completed");
        }
    });

    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID, value);
    }
    if let Some(value) = trace_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        headers.insert(X_TRACE_ID, value);
    }
    response
}
