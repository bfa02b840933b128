//! The storefront's server side through a gateway on a real socket: `/` by `Accept`, the
//! compiled-in files with their ETags and types, the Content-Security-Policy, the development
//! token route and its switch, and the browser-trace forwarder. (The page itself is driven in a
//! real browser by `ops/stack-tests/tests/storefront.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use serde_json::json;
use shopstack_testkit::http::json_of;
use shopstack_testkit::ports::closed_port;
use support::{ADMIN_TOKEN, Tiny, client, gateway, metric, problem_kind};

const SECRET: &str = "storefront-test-secret-0123456789abcdef";
const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";

/// A catalog and cart stand-in: the storefront's own routes never reach it; a cart read does.
async fn backends() -> Tiny {
    let router = Router::new().route(
        "/v1/cart/{user_id}",
        get(
            |Path(user_id): Path<String>| async move { axum::Json(json!({"user_id": user_id, "items": []})) },
        ),
    );
    Tiny::start(router).await
}

#[tokio::test]
async fn browsers_get_the_page_and_every_other_client_the_service_info() {
    let backend = backends().await;
    let (gw, _state) = gateway(&backend.url(), &backend.url(), &[]).await;
    let http = client();

    let page = http
        .get(gw.url("/"))
        .header("accept", BROWSER)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["vary"], "Accept");
    assert_eq!(headers["cache-control"], "no-cache");
    let csp = headers["content-security-policy"].to_str().unwrap().to_owned();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(directive), "CSP lacks {directive}: {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("http"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("<input type=\"search\""),
        "the page has a search box"
    );
    assert!(html.contains("/storefront/app.js") && html.contains("type=\"module\""));
    assert!(html.contains("data-auth=\"false\""));

    for accept in [
        None,
        Some("*/*"),
        Some("application/json"),
        Some("text/html;q=0.1, application/json"),
    ] {
        let mut request = http.get(gw.url("/"));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let info = request.send().await.unwrap();
        assert_eq!(info.headers()["content-type"], "application/json", "{accept:?}");
        assert_eq!(info.headers()["vary"], "Accept", "{accept:?}");
        assert_eq!(json_of(info).await["service"], "gateway", "{accept:?}");
    }
}

#[tokio::test]
async fn files_are_served_with_types_etags_and_304s() {
    let backend = backends().await;
    let (gw, _state) = gateway(&backend.url(), &backend.url(), &[]).await;
    let http = client();
    for (name, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("logo.svg", "image/svg+xml"),
    ] {
        let file = http
            .get(gw.url(&format!("/storefront/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(file.status(), 200, "{name}");
        assert_eq!(file.headers()["content-type"], content_type, "{name}");
        assert_eq!(file.headers()["x-content-type-options"], "nosniff");
        let etag = file.headers()["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
        assert!(!file.bytes().await.unwrap().is_empty());

        let again = http
            .get(gw.url(&format!("/storefront/{name}")))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{name}");
        assert_eq!(again.headers()["etag"], etag.as_str());
        assert!(again.bytes().await.unwrap().is_empty());

        let changed = http
            .get(gw.url(&format!("/storefront/{name}")))
            .header("if-none-match", "\"something-else\"")
            .send()
            .await
            .unwrap();
        assert_eq!(changed.status(), 200);
    }
    let missing = http.get(gw.url("/storefront/nope.js")).send().await.unwrap();
    let (status, kind, _) = problem_kind(missing).await;
    assert_eq!((status, kind.as_str()), (404, "not-found"));
}

#[tokio::test]
async fn the_switched_routes_do_not_exist_unless_switched_on() {
    let backend = backends().await;
    let (gw, _state) = gateway(&backend.url(), &backend.url(), &[]).await;
    let http = client();
    let token = http
        .post(gw.url("/dev/token"))
        .json(&json!({"sub": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 404);
    let traces = http
        .post(gw.url("/otlp/v1/traces"))
        .json(&json!({"resourceSpans": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(traces.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_token_route_mints_a_short_lived_token_for_one_shopper() {
    let backend = backends().await;
    let (gw, _state) = gateway(
        &backend.url(),
        &backend.url(),
        &["--jwt-secret", SECRET, "--dev-token-route"],
    )
    .await;
    let http = client();
    let page = http
        .get(gw.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let html = page.text().await.unwrap();
    assert!(
        html.contains("data-auth=\"true\" data-dev-token=\"true\""),
        "{html}"
    );

    let answer = http
        .post(gw.url("/dev/token"))
        .json(&json!({"sub": "shopper-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer = json_of(answer).await;
    assert_eq!(answer["sub"], "shopper-1");
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 900);
    let token = answer["token"].as_str().unwrap();
    let own = http
        .get(gw.url("/v1/cart/shopper-1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200, "the gateway accepts the token for its shopper");
    let other = http
        .get(gw.url("/v1/cart/another-shopper"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404, "another shopper's cart is not this token's");
    let without = http.get(gw.url("/v1/cart/shopper-1")).send().await.unwrap();
    assert_eq!(without.status(), 401);

    // A development token is a shopper's, whatever its subject: never the operators' token.
    let admin_named = http
        .post(gw.url("/dev/token"))
        .json(&json!({"sub": "admin"}))
        .send()
        .await
        .unwrap();
    let admin_named = json_of(admin_named).await["token"].as_str().unwrap().to_owned();
    let stock = |token: String| {
        http.put(gw.url("/admin/stock/prod-110"))
            .bearer_auth(token)
            .json(&json!({"stock": 1}))
            .send()
    };
    assert_eq!(stock(admin_named).await.unwrap().status(), 401);
    assert_ne!(stock(ADMIN_TOKEN.to_owned()).await.unwrap().status(), 401);

    for bad in [
        json!({"sub": "../x"}),
        json!({"sub": ""}),
        json!({"user": "x"}),
        json!([]),
    ] {
        let refused = http.post(gw.url("/dev/token")).json(&bad).send().await.unwrap();
        let (status, kind, _) = problem_kind(refused).await;
        assert_eq!((status, kind.as_str()), (400, "bad-request"), "{bad}");
    }
}

#[tokio::test]
async fn the_dev_token_switch_is_refused_in_production_with_exit_code_2() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("DEV_TOKEN_ROUTE", "true")
        .env("JWT_SECRET", SECRET)
        .env("ENVIRONMENT", "production")
        .env("PORT", "0")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("DEV_TOKEN_ROUTE=true is refused with ENVIRONMENT=production"),
        "{stderr}"
    );
}

/// A collector stand-in that keeps what it receives.
async fn collector() -> (Tiny, Arc<Mutex<Vec<(HeaderMap, Bytes)>>>) {
    let received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let kept = received.clone();
    let router = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push((headers, body));
                axum::Json(json!({"partialSuccess": {}}))
            }
        }),
    );
    (Tiny::start(router).await, received)
}

fn batch(trace_id: &str) -> serde_json::Value {
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "storefront"}}]},
        "scopeSpans": [{"scope": {"name": "shopstack-storefront"}, "spans": [{
            "traceId": trace_id, "spanId": "00f067aa0ba902b7", "name": "click Add to cart", "kind": 1,
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000100000000"
        }]}]
    }]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_spans_are_forwarded_to_the_collector_and_bad_batches_are_not() {
    let backend = backends().await;
    let (collector, received) = collector().await;
    let traces_url = format!("{}/v1/traces", collector.url());
    let (gw, _state) = gateway(
        &backend.url(),
        &backend.url(),
        &["--browser-traces-url", &traces_url],
    )
    .await;
    let http = client();
    let html = http
        .get(gw.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("data-traces=\"true\""));

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sent = http
        .post(gw.url("/otlp/v1/traces"))
        .json(&batch(trace_id))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    {
        let received = received.lock().unwrap();
        assert_eq!(received.len(), 1);
        let (headers, body) = &received[0];
        assert_eq!(headers["content-type"], "application/json");
        assert!(!headers.contains_key("x-service-credential"));
        let forwarded: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(forwarded, batch(trace_id), "forwarded as sent");
    }

    let not_json = http
        .post(gw.url("/otlp/v1/traces"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(problem_kind(not_json).await.0, 400);
    let no_spans = http
        .post(gw.url("/otlp/v1/traces"))
        .json(&json!({"spans": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem_kind(no_spans).await.0, 400);
    let protobuf = http
        .post(gw.url("/otlp/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(vec![0u8; 16])
        .send()
        .await
        .unwrap();
    assert_eq!(problem_kind(protobuf).await.0, 415);
    let huge = format!("{{\"resourceSpans\":[],\"pad\":\"{}\"}}", "x".repeat(300 * 1024));
    let too_big = http
        .post(gw.url("/otlp/v1/traces"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(problem_kind(too_big).await.0, 413);
    assert_eq!(
        received.lock().unwrap().len(),
        1,
        "refused batches never reach the collector"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_answers_503_when_the_collector_is_down_and_is_rate_limited() {
    let backend = backends().await;
    let traces_url = format!("{}/v1/traces", closed_port().await);
    let (gw, state) = gateway(
        &backend.url(),
        &backend.url(),
        &[
            "--browser-traces-url",
            &traces_url,
            "--rate-limit-rps",
            "0.5",
            "--rate-limit-burst",
            "1",
        ],
    )
    .await;
    let http = client();
    let down = http
        .post(gw.url("/otlp/v1/traces"))
        .json(&batch("4bf92f3577b34da6a3ce929d0e0e4736"))
        .send()
        .await
        .unwrap();
    let (status, kind, retry_after) = problem_kind(down).await;
    assert_eq!((status, kind.as_str()), (503, "unavailable"));
    assert!(retry_after.is_some());
    let limited = http
        .post(gw.url("/otlp/v1/traces"))
        .json(&batch("4bf92f3577b34da6a3ce929d0e0e4736"))
        .send()
        .await
        .unwrap();
    let (status, kind, retry_after) = problem_kind(limited).await;
    assert_eq!((status, kind.as_str()), (429, "rate-limited"));
    assert!(retry_after.is_some());
    assert_eq!(
        metric(&state, "gateway_rate_limited_total", &[("client", "ip")]),
        1.0
    );
}
