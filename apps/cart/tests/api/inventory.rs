//! Reservations: adding reserves, lowering/removing/clearing/expiring releases, never oversold.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use shopstack_testkit::redis::RedisServer;
use shopstack_testkit::services;

use crate::helpers::{
    Stack, client, eventually, json_of, set_stock, spawn_redis_stack, spawn_stack, stock_of,
};

async fn add(stack: &Stack, user: &str, product: &str, quantity: i64) -> reqwest::Response {
    client()
        .post(stack.cart.url(&format!("/v1/cart/{user}/items")))
        .json(&json!({"product_id": product, "quantity": quantity}))
        .send()
        .await
        .unwrap()
}

async fn reservations_follow_the_cart(stack: Stack) {
    set_stock(&stack.catalog, "prod-456", 20).await;
    assert_eq!(
        add(&stack, "r-user", "prod-456", 5).await.status(),
        StatusCode::OK
    );
    assert_eq!(stock_of(&stack.catalog, "prod-456").await, 15);

    let patched = client()
        .patch(stack.cart.url("/v1/cart/r-user/items/prod-456"))
        .json(&json!({"quantity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    assert_eq!(
        stock_of(&stack.catalog, "prod-456").await,
        18,
        "lowering releases"
    );

    let raised = client()
        .patch(stack.cart.url("/v1/cart/r-user/items/prod-456"))
        .json(&json!({"quantity": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(raised.status(), StatusCode::OK);
    assert_eq!(stock_of(&stack.catalog, "prod-456").await, 13, "raising reserves");

    let too_many = client()
        .patch(stack.cart.url("/v1/cart/r-user/items/prod-456"))
        .json(&json!({"quantity": 21}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), StatusCode::CONFLICT);
    let problem = json_of(too_many).await;
    assert_eq!(problem["message"], "Insufficient stock. Only 13 available.");
    assert_eq!(
        stock_of(&stack.catalog, "prod-456").await,
        13,
        "a refused change changes nothing"
    );

    let removed = client()
        .delete(stack.cart.url("/v1/cart/r-user/items/prod-456"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::OK);
    assert_eq!(
        stock_of(&stack.catalog, "prod-456").await,
        20,
        "removing releases"
    );

    add(&stack, "r-user", "prod-456", 4).await;
    add(&stack, "r-user", "prod-123", 1).await;
    assert_eq!(stock_of(&stack.catalog, "prod-456").await, 16);
    client()
        .delete(stack.cart.url("/v1/cart/r-user"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stock_of(&stack.catalog, "prod-456").await,
        20,
        "clearing releases"
    );
}

#[tokio::test]
async fn reservations_follow_the_cart_in_memory() {
    reservations_follow_the_cart(spawn_stack().await).await;
}

#[tokio::test]
async fn reservations_follow_the_cart_on_redis() {
    let redis = RedisServer::start().unwrap();
    reservations_follow_the_cart(spawn_redis_stack(&redis.url(), &[]).await).await;
}

/// 200 shoppers race for the last 10 units: exactly 10 win, 190 get 409, stock ends at 0 and
/// comes back to 10 when the winners clear their carts. `carts` are replicas sharing one catalog.
async fn last_units_race(stack: &Stack, carts: &[String]) {
    set_stock(&stack.catalog, "prod-123", 10).await;
    let client = client();
    let attempts = (0..200).map(|i| {
        let client = client.clone();
        let url = format!("{}/v1/cart/racer-{i}", carts[i % carts.len()]);
        async move {
            let response = client
                .post(url)
                .json(&json!({"product_id": "prod-123", "quantity": 1}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = json_of(response).await;
            (i, status, body)
        }
    });
    let results = futures::future::join_all(attempts).await;
    let winners: Vec<usize> = results
        .iter()
        .filter(|(_, status, _)| *status == StatusCode::OK)
        .map(|(i, _, _)| *i)
        .collect();
    let refused: Vec<_> = results
        .iter()
        .filter(|(_, status, _)| *status == StatusCode::CONFLICT)
        .collect();
    assert_eq!(winners.len(), 10, "exactly the last 10 units are sold");
    assert_eq!(refused.len(), 190);
    for (_, _, body) in &refused {
        assert_eq!(body["message"], "Insufficient stock. Only 0 available.");
    }
    assert_eq!(stock_of(&stack.catalog, "prod-123").await, 0);
    for i in winners {
        let url = format!("{}/v1/cart/racer-{i}", carts[i % carts.len()]);
        assert_eq!(client.delete(url).send().await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(stock_of(&stack.catalog, "prod-123").await, 10);
}

#[tokio::test]
async fn two_hundred_clients_race_for_ten_units_in_memory() {
    let stack = spawn_stack().await;
    let carts = vec![stack.cart.url("")];
    last_units_race(&stack, &carts).await;
}

#[tokio::test]
async fn two_hundred_clients_race_for_ten_units_across_replicas_on_redis() {
    let redis = RedisServer::start().unwrap();
    let stack = spawn_redis_stack(&redis.url(), &[]).await;
    // A second catalog and a second cart on the same Redis: replicas share stock and carts.
    let catalog_2 = crate::helpers::catalog().redis(Some(&redis.url())).start().await;
    let cart_2 = services::cart(&catalog_2.url(""))
        .redis(Some(&redis.url()))
        .start()
        .await;
    let carts = vec![stack.cart.url(""), cart_2.url("")];
    last_units_race(&stack, &carts).await;
}

async fn expiry_releases_stock(stack: Stack) {
    set_stock(&stack.catalog, "prod-789", 10).await;
    assert_eq!(
        add(&stack, "forgetful", "prod-789", 3).await.status(),
        StatusCode::OK
    );
    assert_eq!(stock_of(&stack.catalog, "prod-789").await, 7);
    let released = eventually(Duration::from_secs(10), || async {
        stock_of(&stack.catalog, "prod-789").await == 10
    })
    .await;
    assert!(released, "an expired cart's reservation comes back");
    // The cart's own keys expire on their TTL, set just after the hold's: a moment later at most.
    let gone = eventually(Duration::from_secs(5), || async {
        let cart = json_of(
            client()
                .get(stack.cart.url("/v1/cart/forgetful"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        cart["total_items"] == 0
    })
    .await;
    assert!(gone, "and the cart itself is gone");
}

#[tokio::test]
async fn expired_carts_give_their_stock_back_in_memory() {
    let catalog = crate::helpers::spawn_catalog().await;
    let cart = crate::helpers::spawn_cart(&catalog.url(""), &["--cart-ttl", "1s"]).await;
    expiry_releases_stock(Stack { catalog, cart }).await;
}

#[tokio::test]
async fn expired_carts_give_their_stock_back_on_redis() {
    let redis = RedisServer::start().unwrap();
    expiry_releases_stock(spawn_redis_stack(&redis.url(), &["--cart-ttl", "1s"]).await).await;
}
