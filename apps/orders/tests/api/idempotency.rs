//! `Idempotency-Key` on the orders API's placements: the contract every keyed write passes
//! (`shopstack_testkit::idempotency`, the cart runs the same), kept in the saga table on both
//! database engines.

use reqwest::StatusCode;
use serde_json::{Value, json};
use shopstack_testkit::idempotency::{KeyedWrite, check_contract, check_in_flight};
use shopstack_testkit::ports::black_hole;
use shopstack_testkit::services;

use crate::helpers::{Engine, TestDb, add_to_cart, client, json_of, spawn_stack, stock_of};
use crate::on_both_engines;

on_both_engines!(
    placements_keep_the_contract,
    a_repeat_in_flight_is_409,
    one_key_on_two_routes_is_two_requests,
);

fn order(user: &str, variant: u32) -> Value {
    json!({
        "user_id": user,
        "shipping_address": "1 Contract Street",
        "order_items": [{"product_id": "prod-110", "quantity": variant + 1}],
    })
}

async fn placements_keep_the_contract(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &[]).await;
    let initial = stock_of(&stack, "prod-110").await;
    let url = |_: &str| stack.orders.url("/api/orders");
    let write = KeyedWrite {
        url: &url,
        body: &order,
        success: StatusCode::CREATED,
        metrics_url: stack.orders.url("/metrics"),
    };
    check_contract(&write, ["orders-alice", "orders-bob"], "shared-key-1").await;
    // Three orders ran (alice's, bob's, bob's with the longest key): 1 + 1 + 2 units.
    assert_eq!(stock_of(&stack, "prod-110").await, initial - 4);
}

async fn a_repeat_in_flight_is_409(engine: Engine) {
    let db = TestDb::of(engine).await;
    // The catalog never answers, so the first placement stays in flight until its timeout.
    let orders = services::orders(&db.url, &black_hole().await, &black_hole().await)
        .flags(&["--upstream-timeout", "1500ms"])
        .start()
        .await;
    let url = |_: &str| orders.url("/api/orders");
    let write = KeyedWrite {
        url: &url,
        body: &order,
        success: StatusCode::CREATED,
        metrics_url: orders.url("/metrics"),
    };
    let first = check_in_flight(&write, "slow-user", "slow-key-1").await;
    assert_eq!(first.status(), StatusCode::GATEWAY_TIMEOUT);
    // The failed placement was forgotten: a retry with the same key runs again.
    let retry = write.send("slow-user", b"slow-key-1", 0).await;
    assert_eq!(retry.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(retry.headers().get("idempotent-replayed").is_none());
}

async fn one_key_on_two_routes_is_two_requests(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &[]).await;
    add_to_cart(&stack, "two-routes", "prod-111", 1).await;
    let direct = client()
        .post(stack.orders.url("/api/orders"))
        .header("idempotency-key", "one-key")
        .json(&order("two-routes", 0))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), StatusCode::CREATED);
    let checkout = client()
        .post(stack.orders.url("/api/orders/checkout"))
        .header("idempotency-key", "one-key")
        .json(&json!({"user_id": "two-routes", "shipping_address": "1 Contract Street"}))
        .send()
        .await
        .unwrap();
    assert_eq!(checkout.status(), StatusCode::CREATED, "the checkout runs");
    assert!(checkout.headers().get("idempotent-replayed").is_none());
    let (direct, checkout) = (json_of(direct).await, json_of(checkout).await);
    assert_ne!(direct["data"]["id"], checkout["data"]["id"]);
    assert_eq!(checkout["data"]["order_items"][0]["product_id"], "prod-111");
}
