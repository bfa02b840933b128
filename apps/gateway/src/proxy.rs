//! Forwarding one request to a backend and its answer back, through the edge policies:
//!
//! 1. who is calling, and may they: a verified JWT subject ([`crate::auth`]); admin token,
//!    bearer token, owner of the path's user (401 / 404);
//! 2. rate limit per client, the subject or else the IP (429 + `Retry-After`, [`crate::ratelimit`]);
//! 3. body limit (413): by `Content-Length` at once, or while reading; the owner named in the
//!    body — once, as a string, or 400 — or of the resource looked up (404);
//! 5. load shedding: a slot among the backend's `UPSTREAM_MAX_CONCURRENCY` (fast 503);
//! 6. attempts: breaker admission (fast 503 while open), a replica picked by the balancer, an
//!    attempt timeout within the request's deadline (504), and — for requests safe to retry —
//!    up to 3 attempts with jittered exponential backoff while the retry budget allows. A keyed
//!    POST/PATCH is safe only on a route whose backend honours `Idempotency-Key`, and goes back
//!    to the same replica unless the backend says its key store is shared ([`crate::retry`]).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::Response;
use futures::StreamExt;
use shopstack_base::admin;
use shopstack_platform::observe::{ObservedRequest, RequestTrace, X_REQUEST_ID, X_TRACE_ID};
use shopstack_platform::service_auth::SERVICE_CREDENTIAL;

use crate::GatewayState;
use crate::auth::Caller;
use crate::edge::ProxiedRoute;
use crate::error::GatewayError;
use crate::exchange::{Answer, OutboundRequest};
use crate::pool::SendError;
use crate::ratelimit::ClientKey;
use crate::retry::{IDEMPOTENCY_STORE, Replay, backoff, key_store_shared, replay_of, status_is_retryable};
use crate::routes::{Access, RouteSpec};
use crate::upstream::{Placement, Upstream};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Left out of an ownership probe: it is a read, the caller's body and its key are not its own.
static PROBE_DROPS: [HeaderName; 2] = [
    header::CONTENT_TYPE,
    HeaderName::from_static(crate::retry::IDEMPOTENCY_KEY),
];

/// Headers that describe one connection, not the message: never forwarded, to a backend or back
/// to the client (RFC 9110 §7.6.1), nor any header the `Connection` header names.
/// `Proxy-Connection` is the non-standard one old clients send; RFC 9112 §9.6 asks proxies not to
/// pass it on.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually there are none: one look at the names present, instead of a removal per name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    for name in HOP_BY_HOP.iter().chain(connection_named(headers).iter()) {
        headers.remove(name);
    }
}

/// The client's address: the peer, or with `TRUST_FORWARDED_FOR` the last `X-Forwarded-For`
/// entry (the one the proxy in front of the gateway added).
pub(crate) fn client_ip(headers: &HeaderMap, peer: Option<IpAddr>, trust_forwarded_for: bool) -> IpAddr {
    if trust_forwarded_for {
        let entries: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
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
    peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The caller's end of a connection, as the proxy path uses it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ip: IpAddr,
    /// `ip` as an `X-Forwarded-For` value, written once per connection.
    pub header: HeaderValue,
}

impl Peer {
    pub fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            header: ip_header_value(ip),
        }
    }
}

/// `ip` as a header value.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The response for a backend's answer: its headers but those of the hop, its body framed
/// anew (a HEAD answer keeps the length the backend stated).
fn into_response(answer: Answer, method: &Method) -> Response {
    let mut headers = answer.headers;
    strip_hop_by_hop(&mut headers);
    if method != Method::HEAD {
        headers.remove(header::CONTENT_LENGTH);
    }
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = answer.status;
    *response.headers_mut() = headers;
    response
}

/// Everything needed to send the request once, again and again.
struct Outbound<'a> {
    method: Method,
    /// Path and query as the backend gets them, before a replica's base path.
    path_and_query: PathAndQuery,
    /// The caller's headers, sent but for those [`Outbound::forwards`] leaves out.
    received: &'a HeaderMap,
    /// Names the caller's `Connection` header lists: hop-by-hop as well (usually none).
    connection_named: Vec<HeaderName>,
    /// Also left out of this request.
    also_dropped: &'static [HeaderName],
    /// The gateway's own headers: `x-request-id`, `x-forwarded-for`, `x-service-credential`.
    added: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    /// Whether, and where, it may be sent again (see [`replay_of`]).
    replay: Replay,
}

impl Outbound<'_> {
    /// Whether the caller's header `name` goes to the backend: not one that describes the
    /// connection (RFC 9110 §7.6.1), nor one the gateway writes itself (`host`, the length of
    /// the body it sends, `traceparent` naming its own span, the headers it adds); `expect`
    /// neither, as the body is read in full before it is sent; nor a client's `x-user-id` or
    /// `x-service-credential` (an identity reaches a backend only in the credential the gateway
    /// signs). (`tracestate` passes unchanged.)
    fn forwards(&self, name: &HeaderName) -> bool {
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
                    | "x-service-credential"
            );
        !dropped && !self.connection_named.contains(name) && !self.also_dropped.contains(name)
    }
}

/// The header names the `Connection` headers list (they describe the connection, not the
/// message, and are not forwarded).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect()
}

/// Forward one request on `route` (`parts` and `body` as received from `peer`; `observed` its
/// ids) through the edge policies. `path_owner`: the value of the route's owner path
/// parameter, for [`Access::OwnerInPath`] routes.
pub async fn forward(
    state: &GatewayState,
    route: &ProxiedRoute,
    parts: Parts,
    body: Body,
    observed: &ObservedRequest,
    peer: Option<&Peer>,
    path_owner: Option<&str>,
) -> Result<Response, GatewayError> {
    let started = observed.started();
    let spec = &route.spec;
    let limit = state.platform.settings().max_body_bytes;

    // Admin and staff routes carry the admin token, not a JWT.
    let caller = match &state.auth {
        Some(auth) if !matches!(spec.access, Access::Admin | Access::Staff) => auth.identify(&parts.headers),
        _ => Caller::Anonymous,
    };

    // Refusals come first (as in Kong's and Envoy's filter order): they cost a signature check
    // and never reach a backend; what is let through is then limited per user, or per IP.
    let user = authorize(state, spec, caller, &parts.headers, path_owner)?;

    if let Some(limiter) = &state.rate_limiter {
        let client = match &user {
            Some(user) => ClientKey::User(user.clone()),
            None => ClientKey::Ip(client_ip(
                &parts.headers,
                peer.map(|peer| peer.ip),
                state.edge.trust_forwarded_for,
            )),
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

    if let Access::OwnerInBody(member) = spec.access {
        // Checked with edge auth off too: a body the gateway and the backend could read as naming
        // different users (a member given twice: JSON parsers keep the first or the last) or
        // none it can compare (a number) never reaches the backend.
        let named = body_owner(&body, member).map_err(GatewayError::InvalidBody)?;
        // A body naming no user is the backend's to refuse (400); one naming another user is not yours.
        if let Some(user) = user.as_deref()
            && named.is_some_and(|named| named != user)
        {
            state
                .metrics
                .auth_failures
                .with_label_values(&["not_owner"])
                .inc();
            return Err(GatewayError::NotYours);
        }
    }

    // What the gateway adds; the caller's own headers are sent as they are, but for those
    // `forwards` leaves out (they are not written, rather than removed from a map first).
    let mut added = Vec::with_capacity(3);
    added.push((X_REQUEST_ID, observed.request_id().clone()));
    if let Some(peer) = peer {
        let value = match parts.headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(previous) => HeaderValue::from_str(&format!("{previous}, {}", peer.ip)).ok(),
            None => Some(peer.header.clone()),
        };
        if let Some(value) = value {
            added.push((X_FORWARDED_FOR, value));
        }
    }
    // The verified user reaches the backend only inside the signed credential.
    if let Some(credential) = state
        .platform
        .service_auth()
        .and_then(|auth| auth.credential(user.as_deref()))
    {
        added.push((SERVICE_CREDENTIAL, credential));
    }
    let path_and_query = match spec.backend_path {
        Some(path) => PathAndQuery::from_static(path),
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let outbound = Outbound {
        replay: replay_of(&parts.method, &parts.headers, spec.honours_idempotency_key),
        method: parts.method.clone(),
        path_and_query,
        received: &parts.headers,
        connection_named: connection_named(&parts.headers),
        also_dropped: &[],
        added,
        body,
    };
    let upstream = state.upstreams.get(spec.backend).clone();
    let deadline = started + state.edge.deadline;
    let trace = observed.trace();
    if let (Access::OwnerOfResource { lookup, owner }, Some(user)) = (spec.access, user.as_deref()) {
        let Some(path) = fill_template(lookup, spec.path, parts.uri.path()) else {
            return Err(GatewayError::NotYours);
        };
        let Ok(path_and_query) = PathAndQuery::try_from(path) else {
            return Err(GatewayError::NotYours);
        };
        let probe = Outbound {
            method: Method::GET,
            path_and_query,
            received: outbound.received,
            connection_named: outbound.connection_named.clone(),
            also_dropped: &PROBE_DROPS,
            added: outbound.added.clone(),
            body: Bytes::new(),
            replay: Replay::Anywhere,
        };
        let answer = call(state, route, &upstream, &probe, trace, deadline, None).await?;
        if !answer.status.is_success() {
            // Unknown (404) or unreadable right now (5xx): the caller gets that answer.
            return Ok(into_response(answer, &probe.method));
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
    if spec.every_replica {
        return every_replica(state, route, &upstream, &outbound, trace, deadline)
            .await
            .map(|answer| into_response(answer, &outbound.method));
    }
    call(state, route, &upstream, &outbound, trace, deadline, None)
        .await
        .map(|answer| into_response(answer, &outbound.method))
}

/// Send `outbound` to every replica of `upstream` in turn: the first replica's answer when all
/// answered alike; otherwise a 502 naming the replicas that did not take it (the others did: the
/// switch is idempotent, so sending it again is the remedy).
async fn every_replica(
    state: &GatewayState,
    route: &ProxiedRoute,
    upstream: &Arc<Upstream>,
    outbound: &Outbound<'_>,
    trace: &RequestTrace,
    deadline: Instant,
) -> Result<Answer, GatewayError> {
    let mut first: Option<Answer> = None;
    let mut failed = Vec::new();
    for (index, replica) in upstream.replicas.iter().enumerate() {
        match call(state, route, upstream, outbound, trace, deadline, Some(index)).await {
            Ok(answer) if first.as_ref().is_none_or(|first| first.status == answer.status) => {
                first.get_or_insert(answer);
            }
            Ok(answer) => failed.push(format!("{} ({})", replica.label(), answer.status.as_u16())),
            Err(error) => failed.push(format!("{} ({})", replica.label(), error.outcome())),
        }
    }
    match first {
        Some(answer) if failed.is_empty() => Ok(answer),
        _ => Err(GatewayError::NotOnEveryReplica {
            upstream: upstream.name(),
            failed,
        }),
    }
}

/// The user a JSON body names in its top-level `member`: `Ok(None)` when the body is not a JSON
/// object or does not name one (the backend refuses that itself); an error when the member is
/// given more than once or is not a string.
fn body_owner(body: &[u8], member: &'static str) -> Result<Option<String>, &'static str> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};

    struct Owner {
        member: &'static str,
    }

    enum Found {
        NotAnObject,
        Members { named: Vec<serde_json::Value> },
    }

    impl<'de> Visitor<'de> for Owner {
        type Value = Found;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
            let mut named = Vec::new();
            // Keys are compared unescaped (`"user\u005fid"` is `user_id` to every parser).
            while let Some(key) = map.next_key::<String>()? {
                if key == self.member {
                    named.push(map.next_value::<serde_json::Value>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(Found::Members { named })
        }

        // Anything but an object: not this check's to refuse.
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Found, E> {
            Ok(Found::NotAnObject)
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Found, E> {
            Ok(Found::NotAnObject)
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Found, E> {
            Ok(Found::NotAnObject)
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Found, E> {
            Ok(Found::NotAnObject)
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Found, E> {
            Ok(Found::NotAnObject)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Found, E> {
            Ok(Found::NotAnObject)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Found::NotAnObject)
        }
    }

    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let found = match deserializer.deserialize_any(Owner { member }) {
        Ok(found) if deserializer.end().is_ok() => found,
        // Not JSON: the backend answers that.
        _ => return Ok(None),
    };
    match found {
        Found::NotAnObject => Ok(None),
        Found::Members { mut named } => match named.len() {
            0 => Ok(None),
            1 => match named.pop() {
                Some(serde_json::Value::String(user)) => Ok(Some(user)),
                _ => Err("The body's `user_id` must be a string."),
            },
            _ => Err("The body names `user_id` more than once."),
        },
    }
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
    if axum::body::HttpBody::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
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
fn authorize(
    state: &GatewayState,
    spec: &RouteSpec,
    caller: Caller,
    headers: &HeaderMap,
    path_owner: Option<&str>,
) -> Result<Option<String>, GatewayError> {
    let fail = |reason: &str| state.metrics.auth_failures.with_label_values(&[reason]).inc();
    if spec.access == Access::Admin || (spec.access == Access::Staff && state.auth.is_some()) {
        admin::authorize(state.platform.settings().admin_token.as_deref(), headers).map_err(|problem| {
            fail("admin_token");
            GatewayError::AdminOnly(Box::new(problem))
        })?;
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
    if let Access::OwnerInPath(_) = spec.access
        && path_owner != Some(user.as_str())
    {
        fail("not_owner");
        return Err(GatewayError::NotYours);
    }
    Ok(Some(user))
}

/// Steps 5 and 6: the attempts at the backend.
async fn call(
    state: &GatewayState,
    route: &ProxiedRoute,
    upstream: &Arc<Upstream>,
    outbound: &Outbound<'_>,
    trace: &RequestTrace,
    deadline: Instant,
    pinned: Option<usize>,
) -> Result<Answer, GatewayError> {
    let name = upstream.name();
    let metrics = &state.metrics;
    let Some(_slot) = upstream.try_slot() else {
        metrics.shed.with_label_values(&[name]).inc();
        return Err(GatewayError::Overloaded { upstream: name });
    };
    let edge = &state.edge;
    let max_attempts = if outbound.replay.allowed() {
        edge.max_attempts
    } else {
        1
    };
    let mut last: Option<Result<Answer, GatewayError>> = None;
    let mut placement = pinned.map_or(Placement::Any, Placement::Exactly);
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
        let started = Instant::now();
        let remaining = deadline.saturating_duration_since(started);
        if remaining.is_zero() {
            metrics.deadline_exceeded.with_label_values(&[name]).inc();
            return Err(GatewayError::Timeout { upstream: name });
        }
        let timeout = upstream.settings.timeout.min(remaining);
        let (index, in_flight) = upstream.pick(placement);
        if attempt == 1 {
            upstream.budget.deposit();
        }
        let outcome = send_once(route, upstream, index, outbound, trace, started, timeout).await;
        // One clock read for the attempt's end: its duration, the breaker's window and whether
        // a retry would still fit before the deadline.
        let ended = Instant::now();
        route
            .upstream_duration
            .observe(ended.saturating_duration_since(started).as_secs_f64());
        drop(in_flight);
        // The breaker and ejection count signs the backend is unavailable (no answer, or
        // 502/503/504), not a 500: that is an answer, about this request.
        let available = match &outcome {
            Ok(answer) => !is_gateway_failure(answer.status),
            Err(_) => false,
        };
        if upstream.report(index, available) {
            permit.finish(available, ended);
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
        if ended + delay >= deadline {
            return outcome;
        }
        if !upstream.budget.try_withdraw() {
            metrics.retry_budget_exhausted.with_label_values(&[name]).inc();
            return outcome;
        }
        let route_path = route.spec.path;
        metrics
            .retries
            .with_label_values(&[name, route_path, &reason])
            .inc();
        tracing::info!(
            upstream = name,
            route = route_path,
            attempt,
            reason = %reason,
            delay_ms = delay.as_millis() as u64,
            trace_id = %trace.trace_id(),
            "retrying"
        );
        last = Some(outcome);
        placement = match (pinned, outbound.replay) {
            (Some(_), _) => Placement::Exactly(index),
            (None, Replay::KeyedWrite) => Placement::KeyedRetry(index),
            (None, Replay::Anywhere | Replay::Never) => Placement::Avoid(index),
        };
        tokio::time::sleep(delay).await;
    }
    last.unwrap_or(Err(GatewayError::Unavailable { upstream: name }))
}

/// The answers that say the backend could not serve at all (Envoy's "gateway failures").
fn is_gateway_failure(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// One attempt at replica `index` (from `started`), counted in the upstream metrics by its
/// answer (the caller observes its duration). The request's own span is the backend's parent (as
/// a proxy, the gateway makes no span of its own per attempt: the backend's span, or the failure
/// logged with the trace id, tells the attempt).
async fn send_once(
    route: &ProxiedRoute,
    upstream: &Upstream,
    index: usize,
    outbound: &Outbound<'_>,
    trace: &RequestTrace,
    started: Instant,
    timeout: Duration,
) -> Result<Answer, GatewayError> {
    let name = upstream.name();
    let Some(replica) = upstream.replicas.get(index) else {
        return Err(GatewayError::Unavailable { upstream: name });
    };
    let traceparent = trace.traceparent_text();
    let target = replica.target(&outbound.path_and_query);
    let request = OutboundRequest {
        method: &outbound.method,
        target: &target,
        host: replica.host_header(),
        traceparent: &traceparent,
        added: &outbound.added,
        headers: outbound.received,
        forwards: &|name| outbound.forwards(name),
        body: &outbound.body,
        // The backend's copies say the same (it was sent this request id and trace), and
        // `RouteObserver::finish` writes the gateway's own on every answer.
        replaced_in_answer: &[X_REQUEST_ID, X_TRACE_ID],
    };
    // One timeout for the whole attempt: connecting, the answer and its body. Its deadline
    // from `started`, the time already read, rather than from another read of the clock.
    let outcome = match tokio::time::timeout_at(
        (started + timeout).into(),
        replica.pool.send(&request, outbound.replay.allowed(), started),
    )
    .await
    {
        Ok(Ok(mut answer)) => {
            // Said to the gateway, not to the client (answers to keyed writes carry it).
            if let Some(store) = answer.headers.remove(IDEMPOTENCY_STORE) {
                replica.note_key_store(key_store_shared(&store));
            }
            Ok(answer)
        }
        Ok(Err(SendError::Connect(_))) => Err(GatewayError::Unavailable { upstream: name }),
        Ok(Err(SendError::Exchange(_))) => Err(GatewayError::BadGateway { upstream: name }),
        Err(_) => Err(GatewayError::Timeout { upstream: name }),
    };
    match &outcome {
        Ok(answer) => route.upstream_requests.inc(answer.status.as_str()),
        Err(error) => {
            tracing::warn!(
                upstream = name,
                route = route.spec.path,
                outcome = error.outcome(),
                trace_id = %trace.trace_id(),
                "upstream call failed"
            );
            route.upstream_requests.inc(error.outcome());
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::{Peer, fill_template};

    #[test]
    fn the_callers_own_headers_go_through_but_hop_by_hop_and_the_gateways_do_not() {
        use axum::http::uri::PathAndQuery;
        use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};

        let mut received = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("proxy-connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("host", "gateway"),
            ("content-length", "3"),
            ("expect", "100-continue"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-request-id", "client's"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-user-id", "forged"),
            ("x-service-credential", "forged"),
            ("tracestate", "vendor=1"),
            ("accept", "application/json"),
            ("content-type", "application/json"),
            ("idempotency-key", "k-1"),
        ] {
            received.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let outbound = super::Outbound {
            method: Method::POST,
            path_and_query: PathAndQuery::from_static("/"),
            received: &received,
            connection_named: super::connection_named(&received),
            also_dropped: &[],
            added: Vec::new(),
            body: axum::body::Bytes::new(),
            replay: crate::retry::Replay::Anywhere,
        };
        let sent: Vec<&str> = received
            .keys()
            .filter(|name| outbound.forwards(name))
            .map(HeaderName::as_str)
            .collect();
        assert_eq!(sent, ["tracestate", "accept", "content-type", "idempotency-key"]);
        let probe = super::Outbound {
            also_dropped: &super::PROBE_DROPS,
            connection_named: Vec::new(),
            added: Vec::new(),
            ..outbound
        };
        assert!(
            !probe.forwards(&axum::http::header::CONTENT_TYPE)
                && !probe.forwards(&HeaderName::from_static("idempotency-key"))
        );
        assert!(probe.forwards(&axum::http::header::ACCEPT));
    }

    #[test]
    fn the_body_must_name_its_owner_once_and_as_a_string() {
        use super::body_owner;
        let owner = |body: &str| body_owner(body.as_bytes(), "user_id");
        assert_eq!(
            owner(r#"{"user_id": "u1", "n": [1, {"user_id": 2}]}"#),
            Ok(Some("u1".into()))
        );
        assert_eq!(owner(r#"{"user\u005fid": "u1"}"#), Ok(Some("u1".into())));
        for unnamed in [
            r#"{"other": 1}"#,
            "not json",
            r#"["u1"]"#,
            "7",
            "null",
            r#"{"user_id": "u1"} trailing"#,
        ] {
            assert_eq!(owner(unnamed), Ok(None), "{unnamed}");
        }
        for twice in [
            r#"{"user_id": "u1", "user_id": "u1"}"#,
            r#"{"user_id": "u1", "user\u005fid": "u2"}"#,
        ] {
            assert!(
                owner(twice).is_err_and(|why| why.contains("more than once")),
                "{twice}"
            );
        }
        for not_text in [
            r#"{"user_id": 1}"#,
            r#"{"user_id": null}"#,
            r#"{"user_id": ["u1"]}"#,
            r#"{"user_id": {}}"#,
        ] {
            assert!(
                owner(not_text).is_err_and(|why| why.contains("string")),
                "{not_text}"
            );
        }
    }

    #[test]
    fn answers_lose_hop_by_hop_headers_and_those_connection_names() {
        use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "x-hop, close"),
            ("x-hop", "1"),
            ("proxy-connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
            ("content-length", "2"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        let answer = crate::exchange::Answer {
            status: StatusCode::OK,
            headers,
            body: axum::body::Bytes::from_static(b"ok"),
        };
        let response = super::into_response(answer, &Method::GET);
        let names: Vec<&str> = response.headers().keys().map(|name| name.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn a_peer_is_forwarded_as_its_address_text() {
        for ip in ["127.0.0.1", "10.20.3.100", "::1", "2001:db8::7"] {
            let parsed: std::net::IpAddr = ip.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(Peer::new(parsed).header, ip);
        }
    }

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
