//! The Redis backend: the v1 cart API's data model (`cart:{user_id}` hashes), starting without Redis, losing it and getting it back.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use shopstack_testkit::redis::RedisServer;

use shopstack_testkit::services;

use crate::helpers::{client, eventually, json_of, spawn_catalog, spawn_redis_stack};

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn carts_are_redis_hashes_named_cart_user_id() {
    let redis = RedisServer::start().unwrap();
    let stack = spawn_redis_stack(&redis.url(), &[]).await;
    for (product, quantity) in [("prod-123", 2), ("prod-456", 5)] {
        let response = client()
            .post(stack.cart.url("/v1/cart/user-123"))
            .json(&json!({"product_id": product, "quantity": quantity}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let mut connection = raw(&redis.url()).await;
    let hash: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("cart:user-123")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        hash,
        HashMap::from([
            ("prod-123".to_owned(), "2".to_owned()),
            ("prod-456".to_owned(), "5".to_owned())
        ])
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg("cart:user-123")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 29 * 86_400, "writes refresh the 30-day expiry (ttl {ttl})");

    let health = json_of(client().get(stack.cart.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(health["redis"], "healthy");
}

#[tokio::test]
async fn starts_without_redis_and_recovers_by_itself() {
    let mut redis = RedisServer::start().unwrap();
    redis.kill();
    let catalog = spawn_catalog().await;
    let cart = services::cart(&catalog.url(""))
        .redis(Some(&redis.url()))
        .start()
        .await;

    let health = client().get(cart.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(health).await["redis"], "unhealthy");
    assert_eq!(
        client().get(cart.url("/readyz")).send().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let refused = client().get(cart.url("/v1/cart/u1")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(refused.headers()["content-type"], "application/problem+json");

    redis.restart().unwrap();
    let recovered = eventually(Duration::from_secs(10), || async {
        client()
            .get(cart.url("/v1/cart/u1"))
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::OK
    })
    .await;
    assert!(recovered, "the cart reconnects without a restart");
    assert_eq!(
        client().get(cart.url("/readyz")).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn losing_redis_mid_traffic_gives_fast_503s_then_recovers() {
    // It comes back with its data: a Redis that lost it stops sales until operators set the
    // stock again (ops/stack-tests/tests/fault_proofs.rs).
    let mut redis = RedisServer::start_persistent().unwrap();
    let stack = spawn_redis_stack(&redis.url(), &[]).await;
    let client = client();
    let add = |user: String| {
        let client = client.clone();
        let url = stack.cart.url(&format!("/v1/cart/{user}"));
        async move {
            client
                .post(url)
                .json(&json!({"product_id": "prod-110", "quantity": 1}))
                .send()
                .await
                .unwrap()
        }
    };
    for i in 0..20 {
        assert_eq!(add(format!("before-{i}")).await.status(), StatusCode::OK);
    }

    redis.kill();
    let mut statuses = Vec::new();
    for i in 0..30 {
        let response = add(format!("during-{i}")).await;
        let status = response.status();
        if status != StatusCode::OK {
            assert_eq!(response.headers()["content-type"], "application/problem+json");
            let problem = json_of(response).await;
            assert_eq!(problem["status"].as_u64(), Some(u64::from(status.as_u16())));
        }
        statuses.push(status);
    }
    // Everything that needed Redis failed cleanly: 503s (the catalog's reservations are on the
    // same Redis, so it may be the one saying so), never a hang or a crash.
    assert!(
        statuses
            .iter()
            .all(|status| *status == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    let health = client.get(stack.cart.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);

    redis.restart().unwrap();
    let recovered = eventually(Duration::from_secs(15), || async {
        add("after".to_owned()).await.status() == StatusCode::OK
    })
    .await;
    assert!(recovered, "service recovers when Redis returns");
    assert_eq!(
        client
            .get(stack.cart.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        client
            .get(stack.catalog.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}
