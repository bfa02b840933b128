//! `Idempotency-Key` on cart writes, in memory and on Redis.

use reqwest::StatusCode;
use serde_json::json;
use shopstack_testkit::redis::RedisServer;

use crate::helpers::{
    Stack, black_hole, client, json_of, spawn_cart, spawn_redis_stack, spawn_stack, stock_of,
};

async fn replays_without_applying_twice(stack: Stack) {
    let url = stack.cart.url("/v1/cart/idem-user");
    let before = stock_of(&stack.catalog, "prod-111").await;
    let send = |body: serde_json::Value, key: &'static str| {
        let url = url.clone();
        async move {
            client()
                .post(url)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let first = send(json!({"product_id": "prod-111", "quantity": 2}), "key-aaa-1").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_etag = first.headers()["etag"].clone();
    let first_body = json_of(first).await;

    let again = send(json!({"product_id": "prod-111", "quantity": 2}), "key-aaa-1").await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["etag"], first_etag);
    assert_eq!(json_of(again).await, first_body);

    let cart = json_of(client().get(&url).send().await.unwrap()).await;
    assert_eq!(
        cart["items"],
        json!([{"product_id": "prod-111", "quantity": 2}]),
        "applied once"
    );
    assert_eq!(
        stock_of(&stack.catalog, "prod-111").await,
        before - 2,
        "reserved once"
    );

    let reused = send(json!({"product_id": "prod-111", "quantity": 3}), "key-aaa-1").await;
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.headers()["content-type"], "application/problem+json");

    // A different key is a different request.
    let other = send(json!({"product_id": "prod-111", "quantity": 2}), "key-bbb-2").await;
    assert_eq!(other.status(), StatusCode::OK);
    let cart = json_of(client().get(&url).send().await.unwrap()).await;
    assert_eq!(cart["items"][0]["quantity"], 4);

    // Errors (4xx) are replayed too: the request was understood and refused.
    let bad = send(json!({"product_id": "prod-111", "quantity": 0}), "key-ccc-3").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let bad_again = send(json!({"product_id": "prod-111", "quantity": 0}), "key-ccc-3").await;
    assert_eq!(bad_again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(bad_again.headers()["idempotent-replayed"], "true");

    let malformed_key = client()
        .post(&url)
        .header("idempotency-key", "x".repeat(300))
        .json(&json!({"product_id": "prod-111", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed_key.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn idempotent_replay_in_memory() {
    replays_without_applying_twice(spawn_stack().await).await;
}

#[tokio::test]
async fn idempotent_replay_on_redis() {
    let redis = RedisServer::start().unwrap();
    replays_without_applying_twice(spawn_redis_stack(&redis.url(), &[]).await).await;
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg("idem:cart:key-aaa-1")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 23 * 3600, "keys live 24 h in Redis (ttl {ttl})");
}

#[tokio::test]
async fn a_repeat_while_the_first_is_in_flight_is_409_and_5xx_is_not_kept() {
    // The catalog never answers, so the first request stays in flight until its timeout.
    let cart = spawn_cart(&black_hole().await, &["--catalog-timeout", "1500ms"]).await;
    let url = cart.url("/v1/cart/slow-user");
    let body = json!({"product_id": "prod-123", "quantity": 1});
    let first = tokio::spawn({
        let (url, body) = (url.clone(), body.clone());
        async move {
            client()
                .post(url)
                .header("idempotency-key", "slow-key-1")
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = client()
        .post(&url)
        .header("idempotency-key", "slow-key-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::CONFLICT);
    assert!(second.headers().contains_key("retry-after"));
    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::GATEWAY_TIMEOUT);
    // The 504 was not kept: a retry with the same key runs again (and times out again).
    let retry = client()
        .post(&url)
        .header("idempotency-key", "slow-key-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(retry.headers().get("idempotent-replayed").is_none());
}
