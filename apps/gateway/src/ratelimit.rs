//! Rate limiting per client: GCRA (a token bucket of `RATE_LIMIT_BURST` refilled at
//! `RATE_LIMIT_RPS`) keyed by the verified JWT subject, or by the client IP when the request
//! carries no valid token. Limited requests get 429 with `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

/// How often idle client entries are dropped.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// Who is asking, for rate limiting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    User(String),
    Ip(IpAddr),
}

impl ClientKey {
    /// The `client` label of `gateway_rate_limited_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientKey::User(_) => "user",
            ClientKey::Ip(_) => "ip",
        }
    }
}

pub struct RateLimiter {
    limiter: DefaultKeyedRateLimiter<ClientKey>,
}

impl RateLimiter {
    /// `None` when `rps` is 0 (rate limiting off).
    pub fn new(rps: f64, burst: u32) -> Option<Arc<Self>> {
        if rps <= 0.0 || !rps.is_finite() {
            return None;
        }
        let period = Duration::from_secs_f64(1.0 / rps);
        let burst = if burst == 0 { rps.ceil() as u32 } else { burst };
        let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?);
        let limiter = Arc::new(Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
        });
        tokio::spawn(clean_up(Arc::downgrade(&limiter)));
        Some(limiter)
    }

    /// `Err(wait)` when `client` is over its rate: how long until its next request conforms.
    pub fn check(&self, client: &ClientKey) -> Result<(), Duration> {
        self.limiter
            .check_key(client)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }
}

/// Forget clients whose buckets are full again, so memory follows active clients only.
async fn clean_up(limiter: Weak<RateLimiter>) {
    loop {
        tokio::time::sleep(CLEANUP_INTERVAL).await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        limiter.limiter.retain_recent();
        limiter.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_client_has_its_own_bucket() {
        let limiter = RateLimiter::new(1.0, 3).unwrap_or_else(|| unreachable!());
        let alice = ClientKey::User("alice".into());
        let bob = ClientKey::User("bob".into());
        for _ in 0..3 {
            assert!(limiter.check(&alice).is_ok());
        }
        let wait = limiter.check(&alice).err();
        assert!(wait.is_some_and(|wait| wait > Duration::ZERO && wait <= Duration::from_secs(1)));
        assert!(limiter.check(&bob).is_ok());
        assert!(RateLimiter::new(0.0, 10).is_none());
    }
}
