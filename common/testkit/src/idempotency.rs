//! The `Idempotency-Key` contract, one assertion set run against every service that honours
//! keys (the cart's writes, the orders API's placements), on each of their stores.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::http::{client, json_of};
use crate::metrics::{metric_sum, parse_metrics};

/// One keyed write of a service under test.
pub struct KeyedWrite<'a> {
    /// The write's URL when `user` sends it.
    pub url: &'a (dyn Fn(&str) -> String + Sync),
    /// A valid body `user` sends; variants 0 and 1 are two different requests.
    pub body: &'a (dyn Fn(&str, u32) -> Value + Sync),
    /// The status of a first run that succeeds.
    pub success: StatusCode,
    /// The service's `/metrics`.
    pub metrics_url: String,
}

impl KeyedWrite<'_> {
    /// POST variant `variant` as `user` with `key`.
    pub async fn send(&self, user: &str, key: &[u8], variant: u32) -> reqwest::Response {
        let key = reqwest::header::HeaderValue::from_bytes(key)
            .unwrap_or_else(|error| panic!("a header value: {error}"));
        client()
            .post((self.url)(user))
            .header("idempotency-key", key)
            .json(&(self.body)(user, variant))
            .send()
            .await
            .unwrap_or_else(|error| panic!("the service answers: {error}"))
    }

    async fn outcome(&self, outcome: &str) -> f64 {
        let text = client()
            .get(&self.metrics_url)
            .send()
            .await
            .unwrap_or_else(|error| panic!("metrics: {error}"))
            .text()
            .await
            .unwrap_or_else(|error| panic!("metrics text: {error}"));
        let samples = parse_metrics(&text).unwrap_or_else(|error| panic!("valid metrics: {error}"));
        metric_sum(&samples, "idempotency_requests_total", &[("outcome", outcome)])
    }
}

async fn success(write: &KeyedWrite<'_>, response: reqwest::Response, what: &str) -> Value {
    let status = response.status();
    let replayed = response.headers().get("idempotent-replayed").cloned();
    let body = json_of(response).await;
    assert_eq!(status, write.success, "{what}: {body}");
    assert!(replayed.is_none(), "{what}: a first run is not a replay");
    body
}

async fn replayed(write: &KeyedWrite<'_>, response: reqwest::Response, what: &str) -> Value {
    let status = response.status();
    assert_eq!(
        response
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..]),
        "{what}: marked as a replay"
    );
    let body = json_of(response).await;
    assert_eq!(status, write.success, "{what}: {body}");
    body
}

async fn problem(response: reqwest::Response, status: StatusCode, kind: &str, what: &str) -> Value {
    let got = response.status();
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/problem+json"[..]),
        "{what}"
    );
    let body = json_of(response).await;
    assert_eq!(got, status, "{what}: {body}");
    assert_eq!(
        body["type"],
        format!("https://shopstack.dev/problems/{kind}"),
        "{what}"
    );
    body
}

/// Two users share `key`: each runs once and replays their own answer; the same caller with
/// another body is a 422; malformed keys are 400s; the outcomes are counted in
/// `idempotency_requests_total`. `users` are fresh users of the service.
pub async fn check_contract(write: &KeyedWrite<'_>, users: [&str; 2], key: &str) {
    let [alice, bob] = users;
    let before = [
        write.outcome("executed").await,
        write.outcome("replayed").await,
        write.outcome("mismatch").await,
    ];

    let alice_first = success(write, write.send(alice, key.as_bytes(), 0).await, "alice's first").await;
    // Bob's key is his own: the same key is not "reused with another body".
    let bob_first = success(
        write,
        write.send(bob, key.as_bytes(), 0).await,
        "bob's first, same key",
    )
    .await;
    assert_ne!(alice_first, bob_first, "two requests, two answers");
    assert!(
        bob_first.to_string().contains(bob),
        "bob's answer is his: {bob_first}"
    );

    let alice_again = replayed(write, write.send(alice, key.as_bytes(), 0).await, "alice's retry").await;
    assert_eq!(alice_again, alice_first, "alice gets her own answer back");
    let bob_again = replayed(write, write.send(bob, key.as_bytes(), 0).await, "bob's retry").await;
    assert_eq!(bob_again, bob_first, "bob gets his own answer back");

    // The same caller, the same key, another body.
    problem(
        write.send(alice, key.as_bytes(), 1).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "alice reuses her key with another body",
    )
    .await;
    // ... which leaves both answers as they were.
    let bob_still = replayed(
        write,
        write.send(bob, key.as_bytes(), 0).await,
        "bob after alice's 422",
    )
    .await;
    assert_eq!(bob_still, bob_first);

    let long = "k".repeat(256);
    let malformed: [(&str, &[u8]); 4] = [
        ("empty", b""),
        ("256 characters", long.as_bytes()),
        ("a space", b"two words"),
        ("not ASCII", "cl\u{e9}".as_bytes()),
    ];
    for (what, bad) in malformed {
        problem(
            write.send(alice, bad, 0).await,
            StatusCode::BAD_REQUEST,
            "bad-request",
            &format!("a key with {what}"),
        )
        .await;
    }
    // 255 visible characters is the longest key.
    let longest = format!("{key}{}", "~".repeat(255 - key.len()));
    success(
        write,
        write.send(bob, longest.as_bytes(), 1).await,
        "a 255-character key",
    )
    .await;

    let after = [
        write.outcome("executed").await,
        write.outcome("replayed").await,
        write.outcome("mismatch").await,
    ];
    assert_eq!(
        [after[0] - before[0], after[1] - before[1], after[2] - before[2]],
        [3.0, 3.0, 1.0],
        "executed, replayed and mismatch counted (malformed keys are not)"
    );
}

/// While the first request with `key` runs (the service's dependency must not answer), a repeat
/// is a 409 with `Retry-After`. Returns the first request's answer once it ends.
pub async fn check_in_flight(write: &KeyedWrite<'_>, user: &str, key: &str) -> reqwest::Response {
    let before = write.outcome("in_flight").await;
    let first = {
        let request = client()
            .post((write.url)(user))
            .header("idempotency-key", key)
            .json(&(write.body)(user, 0));
        tokio::spawn(async move {
            request
                .send()
                .await
                .unwrap_or_else(|error| panic!("the first answer: {error}"))
        })
    };
    // The first request claims the key long before its dependency times out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = write.send(user, key.as_bytes(), 0).await;
    assert!(
        second.headers().contains_key("retry-after"),
        "409 says when to retry"
    );
    problem(
        second,
        StatusCode::CONFLICT,
        "in-progress",
        "a repeat while the first runs",
    )
    .await;
    assert_eq!(write.outcome("in_flight").await - before, 1.0);
    first
        .await
        .unwrap_or_else(|error| panic!("the first request's task: {error}"))
}
