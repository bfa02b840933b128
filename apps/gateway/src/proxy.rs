//! Forwarding one request to a backend and its answer back, through the edge policies:
//!
//! 1. who is calling, and may they: a verified JWT subject ([`crate::auth`]); admin token,
//!    bearer token, owner of the path's user (401 / 404);
//! 2. rate limit per client, the subject or else the IP (429 + `Retry-After`, [`crate::ratelimit`]);
//! 3. body limit (413): by `Content-Length` at once, or while reading; the owner named in the
//!    body, or of the resource looked up (404);
//! 5. load shedding: a slot among the backend's `UPSTREAM_MAX_CONCURRENCY` (fast 503);
//! 6. attempts: breaker admission (fast 503 while open), a replica picked by the balancer, an
//!    attempt timeout within the request's deadline (504), and — for requests safe to retry —
//!    up to 3 attempts with jittered exponential backoff while the retry budget allows.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::Response;
use futures::StreamExt;
use shopstack_common::admin;

use crate::GatewayState;
use crate::auth::Caller;
use crate::error::GatewayError;
use crate::ratelimit::ClientKey;
use crate::retry::{backoff, request_is_retryable, status_is_retryable};
use crate::routes::{Access, RouteSpec};
use crate::upstream::Upstream;

/// The authenticated subject, for the backend (set by the gateway only; a client's is dropped).
pub const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");

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

/// The client's address: the peer, or with `TRUST_FORWARDED_FOR` the last `X-Forwarded-For`
/// entry (the one the proxy in front of the gateway added).
fn client_ip(parts: &Parts, trust_forwarded_for: bool) -> IpAddr {
    if trust_forwarded_for {
        let entries: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        if let Some(ip) = entries
            .last()
            .and_then(|entry| entry.trim().parse::<IpAddr>().ok())
        {
            return ip;
        }
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(peer)| peer.ip())
}

/// A backend's answer, read in full.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn into_response(self) -> Response {
        let mut headers = self.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::CONTENT_LENGTH);
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = headers;
        response
    }
}

/// Everything needed to send the request once, again and again.
struct Outbound<'a> {
    method: Method,
    path_and_query: (&'a str, Option<&'a str>),
    headers: HeaderMap,
    body: Bytes,
}

pub async fn forward(
    state: GatewayState,
    spec: &RouteSpec,
    request: Request,
) -> Result<Response, GatewayError> {
    let started = Instant::now();
    let limit = state.platform.settings().max_body_bytes;
    let (mut parts, body) = request.into_parts();

    // Admin and staff routes carry the admin token, not a JWT.
    let caller = match &state.auth {
        Some(auth) if !matches!(spec.access, Access::Admin | Access::Staff) => auth.identify(&parts.headers),
        _ => Caller::Anonymous,
    };

    // Refusals come first (as in Kong's and Envoy's filter order): they cost a signature check
    // and never reach a backend; what is let through is then limited per user, or per IP.
    let user = authorize(&state, spec, caller, &mut parts).await?;

    if let Some(limiter) = &state.rate_limiter {
        let client = match &user {
            Some(user) => ClientKey::User(user.clone()),
            None => ClientKey::Ip(client_ip(&parts, state.edge.trust_forwarded_for)),
        };
        if let Err(retry_after) = limiter.check(&client) {
            state
                .metrics
                .rate_limited
                .with_label_values(&[client.kind()])
                .inc();
            return Err(GatewayError::RateLimited { retry_after });
        }
    }

    let declared_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if let Some(length) = declared_length.filter(|&length| length > limit) {
        // Read a moderately oversized body before answering, so the client reads the 413
        // instead of a reset; a client waiting for `100 Continue` never sends it.
        let expects_continue = parts.headers.contains_key(header::EXPECT);
        if !expects_continue && length <= limit + DRAIN_MAX_BYTES {
            drain(body.into_data_stream(), DRAIN_MAX_BYTES + limit).await;
        }
        return Err(GatewayError::BodyTooLarge { limit });
    }

    let body = read_body(body, limit).await?;

    if let (Access::OwnerInBody(member), Some(user)) = (spec.access, user.as_deref()) {
        let named = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| value.get(member).and_then(|v| v.as_str()).map(str::to_owned));
        // A body naming no user is the backend's to refuse (400); one naming another user is not yours.
        if named.is_some_and(|named| named != user) {
            state
                .metrics
                .auth_failures
                .with_label_values(&["not_owner"])
                .inc();
            return Err(GatewayError::NotYours);
        }
    }

    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    // The gateway's own client span becomes the backend's parent.
    headers.remove("traceparent");
    headers.remove("tracestate");
    headers.remove(&X_USER_ID);
    if let Some(value) = user.as_deref().and_then(|user| HeaderValue::from_str(user).ok()) {
        headers.insert(X_USER_ID, value);
    }
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(previous) => format!("{previous}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert("x-forwarded-for", value);
        }
    }

    let path = spec.backend_path.unwrap_or_else(|| parts.uri.path());
    let outbound = Outbound {
        method: parts.method.clone(),
        path_and_query: (path, parts.uri.query()),
        headers,
        body,
    };
    let upstream = state.upstreams.get(spec.backend).clone();
    let deadline = started + state.edge.deadline;
    if let (Access::OwnerOfResource { lookup, owner }, Some(user)) = (spec.access, user.as_deref()) {
        let Some(path) = fill_template(lookup, spec.path, parts.uri.path()) else {
            return Err(GatewayError::NotYours);
        };
        let mut headers = outbound.headers.clone();
        headers.remove(header::CONTENT_TYPE);
        headers.remove(crate::retry::IDEMPOTENCY_KEY);
        let probe = Outbound {
            method: Method::GET,
            path_and_query: (&path, None),
            headers,
            body: Bytes::new(),
        };
        let answer = call(&state, spec, &upstream, probe, deadline).await?;
        if !answer.status.is_success() {
            // Unknown (404) or unreadable right now (5xx): the caller gets that answer.
            return Ok(answer.into_response());
        }
        let found = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|value| value.pointer(owner).and_then(|v| v.as_str()).map(str::to_owned));
        if found.as_deref() != Some(user) {
            state
                .metrics
                .auth_failures
                .with_label_values(&["not_owner"])
                .inc();
            return Err(GatewayError::NotYours);
        }
    }
    call(&state, spec, &upstream, outbound, deadline)
        .await
        .map(Answer::into_response)
}

/// `template` (e.g. `/api/orders/{id}`) with each `{name}` replaced by the request path's
/// segment where `route` has `{name}`; segments stay as the client encoded them.
fn fill_template(template: &str, route: &str, path: &str) -> Option<String> {
    let route: Vec<&str> = route.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    if route.len() != path.len() {
        return None;
    }
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                route.iter().position(|r| *r == segment).map(|index| path[index])
            } else {
                Some(segment)
            }
        })
        .collect::<Option<Vec<&str>>>()
        .map(|segments| segments.join("/"))
}

/// Extra bytes of an oversized body read (and discarded) before answering 413.
const DRAIN_MAX_BYTES: usize = 1024 * 1024;
/// Longest spent draining an oversized body.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(1);

/// The whole body, or 413 once it passes `limit` (after draining a bounded rest).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    let mut stream = body.into_data_stream();
    let mut collected = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| GatewayError::BadRequestBody)?;
        if collected.len() + chunk.len() > limit {
            drain(stream, DRAIN_MAX_BYTES).await;
            return Err(GatewayError::BodyTooLarge { limit });
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(collected))
}

async fn drain(mut stream: axum::body::BodyDataStream, max_bytes: usize) {
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
        let mut seen = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > max_bytes {
                break;
            }
        }
    })
    .await;
}

/// Step 4: may this caller use this route? Returns the user the request acts for, if any.
async fn authorize(
    state: &GatewayState,
    spec: &RouteSpec,
    caller: Caller,
    parts: &mut Parts,
) -> Result<Option<String>, GatewayError> {
    let fail = |reason: &str| state.metrics.auth_failures.with_label_values(&[reason]).inc();
    if spec.access == Access::Admin || (spec.access == Access::Staff && state.auth.is_some()) {
        admin::authorize(state.platform.settings().admin_token.as_deref(), &parts.headers).map_err(
            |problem| {
                fail("admin_token");
                GatewayError::AdminOnly(problem)
            },
        )?;
        return Ok(None);
    }
    if state.auth.is_none() {
        return Ok(None);
    }
    let user = match caller {
        Caller::User(user) => user,
        Caller::Anonymous if spec.access.needs_user() => {
            fail("missing_token");
            return Err(GatewayError::Unauthorized {
                description: "This route needs `Authorization: Bearer <token>`.",
                invalid_token: false,
            });
        }
        Caller::Refused(failure) if spec.access.needs_user() => {
            fail(failure.reason);
            return Err(GatewayError::Unauthorized {
                description: failure.description,
                invalid_token: true,
            });
        }
        // A public route: a missing or refused token just leaves the caller anonymous.
        Caller::Anonymous | Caller::Refused(_) => return Ok(None),
    };
    if let Access::OwnerInPath(param) = spec.access {
        let owner = RawPathParams::from_request_parts(parts, &())
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(name, _)| *name == param)
                    .map(|(_, value)| value.to_owned())
            });
        if owner.as_deref() != Some(user.as_str()) {
            fail("not_owner");
            return Err(GatewayError::NotYours);
        }
    }
    Ok(Some(user))
}

/// Steps 5 and 6: the attempts at the backend.
async fn call(
    state: &GatewayState,
    spec: &RouteSpec,
    upstream: &Arc<Upstream>,
    outbound: Outbound<'_>,
    deadline: Instant,
) -> Result<Answer, GatewayError> {
    let name = upstream.name();
    let metrics = &state.metrics;
    let Some(_slot) = upstream.try_slot() else {
        metrics.shed.with_label_values(&[name]).inc();
        return Err(GatewayError::Overloaded { upstream: name });
    };
    let edge = &state.edge;
    let max_attempts = if request_is_retryable(&outbound.method, &outbound.headers) {
        edge.max_attempts
    } else {
        1
    };
    let mut last: Option<Result<Answer, GatewayError>> = None;
    let mut avoid = None;
    for attempt in 1..=max_attempts {
        let permit = match upstream.breaker.admit() {
            Ok(permit) => permit,
            // Opened while this request was retrying: answer what the backend last said.
            Err(_) if last.is_some() => break,
            Err(retry_after) => {
                metrics.breaker_rejected.with_label_values(&[name]).inc();
                return Err(GatewayError::CircuitOpen {
                    upstream: name,
                    retry_after,
                });
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            metrics.deadline_exceeded.with_label_values(&[name]).inc();
            return Err(GatewayError::Timeout { upstream: name });
        }
        let timeout = upstream.settings.timeout.min(remaining);
        let (index, in_flight) = upstream.pick(avoid);
        if attempt == 1 {
            upstream.budget.deposit();
        }
        let outcome = send_once(state, spec, upstream, index, &outbound, timeout).await;
        drop(in_flight);
        // The breaker and ejection count signs the backend is unavailable (no answer, or
        // 502/503/504), not a 500: that is an answer, about this request.
        let available = match &outcome {
            Ok(answer) => !is_gateway_failure(answer.status),
            Err(_) => false,
        };
        if upstream.report(index, available) {
            permit.finish(available);
        } else {
            // One bad replica among good ones: ejection's business, not the breaker's.
            drop(permit);
        }
        if matches!(&outcome, Ok(answer) if !answer.status.is_server_error()) {
            return outcome;
        }
        if matches!(outcome, Err(GatewayError::Timeout { .. })) && timeout < upstream.settings.timeout {
            metrics.deadline_exceeded.with_label_values(&[name]).inc();
            return outcome;
        }
        let (worth_retrying, reason) = match &outcome {
            Ok(answer) => (
                status_is_retryable(answer.status),
                answer.status.as_str().to_owned(),
            ),
            Err(error) => (
                matches!(
                    error,
                    GatewayError::Timeout { .. }
                        | GatewayError::Unavailable { .. }
                        | GatewayError::BadGateway { .. }
                ),
                error.outcome().to_owned(),
            ),
        };
        if !worth_retrying || attempt >= max_attempts {
            return outcome;
        }
        let delay = backoff(attempt, edge.backoff_base, edge.backoff_max);
        if Instant::now() + delay >= deadline {
            return outcome;
        }
        if !upstream.budget.try_withdraw() {
            metrics.retry_budget_exhausted.with_label_values(&[name]).inc();
            return outcome;
        }
        metrics
            .retries
            .with_label_values(&[name, spec.path, &reason])
            .inc();
        tracing::info!(upstream = name, route = spec.path, attempt, reason = %reason, delay_ms = delay.as_millis() as u64, "retrying");
        last = Some(outcome);
        avoid = Some(index);
        tokio::time::sleep(delay).await;
    }
    last.unwrap_or(Err(GatewayError::Unavailable { upstream: name }))
}

/// The answers that say the backend could not serve at all (Envoy's "gateway failures").
fn is_gateway_failure(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// One attempt at replica `index`, recorded in the upstream metrics.
async fn send_once(
    state: &GatewayState,
    spec: &RouteSpec,
    upstream: &Upstream,
    index: usize,
    outbound: &Outbound<'_>,
    timeout: Duration,
) -> Result<Answer, GatewayError> {
    let name = upstream.name();
    let started = Instant::now();
    let attempt = async {
        let replica = upstream
            .replicas
            .get(index)
            .ok_or(GatewayError::Unavailable { upstream: name })?;
        let (path, query) = outbound.path_and_query;
        let uri = replica
            .uri(path, query)
            .map_err(|_| GatewayError::BadGateway { upstream: name })?;
        let mut request = Request::new(Body::from(outbound.body.clone()));
        *request.method_mut() = outbound.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = outbound.headers.clone();
        let response = state
            .platform
            .client()
            .forward(name, spec.path, request)
            .await
            .map_err(|error| {
                if error.is_connect() {
                    GatewayError::Unavailable { upstream: name }
                } else {
                    GatewayError::BadGateway { upstream: name }
                }
            })?;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|_| GatewayError::BadGateway { upstream: name })?;
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    // One timeout for the whole attempt: connecting, the answer and its body.
    let outcome: Result<Answer, GatewayError> = tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(GatewayError::Timeout { upstream: name }));
    let status = match &outcome {
        Ok(answer) => answer.status.as_str().to_owned(),
        Err(error) => {
            tracing::warn!(
                upstream = name,
                route = spec.path,
                outcome = error.outcome(),
                "upstream call failed"
            );
            error.outcome().to_owned()
        }
    };
    state
        .metrics
        .upstream_requests
        .with_label_values(&[name, spec.path, outbound.method.as_str(), &status])
        .inc();
    state
        .metrics
        .upstream_duration
        .with_label_values(&[name, spec.path])
        .observe(started.elapsed().as_secs_f64());
    outcome
}

#[cfg(test)]
mod tests {
    use super::fill_template;

    #[test]
    fn lookup_paths_take_the_request_segments() {
        assert_eq!(
            fill_template(
                "/api/orders/{id}",
                "/api/orders/{id}/cancel",
                "/api/orders/o%2F1/cancel"
            )
            .as_deref(),
            Some("/api/orders/o%2F1")
        );
        assert_eq!(
            fill_template("/api/orders/{id}", "/api/orders/{id}", "/api/orders/42").as_deref(),
            Some("/api/orders/42")
        );
        assert_eq!(
            fill_template("/api/orders/{id}", "/api/orders/{other}", "/api/orders/42"),
            None
        );
    }
}
