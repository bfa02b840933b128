//! The HTTP client tests talk to services with, and the JSON helpers around it.

use std::time::Duration;

use serde_json::Value;

/// How long [`client`] waits for any one request: longer than every timeout and deadline the
/// tests give a service, so a hung request fails the test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A client for loopback services: no proxy from the environment, requests time out after
/// [`REQUEST_TIMEOUT`].
pub fn client() -> reqwest::Client {
    client_with_timeout(REQUEST_TIMEOUT)
}

/// [`client`] with another per-request timeout.
pub fn client_with_timeout(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .unwrap_or_else(|error| panic!("cannot build the test HTTP client: {error}"))
}

/// The response's body as JSON; panics (failing the test) when it is not JSON.
pub async fn json_of(response: reqwest::Response) -> Value {
    let status = response.status();
    response
        .json()
        .await
        .unwrap_or_else(|error| panic!("a {status} response without a JSON body: {error}"))
}
