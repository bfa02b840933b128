//! `Idempotency-Key` for write routes.
//!
//! - The first request with a key runs; its response (if not a 5xx) is kept for 24 h.
//! - A repeat with the same key and the same request (method, path, query, body) gets the kept
//!   response again, marked `idempotent-replayed: true`, without running twice.
//! - The same key with a different request is a 422; a repeat while the first is still running
//!   is a 409 with `Retry-After`.
//! - A 5xx is not kept: the client is meant to retry it, and the retry runs.
//!
//! Keys live in memory, or in Redis (`idem:{service}:{key}`) when the service uses Redis, so
//! every replica sees them. An in-flight marker expires after a minute, so a crash mid-request
//! cannot block a key for a day.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::redis::Redis;
use shopstack_base::problem::Problem;
use shopstack_telemetry::metrics::register;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// How long a completed response is replayed.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long an in-flight marker blocks the key if its request never completes.
const IN_FLIGHT_TTL: Duration = Duration::from_secs(60);
const MAX_KEY_LEN: usize = 255;
/// Response headers worth replaying.
const KEPT_HEADERS: [&str; 3] = ["content-type", "etag", "location"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Entry {
    InFlight {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        response: KeptResponse,
    },
}

impl Entry {
    fn fingerprint(&self) -> &str {
        match self {
            Entry::InFlight { fingerprint } | Entry::Done { fingerprint, .. } => fingerprint,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KeptResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

enum Claim {
    /// This request owns the key now.
    Claimed,
    Existing(Entry),
}

#[derive(Clone)]
enum Backend {
    Memory(Arc<Mutex<HashMap<String, (Entry, Instant)>>>),
    Redis(Redis),
}

/// The key store and its metrics; the state of [`enforce`].
#[derive(Clone)]
pub struct Idempotency {
    backend: Backend,
    namespace: String,
    outcomes: IntCounterVec,
    max_body_bytes: usize,
}

impl Idempotency {
    pub fn new(
        namespace: &str,
        redis: Option<Redis>,
        registry: &Registry,
        max_body_bytes: usize,
    ) -> prometheus::Result<Self> {
        let outcomes = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "idempotency_requests_total",
                    "Requests carrying an Idempotency-Key, by outcome (executed, replayed, in_flight, mismatch, unavailable).",
                ),
                &["outcome"],
            )?,
        )?;
        Ok(Self {
            backend: match redis {
                Some(redis) => Backend::Redis(redis),
                None => Backend::Memory(Arc::default()),
            },
            namespace: namespace.to_owned(),
            outcomes,
            max_body_bytes,
        })
    }

    fn storage_key(&self, key: &str) -> String {
        format!("idem:{}:{key}", self.namespace)
    }

    async fn claim(&self, key: &str, fingerprint: &str) -> Result<Claim, Problem> {
        let marker = Entry::InFlight {
            fingerprint: fingerprint.to_owned(),
        };
        match &self.backend {
            Backend::Memory(entries) => {
                let mut entries = lock(entries);
                let now = Instant::now();
                entries.retain(|_, (_, expires)| *expires > now);
                if let Some((entry, _)) = entries.get(key) {
                    return Ok(Claim::Existing(entry.clone()));
                }
                entries.insert(key.to_owned(), (marker, now + IN_FLIGHT_TTL));
                Ok(Claim::Claimed)
            }
            Backend::Redis(redis) => {
                let storage_key = self.storage_key(key);
                let value = serde_json::to_string(&marker).unwrap_or_default();
                let existing: Option<String> = redis
                    .run("idempotency.claim", |mut connection| async move {
                        let claimed: Option<String> = redis::cmd("SET")
                            .arg(&storage_key)
                            .arg(value)
                            .arg("NX")
                            .arg("EX")
                            .arg(IN_FLIGHT_TTL.as_secs())
                            .query_async(&mut connection)
                            .await?;
                        if claimed.is_some() {
                            return Ok(None);
                        }
                        redis::cmd("GET")
                            .arg(&storage_key)
                            .query_async(&mut connection)
                            .await
                    })
                    .await
                    .map_err(|_| unavailable())?;
                match existing {
                    None => Ok(Claim::Claimed),
                    Some(text) => serde_json::from_str(&text)
                        .map(Claim::Existing)
                        .map_err(|_| Problem::internal()),
                }
            }
        }
    }

    async fn complete(&self, key: &str, entry: Option<Entry>) {
        match &self.backend {
            Backend::Memory(entries) => {
                let mut entries = lock(entries);
                match entry {
                    Some(entry) => entries.insert(key.to_owned(), (entry, Instant::now() + KEY_TTL)),
                    None => entries.remove(key),
                };
            }
            Backend::Redis(redis) => {
                let storage_key = self.storage_key(key);
                let result = match entry {
                    Some(entry) => {
                        let value = serde_json::to_string(&entry).unwrap_or_default();
                        redis
                            .run("idempotency.store", |mut connection| async move {
                                redis::cmd("SET")
                                    .arg(&storage_key)
                                    .arg(value)
                                    .arg("EX")
                                    .arg(KEY_TTL.as_secs())
                                    .query_async::<()>(&mut connection)
                                    .await
                            })
                            .await
                    }
                    None => {
                        redis
                            .run("idempotency.release", |mut connection| async move {
                                redis::cmd("DEL")
                                    .arg(&storage_key)
                                    .query_async::<()>(&mut connection)
                                    .await
                            })
                            .await
                    }
                };
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

/// FNV-1a: a stable 64-bit hash (std's hasher may change between Rust releases, and keys
/// outlive deployments).
fn fnv1a(parts: &[&[u8]]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(b"\x00") {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Releases the in-flight marker if the request is dropped before it completes.
struct InFlightGuard {
    store: Idempotency,
    key: Option<String>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let store = self.store.clone();
            tokio::spawn(async move { store.complete(&key, None).await });
        }
    }
}

/// The middleware; put it on write routes only.
pub async fn enforce(State(store): State<Idempotency>, request: Request, next: Next) -> Response {
    let safe = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let Some(key) = request.headers().get(&IDEMPOTENCY_KEY).filter(|_| !safe) else {
        return next.run(request).await;
    };
    let key = match key.to_str() {
        Ok(key)
            if !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            key.to_owned()
        }
        _ => {
            return Problem::bad_request(format!(
                "Idempotency-Key must be 1-{MAX_KEY_LEN} printable ASCII characters"
            ))
            .into_response();
        }
    };
    let (parts, body) = request.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, store.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("The request body is larger than {} bytes.", store.max_body_bytes),
            )
            .into_response();
        }
    };
    let fingerprint = fnv1a(&[
        parts.method.as_str().as_bytes(),
        parts.uri.path().as_bytes(),
        parts.uri.query().unwrap_or_default().as_bytes(),
        &body,
    ]);

    match store.claim(&key, &fingerprint).await {
        Err(problem) => {
            store.outcomes.with_label_values(&["unavailable"]).inc();
            problem.into_response()
        }
        Ok(Claim::Existing(entry)) if entry.fingerprint() != fingerprint => {
            store.outcomes.with_label_values(&["mismatch"]).inc();
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "This Idempotency-Key was used for a different request; use a new key.",
            )
            .into_response()
        }
        Ok(Claim::Existing(Entry::InFlight { .. })) => {
            store.outcomes.with_label_values(&["in_flight"]).inc();
            Problem::conflict("A request with this Idempotency-Key is still being processed.")
                .retry_after(1)
                .into_response()
        }
        Ok(Claim::Existing(Entry::Done { response, .. })) => {
            store.outcomes.with_label_values(&["replayed"]).inc();
            replay(response)
        }
        Ok(Claim::Claimed) => {
            store.outcomes.with_label_values(&["executed"]).inc();
            let mut guard = InFlightGuard {
                store: store.clone(),
                key: Some(key.clone()),
            };
            let response = next.run(Request::from_parts(parts, Body::from(body))).await;
            guard.key = None;
            keep(&store, &key, fingerprint, response).await
        }
    }
}

async fn keep(store: &Idempotency, key: &str, fingerprint: String, response: Response) -> Response {
    if response.status().is_server_error() {
        store.complete(key, None).await;
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        store.complete(key, None).await;
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
            key,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_separate_parts() {
        assert_eq!(fnv1a(&[b"POST", b"/a"]), fnv1a(&[b"POST", b"/a"]));
        assert_ne!(fnv1a(&[b"POST", b"/ab"]), fnv1a(&[b"POST/", b"ab"]));
        // Pinned value: changing the hash would turn stored keys into false 422s.
        assert_eq!(fnv1a(&[b""]), "af63bd4c8601b7df");
    }
}
