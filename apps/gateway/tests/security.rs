//! Edge security in front of the real catalog, cart and orders: forged tokens, ownership of
//! carts and orders, rate limits per client, admin-only routes, and the `mint-token` subcommand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway::GatewayState;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use shopstack_testkit::db::TestDb;
use shopstack_testkit::server::TestServer;
use shopstack_testkit::services;
use support::{ADMIN_TOKEN, client, gateway, gateway_with, metric, problem_kind};

const SECRET: &str = "test-only-hs256-secret-of-at-least-32-bytes";
const ISSUER: &str = "https://auth.shopstack.test";
const AUDIENCE: &str = "shopstack";

/// The real catalog and cart, in process on port 0.
struct Shop {
    catalog: TestServer,
    cart: TestServer,
}

impl Shop {
    async fn start() -> Shop {
        let catalog = services::catalog().start().await;
        let cart = services::cart(&catalog.url("")).start().await;
        Shop { catalog, cart }
    }

    fn catalog_url(&self) -> String {
        self.catalog.url("")
    }

    fn cart_url(&self) -> String {
        self.cart.url("")
    }
}

/// The orders service on a fresh SQLite file, in front of `shop`.
struct Orders {
    server: TestServer,
    _db: TestDb,
}

impl Orders {
    async fn start(shop: &Shop) -> Orders {
        let db = TestDb::sqlite();
        let server = services::orders(&db.url, &shop.catalog_url(), &shop.cart_url())
            .start()
            .await;
        Orders { server, _db: db }
    }
}

/// `shop`'s orders service on a fresh SQLite file, and a gateway with edge auth on in front of
/// all three.
async fn orders_behind_auth(shop: &Shop) -> (Orders, TestServer, GatewayState) {
    let orders = Orders::start(shop).await;
    let orders_url = orders.server.url("");
    let mut flags = AUTH_FLAGS.to_vec();
    flags.extend(["--orders-service-url", &orders_url]);
    let (gw, state) = gateway(&shop.catalog_url(), &shop.cart_url(), &flags).await;
    (orders, gw, state)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 3600, "iat": now(), "iss": ISSUER, "aud": AUDIENCE})
}

fn sign(claims: &Value, algorithm: Algorithm, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
}

fn hs256(claims: &Value, secret: &str) -> String {
    sign(
        claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

const AUTH_FLAGS: [&str; 6] = [
    "--jwt-secret",
    SECRET,
    "--jwt-issuer",
    ISSUER,
    "--jwt-audience",
    AUDIENCE,
];

async fn get(url: String, token: Option<&str>) -> reqwest::Response {
    let mut request = client().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_misdirected_tokens_get_401_with_a_bearer_challenge() {
    let shop = Shop::start().await;
    let (gw, state) = gateway(&shop.catalog_url(), &shop.cart_url(), &AUTH_FLAGS).await;
    let url = gw.url("/v1/cart/alice");

    let good = hs256(&claims("alice"), SECRET);
    assert_eq!(get(url.clone(), Some(&good)).await.status(), 200);

    let valid_parts: Vec<&str> = good.split('.').collect();
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{none_header}.{}.", b64(&claims("alice")));
    let bob = hs256(&claims("bob"), SECRET);
    let bob_parts: Vec<&str> = bob.split('.').collect();
    let tampered = format!("{}.{}.{}", bob_parts[0], valid_parts[1], bob_parts[2]);
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 3600);
    let mut wrong_audience = claims("alice");
    wrong_audience["aud"] = json!("another-api");
    let mut wrong_issuer = claims("alice");
    wrong_issuer["iss"] = json!("https://evil.example");
    let mut no_exp = claims("alice");
    no_exp.as_object_mut().unwrap().remove("exp");
    let hs512 = sign(
        &claims("alice"),
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );

    let cases = [
        ("alg none", unsigned, "algorithm"),
        (
            "wrong key",
            hs256(&claims("alice"), "another-secret-that-is-also-32-bytes-long"),
            "invalid_signature",
        ),
        ("tampered payload", tampered, "invalid_signature"),
        ("expired", hs256(&expired, SECRET), "expired"),
        ("wrong audience", hs256(&wrong_audience, SECRET), "wrong_audience"),
        ("wrong issuer", hs256(&wrong_issuer, SECRET), "wrong_issuer"),
        ("no exp", hs256(&no_exp, SECRET), "missing_claim"),
        ("algorithm not allowed", hs512, "algorithm"),
        ("garbage", "not-a-jwt".to_owned(), "malformed"),
    ];
    for (name, token, reason) in cases {
        let before = metric(&state, "gateway_auth_failures_total", &[]);
        let response = get(url.clone(), Some(&token)).await;
        assert_eq!(response.status(), 401, "{name}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.starts_with("Bearer realm=\"shopstack\""),
            "{name}: {challenge}"
        );
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        let (_, kind, _) = problem_kind(response).await;
        assert_eq!(kind, "unauthorized", "{name}");
        assert_eq!(
            metric(&state, "gateway_auth_failures_total", &[]),
            before + 1.0,
            "{name}"
        );
        assert!(
            metric(&state, "gateway_auth_failures_total", &[("reason", reason)]) >= 1.0,
            "{name} counted as {reason}"
        );
    }

    let response = get(url.clone(), None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"shopstack\""
    );
    assert!(
        metric(
            &state,
            "gateway_auth_failures_total",
            &[("reason", "missing_token")]
        ) >= 1.0
    );

    // The catalog stays public; a bad token there only makes the caller anonymous.
    assert_eq!(get(gw.url("/catalog"), None).await.status(), 200);
    assert_eq!(get(gw.url("/catalog"), Some("not-a-jwt")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_cart_answers_404_and_is_left_intact() {
    let shop = Shop::start().await;
    let (gw, state) = gateway(&shop.catalog_url(), &shop.cart_url(), &AUTH_FLAGS).await;
    let http = client();
    let alice = hs256(&claims("alice"), SECRET);
    let bob = hs256(&claims("bob"), SECRET);

    let added = http
        .post(gw.url("/v1/cart/alice"))
        .bearer_auth(&alice)
        .json(&json!({"product_id": "prod-110", "quantity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200);

    let attempts = [
        http.get(gw.url("/v1/cart/alice")),
        http.get(gw.url("/cart/alice")),
        http.delete(gw.url("/v1/cart/alice")),
        http.delete(gw.url("/cart/alice")),
        http.delete(gw.url("/v1/cart/alice/items/prod-110")),
        http.patch(gw.url("/v1/cart/alice/items/prod-110"))
            .json(&json!({"quantity": 1})),
        http.post(gw.url("/v1/cart/alice"))
            .json(&json!({"product_id": "prod-111", "quantity": 1})),
        http.post(gw.url("/v1/cart/alice/items"))
            .json(&json!({"product_id": "prod-111", "quantity": 1})),
        http.post(gw.url("/cart/add"))
            .json(&json!({"user_id": "alice", "product_id": "prod-111", "quantity": 1})),
    ];
    for attempt in attempts {
        let (status, kind, _) = problem_kind(attempt.bearer_auth(&bob).send().await.unwrap()).await;
        assert_eq!((status, kind.as_str()), (404, "not-found"));
    }
    assert!(metric(&state, "gateway_auth_failures_total", &[("reason", "not_owner")]) >= 9.0);

    let cart: Value = http
        .get(gw.url("/v1/cart/alice"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cart["items"], json!([{"product_id": "prod-110", "quantity": 2}]));

    // Bob's own cart is his to use, in both forms.
    let own = http
        .post(gw.url("/cart/add"))
        .bearer_auth(&bob)
        .json(&json!({"user_id": "bob", "product_id": "prod-111", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    assert_eq!(
        http.get(gw.url("/v1/cart/bob"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_off_by_default_so_seed_clients_keep_working() {
    let shop = Shop::start().await;
    let (gw, _state) = gateway(&shop.catalog_url(), &shop.cart_url(), &[]).await;
    let http = client();
    let added = http
        .post(gw.url("/v1/cart/user-123"))
        .json(&json!({"product_id": "prod-110", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200);
    assert_eq!(
        http.get(gw.url("/v1/cart/user-123"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let info: Value = http.get(gw.url("/")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["auth"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_learns_the_user_from_the_gateways_credential_never_from_the_client() {
    use axum::http::HeaderMap;
    use shopstack_platform::service_auth::{SERVICE_CREDENTIAL, ServiceAuth};
    const SERVICE_SECRET: &str = "service-secret-of-at-least-32-chars";
    let backend = std::sync::Arc::new(ServiceAuth::new(SERVICE_SECRET, "cart"));
    let echo = support::Tiny::start(axum::Router::new().fallback(move |headers: HeaderMap| {
        let backend = backend.clone();
        async move {
            let verified = backend.verify(headers.get(&SERVICE_CREDENTIAL));
            axum::Json(json!({
                "x-user-id": headers.get("x-user-id").and_then(|v| v.to_str().ok()),
                "issuer": verified.as_ref().ok().map(|verified| verified.issuer.clone()),
                "user": verified.ok().and_then(|verified| verified.user),
            }))
        }
    }))
    .await;
    let (gw, _state) = gateway_with(&echo.url(), &echo.url(), &AUTH_FLAGS, |settings| {
        settings.service_auth_secret = Some(SERVICE_SECRET.into());
    })
    .await;
    let forged = ServiceAuth::new("someone-elses-secret-of-32-chars!!", "gateway")
        .credential(Some("mallory"))
        .unwrap();
    let alice = hs256(&claims("alice"), SECRET);
    let seen: Value = client()
        .get(gw.url("/v1/cart/alice"))
        .bearer_auth(&alice)
        .header("x-user-id", "mallory")
        .header(SERVICE_CREDENTIAL, forged.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen,
        json!({"x-user-id": null, "issuer": "gateway", "user": "alice"})
    );
    let anonymous: Value = client()
        .get(gw.url("/catalog"))
        .header("x-user-id", "mallory")
        .header(SERVICE_CREDENTIAL, forged)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        anonymous,
        json!({"x-user-id": null, "issuer": "gateway", "user": null})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_and_rs256_keys_verify_and_an_hmac_token_made_from_the_public_key_does_not() {
    let shop = Shop::start().await;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    for (public, private, algorithm) in [
        (
            "test-es256-public.pem",
            "test-es256-private.pem",
            Algorithm::ES256,
        ),
        (
            "test-rs256-public.pem",
            "test-rs256-private.pem",
            Algorithm::RS256,
        ),
    ] {
        let public_path = format!("{fixtures}/{public}");
        let (gw, _state) = gateway(
            &shop.catalog_url(),
            &shop.cart_url(),
            &["--jwt-public-key-file", &public_path],
        )
        .await;
        let private_pem = std::fs::read(format!("{fixtures}/{private}")).unwrap();
        let key = match algorithm {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&private_pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&private_pem).unwrap(),
        };
        let token = sign(&claims("alice"), algorithm, &key);
        assert_eq!(
            get(gw.url("/v1/cart/alice"), Some(&token)).await.status(),
            200,
            "{algorithm:?}"
        );

        let public_pem = std::fs::read_to_string(&public_path).unwrap();
        let confused = hs256(&claims("alice"), &public_pem);
        assert_eq!(
            get(gw.url("/v1/cart/alice"), Some(&confused)).await.status(),
            401,
            "{algorithm:?} confusion"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_at_ten_times_the_limit_gets_429_and_another_user_is_unaffected() {
    let shop = Shop::start().await;
    let mut flags = AUTH_FLAGS.to_vec();
    flags.extend(["--rate-limit-rps", "1", "--rate-limit-burst", "5"]);
    let (gw, state) = gateway(&shop.catalog_url(), &shop.cart_url(), &flags).await;
    let alice = hs256(&claims("alice"), SECRET);
    let bob = hs256(&claims("bob"), SECRET);

    let started = Instant::now();
    let (mut allowed, mut limited) = (0u64, 0u64);
    for _ in 0..50 {
        let response = get(gw.url("/catalog"), Some(&alice)).await;
        match response.status().as_u16() {
            200 => allowed += 1,
            429 => {
                let retry_after = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap();
                assert!(retry_after >= 1);
                let (_, kind, _) = problem_kind(response).await;
                assert_eq!(kind, "rate-limited");
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // GCRA: at most the burst plus what refilled meanwhile.
    assert!(
        allowed <= 5 + started.elapsed().as_secs() + 1,
        "{allowed} allowed"
    );
    assert_eq!(allowed + limited, 50);
    assert!(limited > 0);
    assert_eq!(
        metric(&state, "gateway_rate_limited_total", &[("client", "user")]),
        limited as f64
    );

    for _ in 0..5 {
        assert_eq!(
            get(gw.url("/v1/cart/bob"), Some(&bob)).await.status(),
            200,
            "bob has his own bucket"
        );
    }
    for _ in 0..5 {
        assert_eq!(
            get(gw.url("/catalog"), None).await.status(),
            200,
            "anonymous callers are limited by IP"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_and_stress_need_the_admin_token() {
    let shop = Shop::start().await;
    let (gw, state) = gateway_with(&shop.catalog_url(), &shop.cart_url(), &AUTH_FLAGS, |settings| {
        settings.stress_require_admin = true;
    })
    .await;
    let http = client();
    let alice = hs256(&claims("alice"), SECRET);

    for token in [None, Some(alice.as_str()), Some("wrong-admin-token")] {
        let response = get(gw.url("/admin/catalog/simulation"), token).await;
        assert_eq!(response.status(), 401);
        assert!(response.headers().contains_key("www-authenticate"));
    }
    assert!(
        metric(
            &state,
            "gateway_auth_failures_total",
            &[("reason", "admin_token")]
        ) >= 3.0
    );
    assert_eq!(
        get(gw.url("/admin/catalog/simulation"), Some(ADMIN_TOKEN))
            .await
            .status(),
        200
    );

    let stress = "/stress?cpu_iterations=1&memory_mb=1";
    assert_eq!(http.post(gw.url(stress)).send().await.unwrap().status(), 401);
    assert_eq!(
        http.post(gw.url(stress))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let response = http
        .post(gw.url(stress))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_token_prints_a_token_the_gateway_accepts() {
    let shop = Shop::start().await;
    let (gw, _state) = gateway(&shop.catalog_url(), &shop.cart_url(), &AUTH_FLAGS).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["mint-token", "--sub", "alice", "--ttl", "10m"])
        .env_clear()
        .env("JWT_SECRET", SECRET)
        .env("JWT_ISSUER", ISSUER)
        .env("JWT_AUDIENCE", AUDIENCE)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(get(gw.url("/v1/cart/alice"), Some(&token)).await.status(), 200);
    assert_eq!(get(gw.url("/v1/cart/bob"), Some(&token)).await.status(), 404);

    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["mint-token", "--sub", "alice"])
        .env_clear()
        .env("JWT_SECRET", "short")
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_orders_answer_404_and_operators_need_the_admin_token() {
    let shop = Shop::start().await;
    let (_orders, gw, state) = orders_behind_auth(&shop).await;
    let http = client();
    let alice = hs256(&claims("alice"), SECRET);
    let bob = hs256(&claims("bob"), SECRET);
    let order = |user: &str| json!({"user_id": user, "shipping_address": "1 Main St", "order_items": [{"product_id": "prod-110", "quantity": 1}]});

    let created = http
        .post(gw.url("/api/orders"))
        .bearer_auth(&alice)
        .json(&order("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let placed_for_alice = http
        .post(gw.url("/api/orders"))
        .bearer_auth(&bob)
        .json(&order("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(placed_for_alice.status(), 404);

    for attempt in [
        http.get(gw.url(&format!("/api/orders/{id}"))),
        http.post(gw.url(&format!("/api/orders/{id}/cancel"))),
        http.get(gw.url("/api/users/alice/orders")),
    ] {
        let (status, kind, _) = problem_kind(attempt.bearer_auth(&bob).send().await.unwrap()).await;
        assert_eq!((status, kind.as_str()), (404, "not-found"));
    }
    let mine: Value = http
        .get(gw.url(&format!("/api/orders/{id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["data"]["status"], "pending", "bob's cancel changed nothing");
    assert_eq!(
        http.get(gw.url("/api/users/alice/orders"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let unknown = http
        .get(gw.url("/api/orders/00000000-0000-0000-0000-000000000000"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // Operators' routes: every order, and status changes.
    assert_eq!(
        http.get(gw.url("/api/orders"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let confirm = json!({"status": "confirmed"});
    let by_alice = http
        .patch(gw.url(&format!("/api/orders/{id}/status")))
        .bearer_auth(&alice)
        .json(&confirm)
        .send()
        .await
        .unwrap();
    assert_eq!(by_alice.status(), 401);
    assert_eq!(
        http.get(gw.url("/api/orders"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let by_staff = http
        .patch(gw.url(&format!("/api/orders/{id}/status")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&confirm)
        .send()
        .await
        .unwrap();
    assert_eq!(by_staff.status(), 200);

    let cancelled = http
        .post(gw.url(&format!("/api/orders/{id}/cancel")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    assert!(metric(&state, "gateway_auth_failures_total", &[("reason", "not_owner")]) >= 4.0);
}

/// A 404's status, its header names (values vary: request and trace ids) and its body bytes.
async fn not_found_answer(response: reqwest::Response) -> (u16, Vec<String>, String, Vec<u8>) {
    let status = response.status().as_u16();
    let mut names: Vec<String> = response
        .headers()
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name != "date")
        .collect();
    names.sort();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    let body = response.bytes().await.unwrap().to_vec();
    (status, names, content_type, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_order_and_a_missing_order_answer_the_same_bytes() {
    let shop = Shop::start().await;
    let (orders, gw, _state) = orders_behind_auth(&shop).await;
    let http = client();
    let alice = hs256(&claims("alice"), SECRET);
    let bob = hs256(&claims("bob"), SECRET);

    let created = http
        .post(gw.url("/api/orders"))
        .bearer_auth(&alice)
        .json(&json!({"user_id": "alice", "shipping_address": "1 Main St", "order_items": [{"product_id": "prod-110", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let alices = created.json::<Value>().await.unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A well-formed order id that names no order (a UUIDv7 like the real ones).
    let missing = "0190a0b0-1c2d-7e3f-8a4b-5c6d7e8f9a0b";

    // Through the gateway, as bob: alice's order (the gateway reads it and refuses) and an
    // order that does not exist (the orders service's own 404), read and cancelled.
    let mut answers = Vec::new();
    for id in [alices.as_str(), missing] {
        answers.push((
            format!("GET {id}"),
            not_found_answer(
                http.get(gw.url(&format!("/api/orders/{id}")))
                    .bearer_auth(&bob)
                    .send()
                    .await
                    .unwrap(),
            )
            .await,
        ));
        answers.push((
            format!("cancel {id}"),
            not_found_answer(
                http.post(gw.url(&format!("/api/orders/{id}/cancel")))
                    .bearer_auth(&bob)
                    .send()
                    .await
                    .unwrap(),
            )
            .await,
        ));
    }
    // Straight at the orders service: a missing order, read, moved and cancelled.
    for (name, request) in [
        (
            "orders GET",
            http.get(orders.server.url(&format!("/api/orders/{missing}"))),
        ),
        (
            "orders PATCH",
            http.patch(orders.server.url(&format!("/api/orders/{missing}/status")))
                .json(&json!({"status": "confirmed"})),
        ),
        (
            "orders cancel",
            http.post(orders.server.url(&format!("/api/orders/{missing}/cancel"))),
        ),
    ] {
        answers.push((
            name.to_owned(),
            not_found_answer(request.send().await.unwrap()).await,
        ));
    }

    let (first_name, first) = &answers[0];
    assert_eq!(first.0, 404);
    assert_eq!(first.2, "application/problem+json");
    let body: Value = serde_json::from_slice(&first.3).unwrap();
    assert_eq!(body["type"], "https://shopstack.dev/problems/not-found", "{body}");
    for (name, answer) in &answers[1..] {
        assert_eq!(
            (answer.0, &answer.1, &answer.2),
            (first.0, &first.1, &first.2),
            "{name} vs {first_name}"
        );
        assert_eq!(
            String::from_utf8_lossy(&answer.3),
            String::from_utf8_lossy(&first.3),
            "{name} vs {first_name}"
        );
    }

    // Alice's order is hers to read, and bob's cancel changed nothing.
    let mine: Value = http
        .get(gw.url(&format!("/api/orders/{alices}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["data"]["status"], "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_naming_another_user_answers_404_and_leaves_their_cart() {
    let shop = Shop::start().await;
    let (_orders, gw, state) = orders_behind_auth(&shop).await;
    let http = client();
    let alice = hs256(&claims("alice"), SECRET);
    let bob = hs256(&claims("bob"), SECRET);

    let added = http
        .post(gw.url("/v1/cart/alice"))
        .bearer_auth(&alice)
        .json(&json!({"product_id": "prod-110", "quantity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200);
    let before = metric(&state, "gateway_auth_failures_total", &[("reason", "not_owner")]);

    let refused = http
        .post(gw.url("/api/orders/checkout"))
        .bearer_auth(&bob)
        .json(&json!({"user_id": "alice", "shipping_address": "1 Main St"}))
        .send()
        .await
        .unwrap();
    let (status, kind, _) = problem_kind(refused).await;
    assert_eq!((status, kind.as_str()), (404, "not-found"));
    assert_eq!(
        metric(&state, "gateway_auth_failures_total", &[("reason", "not_owner")]),
        before + 1.0
    );

    // Other spellings of the same attempt never place alice's order either.
    for body in [
        r#"{"user_id":"bob","user_id":"alice","shipping_address":"1 Main St"}"#,
        r#"{"user_id":"alice","user_id":"bob","shipping_address":"1 Main St"}"#,
        r#"{"user_id":"\u0061lice","shipping_address":"1 Main St"}"#,
        r#"{"user_id":["alice"],"shipping_address":"1 Main St"}"#,
    ] {
        let response = http
            .post(gw.url("/api/orders/checkout"))
            .bearer_auth(&bob)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_client_error(),
            "{body}: {}",
            response.status()
        );
    }

    let cart: Value = http
        .get(gw.url("/v1/cart/alice"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cart["items"], json!([{"product_id": "prod-110", "quantity": 2}]));
    let placed: Value = http
        .get(gw.url("/api/users/alice/orders"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(placed["pagination"]["total"], 0, "{placed}");

    // Alice's own checkout goes through.
    let own = http
        .post(gw.url("/api/orders/checkout"))
        .bearer_auth(&alice)
        .json(&json!({"user_id": "alice", "shipping_address": "1 Main St"}))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_marking_an_extension_critical_is_refused() {
    let shop = Shop::start().await;
    let (gw, state) = gateway(&shop.catalog_url(), &shop.cart_url(), &AUTH_FLAGS).await;
    let url = gw.url("/v1/cart/alice");
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signed = |header: &Header| jsonwebtoken::encode(header, &claims("alice"), &key).unwrap();

    // No `crit`: accepted, and so is a header member nobody marked critical.
    assert_eq!(
        get(url.clone(), Some(&signed(&Header::new(Algorithm::HS256))))
            .await
            .status(),
        200
    );
    let mut noted = Header::new(Algorithm::HS256);
    noted.extras.insert("x-note", "informational");
    assert_eq!(get(url.clone(), Some(&signed(&noted))).await.status(), 200);

    for crit in [vec!["x-unknown-extension"], vec!["b64"], vec![]] {
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(crit.iter().map(|name| (*name).to_owned()).collect());
        header.extras.insert("x-unknown-extension", true);
        if crit == ["b64"] {
            header.extras.insert("b64", false);
        }
        let before = metric(&state, "gateway_auth_failures_total", &[("reason", "malformed")]);
        let response = get(url.clone(), Some(&signed(&header))).await;
        assert_eq!(response.status(), 401, "{crit:?}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{crit:?}: {challenge}"
        );
        assert!(challenge.contains("crit"), "{crit:?}: {challenge}");
        let (_, kind, _) = problem_kind(response).await;
        assert_eq!(kind, "unauthorized");
        assert_eq!(
            metric(&state, "gateway_auth_failures_total", &[("reason", "malformed")]),
            before + 1.0,
            "{crit:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_variable_set_but_empty_stops_the_gateway_at_start() {
    let dir = std::env::temp_dir().join(format!("gateway-empty-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty_pem = dir.join("empty.pem");
    std::fs::write(&empty_pem, "\n").unwrap();
    let empty_pem = empty_pem.to_str().unwrap().to_owned();
    for (variable, value, says) in [
        ("JWT_SECRET", "", "JWT_SECRET is set but empty"),
        ("JWT_SECRET", "   ", "JWT_SECRET is set but empty"),
        ("JWT_PUBLIC_KEY", "", "JWT_PUBLIC_KEY is set but empty"),
        ("JWT_PUBLIC_KEY_FILE", "", "JWT_PUBLIC_KEY_FILE"),
        ("JWT_PUBLIC_KEY_FILE", empty_pem.as_str(), "is empty"),
    ] {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .env_clear()
            .env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env(variable, value)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // A gateway that took the empty value for "auth off" would serve until killed.
        let output = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{variable}={value:?}: the gateway started instead of refusing"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{variable}={value:?}: {stderr}");
        assert!(stderr.contains(says), "{variable}={value:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
