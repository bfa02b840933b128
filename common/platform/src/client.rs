//! The one outbound HTTP client of a service: pooled keep-alive connections, a client span per
//! call, `traceparent` + `x-request-id` injected so the callee continues the trace, and the
//! service credential when `SERVICE_AUTH_SECRET` is set. (The
//! gateway's proxy path has its own connections to its backends: `apps/gateway/src/pool.rs`.)

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::request_id::{REQUEST_ID, X_REQUEST_ID};
use crate::service_auth::{SERVICE_CREDENTIAL, ServiceAuth};
use shopstack_telemetry::{propagation, telemetry};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const POOL_MAX_IDLE_PER_HOST: usize = 256;

#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    /// Signs each call's service credential when `SERVICE_AUTH_SECRET` is set.
    service_auth: Option<Arc<ServiceAuth>>,
}

impl HttpClient {
    pub fn new() -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            // Loopback and cluster-internal calls only: a proxy from the environment would
            // only get in the way.
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .build()
            .context("Failed to build the outbound HTTP client")?;
        Ok(Self {
            client,
            service_auth: None,
        })
    }

    /// Every call carries this service's credential (see [`crate::service_auth`]).
    pub fn with_service_auth(mut self, service_auth: Option<Arc<ServiceAuth>>) -> Self {
        self.service_auth = service_auth;
        self
    }

    /// For building requests; send them with [`HttpClient::send`].
    pub fn inner(&self) -> &reqwest::Client {
        &self.client
    }

    /// Send `request` to `peer` (the callee's service name) inside a client span; `route` is
    /// the callee's route template, used as the span name.
    pub async fn send(
        &self,
        peer: &str,
        route: &str,
        mut request: reqwest::Request,
    ) -> reqwest::Result<reqwest::Response> {
        let url = request.url();
        let span = client_span(
            peer,
            route,
            request.method(),
            url,
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default(),
        );
        propagate(&span, request.headers_mut());
        if let Some(credential) = self.service_auth.as_ref().and_then(|auth| auth.credential(None)) {
            request.headers_mut().insert(SERVICE_CREDENTIAL, credential);
        }
        let result = self.client.execute(request).instrument(span.clone()).await;
        record_status(&span, result.as_ref().ok().map(reqwest::Response::status));
        result
    }
}

fn client_span(peer: &str, route: &str, method: &Method, url: &dyn Display, host: &str, port: u16) -> Span {
    tracing::info_span!(
        "http.client.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "client",
        otel.status_code = Empty,
        peer.service = %peer,
        http.request.method = %method,
        url.full = %url,
        server.address = host,
        server.port = port,
        http.response.status_code = Empty,
    )
}

/// The callee continues this span's trace and sees the caller's request id.
fn propagate(span: &Span, headers: &mut HeaderMap) {
    propagation::inject(telemetry::span_context(span), headers);
    if let Ok(Ok(id)) = REQUEST_ID.try_with(|id| HeaderValue::from_str(id)) {
        headers.insert(X_REQUEST_ID, id);
    }
}

/// `status` is `None` when no answer came.
fn record_status(span: &Span, status: Option<StatusCode>) {
    match status {
        Some(status) => {
            span.record("http.response.status_code", status.as_u16());
            if status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
        }
        None => {
            span.record("otel.status_code", "ERROR");
        }
    }
}
