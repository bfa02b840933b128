//! Forwarding one request to a backend and its answer back, with the gateway's own JSON
//! errors (502/503/504/413) when the backend can't give one.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use shopstack_common::metrics::{LATENCY_BUCKETS, register};

use crate::GatewayState;
use crate::error::GatewayError;
use crate::routes::RouteSpec;

/// The gateway's view of its backends.
#[derive(Clone)]
pub struct UpstreamMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl UpstreamMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            requests: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "gateway_upstream_requests_total",
                        "Calls from the gateway to a backend, by upstream, route template, method and status (or timeout/unavailable/bad_gateway).",
                    ),
                    &["upstream", "route", "method", "status"],
                )?,
            )?,
            duration: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gateway_upstream_request_duration_seconds",
                        "Latency of gateway calls to a backend, by upstream and route template.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["upstream", "route"],
                )?,
            )?,
        })
    }

    fn record(&self, upstream: &str, spec: &RouteSpec, status: &str, started: Instant) {
        self.requests
            .with_label_values(&[upstream, spec.path, spec.method.as_str(), status])
            .inc();
        self.duration
            .with_label_values(&[upstream, spec.path])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

pub async fn forward(
    state: GatewayState,
    spec: &RouteSpec,
    request: Request,
) -> Result<Response, GatewayError> {
    let upstream = state.upstreams.get(spec.backend);
    let name = upstream.backend.name();
    let limit = state.platform.settings().max_body_bytes;
    let (parts, body) = request.into_parts();

    let declared_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared_length.is_some_and(|length| length > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let body: Bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| GatewayError::BodyTooLarge { limit })?;

    let mut url = upstream.pick().clone();
    let path = spec.backend_path.unwrap_or_else(|| parts.uri.path());
    url.set_path(&format!("{}{}", url.path().trim_end_matches('/'), path));
    url.set_query(parts.uri.query());

    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    // The gateway's own client span becomes the backend's parent.
    headers.remove("traceparent");
    headers.remove("tracestate");
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(previous) => format!("{previous}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert("x-forwarded-for", value);
        }
    }

    let client = state.platform.client();
    let outbound = client
        .inner()
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .timeout(state.upstream_timeout)
        .build()
        .map_err(|_| GatewayError::BadGateway { upstream: name })?;

    let started = Instant::now();
    let outcome: Result<Response, GatewayError> = async {
        let response = client
            .send(name, spec.path, outbound)
            .await
            .map_err(|error| classify(name, &error))?;
        let status = response.status();
        let mut headers = response.headers().clone();
        let body = response.bytes().await.map_err(|error| classify(name, &error))?;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::CONTENT_LENGTH);
        let mut proxied = Response::new(Body::from(body));
        *proxied.status_mut() = status;
        *proxied.headers_mut() = headers;
        Ok(proxied)
    }
    .await;
    match &outcome {
        Ok(response) => state
            .metrics
            .record(name, spec, response.status().as_str(), started),
        Err(error) => {
            tracing::warn!(
                upstream = name,
                route = spec.path,
                outcome = error.outcome(),
                "upstream call failed"
            );
            state.metrics.record(name, spec, error.outcome(), started);
        }
    }
    outcome
}

fn classify(upstream: &'static str, error: &reqwest::Error) -> GatewayError {
    if error.is_timeout() {
        GatewayError::Timeout { upstream }
    } else if error.is_connect() {
        GatewayError::Unavailable { upstream }
    } else {
        GatewayError::BadGateway { upstream }
    }
}
