//! Checkout: the cart becomes an order, all or nothing, once.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_engines;

on_both_engines!(
    checkout_orders_the_cart_and_clears_it,
    idempotency_key_returns_the_same_order,
    checkout_with_insufficient_stock_leaves_cart_and_stock_unchanged,
    concurrent_checkouts_of_one_cart_make_one_order,
    recovery_undoes_an_interrupted_checkout,
    recovery_finishes_a_checkout_whose_cart_was_not_cleared,
);

async fn checkout_orders_the_cart_and_clears_it(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &[]).await;
    let initial = stock_of(&stack, "prod-111").await;
    add_to_cart(&stack, "shopper", "prod-111", 2).await;
    add_to_cart(&stack, "shopper", "prod-115", 3).await;
    // The cart reserved the units.
    assert_eq!(stock_of(&stack, "prod-111").await, initial - 2);

    let response = checkout(&stack, "shopper", None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = json_of(response).await;
    assert_eq!(body["status"], "success");
    let order = &body["data"];
    assert_eq!(order["user_id"], "shopper");
    assert_eq!(order["status"], "pending");
    assert_eq!(order["source"], "checkout");
    // 2 × 129.00 + 3 × 39.99 = 377.97, priced by the catalog.
    assert_eq!(order["total_amount"], 377.97);
    let lines: Vec<(String, i64)> = order["order_items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["product_id"].as_str().unwrap().to_owned(),
                item["quantity"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(
        lines.contains(&("prod-111".into(), 2)) && lines.contains(&("prod-115".into(), 3)),
        "{lines:?}"
    );

    // The reservation became a sale: stock stays down, the cart is empty.
    assert_eq!(stock_of(&stack, "prod-111").await, initial - 2);
    let cart = get_cart(&stack, "shopper").await;
    assert_eq!(cart["items"], json!([]));
    // (Also on the cart service itself, and its remaining holds are released.)
    let direct = json_of(
        client()
            .get(stack.cart.url("/v1/cart/shopper"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(direct, cart);
    let holds = json_of(
        client()
            .get(stack.catalog.url("/inventory/holds/shopper"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(holds["holds"], json!([]));
    // Cancelling the order returns the units.
    let id = order["id"].as_str().unwrap();
    let response = cancel_order(&stack, id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(stock_of(&stack, "prod-111").await, initial);

    // An empty cart has nothing to check out.
    let response = checkout(&stack, "shopper", None).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(
        json_of(response).await["type"],
        "https://shopstack.dev/problems/empty-cart"
    );
    let response = client()
        .post(stack.url("/api/orders/checkout"))
        .json(&json!({"user_id": "shopper"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "shipping_address is required"
    );
    let metrics = stack.orders.url("/metrics");
    assert_eq!(
        metric(&metrics, "checkouts_total", &["result=\"ok\""]).await,
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "orders_created_total", &["source=\"checkout\""]).await,
        Some(1.0)
    );
}

async fn idempotency_key_returns_the_same_order(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &[]).await;
    let initial = stock_of(&stack, "prod-112").await;
    add_to_cart(&stack, "retrier", "prod-112", 1).await;
    let first = checkout(&stack, "retrier", Some("key-1")).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = json_of(first).await;
    // The retry (the cart is empty by now) returns the same order, marked as a replay.
    let again = checkout(&stack, "retrier", Some("key-1")).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again = json_of(again).await;
    assert_eq!(again["data"]["id"], first["data"]["id"]);
    assert_eq!(stock_of(&stack, "prod-112").await, initial - 1);
    // The same key with another body is refused.
    let response = client()
        .post(stack.url("/api/orders/checkout"))
        .header("idempotency-key", "key-1")
        .json(&json!({"user_id": "retrier", "shipping_address": "Somewhere else"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Direct orders honour the key too.
    let place = |key: &'static str| {
        let url = stack.url("/api/orders");
        async move {
            client()
                .post(url)
                .header("idempotency-key", key)
                .json(&json!({"user_id": "retrier", "shipping_address": "x", "order_items": [{"product_id": "prod-112", "quantity": 2}]}))
                .send()
                .await
                .unwrap()
        }
    };
    let one = json_of(place("key-2").await).await;
    let two = place("key-2").await;
    assert_eq!(two.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(two).await["data"]["id"], one["data"]["id"]);
    assert_eq!(stock_of(&stack, "prod-112").await, initial - 3);
    let body = json_of(
        client()
            .get(stack.url("/api/users/retrier/orders"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["pagination"]["total"], 2);
}

async fn checkout_with_insufficient_stock_leaves_cart_and_stock_unchanged(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &[]).await;
    add_to_cart(&stack, "unlucky", "prod-113", 2).await;
    add_to_cart(&stack, "unlucky", "prod-115", 1).await;
    // The reservations lapse (released behind the cart's back) and the stock is sold elsewhere:
    // the cart still lists the items, but the catalog can no longer cover them.
    let response = client()
        .delete(stack.catalog.url("/inventory/holds/unlucky"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    set_stock(&stack, "prod-113", 1).await;
    let cart_before = get_cart(&stack, "unlucky").await;
    let stock_113 = stock_of(&stack, "prod-113").await;
    let stock_115 = stock_of(&stack, "prod-115").await;

    let response = checkout(&stack, "unlucky", None).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let problem = json_of(response).await;
    assert_eq!(
        problem["type"],
        "https://shopstack.dev/problems/insufficient-stock"
    );
    assert_eq!(problem["message"], "Insufficient stock. Only 1 available.");
    assert_eq!(problem["available"], 1);

    // Nothing happened: same cart (same version), same stock, no order.
    assert_eq!(get_cart(&stack, "unlucky").await, cart_before);
    assert_eq!(stock_of(&stack, "prod-113").await, stock_113);
    assert_eq!(stock_of(&stack, "prod-115").await, stock_115);
    let body = json_of(
        client()
            .get(stack.url("/api/users/unlucky/orders"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["pagination"]["total"], 0);
    // And the user is not locked out: with stock back, the same cart checks out.
    set_stock(&stack, "prod-113", 10).await;
    let response = checkout(&stack, "unlucky", None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(stock_of(&stack, "prod-113").await, 8);
}

async fn concurrent_checkouts_of_one_cart_make_one_order(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &[]).await;
    let initial = stock_of(&stack, "prod-110").await;
    add_to_cart(&stack, "eager", "prod-110", 3).await;
    let attempts = (0..10).map(|_| checkout(&stack, "eager", None));
    let responses = futures::future::join_all(attempts).await;
    let codes: Vec<StatusCode> = responses.iter().map(reqwest::Response::status).collect();
    let created = codes.iter().filter(|code| **code == StatusCode::CREATED).count();
    assert_eq!(created, 1, "{codes:?}");
    // The others were told a checkout was in progress, or that the cart is (now) empty.
    assert!(
        codes.iter().all(|code| matches!(
            *code,
            StatusCode::CREATED | StatusCode::CONFLICT | StatusCode::BAD_REQUEST
        )),
        "{codes:?}"
    );
    let body = json_of(
        client()
            .get(stack.url("/api/users/eager/orders"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["pagination"]["total"], 1);
    assert_eq!(body["data"][0]["order_items"][0]["quantity"], 3);
    // Sold once.
    assert_eq!(stock_of(&stack, "prod-110").await, initial - 3);
    assert_eq!(get_cart(&stack, "eager").await["items"], json!([]));
}

/// A saga record as a crash would leave it, written straight into the database.
async fn plant_saga(
    stack: &Stack,
    state: &str,
    user: &str,
    lines: Value,
    cart_version: Option<i64>,
) -> uuid::Uuid {
    let order_id = uuid::Uuid::now_v7();
    let saga = orders::repo::Saga {
        order_id,
        kind: orders::model::OrderSource::Checkout,
        user_id: user.into(),
        idempotency_key: Some(uuid::Uuid::new_v4().to_string()),
        request: "{}".into(),
        cart_version,
        lines: serde_json::from_value(lines).unwrap(),
        state: orders::repo::SagaState::Started,
        updated_at: chrono::Utc::now(),
    };
    let db = stack.orders_state.orders.db();
    orders::repo::insert_saga(db, &saga).await.unwrap();
    if state != "started" {
        let to = match state {
            "committed" => orders::repo::SagaState::Committed,
            _ => orders::repo::SagaState::Ordered,
        };
        assert!(
            orders::repo::transition_saga(db, order_id, orders::repo::SagaState::Started, to)
                .await
                .unwrap()
        );
    }
    order_id
}

async fn recovery_undoes_an_interrupted_checkout(engine: Engine) {
    let db = TestDb::of(engine).await;
    // Anything unfinished for more than a second counts as interrupted.
    let stack = spawn_stack(&db, None, &["--saga-recovery-after", "1s"]).await;
    let initial = stock_of(&stack, "prod-114").await;
    add_to_cart(&stack, "crashed", "prod-114", 4).await;
    let cart = get_cart(&stack, "crashed").await;
    // The process died after the catalog committed the stock and before the order was written.
    let lines =
        json!([{"product_id": "prod-114", "quantity": 4, "unit_price_cents": 8900, "currency": "USD"}]);
    let order_id = plant_saga(&stack, "committed", "crashed", lines, cart["version"].as_i64()).await;
    let response = client()
        .post(stack.catalog.url("/inventory/commit"))
        .json(&json!({"order_id": order_id.to_string(), "owner": "crashed", "items": [{"product_id": "prod-114", "quantity": 4}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Meanwhile, the user's next checkout waits for the interrupted one to be resolved.
    let response = checkout(&stack, "crashed", None).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);

    // The recovery task gives the stock back and drops the saga; no order was made.
    let metrics = stack.orders.url("/metrics");
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&metrics, "order_saga_recoveries_total", &["outcome=\"undone\""]).await == Some(1.0)
        })
        .await
    );
    assert_eq!(stock_of(&stack, "prod-114").await, initial);
    let body = json_of(
        client()
            .get(stack.url("/api/users/crashed/orders"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["pagination"]["total"], 0);
    // The cart is untouched and can be checked out now.
    assert_eq!(get_cart(&stack, "crashed").await, cart);
    let response = checkout(&stack, "crashed", None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(stock_of(&stack, "prod-114").await, initial - 4);

    // A saga that never got as far as the commit is undone without inventing stock.
    let lines =
        json!([{"product_id": "prod-114", "quantity": 5, "unit_price_cents": 8900, "currency": "USD"}]);
    set_stock(&stack, "prod-114", 0).await;
    plant_saga(&stack, "started", "crashed", lines, None).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&metrics, "order_saga_recoveries_total", &["outcome=\"undone\""]).await == Some(2.0)
        })
        .await
    );
    assert_eq!(stock_of(&stack, "prod-114").await, 0);
}

async fn recovery_finishes_a_checkout_whose_cart_was_not_cleared(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &["--saga-recovery-after", "1s"]).await;
    add_to_cart(&stack, "halfway", "prod-115", 1).await;
    let cart = get_cart(&stack, "halfway").await;
    // The order was written, then the process died before clearing the cart.
    plant_saga(&stack, "ordered", "halfway", json!([]), cart["version"].as_i64()).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            get_cart(&stack, "halfway").await["items"] == json!([])
        })
        .await,
        "the recovery task clears the cart it was checking out"
    );
    let metrics = stack.orders.url("/metrics");
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&metrics, "order_saga_recoveries_total", &["outcome=\"finished\""]).await == Some(1.0)
        })
        .await
    );
    // A cart changed since the checkout is left alone.
    add_to_cart(&stack, "halfway", "prod-115", 2).await;
    let cart = get_cart(&stack, "halfway").await;
    let stale_version = cart["version"].as_i64().unwrap() - 1;
    plant_saga(&stack, "ordered", "halfway", json!([]), Some(stale_version)).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&metrics, "order_saga_recoveries_total", &["outcome=\"finished\""]).await == Some(2.0)
        })
        .await
    );
    assert_eq!(get_cart(&stack, "halfway").await, cart);
}
