//! Rules of the gateway's exchange with backends, of its retries and of owner-in-body routes,
//! through a gateway on a real socket:
//!
//! - the HTTP/1.1 exchange: raw backend answers from a test TCP server (bad framing → 502,
//!   hop-by-hop headers stripped both ways);
//! - retries never run a write twice: two backend replicas count the attempts of keyed POSTs on
//!   routes whose backend ignores keys, keeps them per replica, or shares them;
//! - a body naming its user twice, or not as a string, is refused before any backend sees it.
//!
//! Assertions are on counts and answers, never on wall-clock thresholds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use serde_json::json;
use support::{ADMIN_TOKEN, Tiny, client, gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Retries as often as the rules allow: a budget of one retry per request (a request may take
/// two when the balance holds them), no breaker or ejection in the way, short backoff.
const RETRY_FLAGS: [&str; 10] = [
    "--retry-budget-ratio",
    "1",
    "--breaker-failure-threshold",
    "0",
    "--outlier-consecutive-failures",
    "0",
    "--retry-backoff-base",
    "1ms",
    "--retry-backoff-max",
    "2ms",
];

/// A backend that answers every request 503, saying `store` (if any) in `Idempotency-Store`.
fn failing(store: Option<&'static str>) -> Router {
    Router::new().fallback(move || async move {
        let mut headers = HeaderMap::new();
        if let Some(store) = store {
            headers.insert("idempotency-store", store.parse().unwrap());
        }
        (StatusCode::SERVICE_UNAVAILABLE, headers, "down")
    })
}

/// Two replicas of one backend, answering as `a` and `b` do.
async fn replicas(a: Router, b: Router) -> (Tiny, Tiny, String) {
    let a = Tiny::start(a).await;
    let b = Tiny::start(b).await;
    let urls = format!("{},{}", a.url(), b.url());
    (a, b, urls)
}

/// Twenty keyed writes through `gw`, each retried (2 or 3 attempts, as the budget of one retry
/// per request allows) and every attempt at the replica that had the first.
async fn every_retry_stays_on_one_replica(gw: &shopstack_testkit::server::TestServer, a: &Tiny, b: &Tiny) {
    for index in 0..20 {
        let (at_a, at_b) = keyed_add(gw, a, b, &format!("key-{index}")).await;
        // Retried (2 or 3 attempts, as the budget of one retry per request allows), all at
        // the replica that had the first.
        assert!(
            at_a + at_b >= 2 && (at_a == 0 || at_b == 0),
            "request {index}: {at_a} attempts at a, {at_b} at b"
        );
    }
}

/// `POST /cart/add` with `key`: how many attempts each replica took.
async fn keyed_add(
    gw: &shopstack_testkit::server::TestServer,
    a: &Tiny,
    b: &Tiny,
    key: &str,
) -> (usize, usize) {
    let (before_a, before_b) = (a.hits(), b.hits());
    let response = client()
        .post(gw.url("/cart/add"))
        .header("idempotency-key", key)
        .json(&json!({"user_id": "u1", "product_id": "prod-110", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(
        response.headers().get("idempotency-store").is_none(),
        "the backend's word on its key store is for the gateway, not passed on"
    );
    (a.hits() - before_a, b.hits() - before_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_on_a_route_whose_backend_ignores_keys_is_sent_once() {
    // Orders ignores `Idempotency-Key` on cancelling and on status changes.
    let (a, b, orders) = replicas(failing(Some("shared")), failing(Some("shared"))).await;
    let catalog = Tiny::start(Router::new()).await;
    let mut flags = RETRY_FLAGS.to_vec();
    flags.extend(["--orders-service-url", &orders]);
    let (gw, _state) = gateway(&catalog.url(), &catalog.url(), &flags).await;
    let http = client();
    let requests = 20;
    for index in 0..requests {
        let response = http
            .post(gw.url("/api/orders/o-1/cancel"))
            .header("idempotency-key", format!("cancel-{index}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        let response = http
            .patch(gw.url("/api/orders/o-1/status"))
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", format!("status-{index}"))
            .json(&json!({"status": "shipped"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
    }
    assert_eq!(
        a.hits() + b.hits(),
        2 * requests,
        "each write reached a backend once"
    );
    // The same backend's keyed route is retried (the rule is per route, not per backend).
    let before = a.hits() + b.hits();
    let response = http
        .post(gw.url("/api/orders"))
        .header("idempotency-key", "place-1")
        .json(&json!({"user_id": "u1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        a.hits() + b.hits() - before,
        3,
        "placing an order honours the key: 3 attempts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_to_a_per_replica_key_store_is_retried_only_to_the_same_replica() {
    // One replica says its store is its own; the other says nothing, which counts the same.
    let (a, b, cart) = replicas(failing(Some("local")), failing(None)).await;
    let (gw, _state) = gateway(&cart, &cart, &RETRY_FLAGS).await;
    every_retry_stays_on_one_replica(&gw, &a, &b).await;
    assert!(a.hits() > 0 && b.hits() > 0, "first attempts are still balanced");
    // A POST without a key is never repeated.
    let before = a.hits() + b.hits();
    let response = client()
        .post(gw.url("/cart/add"))
        .json(&json!({"user_id": "u1", "product_id": "prod-110", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(a.hits() + b.hits() - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_may_move_to_another_replica_only_when_both_share_their_key_store() {
    let (a, b, cart) = replicas(failing(Some("shared")), failing(Some("shared"))).await;
    let (gw, _state) = gateway(&cart, &cart, &RETRY_FLAGS).await;
    // The first keyed request teaches the gateway what each replica says (both may not have
    // answered yet): from then on every retry goes to the other replica.
    let _ = keyed_add(&gw, &a, &b, "warm-a").await;
    let _ = keyed_add(&gw, &a, &b, "warm-b").await;
    let mut moved = 0;
    for index in 0..20 {
        let (at_a, at_b) = keyed_add(&gw, &a, &b, &format!("key-{index}")).await;
        assert!(at_a + at_b >= 2, "request {index}: retried");
        if at_a > 0 && at_b > 0 {
            moved += 1;
        }
    }
    assert!(
        moved > 0,
        "with a shared key store, retries go to the other replica"
    );
    drop(gw);

    // One shared, one local: a retry never crosses from one to the other.
    let (a, b, cart) = replicas(failing(Some("shared")), failing(Some("local"))).await;
    let (gw, _state) = gateway(&cart, &cart, &RETRY_FLAGS).await;
    every_retry_stays_on_one_replica(&gw, &a, &b).await;
}

/// A backend on a raw socket: reads each request head (and a body of its `content-length`),
/// logs it, and writes `answer`.
struct RawBackend {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl RawBackend {
    async fn start(answer: &'static [u8]) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut buffer = vec![0u8; 4096];
                    loop {
                        let request = loop {
                            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                                let length: usize = head
                                    .lines()
                                    .find_map(|line| line.strip_prefix("content-length: "))
                                    .map_or(0, |value| value.trim().parse().unwrap());
                                if pending.len() >= end + 4 + length {
                                    pending.drain(..end + 4 + length);
                                    break head;
                                }
                            }
                            match stream.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(read) => pending.extend_from_slice(&buffer[..read]),
                            }
                        };
                        log.lock().unwrap().push(request);
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawBackend { url, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_framing_the_gateway_does_not_read_are_a_502() {
    let answers: [&'static [u8]; 5] = [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2,2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ];
    for answer in answers {
        let backend = RawBackend::start(answer).await;
        let (gw, _state) = gateway(&backend.url, &backend.url, &[]).await;
        let response = client().get(gw.url("/catalog")).send().await.unwrap();
        assert_eq!(response.status(), 502, "{}", String::from_utf8_lossy(answer));
        assert!(!backend.requests().is_empty());
    }
    // The same answers, framed plainly, pass.
    let backend = RawBackend::start(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let (gw, _state) = gateway(&backend.url, &backend.url, &[]).await;
    let response = client().get(gw.url("/catalog")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
}

/// Send `request` on a raw connection to `addr` and read the answer's head.
async fn raw_exchange(addr: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        loop {
            if received.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            match stream.read(&mut buffer).await.unwrap() {
                0 => break,
                read => received.extend_from_slice(&buffer[..read]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s");
    String::from_utf8_lossy(&received).to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_and_those_connection_names_are_stripped_both_ways() {
    let backend = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nconnection: x-backend-hop\r\nx-backend-hop: 1\r\nproxy-connection: keep-alive\r\n\
keep-alive: timeout=5\r\nx-kept: yes\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let (gw, _state) = gateway(&backend.url, &backend.url, &[]).await;
    let answer = raw_exchange(
        &gw.addr.to_string(),
        "GET /catalog HTTP/1.1\r\nhost: shop\r\nconnection: x-client-hop\r\nx-client-hop: 1\r\n\
proxy-connection: keep-alive\r\nx-end-to-end: yes\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("x-kept: yes"), "{answer}");
    for stripped in ["x-backend-hop", "proxy-connection", "keep-alive:"] {
        assert!(
            !answer.contains(stripped),
            "{stripped} reached the client: {answer}"
        );
    }
    let requests = backend.requests();
    let request = requests
        .iter()
        .find(|request| request.starts_with("get /catalog"))
        .expect("the backend got the request");
    assert!(request.contains("x-end-to-end: yes"), "{request}");
    for stripped in ["x-client-hop", "proxy-connection", "connection:"] {
        assert!(
            !request.contains(stripped),
            "{stripped} reached the backend: {request}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_naming_its_user_twice_or_not_as_a_string_is_refused_before_the_backend() {
    let cart = Tiny::start(Router::new().fallback(|| async { (StatusCode::CREATED, "added") })).await;
    let (gw, _state) = gateway(&cart.url(), &cart.url(), &[]).await;
    let http = client();
    let refused = [
        r#"{"user_id": "u1", "user_id": "u2", "product_id": "prod-110", "quantity": 1}"#,
        r#"{"user_id": "u1", "user\u005fid": "u2", "product_id": "prod-110", "quantity": 1}"#,
        r#"{"user_id": 7, "product_id": "prod-110", "quantity": 1}"#,
        r#"{"user_id": null, "product_id": "prod-110", "quantity": 1}"#,
        r#"{"user_id": ["u1"], "product_id": "prod-110", "quantity": 1}"#,
        r#"{"user_id": {"id": "u1"}, "product_id": "prod-110", "quantity": 1}"#,
    ];
    for path in ["/cart/add", "/api/orders", "/api/orders/checkout"] {
        for body in refused {
            let response = http
                .post(gw.url(path))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{path} {body}");
            let problem: serde_json::Value = response.json().await.unwrap();
            assert!(
                problem["detail"].as_str().unwrap_or_default().contains("user_id"),
                "{problem}"
            );
        }
    }
    assert_eq!(cart.hits(), 0, "nothing refused was forwarded");
    // Named once, as a string; or not JSON at all (the backend's to refuse): forwarded.
    for body in [
        r#"{"user_id": "u1", "product_id": "prod-110", "quantity": 1}"#,
        r#"{"product_id": "prod-110", "quantity": 1}"#,
        "not json",
        r#"["u1"]"#,
    ] {
        let response = http
            .post(gw.url("/cart/add"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{body}");
    }
    assert_eq!(cart.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_a_duplicated_user_id_is_a_400_and_another_users_a_404() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let cart = Tiny::start(Router::new().fallback(|| async { (StatusCode::CREATED, "added") })).await;
    let (gw, _state) = gateway(&cart.url(), &cart.url(), &["--jwt-secret", SECRET]).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": now + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let send = |body: &'static str| {
        client()
            .post(gw.url("/api/orders/checkout"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
    };
    // The last member wins in serde_json, the first in some parsers: either way, refused.
    let response = send(r#"{"user_id": "mallory", "user_id": "alice"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = send(r#"{"user_id": "alice", "user_id": "mallory"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = send(r#"{"user_id": "mallory"}"#).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(cart.hits(), 0);
    let response = send(r#"{"user_id": "alice"}"#).send().await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(cart.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_says_where_it_keeps_keys_and_the_gateway_keeps_that_to_itself() {
    use shopstack_testkit::services;
    let catalog = services::catalog().start().await;
    let cart = services::cart(&catalog.url("")).start().await;
    let (gw, _state) = gateway(&catalog.url(""), &cart.url(""), &[]).await;
    let add = |url: String, key: Option<&str>| {
        let mut request = client()
            .post(url)
            .json(&json!({"user_id": "keeper", "product_id": "prod-110", "quantity": 1}));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    // Without Redis, the cart keeps keys in its own memory.
    let direct = add(cart.url("/cart/add"), Some("k-direct")).await.unwrap();
    assert!(direct.status().is_success(), "{}", direct.status());
    assert_eq!(direct.headers()["idempotency-store"], "local");
    let unkeyed = add(cart.url("/cart/add"), None).await.unwrap();
    assert!(unkeyed.headers().get("idempotency-store").is_none());
    let through = add(gw.url("/cart/add"), Some("k-gateway")).await.unwrap();
    assert!(through.status().is_success(), "{}", through.status());
    assert!(through.headers().get("idempotency-store").is_none());

    // With Redis, every replica reads the same keys.
    let redis = shopstack_testkit::redis::RedisServer::start().unwrap();
    let shared = services::cart(&catalog.url(""))
        .redis(Some(&redis.url()))
        .start()
        .await;
    let direct = add(shared.url("/cart/add"), Some("k-redis")).await.unwrap();
    assert!(direct.status().is_success(), "{}", direct.status());
    assert_eq!(direct.headers()["idempotency-store"], "shared");
}
