//! When to retry, how long to wait, and how many retries a backend may get in all.
//!
//! The budget follows the SRE book's per-client retry budget: each request routed to a backend
//! deposits `ratio` of a retry (0.1 by default) and each retry spends a whole one, so retries
//! never exceed `ratio` × requests, whatever the traffic. The balance is capped at
//! [`BUDGET_CAP`] retries so a long quiet spell cannot bank a retry storm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use rand::Rng;

/// Most retries a backend's budget can hold.
pub const BUDGET_CAP: u64 = 10;
const MILLI: u64 = 1000;

/// Requests carrying this header may be retried whatever their method.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

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

/// RFC 9110 §9.2.2 idempotent methods, or a request the client made idempotent with a key.
pub fn request_is_retryable(method: &Method, headers: &HeaderMap) -> bool {
    method.is_idempotent() || headers.contains_key(IDEMPOTENCY_KEY)
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
        assert!(request_is_retryable(&Method::GET, &none));
        assert!(request_is_retryable(&Method::DELETE, &none));
        assert!(!request_is_retryable(&Method::POST, &none));
        assert!(!request_is_retryable(&Method::PATCH, &none));
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, axum::http::HeaderValue::from_static("k-1"));
        assert!(request_is_retryable(&Method::POST, &keyed));
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
