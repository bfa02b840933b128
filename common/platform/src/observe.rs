//! The request middleware every service wears outermost: a server span continuing the caller's
//! trace, `x-request-id`, the request metrics and one JSON log line per request.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _,
};
use opentelemetry::{KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::SdkTracer;
use tracing::Instrument;
use tracing::field::Empty;

use crate::platform::Platform;
use shopstack_base::simulation::InjectedFault;
use shopstack_telemetry::metrics::{IntGauge, RouteMetrics, observe_latency};
use shopstack_telemetry::propagation;
use shopstack_telemetry::telemetry;

pub use crate::request_id::{REQUEST_ID, X_REQUEST_ID};
pub const X_TRACE_ID: HeaderName = HeaderName::from_static("x-trace-id");

pub use shopstack_base::labels::UNMATCHED_ROUTE;

/// Probe and scrape routes log at DEBUG: a scrape every 5 s is not news.
fn is_quiet_route(route: &str) -> bool {
    matches!(
        route,
        "/metrics" | "/livez" | "/health" | "/readyz" | "/ready" | "/healthz"
    )
}

/// The caller's `x-request-id` if it is short and printable; otherwise a new one. Kept as a
/// header value: it goes to the backends and back to the caller.
fn request_id_from(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|id| acceptable_request_id(id.as_bytes()))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(mint_request_id(&mut [0; uuid::fmt::Hyphenated::LENGTH]))
                .unwrap_or_else(|_| HeaderValue::from_static(""))
        })
}

/// Short and printable: a caller's request id worth keeping.
fn acceptable_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 128 && id.iter().all(u8::is_ascii_graphic)
}

/// A fresh request id, written into `text`: a UUIDv7 (time-ordered) whose random bits come from
/// the thread's RNG, so minting one costs no system call (`Uuid::now_v7` asks the kernel for
/// randomness every time), formatted without the formatting machinery.
fn mint_request_id(text: &mut [u8; uuid::fmt::Hyphenated::LENGTH]) -> &str {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .hyphenated()
        .encode_lower(text)
}

/// A request's duration in whole microseconds: logged as `duration_ms` (a number) and as
/// `duration` (`"12.345ms"`), written without formatting a float.
#[derive(Clone, Copy)]
struct Micros(u64);

impl Micros {
    fn of(elapsed: std::time::Duration) -> Self {
        Self(u64::try_from((elapsed.as_nanos() + 500) / 1000).unwrap_or(u64::MAX))
    }

    fn as_millis_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}ms", self.0 / 1000, self.0 % 1000)
    }
}

/// A [`RouteObserver`] request line's own members — what `observe_request`'s line takes from
/// its span — written as JSON only when the line is written ([`telemetry::JSON_MEMBERS`]).
struct RequestLine<'a> {
    /// Service, pod, method and route, already written as JSON members.
    prefix: &'a str,
    path: &'a str,
    request_id: &'a str,
    trace_id: &'a str,
    span_id: &'a str,
    status: u16,
    micros: Micros,
}

impl RequestLine<'_> {
    /// The members, written into this thread's buffer (given back when the result is dropped).
    /// As bytes, they go into the line as they are: no formatting pass, no UTF-8 check.
    fn members(&self) -> MembersBuffer {
        // `try_with`: a line logged while the thread's locals are torn down gets a buffer of its own.
        let mut buffer = MembersBuffer(MEMBERS.try_with(std::cell::Cell::take).unwrap_or_default());
        buffer.0.clear();
        self.write(&mut buffer.0);
        buffer
    }

    /// Assembled by hand, as bytes: a formatting call per member cost more than the rest of
    /// the line.
    fn write(&self, line: &mut Vec<u8>) {
        line.extend_from_slice(self.prefix.as_bytes());
        for (name, text) in [
            (&b",\"path\":"[..], self.path),
            (b",\"request_id\":", self.request_id),
        ] {
            line.extend_from_slice(name);
            telemetry::write_json_string(line, text);
        }
        line.extend_from_slice(b",\"trace_id\":\"");
        line.extend_from_slice(self.trace_id.as_bytes());
        line.extend_from_slice(b"\",\"span_id\":\"");
        line.extend_from_slice(self.span_id.as_bytes());
        line.extend_from_slice(b"\",\"status\":");
        let _ = serde_json::to_writer(&mut *line, &self.status);
        line.extend_from_slice(b",\"duration_ms\":");
        let (whole, fraction) = (self.micros.0 / 1000, self.micros.0 % 1000);
        let _ = serde_json::to_writer(&mut *line, &whole);
        let digits = [fraction / 100, fraction / 10 % 10, fraction % 10].map(|digit| b'0' + digit as u8);
        // JSON's shortest form of the float: `12.3`, `12.0`.
        let keep = digits
            .iter()
            .rposition(|&digit| digit != b'0')
            .map_or(1, |last| last + 1);
        line.push(b'.');
        line.extend_from_slice(&digits[..keep]);
        line.extend_from_slice(b",\"duration\":\"");
        let _ = serde_json::to_writer(&mut *line, &whole);
        line.push(b'.');
        line.extend_from_slice(&digits);
        line.extend_from_slice(b"ms\"");
    }
}

thread_local! {
    /// Reused from request line to request line (a line logged while one is being written
    /// finds it taken and starts an empty one).
    static MEMBERS: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A request line's members in this thread's buffer, which dropping gives back.
struct MembersBuffer(Vec<u8>);

impl std::ops::Deref for MembersBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for MembersBuffer {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        let _ = MEMBERS.try_with(|members| members.set(buffer));
    }
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

/// The trace a request's latency links to as its exemplar: the request's own, when it is
/// sampled — the flag its span passes on in `traceparent` (with an exporter the sampler's
/// decision; without one the caller's flag, or sampled for a trace the request starts). A trace
/// no one records is not linked to.
fn exemplar_trace(context: &SpanContext) -> Option<TraceId> {
    (context.is_valid() && context.is_sampled()).then(|| context.trace_id())
}

pub async fn observe_request(State(platform): State<Platform>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let request_id_value = request_id_from(request.headers());
    let request_id = request_id_value.to_str().unwrap_or_default().to_owned();
    request.headers_mut().insert(X_REQUEST_ID, request_id_value);

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
    telemetry::set_parent(&span, propagation::extract(request.headers()));
    let trace_id = telemetry::record_trace_ids(&span);
    let exemplar = exemplar_trace(&telemetry::span_context(&span));

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
    let duration = metrics
        .duration
        .with_label_values(&[method.as_str(), route.as_str()]);
    observe_latency(&duration, elapsed.as_secs_f64(), exemplar);

    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let injected = response.extensions().get::<InjectedFault>().is_some();
    let micros = Micros::of(elapsed);
    let duration_ms = micros.as_millis_f64();
    let duration = tracing::field::display(micros);
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

// ---- Requests observed without a `tracing` span --------------------------------------------

/// Observes the requests of one route and method without a `tracing` span per request: the
/// same metrics, `x-request-id` and `x-trace-id`, log line and (when spans are exported) server
/// span as [`observe_request`], for a path that serves thousands of requests a second per core
/// and where creating, entering and closing spans cost more than the rest of the request (the
/// gateway's proxied routes; docs/performance.md). Built once per route at start-up. Log lines
/// written while serving such a request don't inherit its fields: that code names what it logs.
pub struct RouteObserver {
    route: &'static str,
    /// The span name and the attributes every request of the route has.
    span: Arc<RouteSpan>,
    /// The request line's members that never change — service, pod, method, route — as JSON.
    line_prefix: String,
    metrics: RouteMetrics,
}

/// One request being observed by a [`RouteObserver`]; hand it back to [`RouteObserver::finish`].
pub struct ObservedRequest {
    started: Instant,
    /// Made into a header value once: it goes to the backend and back to the caller.
    request_id: HeaderValue,
    trace: RequestTrace,
    _in_flight: InFlight,
}

impl ObservedRequest {
    /// The caller's `x-request-id` when it was acceptable, else a new one.
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    /// When the request started (the clock is read once for it).
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn trace(&self) -> &RequestTrace {
        &self.trace
    }
}

impl RouteObserver {
    pub fn new(platform: &Platform, method: Method, route: &'static str) -> Self {
        Self::with_attributes(platform, method, route, Vec::new())
    }

    /// With `attributes` on every span of the route besides the HTTP ones (for the gateway, the
    /// backend it goes to).
    pub fn with_attributes(
        platform: &Platform,
        method: Method,
        route: &'static str,
        attributes: Vec<KeyValue>,
    ) -> Self {
        let identity = platform.identity();
        let mut line_prefix = Vec::new();
        for (name, text) in [
            (&b"\"service\":"[..], identity.name.as_str()),
            (b",\"pod_name\":", identity.pod_name.as_str()),
            (b",\"method\":", method.as_str()),
            (b",\"route\":", route),
        ] {
            line_prefix.extend_from_slice(name);
            telemetry::write_json_string(&mut line_prefix, text);
        }
        // Values shared, not copied, by every span of the route.
        let shared = |value: Value| match value {
            Value::String(text) => Value::String(StringValue::from(Arc::<str>::from(text.as_str()))),
            other => other,
        };
        let mut span_attributes = vec![
            KeyValue::new("http.request.method", method.as_str().to_owned()),
            KeyValue::new("http.route", route),
        ];
        span_attributes.extend(attributes);
        Self {
            span: Arc::new(RouteSpan {
                name: Cow::Owned(format!("{method} {route}")),
                attributes: span_attributes
                    .into_iter()
                    .map(|attribute| KeyValue::new(attribute.key, shared(attribute.value)))
                    .collect(),
            }),
            line_prefix: String::from_utf8(line_prefix).unwrap_or_default(),
            metrics: platform.metrics().for_route(method.as_str(), route),
            route,
        }
    }

    pub fn route(&self) -> &'static str {
        self.route
    }

    /// Start observing a request with these headers (its `traceparent` continued, its
    /// `x-request-id` kept when acceptable) for `path`.
    pub fn start(&self, headers: &HeaderMap, path: &str) -> ObservedRequest {
        let started = Instant::now();
        let request_id = request_id_from(headers);
        let trace = RequestTrace::start(propagation::parse_traceparent(headers), &self.span, path);
        ObservedRequest {
            started,
            request_id,
            trace,
            _in_flight: InFlight::enter(&self.metrics.in_flight),
        }
    }

    /// Record the request's metrics, end its span, write its log line and put `x-request-id`
    /// and `x-trace-id` on the response.
    pub fn finish(&self, request: ObservedRequest, path: &str, response: &mut Response) {
        let ObservedRequest {
            started,
            request_id,
            trace,
            _in_flight,
        } = request;
        let status = response.status();
        let elapsed = started.elapsed();
        self.metrics.requests.inc(status.as_str());
        let exemplar = exemplar_trace(&trace.context);
        observe_latency(&self.metrics.duration, elapsed.as_secs_f64(), exemplar);
        drop(_in_flight);

        let mut trace_hex = [0u8; 32];
        propagation::write_hex(&mut trace_hex, &trace.trace_id().to_bytes());
        let mut span_hex = [0u8; 16];
        propagation::write_hex(&mut span_hex, &trace.span_id().to_bytes());
        let trace_id = std::str::from_utf8(&trace_hex).unwrap_or_default();
        let span_id = std::str::from_utf8(&span_hex).unwrap_or_default();
        // The line is written outside any `tracing` span: an exported log record takes the
        // request's trace from here.
        let _log_record_context = telemetry::trace_context_for_log_records(|| trace.context.clone());
        trace.end(Some(status));

        // The same line as `observe_request` writes, with the span's fields written here.
        let line = RequestLine {
            prefix: &self.line_prefix,
            path,
            request_id: request_id.to_str().unwrap_or_default(),
            trace_id,
            span_id,
            status: status.as_u16(),
            micros: Micros::of(elapsed),
        };
        // `service` and `pod_name` are written among the members (the layer's own defaults
        // name the process, which in a test may hold several services). The message is a
        // plain `&str` field, first as a format string would be: written as it is, rather
        // than formatted through `fmt::Arguments` and escaped character by character.
        macro_rules! request_line {
            ($level:ident, $message:literal $(, $($rest:tt)*)?) => {
                tracing::$level!(
                    message = $message,
                    service = tracing::field::Empty,
                    pod_name = tracing::field::Empty,
                    json_members = &*line.members()
                    $(, $($rest)*)?
                )
            };
        }
        if response.extensions().get::<InjectedFault>().is_some() {
            request_line!(warn, "request failed by injected fault", injected = true);
        } else if status.is_server_error() {
            request_line!(error, "request failed");
        } else if is_quiet_route(self.route) {
            request_line!(debug, "request completed");
        } else {
            request_line!(info, "request completed");
        }

        let headers = response.headers_mut();
        headers.insert(X_REQUEST_ID, request_id);
        if let Ok(value) = HeaderValue::from_bytes(&trace_hex) {
            headers.insert(X_TRACE_ID, value);
        }
    }
}

/// What every span of a route has: its name and its attributes, made once.
#[derive(Debug)]
struct RouteSpan {
    /// `"GET /catalog/{id}"`.
    name: Cow<'static, str>,
    attributes: Vec<KeyValue>,
}

/// The trace ids of a request observed without a `tracing` span, and its server span — an SDK
/// span, the tracer's sampler deciding — when this process exports spans. Without an exporter
/// no span is built, only its ids (`telemetry::new_span_context`): the request line and the
/// backend's `traceparent` need nothing more.
pub struct RequestTrace {
    context: SpanContext,
    /// Boxed: this lives in request futures that are moved. `None` when nothing is exported or
    /// the sampler dropped the span.
    span: Option<Box<opentelemetry_sdk::trace::Span>>,
}

impl RequestTrace {
    /// A server span of `route` for `path`, under `parent` (the caller's) or starting a trace.
    fn start(parent: Option<SpanContext>, route: &RouteSpan, path: &str) -> Self {
        Self::start_with(telemetry::exporting_tracer(), parent, route, path)
    }

    fn start_with(
        tracer: Option<&SdkTracer>,
        parent: Option<SpanContext>,
        route: &RouteSpan,
        path: &str,
    ) -> Self {
        let Some(tracer) = tracer else {
            return Self {
                context: telemetry::new_span_context(parent.as_ref()),
                span: None,
            };
        };
        let parent = match parent.filter(SpanContext::is_valid) {
            Some(parent) => opentelemetry::Context::new().with_remote_span_context(parent),
            None => opentelemetry::Context::new(),
        };
        let mut attributes = Vec::with_capacity(route.attributes.len() + 2);
        attributes.extend(route.attributes.iter().cloned());
        attributes.push(KeyValue::new("url.path", path.to_owned()));
        let span = tracer
            .span_builder(route.name.clone())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        let context = span.span_context().clone();
        Self {
            context,
            // A span the sampler dropped records nothing: not kept.
            span: span.is_recording().then(|| Box::new(span)),
        }
    }

    pub fn trace_id(&self) -> TraceId {
        self.context.trace_id()
    }

    pub fn span_id(&self) -> SpanId {
        self.context.span_id()
    }

    /// The `traceparent` that makes this span the callee's parent.
    pub fn traceparent(&self) -> HeaderValue {
        propagation::traceparent(
            self.context.trace_id(),
            self.context.span_id(),
            self.context.is_sampled(),
        )
    }

    /// [`RequestTrace::traceparent`]'s text, for a request written by hand.
    pub fn traceparent_text(&self) -> [u8; 55] {
        propagation::traceparent_text(
            self.context.trace_id(),
            self.context.span_id(),
            self.context.is_sampled(),
        )
    }

    /// End the span (exporting it, when spans are exported) with the answer's status, or as
    /// failed when there was no answer (`None`). A `RequestTrace` dropped without this (the
    /// caller went away) ends its span without a status.
    pub fn end(mut self, status: Option<StatusCode>) {
        let Some(mut span) = self.span.take() else { return };
        match status {
            Some(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                ));
                if status.is_server_error() {
                    span.set_status(Status::error(""));
                }
            }
            None => span.set_status(Status::error("")),
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{Micros, RequestLine, mint_request_id};

    #[test]
    fn the_request_line_members_are_json_and_duration_ms_is_written_as_json_writes_the_float() {
        let samples = (0..20_000u64).chain([999_999, 1_000_000, 86_400_000_123, 123_456_789_012]);
        for micros in samples {
            let micros = Micros(micros);
            let line = RequestLine {
                prefix: "\"service\":\"gateway\",\"route\":\"/catalog/{id}\"",
                path: "/catalog/a\"b",
                request_id: "r-1",
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
                span_id: "00f067aa0ba902b7",
                status: 200,
                micros,
            };
            let members = format!("{{{}}}", std::str::from_utf8(&line.members()).unwrap());
            let members: serde_json::Value = serde_json::from_str(&members).unwrap();
            assert_eq!(
                members["duration_ms"].to_string(),
                serde_json::to_string(&micros.as_millis_f64()).unwrap(),
                "{}",
                micros.0
            );
            assert_eq!(members["duration"], micros.to_string());
            if micros.0 == 0 {
                assert_eq!(members["path"], "/catalog/a\"b");
                assert_eq!(members["service"], "gateway");
                assert_eq!(members["route"], "/catalog/{id}");
                assert_eq!(members["status"], 200);
                assert_eq!(members["span_id"], "00f067aa0ba902b7");
            }
        }
        assert_eq!(Micros(12_345).to_string(), "12.345ms");
        assert_eq!(Micros(7).to_string(), "0.007ms");
    }

    #[test]
    fn minted_request_ids_are_distinct_time_ordered_uuid_v7s() {
        let ids: Vec<uuid::Uuid> = (0..1000)
            .map(|_| uuid::Uuid::parse_str(mint_request_id(&mut [0; 36])).unwrap())
            .collect();
        for id in &ids {
            assert_eq!(id.get_version_num(), 7, "{id}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        let millis = |id: &uuid::Uuid| id.get_timestamp().unwrap().to_unix();
        assert!(
            ids.windows(2).all(|pair| millis(&pair[0]) <= millis(&pair[1])),
            "time-ordered to the millisecond"
        );
    }

    mod request_spans {
        use std::sync::{Arc, Mutex};

        use axum::http::{Method, StatusCode};
        use opentelemetry::KeyValue;
        use opentelemetry::trace::{
            SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState, TracerProvider as _,
        };
        use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData};

        use super::super::{RequestTrace, RouteSpan};

        /// Keeps the spans it is handed.
        #[derive(Clone, Default, Debug)]
        struct Collected(Arc<Mutex<Vec<SpanData>>>);

        impl opentelemetry_sdk::trace::SpanProcessor for Collected {
            fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}
            fn on_end(&self, span: SpanData) {
                self.0.lock().unwrap().push(span);
            }
            fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
                Ok(())
            }
            fn shutdown_with_timeout(
                &self,
                _timeout: std::time::Duration,
            ) -> opentelemetry_sdk::error::OTelSdkResult {
                Ok(())
            }
        }

        fn exporting(sampler: Sampler) -> (opentelemetry_sdk::trace::SdkTracer, Collected) {
            let collected = Collected::default();
            let provider = SdkTracerProvider::builder()
                .with_sampler(sampler)
                .with_span_processor(collected.clone())
                .build();
            (provider.tracer("shopstack"), collected)
        }

        fn route() -> RouteSpan {
            RouteSpan {
                name: format!("{} /catalog/{{id}}", Method::GET).into(),
                attributes: vec![
                    KeyValue::new("http.request.method", "GET"),
                    KeyValue::new("http.route", "/catalog/{id}"),
                    KeyValue::new("peer.service", "catalog"),
                ],
            }
        }

        fn caller(flags: TraceFlags) -> SpanContext {
            SpanContext::new(
                TraceId::from(0xabc),
                SpanId::from(0x123),
                flags,
                true,
                TraceState::default(),
            )
        }

        fn attributes(span: &SpanData) -> Vec<(String, String)> {
            span.attributes
                .iter()
                .map(|attribute| (attribute.key.to_string(), attribute.value.to_string()))
                .collect()
        }

        fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
            list.iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect()
        }

        #[test]
        fn a_server_span_is_an_sdk_span_with_the_callers_trace_and_the_routes_attributes() {
            let (tracer, collected) = exporting(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
            let trace = RequestTrace::start_with(
                Some(&tracer),
                Some(caller(TraceFlags::SAMPLED)),
                &route(),
                "/catalog/p-1",
            );
            assert_eq!(trace.trace_id(), TraceId::from(0xabc));
            assert!(trace.span.is_some(), "recorded");
            let span_id = trace.span_id();
            assert!(trace.traceparent_text().ends_with(b"-01"));
            trace.end(Some(StatusCode::SERVICE_UNAVAILABLE));

            let spans = collected.0.lock().unwrap();
            assert_eq!(spans.len(), 1);
            let span = &spans[0];
            assert_eq!(span.name, "GET /catalog/{id}");
            assert_eq!(span.span_kind, SpanKind::Server);
            assert_eq!(span.span_context.trace_id(), TraceId::from(0xabc));
            assert_eq!(span.span_context.span_id(), span_id);
            assert_eq!(span.parent_span_id, SpanId::from(0x123));
            assert!(span.parent_span_is_remote);
            assert_eq!(
                attributes(span),
                pairs(&[
                    ("http.request.method", "GET"),
                    ("http.route", "/catalog/{id}"),
                    ("peer.service", "catalog"),
                    ("url.path", "/catalog/p-1"),
                    ("http.response.status_code", "503"),
                ])
            );
            assert!(matches!(span.status, Status::Error { .. }));
        }

        #[test]
        fn a_root_span_without_an_answer_fails_and_an_abandoned_one_has_no_status() {
            let (tracer, collected) = exporting(Sampler::AlwaysOn);
            RequestTrace::start_with(Some(&tracer), None, &route(), "/a").end(None);
            drop(RequestTrace::start_with(Some(&tracer), None, &route(), "/b"));
            let spans = collected.0.lock().unwrap();
            assert_eq!(spans.len(), 2);
            assert!(spans.iter().all(|span| span.parent_span_id == SpanId::INVALID));
            assert!(matches!(spans[0].status, Status::Error { .. }));
            assert_eq!(spans[1].status, Status::Unset);
        }

        #[test]
        fn the_sampler_decides_and_its_decision_goes_to_the_next_hop() {
            let (tracer, collected) = exporting(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
            let unsampled =
                RequestTrace::start_with(Some(&tracer), Some(caller(TraceFlags::default())), &route(), "/");
            assert!(unsampled.traceparent_text().ends_with(b"-00"));
            assert!(unsampled.span.is_none(), "not recorded");
            unsampled.end(Some(StatusCode::OK));

            let (never, never_collected) = exporting(Sampler::AlwaysOff);
            let dropped = RequestTrace::start_with(Some(&never), None, &route(), "/");
            assert!(dropped.traceparent_text().ends_with(b"-00"));
            dropped.end(Some(StatusCode::OK));

            assert!(collected.0.lock().unwrap().is_empty());
            assert!(never_collected.0.lock().unwrap().is_empty());
        }

        #[test]
        fn without_an_exporter_a_request_has_ids_and_no_span() {
            let trace = RequestTrace::start_with(None, Some(caller(TraceFlags::SAMPLED)), &route(), "/");
            assert_eq!(trace.trace_id(), TraceId::from(0xabc));
            assert_ne!(trace.span_id(), SpanId::from(0x123));
            assert!(trace.span.is_none());
        }
    }
}
