//! `Idempotency-Key` on write routes: one contract for every service that honours it.
//!
//! - A key belongs to a scope: the caller, the method, the route template and the key. The
//!   caller is the user a verified credential names ([`Caller`], put on the request by the
//!   service's auth layer) or else the user the request acts on: the `{user_id}` path parameter,
//!   or the body's top-level `user_id`. Two users sending the same key never meet; one user
//!   reusing a key on another route starts afresh. A request that names no user runs without
//!   key handling (it cannot be attributed to anyone).
//! - The first request in a scope runs; its response (if not a 5xx) is kept for 24 h.
//! - A repeat with the same fingerprint (SHA-256 over method, route, caller, the request's
//!   path and query — the route's other parameters, such as `{product_id}` — and the body's
//!   bytes) gets the kept response again, marked `idempotent-replayed: true`, without running
//!   twice.
//! - The same scope with another body is a 422; a repeat while the first is still running is a
//!   409 with `Retry-After`; a key that is not 1–255 visible ASCII characters is a 400.
//! - A 5xx is not kept: the client is meant to retry it, and the retry runs.
//! - Only the request that claimed a scope completes it: a request whose claim was evicted or
//!   expired cannot overwrite what another request claimed since.
//!
//! [`enforce`] keeps answers in memory (at most `max_keys` scopes, the oldest claim evicted
//! first, O(log n) per request) or in Redis, so every replica sees them, under
//! `idem:{service}:{<caller>}:<METHOD>:<route>:<key>` (the caller in braces is Redis Cluster's
//! hash tag: one user's keys share a slot). An in-flight marker expires after a minute, so a
//! crash mid-request cannot block a key for a day. A service with a durable store of its own
//! (orders) uses [`identify`], the same [`Keyed`] scope and fingerprint, the same problems and
//! the same [`Outcomes`] counter.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::redis::Redis;
use shopstack_base::problem::Problem;
use shopstack_telemetry::metrics::{IntCounterVec, Registry};

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// How long a completed response is replayed.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long an in-flight marker blocks the key if its request never completes.
const IN_FLIGHT_TTL: Duration = Duration::from_secs(60);
pub const MAX_KEY_LEN: usize = 255;
/// The path parameter and the body member that name the user a request acts on.
const USER_PARAM: &str = "user_id";
/// Response headers worth replaying.
const KEPT_HEADERS: [&str; 3] = ["content-type", "etag", "location"];
/// Expired entries dropped from the oldest end per claim: bounded work, and the store still
/// drains what nobody asks for again.
const EXPIRED_SWEEP_PER_CLAIM: usize = 8;

/// The verified user a request comes from; when a service's auth layer inserts it as a request
/// extension, it is the caller of every keyed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// A keyed write, identified: its scope and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    pub key: String,
    pub caller: String,
    pub method: Method,
    /// The route template (`/v1/cart/{user_id}/items`), not the path.
    pub route: String,
    /// SHA-256 (hex) over method, route, caller, path and query, and the body's bytes.
    pub fingerprint: String,
}

impl Keyed {
    /// `target` is the request's path and query: one key on `/items/a` and then `/items/b` is
    /// the same scope used for another request (422), never a replay of the other item's answer.
    pub fn new(
        key: String,
        caller: String,
        method: Method,
        route: String,
        target: &str,
        body: &[u8],
    ) -> Self {
        let fingerprint = fingerprint(&[
            method.as_str().as_bytes(),
            route.as_bytes(),
            caller.as_bytes(),
            target.as_bytes(),
            body,
        ]);
        Self {
            key,
            caller,
            method,
            route,
            fingerprint,
        }
    }

    /// `{<caller>}:<METHOD>:<route>:<key>`. The caller is percent-encoded outside
    /// `[A-Za-z0-9._@-]` and the route templates hold no `:`, so the key, last, cannot make two
    /// scopes collide.
    pub fn scope(&self) -> String {
        let mut scope = String::with_capacity(self.caller.len() + self.route.len() + self.key.len() + 16);
        scope.push('{');
        for byte in self.caller.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'@' | b'-') {
                scope.push(char::from(byte));
            } else {
                let _ = write!(scope, "%{byte:02X}");
            }
        }
        let _ = write!(scope, "}}:{}:{}:{}", self.method, self.route, self.key);
        scope
    }
}

/// SHA-256 over the parts, each preceded by its length, so no two sequences of parts hash
/// alike by shifting bytes from one part to the next.
fn fingerprint(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// What a keyed request is answered when it cannot run or replay.
pub mod problems {
    use super::*;

    /// 400: the header is not 1–255 visible ASCII characters.
    pub fn malformed_key() -> Problem {
        Problem::bad_request(format!(
            "Idempotency-Key must be 1-{MAX_KEY_LEN} visible ASCII characters"
        ))
    }

    /// 422: the caller used this key on this route with another body.
    pub fn mismatch() -> Problem {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "This Idempotency-Key was used for a different request; use a new key.",
        )
    }

    /// 409: the first request with this key is still running.
    pub fn in_flight() -> Problem {
        Problem::new(
            StatusCode::CONFLICT,
            "in-progress",
            "A request with this Idempotency-Key is still being processed; retry shortly.",
        )
        .retry_after(1)
    }
}

/// `idempotency_requests_total{outcome}`: keyed requests by outcome, one series for every
/// service that honours keys.
#[derive(Clone)]
pub struct Outcomes(IntCounterVec<1>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Executed,
    Replayed,
    InFlight,
    Mismatch,
    Unavailable,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Replayed => "replayed",
            Outcome::InFlight => "in_flight",
            Outcome::Mismatch => "mismatch",
            Outcome::Unavailable => "unavailable",
        }
    }
}

impl Outcomes {
    pub fn register(registry: &Registry) -> shopstack_telemetry::metrics::Result<Self> {
        registry
            .counter_vec(
                "idempotency_requests_total",
                "Requests carrying an Idempotency-Key, by outcome (executed, replayed, in_flight, mismatch, unavailable).",
                ["outcome"],
            )
            .map(Self)
    }

    pub fn record(&self, outcome: Outcome) {
        self.0.with_label_values(&[outcome.label()]).inc();
    }
}

/// Read the `Idempotency-Key` of a write and identify its scope. `Ok(None)`: no key, a safe
/// method, or no user named (the request runs without key handling). `Err`: the answer (400
/// for a malformed key, 413 for a body over `max_body_bytes`).
pub async fn prepare(request: Request, max_body_bytes: usize) -> Result<(Request, Option<Keyed>), Response> {
    let safe = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let Some(key) = request.headers().get(&IDEMPOTENCY_KEY).filter(|_| !safe) else {
        return Ok((request, None));
    };
    let key = match key.to_str() {
        Ok(key)
            if !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            key.to_owned()
        }
        _ => return Err(problems::malformed_key().into_response()),
    };
    let (mut parts, body) = request.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("The request body is larger than {max_body_bytes} bytes."),
            )
            .into_response());
        }
    };
    let route = parts.extensions.get::<MatchedPath>().map_or_else(
        || parts.uri.path().to_owned(),
        |matched| matched.as_str().to_owned(),
    );
    let caller = caller_of(&mut parts, &body).await;
    let target = parts.uri.path_and_query().map_or("", |target| target.as_str());
    let keyed = caller.map(|caller| Keyed::new(key, caller, parts.method.clone(), route, target, &body));
    Ok((Request::from_parts(parts, Body::from(body)), keyed))
}

/// The verified user, else the `{user_id}` path parameter, else the body's `user_id` string.
async fn caller_of(parts: &mut Parts, body: &[u8]) -> Option<String> {
    if let Some(Caller(user)) = parts.extensions.get::<Caller>() {
        return Some(user.clone());
    }
    if let Ok(params) = RawPathParams::from_request_parts(parts, &()).await
        && let Some((_, user)) = params.iter().find(|(name, _)| *name == USER_PARAM)
    {
        return Some(user.to_owned());
    }
    #[derive(Deserialize)]
    struct Named {
        user_id: String,
    }
    // A duplicated or non-string `user_id` names no one; the handler refuses such a body.
    serde_json::from_slice::<Named>(body)
        .ok()
        .map(|named| named.user_id)
        .filter(|user| !user.is_empty())
}

/// Middleware for a service that keeps keys in a store of its own: a malformed key is a 400,
/// and a keyed write reaches the handler with its [`Keyed`] as a request extension.
pub async fn identify(State(max_body_bytes): State<usize>, request: Request, next: Next) -> Response {
    match prepare(request, max_body_bytes).await {
        Err(answer) => answer,
        Ok((mut request, keyed)) => {
            if let Some(keyed) = keyed {
                request.extensions_mut().insert(keyed);
            }
            next.run(request).await
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Entry {
    InFlight {
        fingerprint: String,
        /// The claim's random token: only its holder completes or releases the scope.
        owner: String,
    },
    Done {
        fingerprint: String,
        response: KeptResponse,
    },
}

impl Entry {
    fn fingerprint(&self) -> &str {
        match self {
            Entry::InFlight { fingerprint, .. } | Entry::Done { fingerprint, .. } => fingerprint,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KeptResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// A claim held: the scope's storage key and the marker this request put there.
#[derive(Debug, Clone)]
struct Ticket {
    storage_key: String,
    owner: String,
    marker: String,
}

#[derive(Debug)]
enum Claim {
    /// This request owns the scope now.
    Claimed(Ticket),
    Existing(Entry),
}

/// The in-memory store: a map for lookups and the claims in order for eviction.
struct Memory {
    max_keys: usize,
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    entries: HashMap<String, Slot>,
    /// Claim sequence number → storage key, oldest first.
    order: BTreeMap<u64, String>,
    next: u64,
}

struct Slot {
    entry: Entry,
    expires: Instant,
    seq: u64,
}

impl MemoryState {
    fn remove(&mut self, storage_key: &str) {
        if let Some(slot) = self.entries.remove(storage_key) {
            self.order.remove(&slot.seq);
        }
    }
}

impl Memory {
    fn claim(&self, storage_key: &str, marker: Entry, now: Instant) -> Option<Entry> {
        let mut state = lock(&self.state);
        for _ in 0..EXPIRED_SWEEP_PER_CLAIM {
            let Some(oldest) = state.order.first_key_value().map(|(_, key)| key.clone()) else {
                break;
            };
            if state.entries.get(&oldest).is_some_and(|slot| slot.expires > now) {
                break;
            }
            state.remove(&oldest);
        }
        match state.entries.get(storage_key) {
            Some(slot) if slot.expires > now => return Some(slot.entry.clone()),
            Some(_) => state.remove(storage_key),
            None => {}
        }
        let seq = state.next;
        state.next += 1;
        state.order.insert(seq, storage_key.to_owned());
        state.entries.insert(
            storage_key.to_owned(),
            Slot {
                entry: marker,
                expires: now + IN_FLIGHT_TTL,
                seq,
            },
        );
        while state.entries.len() > self.max_keys {
            let Some((_, oldest)) = state.order.pop_first() else {
                break;
            };
            state.entries.remove(&oldest);
        }
        None
    }

    /// Complete (or, with `None`, release) the claim `owner` holds; anything else is left alone.
    fn complete(&self, storage_key: &str, owner: &str, entry: Option<Entry>, now: Instant) -> bool {
        let mut state = lock(&self.state);
        let owned = matches!(
            state.entries.get(storage_key),
            Some(Slot { entry: Entry::InFlight { owner: holder, .. }, .. }) if holder == owner
        );
        if !owned {
            return false;
        }
        match entry {
            Some(entry) => {
                if let Some(slot) = state.entries.get_mut(storage_key) {
                    slot.entry = entry;
                    slot.expires = now + KEY_TTL;
                }
            }
            None => state.remove(storage_key),
        }
        true
    }

    #[cfg(test)]
    fn keys_oldest_first(&self) -> Vec<String> {
        lock(&self.state).order.values().cloned().collect()
    }
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<Memory>),
    Redis(Redis),
}

/// Claim the scope unless it is taken: atomically, so a marker that expires between the two
/// steps cannot be mistaken for a claim. Nil: claimed; otherwise the entry found.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return false
end
return redis.call('GET', KEYS[1])
";

/// Replace (ARGV[2] non-empty, for ARGV[3] seconds) or delete the scope's entry only while it
/// is still the caller's own in-flight marker (ARGV[1]). 1 when done.
const COMPLETE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return 1
";

/// The key store and its metrics; the state of [`enforce`].
#[derive(Clone)]
pub struct Idempotency {
    backend: Backend,
    namespace: String,
    outcomes: Outcomes,
    max_body_bytes: usize,
    claim_script: Arc<redis::Script>,
    complete_script: Arc<redis::Script>,
}

impl Idempotency {
    /// Keys in Redis when `redis` is given, else in memory, at most `max_keys` of them.
    pub fn new(
        namespace: &str,
        redis: Option<Redis>,
        registry: &Registry,
        max_body_bytes: usize,
        max_keys: usize,
    ) -> shopstack_telemetry::metrics::Result<Self> {
        Ok(Self {
            backend: match redis {
                Some(redis) => Backend::Redis(redis),
                None => Backend::Memory(Arc::new(Memory {
                    max_keys: max_keys.max(1),
                    state: Mutex::default(),
                })),
            },
            namespace: namespace.to_owned(),
            outcomes: Outcomes::register(registry)?,
            max_body_bytes,
            claim_script: Arc::new(redis::Script::new(CLAIM)),
            complete_script: Arc::new(redis::Script::new(COMPLETE)),
        })
    }

    /// Whether every replica sees the keys (Redis) rather than this process alone (memory).
    pub fn shares_keys(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    fn storage_key(&self, keyed: &Keyed) -> String {
        format!("idem:{}:{}", self.namespace, keyed.scope())
    }

    async fn claim(&self, keyed: &Keyed) -> Result<Claim, Problem> {
        let owner = format!("{:032x}", rand::random::<u128>());
        let marker = Entry::InFlight {
            fingerprint: keyed.fingerprint.clone(),
            owner: owner.clone(),
        };
        let ticket = Ticket {
            storage_key: self.storage_key(keyed),
            owner,
            marker: serde_json::to_string(&marker).map_err(|_| Problem::internal())?,
        };
        match &self.backend {
            Backend::Memory(memory) => Ok(match memory.claim(&ticket.storage_key, marker, Instant::now()) {
                None => Claim::Claimed(ticket),
                Some(entry) => Claim::Existing(entry),
            }),
            Backend::Redis(redis) => {
                let script = self.claim_script.clone();
                let (storage_key, value) = (ticket.storage_key.clone(), ticket.marker.clone());
                let existing: Option<String> = redis
                    .run("EVALSHA", "idempotency.claim", |mut connection| async move {
                        script
                            .key(storage_key)
                            .arg(value)
                            .arg(IN_FLIGHT_TTL.as_secs())
                            .invoke_async(&mut connection)
                            .await
                    })
                    .await
                    .map_err(|_| unavailable())?;
                match existing {
                    None => Ok(Claim::Claimed(ticket)),
                    Some(text) => serde_json::from_str(&text)
                        .map(Claim::Existing)
                        .map_err(|_| Problem::internal()),
                }
            }
        }
    }

    /// Keep `entry` as the scope's answer, or with `None` free the scope, if `ticket` still
    /// holds it.
    async fn complete(&self, ticket: &Ticket, entry: Option<Entry>) {
        match &self.backend {
            Backend::Memory(memory) => {
                memory.complete(&ticket.storage_key, &ticket.owner, entry, Instant::now());
            }
            Backend::Redis(redis) => {
                let value = match &entry {
                    Some(entry) => serde_json::to_string(entry).unwrap_or_default(),
                    None => String::new(),
                };
                let script = self.complete_script.clone();
                let (storage_key, marker) = (ticket.storage_key.clone(), ticket.marker.clone());
                let result = redis
                    .run("EVALSHA", "idempotency.complete", |mut connection| async move {
                        script
                            .key(storage_key)
                            .arg(marker)
                            .arg(value)
                            .arg(KEY_TTL.as_secs())
                            .invoke_async::<i64>(&mut connection)
                            .await
                    })
                    .await;
                if let Err(error) = result {
                    // The in-flight marker expires by itself; a retry within that minute gets 409.
                    tracing::warn!(%error, "could not record the idempotent response");
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn unavailable() -> Problem {
    Problem::unavailable(
        "The idempotency key store (Redis) is unavailable; retry shortly.",
        1,
    )
}

/// Releases the in-flight marker if the request is dropped before it completes.
struct InFlightGuard {
    store: Idempotency,
    ticket: Option<Ticket>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let store = self.store.clone();
            tokio::spawn(async move { store.complete(&ticket, None).await });
        }
    }
}

/// The middleware; put it on write routes only.
pub async fn enforce(State(store): State<Idempotency>, request: Request, next: Next) -> Response {
    let (request, keyed) = match prepare(request, store.max_body_bytes).await {
        Ok(prepared) => prepared,
        Err(answer) => return answer,
    };
    let Some(keyed) = keyed else {
        return next.run(request).await;
    };
    match store.claim(&keyed).await {
        Err(problem) => {
            store.outcomes.record(Outcome::Unavailable);
            problem.into_response()
        }
        Ok(Claim::Existing(entry)) if entry.fingerprint() != keyed.fingerprint => {
            store.outcomes.record(Outcome::Mismatch);
            problems::mismatch().into_response()
        }
        Ok(Claim::Existing(Entry::InFlight { .. })) => {
            store.outcomes.record(Outcome::InFlight);
            problems::in_flight().into_response()
        }
        Ok(Claim::Existing(Entry::Done { response, .. })) => {
            store.outcomes.record(Outcome::Replayed);
            replay(response)
        }
        Ok(Claim::Claimed(ticket)) => {
            store.outcomes.record(Outcome::Executed);
            let mut guard = InFlightGuard {
                store: store.clone(),
                ticket: Some(ticket),
            };
            let response = next.run(request).await;
            let Some(ticket) = guard.ticket.take() else {
                return response;
            };
            keep(&store, &ticket, keyed.fingerprint, response).await
        }
    }
}

async fn keep(store: &Idempotency, ticket: &Ticket, fingerprint: String, response: Response) -> Response {
    if response.status().is_server_error() {
        store.complete(ticket, None).await;
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        store.complete(ticket, None).await;
        return Problem::internal().into_response();
    };
    let kept = KeptResponse {
        status: parts.status.as_u16(),
        headers: KEPT_HEADERS
            .iter()
            .filter_map(|name| {
                let value = parts.headers.get(*name)?.to_str().ok()?;
                Some(((*name).to_owned(), value.to_owned()))
            })
            .collect(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    };
    store
        .complete(
            ticket,
            Some(Entry::Done {
                fingerprint,
                response: kept,
            }),
        )
        .await;
    Response::from_parts(parts, Body::from(bytes))
}

fn replay(kept: KeptResponse) -> Response {
    let mut response = Response::new(Body::from(kept.body));
    *response.status_mut() = StatusCode::from_u16(kept.status).unwrap_or(StatusCode::OK);
    for (name, value) in kept.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().insert(name, value);
        }
    }
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// Where a replica keeps its keys, as it tells callers in `Idempotency-Store`: `Shared` when
/// every replica sees them (Redis, PostgreSQL), `Local` when they live in this process or a file
/// of its own. The gateway retries a keyed write at another replica only when both say `shared`
/// (docs/gateway.md, Retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStore {
    Shared,
    Local,
}

impl KeyStore {
    fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            KeyStore::Shared => "shared",
            KeyStore::Local => "local",
        })
    }
}

/// Middleware: `Idempotency-Store` on the answer to every request that carries
/// `Idempotency-Key`.
pub async fn announce_key_store(State(store): State<KeyStore>, request: Request, next: Next) -> Response {
    let keyed = request.headers().contains_key("idempotency-key");
    let mut response = next.run(request).await;
    if keyed {
        response
            .headers_mut()
            .insert("idempotency-store", store.header_value());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(caller: &str, key: &str, body: &str) -> Keyed {
        Keyed::new(
            key.to_owned(),
            caller.to_owned(),
            Method::POST,
            "/v1/cart/{user_id}/items".to_owned(),
            &format!("/v1/cart/{caller}/items"),
            body.as_bytes(),
        )
    }

    fn memory(max_keys: usize) -> Memory {
        Memory {
            max_keys,
            state: Mutex::default(),
        }
    }

    fn marker(owner: &str) -> Entry {
        Entry::InFlight {
            fingerprint: "f".into(),
            owner: owner.into(),
        }
    }

    fn done(body: &str) -> Entry {
        Entry::Done {
            fingerprint: "f".into(),
            response: KeptResponse {
                status: 200,
                headers: vec![],
                body: body.into(),
            },
        }
    }

    #[test]
    fn fingerprints_are_sha256_over_separated_parts() {
        assert_eq!(fingerprint(&[b"POST", b"/a"]), fingerprint(&[b"POST", b"/a"]));
        assert_ne!(fingerprint(&[b"POST", b"/ab"]), fingerprint(&[b"POST/", b"ab"]));
        assert_eq!(fingerprint(&[b""]).len(), 64);
        // Pinned value: changing the hash would turn kept answers into false 422s.
        assert_eq!(
            fingerprint(&[b""]),
            "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"
        );
        assert_ne!(
            keyed("alice", "k", "{}").fingerprint,
            keyed("bob", "k", "{}").fingerprint
        );
    }

    #[test]
    fn scopes_separate_callers_routes_and_keys() {
        assert_eq!(
            keyed("alice", "key-1", "").scope(),
            "{alice}:POST:/v1/cart/{user_id}/items:key-1"
        );
        assert_ne!(keyed("alice", "k", "").scope(), keyed("bob", "k", "").scope());
        // A caller cannot spell its way into another caller's scope.
        assert_eq!(
            keyed("a}:POST:/x:{b", "k", "").scope(),
            "{a%7D%3APOST%3A%2Fx%3A%7Bb}:POST:/v1/cart/{user_id}/items:k"
        );
        let mut other_route = keyed("alice", "k", "");
        other_route.route = "/cart/add".into();
        assert_ne!(other_route.scope(), keyed("alice", "k", "").scope());
    }

    #[test]
    fn the_memory_store_is_bounded_and_evicts_the_oldest_claim_first() {
        let store = memory(3);
        let now = Instant::now();
        for key in ["a", "b", "c"] {
            assert_eq!(store.claim(key, marker(key), now), None);
        }
        assert!(store.complete("a", "a", Some(done("A")), now));
        assert_eq!(store.claim("d", marker("d"), now), None);
        assert_eq!(
            store.keys_oldest_first(),
            ["b", "c", "d"],
            "a, the oldest claim, went first"
        );
        assert_eq!(store.claim("e", marker("e"), now), None);
        assert_eq!(store.keys_oldest_first(), ["c", "d", "e"]);
        assert_eq!(lock(&store.state).entries.len(), 3);
        // An entry still held answers as itself; an evicted one is claimable again.
        assert_eq!(store.claim("c", marker("x"), now), Some(marker("c")));
        assert_eq!(store.claim("a", marker("a2"), now), None);
        assert_eq!(store.keys_oldest_first(), ["d", "e", "a"]);
    }

    #[test]
    fn expired_entries_are_claimable_and_swept_from_the_oldest_end() {
        let store = memory(100);
        let start = Instant::now();
        assert_eq!(store.claim("old", marker("old"), start), None);
        let later = start + IN_FLIGHT_TTL + Duration::from_secs(1);
        assert_eq!(store.claim("new", marker("new"), later), None);
        assert_eq!(store.keys_oldest_first(), ["new"], "the expired marker was swept");
        assert_eq!(store.claim("old", marker("again"), later), None);
    }

    #[test]
    fn only_the_owner_completes_or_releases_a_claim() {
        let store = memory(10);
        let now = Instant::now();
        assert_eq!(store.claim("k", marker("first"), now), None);
        assert!(!store.complete("k", "intruder", Some(done("forged")), now));
        assert!(!store.complete("k", "intruder", None, now));
        assert_eq!(store.claim("k", marker("x"), now), Some(marker("first")));
        assert!(store.complete("k", "first", Some(done("real")), now));
        assert_eq!(store.claim("k", marker("x"), now), Some(done("real")));
        // Once done, nobody (the owner included) rewrites or releases it.
        assert!(!store.complete("k", "first", None, now));
        // A claim lost to expiry cannot overwrite the claim that took its place.
        let later = now + KEY_TTL + Duration::from_secs(1);
        assert_eq!(store.claim("k", marker("second"), later), None);
        assert!(!store.complete("k", "first", Some(done("stale")), later));
        assert!(store.complete("k", "second", Some(done("fresh")), later));
        assert_eq!(store.claim("k", marker("x"), later), Some(done("fresh")));
    }

    #[test]
    fn a_claim_evicted_while_in_flight_cannot_complete_its_successor() {
        let store = memory(1);
        let now = Instant::now();
        assert_eq!(store.claim("k", marker("first"), now), None);
        assert_eq!(store.claim("other", marker("other"), now), None);
        assert_eq!(store.claim("k", marker("second"), now), None, "k was evicted");
        assert!(!store.complete("k", "first", Some(done("stale")), now));
        assert_eq!(store.claim("k", marker("x"), now), Some(marker("second")));
    }
}
