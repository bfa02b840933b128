//! `Idempotency-Key` on cart writes, in memory and on Redis: the contract every keyed write
//! passes (`shopstack_testkit::idempotency`), and what is the cart's own.

use clap::Parser as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shopstack_testkit::idempotency::{KeyedWrite, check_contract, check_in_flight};
use shopstack_testkit::redis::RedisServer;
use shopstack_testkit::server::TestServer;
use shopstack_testkit::services;

use crate::helpers::{
    Stack, black_hole, client, json_of, spawn_cart, spawn_redis_stack, spawn_stack, stock_of,
};

fn v1_items(user: &str) -> String {
    format!("/v1/cart/{user}/items")
}

fn item(_user: &str, variant: u32) -> Value {
    json!({"product_id": "prod-111", "quantity": variant + 1})
}

fn simple_item(user: &str, variant: u32) -> Value {
    json!({"user_id": user, "product_id": "prod-112", "quantity": variant + 1})
}

/// The contract on both cart APIs: the caller is the path's `{user_id}` in the v1 cart API and
/// the body's `user_id` in the simple cart API.
async fn keeps_the_contract(cart: &TestServer) {
    let v1 = |user: &str| cart.url(&v1_items(user));
    let write = KeyedWrite {
        url: &v1,
        body: &item,
        success: StatusCode::OK,
        metrics_url: cart.url("/metrics"),
    };
    check_contract(&write, ["idem-alice", "idem-bob"], "shared-key-1").await;
    let simple = |_: &str| cart.url("/cart/add");
    let write = KeyedWrite {
        url: &simple,
        body: &simple_item,
        success: StatusCode::OK,
        metrics_url: cart.url("/metrics"),
    };
    check_contract(&write, ["simple-alice", "simple-bob"], "shared-key-1").await;
}

async fn post(url: &str, key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(url)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// What the replay saves: the change and its reservation are made once; a 4xx is an answer
/// and replays too; the same key on another route of the same user is another request.
async fn replays_without_applying_twice(stack: &Stack) {
    let url = stack.cart.url("/v1/cart/idem-user");
    let before = stock_of(&stack.catalog, "prod-113").await;
    let body = json!({"product_id": "prod-113", "quantity": 2});
    let first = post(&url, "key-aaa-1", &body).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first_etag = first.headers()["etag"].clone();
    let first_body = json_of(first).await;
    let again = post(&url, "key-aaa-1", &body).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["etag"], first_etag);
    assert_eq!(json_of(again).await, first_body);
    let cart = json_of(client().get(&url).send().await.unwrap()).await;
    assert_eq!(
        cart["items"],
        json!([{"product_id": "prod-113", "quantity": 2}]),
        "applied once"
    );
    assert_eq!(
        stock_of(&stack.catalog, "prod-113").await,
        before - 2,
        "reserved once"
    );

    // The same key and body on the items route (another route template) runs.
    let items = post(&stack.cart.url("/v1/cart/idem-user/items"), "key-aaa-1", &body).await;
    assert_eq!(items.status(), StatusCode::OK);
    assert!(items.headers().get("idempotent-replayed").is_none());
    assert_eq!(json_of(items).await["items"][0]["quantity"], 4);

    // One key on two items of a route: the same scope used for another request, never a
    // replay of the other item's answer.
    let second = json!({"product_id": "prod-114", "quantity": 1});
    post(&stack.cart.url("/v1/cart/idem-user/items"), "key-bbb-2", &second).await;
    let patch = |product: &str| {
        client()
            .patch(stack.cart.url(&format!("/v1/cart/idem-user/items/{product}")))
            .header("idempotency-key", "key-patch")
            .json(&json!({"quantity": 3}))
            .send()
    };
    assert_eq!(patch("prod-113").await.unwrap().status(), StatusCode::OK);
    let other_item = patch("prod-114").await.unwrap();
    assert_eq!(other_item.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let cart = json_of(client().get(&url).send().await.unwrap()).await;
    assert_eq!(cart["items"][1], json!({"product_id": "prod-114", "quantity": 1}));

    // Errors (4xx) are replayed too: the request was understood and refused.
    let bad = json!({"product_id": "prod-113", "quantity": 0});
    assert_eq!(
        post(&url, "key-ccc-3", &bad).await.status(),
        StatusCode::BAD_REQUEST
    );
    let bad_again = post(&url, "key-ccc-3", &bad).await;
    assert_eq!(bad_again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(bad_again.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn the_contract_in_memory() {
    let stack = spawn_stack().await;
    keeps_the_contract(&stack.cart).await;
    replays_without_applying_twice(&stack).await;
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_contract_on_redis() {
    let redis = RedisServer::start().unwrap();
    let stack = spawn_redis_stack(&redis.url(), &[]).await;
    keeps_the_contract(&stack.cart).await;
    replays_without_applying_twice(&stack).await;
    // One key per scope: service, caller (in braces, the cluster hash tag), method, route, key.
    let mut connection = raw(&redis.url()).await;
    for key in [
        "idem:cart:{idem-alice}:POST:/v1/cart/{user_id}/items:shared-key-1",
        "idem:cart:{idem-bob}:POST:/v1/cart/{user_id}/items:shared-key-1",
        "idem:cart:{simple-bob}:POST:/cart/add:shared-key-1",
    ] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(ttl > 23 * 3600, "{key} lives 24 h in Redis (ttl {ttl})");
    }
}

async fn a_repeat_in_flight_is_409_and_a_5xx_is_not_kept(cart: &TestServer) {
    let url = |user: &str| cart.url(&format!("/v1/cart/{user}"));
    let body = |_: &str, _: u32| json!({"product_id": "prod-123", "quantity": 1});
    let write = KeyedWrite {
        url: &url,
        body: &body,
        success: StatusCode::OK,
        metrics_url: cart.url("/metrics"),
    };
    let first = check_in_flight(&write, "slow-user", "slow-key-1").await;
    assert_eq!(first.status(), StatusCode::GATEWAY_TIMEOUT);
    // The 504 was not kept: a retry with the same key runs again (and times out again).
    let retry = write.send("slow-user", b"slow-key-1", 0).await;
    assert_eq!(retry.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(retry.headers().get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn a_repeat_in_flight_is_409_in_memory() {
    // The catalog never answers, so the first request stays in flight until its timeout.
    let cart = spawn_cart(&black_hole().await, &["--catalog-timeout", "1500ms"]).await;
    a_repeat_in_flight_is_409_and_a_5xx_is_not_kept(&cart).await;
}

#[tokio::test]
async fn a_repeat_in_flight_is_409_on_redis() {
    let redis = RedisServer::start().unwrap();
    let cart = services::cart(&black_hole().await)
        .redis(Some(&redis.url()))
        .flags(&["--catalog-timeout", "1500ms"])
        .start()
        .await;
    a_repeat_in_flight_is_409_and_a_5xx_is_not_kept(&cart).await;
}

#[tokio::test]
async fn on_redis_only_the_claim_s_owner_completes_it() {
    let redis = RedisServer::start().unwrap();
    let cart = services::cart(&black_hole().await)
        .redis(Some(&redis.url()))
        .flags(&["--catalog-timeout", "1500ms"])
        .start()
        .await;
    let key = "idem:cart:{owner-user}:POST:/v1/cart/{user_id}:owner-key";
    let first = tokio::spawn(post_owned(cart.url("/v1/cart/owner-user")));
    let mut connection = raw(&redis.url()).await;
    // Wait (boundedly) for the claim, then hand the scope to someone else, as if the claim had
    // expired and another request had claimed the key since.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let marker: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap();
        if marker.is_some_and(|marker| marker.contains("in_flight")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request claims its key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let successor = r#"{"state":"in_flight","fingerprint":"f","owner":"successor"}"#;
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(successor)
        .query_async(&mut connection)
        .await
        .unwrap();
    // The first request ends (504, which frees its claim) without touching the successor's.
    assert_eq!(first.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    let kept: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some(successor));
}

async fn post_owned(url: String) -> StatusCode {
    post(
        &url,
        "owner-key",
        &json!({"product_id": "prod-123", "quantity": 1}),
    )
    .await
    .status()
}

#[tokio::test]
async fn the_memory_store_keeps_at_most_idempotency_max_keys() {
    let stack = spawn_stack().await;
    let cart = spawn_cart(&stack.catalog.url(""), &["--idempotency-max-keys", "2"]).await;
    let url = cart.url("/v1/cart/bounded-user");
    let body = json!({"product_id": "prod-114", "quantity": 1});
    for key in ["bound-1", "bound-2", "bound-3"] {
        assert_eq!(post(&url, key, &body).await.status(), StatusCode::OK);
    }
    // The newest two are kept; the oldest was forgotten, so its retry runs again.
    let newest = post(&url, "bound-3", &body).await;
    assert_eq!(newest.headers()["idempotent-replayed"], "true");
    let oldest = post(&url, "bound-1", &body).await;
    assert!(oldest.headers().get("idempotent-replayed").is_none());
    assert_eq!(json_of(oldest).await["items"][0]["quantity"], 4);
}

#[test]
fn idempotency_max_keys_is_validated() {
    for bad in ["0", "-1", "many", "10000001"] {
        let parsed = cart::CartConfig::try_parse_from(["cart", "--idempotency-max-keys", bad]);
        assert!(parsed.is_err(), "{bad} is refused");
    }
    let parsed = cart::CartConfig::try_parse_from(["cart"]).unwrap();
    assert_eq!(parsed.idempotency_max_keys, 100_000);
}
