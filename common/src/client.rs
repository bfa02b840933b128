//! The one outbound HTTP client of a service: pooled keep-alive connections, a client span per
//! call, and `traceparent` + `x-request-id` injected so the callee continues the trace.

use std::time::Duration;

use anyhow::Context as _;
use axum::http::HeaderValue;
use tracing::Instrument;
use tracing::field::Empty;

use crate::observe::{REQUEST_ID, X_REQUEST_ID};
use crate::propagation;

#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
}

impl HttpClient {
    pub fn new() -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            // Loopback and cluster-internal calls only: a proxy from the environment would
            // only get in the way.
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build()
            .context("Failed to build the outbound HTTP client")?;
        Ok(Self { client })
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
        let method = request.method().clone();
        let span = tracing::info_span!(
            "http.client.request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "client",
            otel.status_code = Empty,
            peer.service = %peer,
            http.request.method = %method,
            url.full = %request.url(),
            server.address = request.url().host_str().unwrap_or_default(),
            server.port = request.url().port_or_known_default().unwrap_or_default(),
            http.response.status_code = Empty,
        );
        propagation::inject(&span, request.headers_mut());
        if let Ok(Ok(id)) = REQUEST_ID.try_with(|id| HeaderValue::from_str(id)) {
            request.headers_mut().insert(X_REQUEST_ID, id);
        }
        let result = self.client.execute(request).instrument(span.clone()).await;
        match &result {
            Ok(response) => {
                span.record("http.response.status_code", response.status().as_u16());
                if response.status().is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }
}
