//! The gateway with one route, `GET /catalog/{id}`, forwarded through hyper-util's pooled client
//! (`hyper_util::client::legacy::Client`, HTTP/1.1 keep-alive) instead of the gateway's own
//! exchange (`exchange.rs`, `pool.rs`): the comparison `make bench` runs as `gateway-hyper-util`
//! beside `gateway` (docs/decisions/0001-hand-written-http1-exchange.md).
//!
//! It is the gateway binary in every other respect: the same settings and environment variables,
//! the same `GatewayState`, and every other request — probes, `/metrics`, the other proxied
//! routes — served by the gateway's own edge. On the measured route it does the gateway's
//! per-request work with the gateway's own parts:
//!
//! - observation by the same `RouteObserver`: the caller's `traceparent` continued (or a trace
//!   started) and the request's span exported when telemetry is on, `x-request-id` kept or made,
//!   the same request metrics, one JSON access line to stdout or `LOG_FILE`;
//! - the simulation hook, the rate limit (when configured), the body limit;
//! - the headers sent: `traceparent` naming this request's span, `x-request-id`,
//!   `x-forwarded-for`, then the caller's headers but hop-by-hop ones and those the gateway writes;
//! - the edge policies of one attempt: a load-shedding slot, breaker admission, the replica picked
//!   by the balancer, the retry budget's deposit, the attempt timeout within the request's
//!   deadline, outlier and breaker reports, the upstream metrics;
//! - the answer read in full (the gateway buffers answers too) and passed on without its
//!   hop-by-hop headers.
//!
//! What it does not do: retries (the gateway's retry loop only runs after a failed attempt, so a
//! benchmark of successful requests never enters it), edge auth (it refuses to start with a JWT
//! key configured), and HEAD or other methods on the route (those go to the gateway's edge).
//! The client pool differs in kind, which is the point: hyper-util's pool is keyed by scheme and
//! authority and each request crosses to a connection task; the gateway's pool belongs to the
//! replica and the request's own task writes and reads the connection.
//!
//! `cargo run --release -p gateway --example hyper_util_proxy` with the gateway's environment
//! (`PORT`, `CATALOG_SERVICE_URL`, ...).

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use futures::FutureExt;
use futures::future::BoxFuture;
use gateway::edge::Edge;
use gateway::error::GatewayError;
use gateway::pool::{CONNECT_TIMEOUT, IDLE_TIMEOUT, MAX_IDLE};
use gateway::proxy::Peer;
use gateway::ratelimit::ClientKey;
use gateway::routes::Backend;
use gateway::upstream::Upstream;
use gateway::{DEFAULTS, GatewayConfig, GatewayState, app};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry::KeyValue;
use shopstack_platform::observe::{ObservedRequest, RouteObserver, X_REQUEST_ID};
use shopstack_platform::server::{self, Front};
use shopstack_platform::service::panic_to_problem;
use shopstack_telemetry::metrics::{CounterByLastLabel, Histogram};
use tower::Service;

/// The same allocator as the gateway binary, so the two differ only in the client.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The route served here; the gateway's table maps it to the catalog.
const ROUTE: &str = "/catalog/{id}";
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// As the gateway: headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
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
/// Largest answer body read, as the gateway's exchange.
const MAX_ANSWER_BYTES: usize = gateway::exchange::MAX_BODY_BYTES;

/// The measured route and what serving it needs, resolved once.
struct Route {
    observer: RouteObserver,
    upstream: Arc<Upstream>,
    /// Each replica's authority, in `upstream.replicas` order: the client's pool key.
    authorities: Vec<Authority>,
    upstream_requests: CounterByLastLabel<4>,
    upstream_duration: Histogram,
    client: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Clone)]
struct HyperFront {
    state: Arc<GatewayState>,
    route: Arc<Route>,
    /// The gateway's own front, for every other request.
    edge: Edge,
    peer: Option<Peer>,
}

impl HyperFront {
    fn new(state: GatewayState) -> anyhow::Result<Self> {
        anyhow::ensure!(
            state.auth.is_none(),
            "this comparison does not do edge auth: unset JWT_SECRET / JWT_PUBLIC_KEY"
        );
        let upstream = state.upstreams.get(Backend::Catalog).clone();
        let authorities = upstream
            .replicas
            .iter()
            .map(|replica| Authority::try_from(replica.host_header().as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let name = upstream.name();
        let route = Route {
            observer: RouteObserver::with_attributes(
                &state.platform,
                Method::GET,
                ROUTE,
                vec![KeyValue::new("peer.service", name)],
            ),
            upstream_requests: CounterByLastLabel::new(
                &state.metrics.upstream_requests,
                &[name, ROUTE, "GET"],
            ),
            upstream_duration: state.metrics.upstream_duration.with_label_values(&[name, ROUTE]),
            upstream,
            authorities,
            client,
        };
        Ok(Self {
            edge: app(state.clone()),
            state: Arc::new(state),
            route: Arc::new(route),
            peer: None,
        })
    }
}

impl Front for HyperFront {
    type Service = HyperFront;

    fn for_connection(&self, peer: SocketAddr) -> HyperFront {
        HyperFront {
            edge: self.edge.for_connection(peer),
            peer: Some(Peer::new(peer.ip())),
            ..self.clone()
        }
    }
}

/// `/catalog/{id}`: one non-empty segment after `/catalog/`.
fn is_route(path: &str) -> bool {
    path.strip_prefix("/catalog/")
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

impl Service<Request> for HyperFront {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.method() != Method::GET || !is_route(request.uri().path()) {
            return self.edge.call(request);
        }
        // As the gateway's edge: the heap slot first, then the future written into it, so the
        // future is not built on the stack and copied.
        let slot = Box::new_uninit();
        let serving = Box::write(slot, serve(self.clone(), request));
        Box::into_pin(serving)
    }
}

/// One request on the route, observed from start to end (as the gateway's edge does).
async fn serve(front: HyperFront, request: Request) -> Result<Response, Infallible> {
    let (parts, body) = request.into_parts();
    let uri = parts.uri.clone();
    let route = front.route.clone();
    let observed = route.observer.start(&parts.headers, uri.path());
    let answered = AssertUnwindSafe(answer(&front, parts, body, &observed))
        .catch_unwind()
        .await;
    let mut response = answered.unwrap_or_else(panic_to_problem);
    route.observer.finish(observed, uri.path(), &mut response);
    Ok(response)
}

async fn answer(front: &HyperFront, parts: Parts, body: Body, observed: &ObservedRequest) -> Response {
    if let Some(injected) = front
        .state
        .platform
        .simulation()
        .apply(ROUTE, &parts.method, &parts.headers)
        .await
    {
        return injected;
    }
    forward(front, parts, body, observed)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Why the client's attempt failed.
enum ClientError {
    /// No connection could be made.
    Connect,
    /// The connection broke, or the answer was not acceptable.
    Exchange,
}

async fn forward(
    front: &HyperFront,
    parts: Parts,
    body: Body,
    observed: &ObservedRequest,
) -> Result<Response, GatewayError> {
    let state = &front.state;
    let route = &front.route;
    let upstream = &route.upstream;
    let name = upstream.name();
    let metrics = &state.metrics;

    if let Some(limiter) = &state.rate_limiter {
        let client = ClientKey::Ip(
            front
                .peer
                .as_ref()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |peer| peer.ip),
        );
        if let Err(retry_after) = limiter.check(&client) {
            metrics.rate_limited.with_label_values(&[client.kind()]).inc();
            return Err(GatewayError::RateLimited { retry_after });
        }
    }
    let body = read_body(body, state.platform.settings().max_body_bytes).await?;

    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 3);
    headers.insert(TRACEPARENT, observed.trace().traceparent());
    headers.insert(X_REQUEST_ID, observed.request_id().clone());
    if let Some(peer) = &front.peer {
        let value = match parts.headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(previous) => HeaderValue::from_str(&format!("{previous}, {}", peer.ip)).ok(),
            None => Some(peer.header.clone()),
        };
        if let Some(value) = value {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    let listed = connection_named(&parts.headers);
    for (name, value) in &parts.headers {
        if forwards(name, &listed) {
            headers.append(name.clone(), value.clone());
        }
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    // One attempt through the edge policies, as the gateway's `proxy::call` makes its first.
    let Some(_slot) = upstream.try_slot() else {
        metrics.shed.with_label_values(&[name]).inc();
        return Err(GatewayError::Overloaded { upstream: name });
    };
    let permit = upstream.breaker.admit().map_err(|retry_after| {
        metrics.breaker_rejected.with_label_values(&[name]).inc();
        GatewayError::CircuitOpen {
            upstream: name,
            retry_after,
        }
    })?;
    let started = Instant::now();
    let remaining = (observed.started() + state.edge.deadline).saturating_duration_since(started);
    if remaining.is_zero() {
        metrics.deadline_exceeded.with_label_values(&[name]).inc();
        return Err(GatewayError::Timeout { upstream: name });
    }
    let timeout = upstream.settings.timeout.min(remaining);
    let (index, in_flight) = upstream.pick(gateway::upstream::Placement::Any);
    upstream.budget.deposit();
    let (Some(replica), Some(authority)) = (upstream.replicas.get(index), route.authorities.get(index))
    else {
        return Err(GatewayError::Unavailable { upstream: name });
    };
    let path_and_query = match replica.target(&path_and_query) {
        Cow::Borrowed(_) => path_and_query,
        Cow::Owned(target) => {
            PathAndQuery::try_from(target).map_err(|_| GatewayError::BadGateway { upstream: name })?
        }
    };
    let mut uri = axum::http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority.clone());
    uri.path_and_query = Some(path_and_query);
    let uri = Uri::from_parts(uri).map_err(|_| GatewayError::BadGateway { upstream: name })?;
    let mut outbound = hyper::Request::new(Full::new(body));
    *outbound.method_mut() = parts.method.clone();
    *outbound.uri_mut() = uri;
    *outbound.headers_mut() = headers;

    let outcome =
        match tokio::time::timeout_at((started + timeout).into(), exchange(&route.client, outbound)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(ClientError::Connect)) => Err(GatewayError::Unavailable { upstream: name }),
            Ok(Err(ClientError::Exchange)) => Err(GatewayError::BadGateway { upstream: name }),
            Err(_) => Err(GatewayError::Timeout { upstream: name }),
        };
    let ended = Instant::now();
    route
        .upstream_duration
        .observe(ended.saturating_duration_since(started).as_secs_f64());
    drop(in_flight);
    let available = matches!(&outcome, Ok((head, _)) if !matches!(head.status.as_u16(), 502..=504));
    if upstream.report(index, available) {
        permit.finish(available, ended);
    } else {
        drop(permit);
    }
    match &outcome {
        Ok((head, _)) => route.upstream_requests.inc(head.status.as_str()),
        Err(error) => {
            tracing::warn!(
                upstream = name,
                route = ROUTE,
                outcome = error.outcome(),
                trace_id = %observed.trace().trace_id(),
                "upstream call failed"
            );
            route.upstream_requests.inc(error.outcome());
        }
    }
    let (head, body) = outcome?;
    let mut headers = head.headers;
    if headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        let named = connection_named(&headers);
        for name in HOP_BY_HOP.iter().chain(named.iter()) {
            headers.remove(name);
        }
    }
    headers.remove(header::CONTENT_LENGTH);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = head.status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Send the request on a pooled connection (or a new one) and read the whole answer.
async fn exchange(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(axum::http::response::Parts, Bytes), ClientError> {
    let response = client.request(request).await.map_err(|error| {
        if error.is_connect() {
            ClientError::Connect
        } else {
            ClientError::Exchange
        }
    })?;
    let (head, body) = response.into_parts();
    let body = Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|_| ClientError::Exchange)?
        .to_bytes();
    Ok((head, body))
}

/// The whole request body, or 413 past `limit` (a GET usually has none).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    if axum::body::HttpBody::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge { limit })
        }
        Err(_) => Err(GatewayError::BadRequestBody),
    }
}

/// As the gateway: whether the caller's header `name` goes to the backend.
fn forwards(name: &HeaderName, connection_named: &[HeaderName]) -> bool {
    let dropped = HOP_BY_HOP.contains(name)
        || matches!(
            name.as_str(),
            "host"
                | "content-length"
                | "expect"
                | "traceparent"
                | "x-request-id"
                | "x-forwarded-for"
                | "x-user-id"
        );
    !dropped && !connection_named.contains(name)
}

/// The header names the `Connection` headers list.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect()
}

fn main() -> ExitCode {
    let config = GatewayConfig::parse();
    if let Err(error) = config.validate() {
        eprintln!("error: invalid configuration: {error:#}");
        return ExitCode::from(2);
    }
    server::block_on(server::run(
        config.common_config(),
        DEFAULTS,
        |platform| async move { HyperFront::new(GatewayState::new(&config, platform)?) },
    ))
}
