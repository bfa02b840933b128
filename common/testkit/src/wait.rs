//! Waiting for something a test expects to happen soon, with a bound on how long.

use std::time::Duration;

/// How often [`eventually`] checks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Poll `check` every [`POLL_INTERVAL`] until it holds, for at most `limit`; whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    false
}
