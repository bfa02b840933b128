//! When to retry, how long to wait, and how many retries a backend may get in all.
//!
//! The budget follows the SRE book's per-client retry budget: each request routed to a backend
//! deposits `ratio` of a retry (0.1 by default) and each retry spends a whole one, so retries
//! never exceed `ratio` × requests, whatever the traffic. The balance is capped at
//! [`BUDGET_CAP`] retries so a long quiet spell cannot bank a retry storm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use rand::Rng;

/// Most retries a backend's budget can hold.
pub const BUDGET_CAP: u64 = 10;
const MILLI: u64 = 1000;

/// Requests carrying this header may be retried whatever their method, on routes whose backend
/// honours it.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// On a backend's answer: where it keeps its `Idempotency-Key`s. `shared`: one store every
/// replica of the backend reads (Redis, PostgreSQL), so a retry may go to another replica;
/// `local` (or nothing said): this replica's own, so a retry of a keyed write goes back to the
/// same replica, the only one that would recognise the key. The gateway reads it and does not
/// pass it on.
pub const IDEMPOTENCY_STORE: &str = "idempotency-store";

pub struct RetryBudget {
    /// Balance in thousandths of a retry.
    balance: AtomicU64,
    deposit: u64,
}

impl RetryBudget {
    pub fn new(ratio: f64) -> Self {
        Self {
            balance: AtomicU64::new(0),
            deposit: (ratio.clamp(0.0, 1.0) * MILLI as f64).round() as u64,
        }
    }

    /// One request went to the backend.
    pub fn deposit(&self) {
        let cap = BUDGET_CAP * MILLI;
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |balance| {
                Some((balance + self.deposit).min(cap))
            });
    }

    /// Spend one retry, if the budget holds one.
    pub fn try_withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |balance| {
                balance.checked_sub(MILLI)
            })
            .is_ok()
    }
}

/// Whether a request may be sent more than once, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Never: a write the backend could run twice.
    Never,
    /// To any replica: an RFC 9110 §9.2.2 idempotent method.
    Anywhere,
    /// A write made idempotent by its `Idempotency-Key` on a route whose backend honours it:
    /// again to the same replica, or to another one only if both say their key store is shared.
    KeyedWrite,
}

impl Replay {
    pub fn allowed(self) -> bool {
        self != Replay::Never
    }
}

/// How `method` with `headers` may be replayed on a route whose backend does or does not
/// honour `Idempotency-Key` (`honours_key`): a key on a route that ignores it makes nothing safe.
pub fn replay_of(method: &Method, headers: &HeaderMap, honours_key: bool) -> Replay {
    if method.is_idempotent() {
        Replay::Anywhere
    } else if honours_key && headers.contains_key(IDEMPOTENCY_KEY) {
        Replay::KeyedWrite
    } else {
        Replay::Never
    }
}

/// What an answer's `Idempotency-Store` value says: `Some(true)` shared, `Some(false)` local,
/// `None` nothing known.
pub fn key_store_shared(value: &HeaderValue) -> Option<bool> {
    let value = value.as_bytes();
    if value.eq_ignore_ascii_case(b"shared") {
        Some(true)
    } else if value.eq_ignore_ascii_case(b"local") {
        Some(false)
    } else {
        None
    }
}

/// Backend answers worth another try: the backend or something before it failed transiently.
pub fn status_is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Wait before retry number `retry` (1-based): exponential from `base`, capped at `max`, with
/// "equal jitter" (half fixed, half random) so retries of many clients spread out.
pub fn backoff(retry: u32, base: Duration, max: Duration) -> Duration {
    let exponential = base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(max);
    let half = exponential / 2;
    let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rand::rng().random_range(0..=jitter_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_a_tenth_of_requests() {
        let budget = RetryBudget::new(0.1);
        let mut retries = 0;
        for _ in 0..95 {
            budget.deposit();
            if budget.try_withdraw() {
                retries += 1;
            }
        }
        assert_eq!(retries, 9);
    }

    #[test]
    fn budget_balance_is_capped() {
        let budget = RetryBudget::new(0.1);
        for _ in 0..10_000 {
            budget.deposit();
        }
        let mut retries = 0;
        while budget.try_withdraw() {
            retries += 1;
        }
        assert_eq!(retries, BUDGET_CAP);
    }

    #[test]
    fn only_safe_requests_are_retryable() {
        let none = HeaderMap::new();
        for honours in [false, true] {
            assert_eq!(replay_of(&Method::GET, &none, honours), Replay::Anywhere);
            assert_eq!(replay_of(&Method::DELETE, &none, honours), Replay::Anywhere);
            assert_eq!(replay_of(&Method::POST, &none, honours), Replay::Never);
            assert_eq!(replay_of(&Method::PATCH, &none, honours), Replay::Never);
        }
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, axum::http::HeaderValue::from_static("k-1"));
        assert_eq!(replay_of(&Method::POST, &keyed, true), Replay::KeyedWrite);
        assert_eq!(replay_of(&Method::PATCH, &keyed, true), Replay::KeyedWrite);
        assert_eq!(
            replay_of(&Method::POST, &keyed, false),
            Replay::Never,
            "a key the backend ignores makes nothing safe"
        );
        assert_eq!(replay_of(&Method::PUT, &keyed, false), Replay::Anywhere);
    }

    #[test]
    fn the_key_store_is_read_from_the_answer() {
        let said = |text: &'static str| key_store_shared(&HeaderValue::from_static(text));
        assert_eq!(said("shared"), Some(true));
        assert_eq!(said("Shared"), Some(true));
        assert_eq!(said("local"), Some(false));
        assert_eq!(said("maybe"), None);
    }

    #[test]
    fn backoff_grows_and_stays_within_bounds() {
        let base = Duration::from_millis(20);
        let max = Duration::from_millis(100);
        for _ in 0..100 {
            let first = backoff(1, base, max);
            assert!(first >= Duration::from_millis(10) && first <= base);
            let second = backoff(2, base, max);
            assert!(second >= Duration::from_millis(20) && second <= Duration::from_millis(40));
            assert!(backoff(10, base, max) <= max);
        }
    }
}
