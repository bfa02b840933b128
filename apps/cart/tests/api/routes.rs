use reqwest::StatusCode;
use serde_json::json;
use shopstack_testkit::metrics::{metric_sum, scrape};

use crate::helpers::{black_hole, client, closed_port, json_of, spawn_cart, spawn_stack};

#[tokio::test]
async fn v1_add_get_and_clear_follow_the_v1_cart_api() {
    let stack = spawn_stack().await;
    let url = stack.cart.url("/v1/cart/user-123");
    let added = client()
        .post(&url)
        .json(&json!({"product_id": "prod-123", "quantity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::OK);
    assert_eq!(added.headers()["etag"], "\"v1\"");
    let body = json_of(added).await;
    assert_eq!(body["user_id"], "user-123");
    assert_eq!(body["items"], json!([{"product_id": "prod-123", "quantity": 2}]));
    assert_eq!(body["total_items"], 1);

    // Adding the same product again adds to the line (HINCRBY in the v1 cart API's Redis model).
    client()
        .post(&url)
        .json(&json!({"product_id": "prod-123", "quantity": 3}))
        .send()
        .await
        .unwrap();
    client()
        .post(&url)
        .json(&json!({"product_id": "prod-789", "quantity": 1}))
        .send()
        .await
        .unwrap();
    let cart = json_of(client().get(&url).send().await.unwrap()).await;
    assert_eq!(
        cart["items"],
        json!([{"product_id": "prod-123", "quantity": 5}, {"product_id": "prod-789", "quantity": 1}])
    );
    assert_eq!(cart["total_items"], 2);

    let cleared = json_of(client().delete(&url).send().await.unwrap()).await;
    assert_eq!(
        cleared,
        json!({"message": "Cart cleared successfully", "user_id": "user-123"})
    );
    let empty = json_of(client().get(&url).send().await.unwrap()).await;
    assert_eq!(empty["items"], json!([]));
    assert_eq!(empty["total_items"], 0);
}

#[tokio::test]
async fn unknown_user_gets_an_empty_cart() {
    let stack = spawn_stack().await;
    let response = client()
        .get(stack.cart.url("/v1/cart/nobody-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    assert_eq!(
        body,
        json!({"user_id": "nobody-here", "items": [], "total_items": 0, "version": 0})
    );
}

#[tokio::test]
async fn item_level_routes_follow_the_v1_cart_api() {
    let stack = spawn_stack().await;
    let items = stack.cart.url("/v1/cart/user-9/items");
    let added = client()
        .post(&items)
        .json(&json!({"product_id": "prod-456", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::OK);

    let patched = client()
        .patch(stack.cart.url("/v1/cart/user-9/items/prod-456"))
        .json(&json!({"quantity": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    assert_eq!(
        json_of(patched).await["items"],
        json!([{"product_id": "prod-456", "quantity": 4}])
    );

    let missing = client()
        .patch(stack.cart.url("/v1/cart/user-9/items/prod-123"))
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");

    let removed = client()
        .delete(stack.cart.url("/v1/cart/user-9/items/prod-456"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::OK);
    assert_eq!(json_of(removed).await["items"], json!([]));
    let again = client()
        .delete(stack.cart.url("/v1/cart/user-9/items/prod-456"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn simple_form_follows_the_simple_cart_api() {
    let stack = spawn_stack().await;
    let added = client()
        .post(stack.cart.url("/cart/add"))
        .json(&json!({"user_id": "u-1", "product_id": "prod-110", "quantity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::OK);
    let cart = json_of(client().get(stack.cart.url("/cart/u-1")).send().await.unwrap()).await;
    assert_eq!(cart["items"], json!([{"product_id": "prod-110", "quantity": 2}]));
    let cleared = json_of(client().delete(stack.cart.url("/cart/u-1")).send().await.unwrap()).await;
    assert_eq!(cleared["message"], "Cart cleared successfully");
    // Both forms see the same carts.
    let v1 = json_of(client().get(stack.cart.url("/v1/cart/u-1")).send().await.unwrap()).await;
    assert_eq!(v1["items"], json!([]));
}

#[tokio::test]
async fn document_states_the_shared_id_rule() {
    let stack = spawn_stack().await;
    let doc = json_of(
        client()
            .get(stack.cart.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // User and product ids in every path and body.
    assert!(shopstack_testkit::openapi::assert_id_patterns(&doc) >= 10);
}

/// `.` and `..` are dot segments: inside the catalog call's URL they would be resolved away
/// and the call would reach another route. They are refused as ids before anything is called.
#[tokio::test]
async fn dot_segment_ids_are_refused() {
    let stack = spawn_stack().await;
    let bodies = [
        json!({"user_id": ".", "product_id": "prod-110", "quantity": 1}),
        json!({"user_id": "..", "product_id": "prod-110", "quantity": 1}),
        json!({"user_id": "...", "product_id": "prod-110", "quantity": 1}),
        json!({"user_id": "u-1", "product_id": "..", "quantity": 1}),
    ];
    for body in bodies {
        let response = client()
            .post(stack.cart.url("/cart/add"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let problem = json_of(response).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("not only dots"),
            "{problem}"
        );
    }
    let dotted = client()
        .post(stack.cart.url("/cart/add"))
        .json(&json!({"user_id": ".u.", "product_id": "prod-110", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        dotted.status(),
        StatusCode::OK,
        "dots beside other characters are fine"
    );
    let cart = json_of(client().get(stack.cart.url("/cart/u-1")).send().await.unwrap()).await;
    assert_eq!(cart["items"], json!([]), "refused adds changed nothing");
}

#[tokio::test]
async fn bad_input_is_a_400_problem_and_changes_nothing() {
    let stack = spawn_stack().await;
    let url = stack.cart.url("/v1/cart/user-1");
    client()
        .post(&url)
        .json(&json!({"product_id": "prod-123", "quantity": 1}))
        .send()
        .await
        .unwrap();
    let before = json_of(client().get(&url).send().await.unwrap()).await;

    let bodies = [
        "{\"product_id\": \"prod-123\"",        // truncated JSON
        "not json at all",                      // not JSON
        "",                                     // empty
        "{\"product_id\": \"prod-123\"}",       // quantity missing
        "{\"product_id\": 5, \"quantity\": 1}", // wrong type
        "{\"product_id\": \"prod-123\", \"quantity\": 0}",
        "{\"product_id\": \"prod-123\", \"quantity\": -2}",
        "{\"product_id\": \"prod-123\", \"quantity\": 1.5}",
        "{\"product_id\": \"prod-123\", \"quantity\": 101}",
        "{\"product_id\": \"prod-123\", \"quantity\": 99999999999}",
        "{\"product_id\": \"bad id with spaces\", \"quantity\": 1}",
        "{\"product_id\": \"..\", \"quantity\": 1}",
        "[]",
        // Mass assignment: members the client has no say over are refused, not ignored.
        "{\"product_id\": \"prod-123\", \"quantity\": 1, \"price\": 0}",
        "{\"product_id\": \"prod-123\", \"quantity\": 1, \"user_id\": \"someone-else\"}",
    ];
    for body in bodies {
        let response = client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "body {body:?}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem = json_of(response).await;
        assert_eq!(problem["status"], 400);
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    // Exceeding the per-line maximum through repeated adds is refused too: each add is well
    // formed, so it is a conflict with what the line already holds.
    let over = client()
        .post(&url)
        .json(&json!({"product_id": "prod-123", "quantity": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), StatusCode::CONFLICT);
    assert_eq!(json_of(over).await["max_quantity"], 100);
    let patch_zero = client()
        .patch(stack.cart.url("/v1/cart/user-1/items/prod-123"))
        .json(&json!({"quantity": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch_zero.status(), StatusCode::BAD_REQUEST);
    let bad_user = client()
        .get(stack.cart.url("/v1/cart/a%20b"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_user.status(), StatusCode::BAD_REQUEST);

    let after = json_of(client().get(&url).send().await.unwrap()).await;
    assert_eq!(before, after, "rejected requests must not change the cart");
}

#[tokio::test]
async fn unknown_product_is_a_404_problem() {
    let stack = spawn_stack().await;
    let response = client()
        .post(stack.cart.url("/v1/cart/user-1"))
        .json(&json!({"product_id": "prod-does-not-exist", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let problem = json_of(response).await;
    assert_eq!(problem["product_id"], "prod-does-not-exist");
    let cart = json_of(
        client()
            .get(stack.cart.url("/v1/cart/user-1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(cart["total_items"], 0);
}

#[tokio::test]
async fn stale_if_match_is_412_and_changes_nothing() {
    let stack = spawn_stack().await;
    let url = stack.cart.url("/v1/cart/user-7");
    let first = client()
        .post(&url)
        .json(&json!({"product_id": "prod-123", "quantity": 1}))
        .send()
        .await
        .unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, "\"v1\"");
    let fresh = client()
        .post(&url)
        .header("if-match", &etag)
        .json(&json!({"product_id": "prod-456", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    assert_eq!(fresh.headers()["etag"], "\"v2\"");
    let stale = client()
        .post(&url)
        .header("if-match", &etag)
        .json(&json!({"product_id": "prod-789", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(json_of(stale).await["version"], 2);
    let stale_clear = client()
        .delete(&url)
        .header("if-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(stale_clear.status(), StatusCode::PRECONDITION_FAILED);
    let cart = json_of(client().get(&url).send().await.unwrap()).await;
    assert_eq!(cart["total_items"], 2);
    assert_eq!(cart["version"], 2);
}

#[tokio::test]
async fn catalog_down_gives_a_fast_503_problem() {
    let cart = spawn_cart(&closed_port().await, &[]).await;
    let response = client()
        .post(cart.url("/v1/cart/user-1"))
        .json(&json!({"product_id": "prod-123", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let problem = json_of(response).await;
    assert_eq!(problem["upstream"], "catalog");
    // Reads don't need the catalog.
    assert_eq!(
        client()
            .get(cart.url("/v1/cart/user-1"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn hung_catalog_gives_a_504_problem() {
    let cart = spawn_cart(&black_hole().await, &["--catalog-timeout", "300ms"]).await;
    let response = client()
        .post(cart.url("/v1/cart/user-1"))
        .json(&json!({"product_id": "prod-123", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json_of(response).await["upstream"], "catalog");
}

#[tokio::test]
async fn cart_operations_are_counted_by_op_and_result() {
    let stack = spawn_stack().await;
    let url = stack.cart.url("/v1/cart/counted");
    client()
        .post(&url)
        .json(&json!({"product_id": "prod-123", "quantity": 1}))
        .send()
        .await
        .unwrap();
    client()
        .post(&url)
        .json(&json!({"product_id": "nope", "quantity": 1}))
        .send()
        .await
        .unwrap();
    client().get(&url).send().await.unwrap();
    let (text, samples) = scrape(&stack.cart.url("/metrics")).await;
    assert_eq!(
        metric_sum(
            &samples,
            "cart_operations_total",
            &[("op", "add"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &samples,
            "cart_operations_total",
            &[("op", "add"), ("result", "not_found")]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &samples,
            "cart_operations_total",
            &[("op", "get"), ("result", "ok")]
        ),
        1.0
    );
    assert!(!text.contains("counted"), "user ids must never become labels");
}
