//! The orders API through the gateway, on SQLite and on PostgreSQL.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_engines;

on_both_engines!(
    orders_api_contract_through_the_gateway,
    status_machine_refuses_every_illegal_move,
    pagination_and_user_orders,
    bad_input_is_refused_and_changes_nothing,
    concurrent_status_changes_never_lose_one,
    document_states_what_the_server_checks,
);

fn assert_envelope(body: &Value, message: &str) {
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(body["message"], message, "{body}");
}

async fn orders_api_contract_through_the_gateway(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &[]).await;
    let http = client();
    let stock_before = stock_of(&stack, "prod-110").await;

    // Create (the orders API's documented example body, with catalog products). A price sent by the client is
    // ignored: prices come from the catalog.
    let response = http
        .post(stack.url("/api/orders"))
        .json(&json!({
            "user_id": "user123",
            "shipping_address": "123 Main St, New York, NY 10001",
            "billing_address": "123 Main St, New York, NY 10001",
            "notes": "Please ring doorbell",
            "order_items": [
                {"product_id": "prod-110", "quantity": 2, "unit_price": 0.01},
                {"product_id": "prod-112", "quantity": 1}
            ]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let text = response.text().await.unwrap();
    // Two decimals on the wire, exactly: 2 × 79.99 + 99.50 = 259.48.
    assert!(text.contains("\"total_amount\":259.48"), "{text}");
    assert!(text.contains("\"unit_price\":99.50"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_envelope(&body, "Order created successfully");
    let order = &body["data"];
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/orders/{id}"));
    assert_eq!(order["user_id"], "user123");
    assert_eq!(order["status"], "pending");
    assert_eq!(order["currency"], "USD");
    assert_eq!(order["shipping_address"], "123 Main St, New York, NY 10001");
    assert_eq!(order["billing_address"], "123 Main St, New York, NY 10001");
    assert_eq!(order["notes"], "Please ring doorbell");
    assert!(order["created_at"].as_str().is_some_and(|at| at.ends_with('Z')));
    let items = order["order_items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["product_id"], "prod-110");
    assert_eq!(items[0]["quantity"], 2);
    assert_eq!(items[0]["unit_price"], 79.99);
    assert_eq!(items[0]["subtotal"], 159.98);
    assert!(
        items[0]["id"]
            .as_str()
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok())
    );
    // The stock is committed.
    assert_eq!(stock_of(&stack, "prod-110").await, stock_before - 2);

    // Read it back.
    let response = http
        .get(stack.url(&format!("/api/orders/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    assert_envelope(&body, "Order retrieved successfully");
    assert_eq!(body["data"], *order);

    // Status: pending → confirmed → shipped → delivered.
    for status in ["confirmed", "shipped", "delivered"] {
        let response = http
            .patch(stack.url(&format!("/api/orders/{id}/status")))
            .json(&json!({"status": status}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "to {status}");
        let body = json_of(response).await;
        assert_envelope(&body, "Order status updated successfully");
        assert_eq!(body["data"]["status"], status);
    }
    // Delivered cannot be cancelled.
    let response = cancel_order(&stack, &id).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem = json_of(response).await;
    assert_eq!(problem["current_status"], "delivered");

    // A second order, cancelled while pending: its stock comes back.
    let response = create_order(&stack, "user123", &[("prod-110", 3)]).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let second = json_of(response).await["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(stock_of(&stack, "prod-110").await, stock_before - 5);
    let response = cancel_order(&stack, &second).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    assert_envelope(&body, "Order cancelled successfully");
    assert_eq!(body["data"]["status"], "cancelled");
    assert_eq!(stock_of(&stack, "prod-110").await, stock_before - 2);
    // Cancelling again is a conflict, and gives nothing back twice.
    let response = cancel_order(&stack, &second).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(stock_of(&stack, "prod-110").await, stock_before - 2);

    // Lists: all orders and the user's, newest first, with the orders API's pagination.
    let response = http
        .get(stack.url("/api/orders?page=1&page_size=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    assert_eq!(body["status"], "success");
    assert_eq!(
        body["pagination"],
        json!({"page": 1, "page_size": 10, "total": 2, "total_pages": 1})
    );
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|order| order["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![second.as_str(), id.as_str()]);
    let body = json_of(
        http.get(stack.url("/api/users/user123/orders"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["pagination"]["total"], 2);
    assert_eq!(body["data"][1]["order_items"].as_array().unwrap().len(), 2);
    let body = json_of(
        http.get(stack.url("/api/users/nobody/orders"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["data"], json!([]));
    assert_eq!(body["pagination"]["total"], 0);

    // Unknown and malformed ids.
    let unknown = uuid::Uuid::new_v4();
    let response = http
        .get(stack.url(&format!("/api/orders/{unknown}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let response = http
        .get(stack.url("/api/orders/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = http
        .patch(stack.url(&format!("/api/orders/{unknown}/status")))
        .json(&json!({"status": "confirmed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = cancel_order(&stack, &unknown.to_string()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // The business metrics moved.
    let metrics = stack.orders.url("/metrics");
    assert_eq!(
        metric(&metrics, "orders_created_total", &["source=\"direct\""]).await,
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "order_status_transitions_total",
            &["from=\"pending\"", "to=\"cancelled\""]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "order_value_dollars_count", &[]).await,
        Some(2.0)
    );
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            metric(&metrics, "orders_by_status", &["status=\"delivered\""]).await == Some(1.0)
                && metric(&metrics, "orders_by_status", &["status=\"cancelled\""]).await == Some(1.0)
        })
        .await
    );
    // Without NATS the events are logged, and count as such.
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            metric(
                &metrics,
                "events_published_total",
                &["type=\"order.created\"", "result=\"logged\""],
            )
            .await
                == Some(2.0)
                && metric(&metrics, "outbox_backlog", &[]).await == Some(0.0)
        })
        .await
    );
}

async fn status_machine_refuses_every_illegal_move(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &[]).await;
    let http = client();
    let all = ["pending", "confirmed", "shipped", "delivered", "cancelled"];
    let path_to = |target: &str| -> Vec<&'static str> {
        match target {
            "pending" => vec![],
            "confirmed" => vec!["confirmed"],
            "shipped" => vec!["confirmed", "shipped"],
            "delivered" => vec!["confirmed", "shipped", "delivered"],
            _ => vec!["cancelled"],
        }
    };
    let allowed = [
        ("pending", "confirmed"),
        ("confirmed", "shipped"),
        ("shipped", "delivered"),
        ("pending", "cancelled"),
        ("confirmed", "cancelled"),
    ];
    for from in all {
        for to in all {
            let response = create_order(&stack, "machine", &[("prod-115", 1)]).await;
            assert_eq!(response.status(), StatusCode::CREATED);
            let id = json_of(response).await["data"]["id"].as_str().unwrap().to_owned();
            for step in path_to(from) {
                let response = http
                    .patch(stack.url(&format!("/api/orders/{id}/status")))
                    .json(&json!({"status": step}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
            }
            let response = http
                .patch(stack.url(&format!("/api/orders/{id}/status")))
                .json(&json!({"status": to}))
                .send()
                .await
                .unwrap();
            let expected = if allowed.contains(&(from, to)) {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            assert_eq!(response.status(), expected, "{from} → {to}");
            let body = json_of(
                http.get(stack.url(&format!("/api/orders/{id}")))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            let now = if expected == StatusCode::OK { to } else { from };
            assert_eq!(body["data"]["status"], now, "{from} → {to}");
        }
    }
}

async fn pagination_and_user_orders(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &[]).await;
    let http = client();
    for n in 0..7 {
        let user = if n % 2 == 0 { "alice" } else { "bob" };
        let response = create_order(&stack, user, &[("prod-115", 1)]).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let page = |path: String| {
        let http = http.clone();
        async move { json_of(http.get(path).send().await.unwrap()).await }
    };
    let body = page(stack.url("/api/orders?page=2&page_size=3")).await;
    assert_eq!(
        body["pagination"],
        json!({"page": 2, "page_size": 3, "total": 7, "total_pages": 3})
    );
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    let body = page(stack.url("/api/orders?page=3&page_size=3")).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let body = page(stack.url("/api/orders?page=9&page_size=3")).await;
    assert_eq!(body["data"], json!([]));
    assert_eq!(body["pagination"]["total"], 7);
    // Pages never overlap and cover everything, newest first.
    let mut seen = Vec::new();
    for number in 1..=3 {
        let body = page(stack.url(&format!("/api/orders?page={number}&page_size=3"))).await;
        for order in body["data"].as_array().unwrap() {
            seen.push(order["created_at"].as_str().unwrap().to_owned() + order["id"].as_str().unwrap());
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen.len(), 7);
    assert_eq!(seen, sorted);
    let body = page(stack.url("/api/users/alice/orders?page_size=2")).await;
    assert_eq!(
        body["pagination"],
        json!({"page": 1, "page_size": 2, "total": 4, "total_pages": 2})
    );
    assert!(
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|order| order["user_id"] == "alice")
    );
    let body = page(stack.url("/api/orders?user_id=bob&status=pending")).await;
    assert_eq!(body["pagination"]["total"], 3);
    let body = page(stack.url("/api/orders?status=shipped")).await;
    assert_eq!(body["pagination"]["total"], 0);
    // Defaults and clamping.
    let body = page(stack.url("/api/orders")).await;
    assert_eq!(body["pagination"]["page"], 1);
    assert_eq!(body["pagination"]["page_size"], 20);
    let body = page(stack.url("/api/orders?page_size=1000")).await;
    assert_eq!(body["pagination"]["page_size"], 100);
    for bad in [
        "/api/orders?page=0",
        "/api/orders?page_size=-1",
        "/api/orders?page=x",
        "/api/orders?status=lost",
    ] {
        let response = http.get(stack.url(bad)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

async fn bad_input_is_refused_and_changes_nothing(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &[]).await;
    let http = client();
    let stock_before = stock_of(&stack, "prod-113").await;
    let cases = [
        (
            json!({"user_id": "u1", "shipping_address": "x", "order_items": []}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"user_id": "u1", "shipping_address": "x"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"shipping_address": "x", "order_items": [{"product_id": "prod-113", "quantity": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"user_id": "u1", "order_items": [{"product_id": "prod-113", "quantity": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"user_id": "u1", "shipping_address": "x", "order_items": [{"product_id": "prod-113", "quantity": 0}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"user_id": "u1", "shipping_address": "x", "order_items": [{"product_id": "prod-113", "quantity": -2}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"user_id": "u1", "shipping_address": "x", "order_items": [{"product_id": "prod-113", "quantity": "two"}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"user_id": "u1", "shipping_address": "x", "order_items": [{"product_id": "prod-113"}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"user_id": "u 1", "shipping_address": "x", "order_items": [{"product_id": "prod-113", "quantity": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
        // `..` is a dot segment: it would vanish from the cart's and catalog's URL paths.
        (
            json!({"user_id": "..", "shipping_address": "x", "order_items": [{"product_id": "prod-113", "quantity": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"user_id": "u1", "shipping_address": "x", "order_items": [{"product_id": ".", "quantity": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
        // Ids are taken as sent: no trimming, so the document's pattern is the whole rule.
        (
            json!({"user_id": " u1", "shipping_address": "x", "order_items": [{"product_id": "prod-113", "quantity": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"user_id": null, "shipping_address": "x", "order_items": [{"product_id": "prod-113", "quantity": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
        // Blank, or holding a NUL (PostgreSQL text cannot).
        (
            json!({"user_id": "u1", "shipping_address": " \t ", "order_items": [{"product_id": "prod-113", "quantity": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"user_id": "u1", "shipping_address": "x", "notes": "a\u{0}b", "order_items": [{"product_id": "prod-113", "quantity": 1}]}),
            StatusCode::BAD_REQUEST,
        ),
        // Every line within bounds, but one product's lines add up past the maximum.
        (
            json!({"user_id": "u1", "shipping_address": "x", "order_items": [{"product_id": "prod-113", "quantity": 600}, {"product_id": "prod-113", "quantity": 600}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // Unknown product: nothing is ordered, even with a known one beside it.
        (
            json!({"user_id": "u1", "shipping_address": "x", "order_items": [{"product_id": "prod-113", "quantity": 1}, {"product_id": "no-such-product", "quantity": 1}]}),
            StatusCode::NOT_FOUND,
        ),
        // More than the stock.
        (
            json!({"user_id": "u1", "shipping_address": "x", "order_items": [{"product_id": "prod-113", "quantity": stock_before + 1}]}),
            StatusCode::CONFLICT,
        ),
    ];
    for (body, expected) in cases {
        let response = http
            .post(stack.url("/api/orders"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{body}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem = json_of(response).await;
        assert_eq!(problem["status"], expected.as_u16());
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let response = http
        .post(stack.url("/api/orders"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let id = json_of(create_order(&stack, "u1", &[("prod-113", 1)]).await).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for status in [
        json!({"status": "returned"}),
        json!({}),
        json!({"status": 3}),
        json!({"status": "Confirmed"}),
        json!({"status": " confirmed"}),
    ] {
        let response = http
            .patch(stack.url(&format!("/api/orders/{id}/status")))
            .json(&status)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{status}");
    }
    // Only the one good order exists and only its unit left the stock.
    let body = json_of(http.get(stack.url("/api/orders")).send().await.unwrap()).await;
    assert_eq!(body["pagination"]["total"], 1);
    assert_eq!(body["data"][0]["status"], "pending");
    assert_eq!(stock_of(&stack, "prod-113").await, stock_before - 1);
}

async fn concurrent_status_changes_never_lose_one(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &[]).await;
    let http = client();
    let race = |id: String, statuses: Vec<&'static str>| {
        let http = http.clone();
        let url = stack.url(&format!("/api/orders/{id}/status"));
        async move {
            let attempts = statuses.into_iter().map(|status| {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let response = http
                        .patch(url)
                        .json(&json!({"status": status}))
                        .send()
                        .await
                        .unwrap();
                    (status, response.status())
                }
            });
            futures::future::join_all(attempts).await
        }
    };
    let order_of = |id: String| {
        let http = http.clone();
        let url = stack.url(&format!("/api/orders/{id}"));
        async move { json_of(http.get(url).send().await.unwrap()).await["data"].clone() }
    };

    // Sixteen concurrent confirmations: exactly one applies, fifteen are refused (confirmed →
    // confirmed is not a move).
    let id = json_of(create_order(&stack, "racer", &[("prod-114", 1)]).await).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let results = race(id.clone(), vec!["confirmed"; 16]).await;
    let ok = results.iter().filter(|(_, code)| *code == StatusCode::OK).count();
    let refused = results
        .iter()
        .filter(|(_, code)| *code == StatusCode::CONFLICT)
        .count();
    assert_eq!((ok, refused), (1, 15), "{results:?}");
    let order = order_of(id).await;
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["version"], 2);

    // Confirmations and cancellations racing: every change that was answered 200 is in the
    // order's history (its version counts them), and the final status is the last legal move.
    let stock_before = stock_of(&stack, "prod-114").await;
    let id = json_of(create_order(&stack, "racer", &[("prod-114", 2)]).await).await["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut statuses = vec!["confirmed"; 8];
    statuses.extend(vec!["cancelled"; 8]);
    let results = race(id.clone(), statuses).await;
    assert!(
        results
            .iter()
            .all(|(_, code)| *code == StatusCode::OK || *code == StatusCode::CONFLICT),
        "{results:?}"
    );
    let confirmed = results
        .iter()
        .filter(|(status, code)| *status == "confirmed" && *code == StatusCode::OK)
        .count();
    let cancelled = results
        .iter()
        .filter(|(status, code)| *status == "cancelled" && *code == StatusCode::OK)
        .count();
    assert!(confirmed <= 1 && cancelled <= 1, "{results:?}");
    let order = order_of(id).await;
    assert_eq!(
        order["version"].as_i64().unwrap(),
        1 + (confirmed + cancelled) as i64
    );
    let expected = if cancelled == 1 { "cancelled" } else { "confirmed" };
    assert_eq!(order["status"], expected);
    // A cancellation gives the units back exactly once.
    let stock_after = if cancelled == 1 {
        stock_before
    } else {
        stock_before - 2
    };
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            stock_of(&stack, "prod-114").await == stock_after
        })
        .await
    );
}

/// The served document promises what the handlers check (schemathesis holds it to that in
/// `make schemathesis`; this pins the parts that come from configuration or are easy to lose).
async fn document_states_what_the_server_checks(engine: Engine) {
    let db = TestDb::of(engine).await;
    let stack = spawn_stack(&db, None, &[]).await;
    let doc = json_of(
        client()
            .get(stack.orders.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let schemas = &doc["components"]["schemas"];
    let create = &schemas["CreateOrderRequest"];
    let mut required: Vec<&str> = create["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["order_items", "shipping_address", "user_id"]);
    assert_eq!(create["properties"]["user_id"]["type"], "string", "not nullable");
    assert_eq!(create["properties"]["order_items"]["minItems"], 1);
    assert!(create["properties"]["order_items"]["maxItems"].as_u64().is_some());
    let item = &schemas["OrderItemRequest"];
    assert_eq!(item["properties"]["quantity"]["minimum"], 1);
    assert!(item["properties"]["quantity"]["maximum"].as_u64().is_some());
    let status = &schemas["UpdateStatusRequest"]["properties"]["status"];
    assert_eq!(status["$ref"], "#/components/schemas/OrderStatus");
    let get_order = &doc["paths"]["/api/orders/{id}"]["get"]["parameters"][0]["schema"];
    assert_eq!(get_order["format"], "uuid");
    assert!(shopstack_testkit::openapi::assert_id_patterns(&doc) >= 5);
}
