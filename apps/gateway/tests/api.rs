//! The gateway over real HTTP on port 0 in front of the real catalog and cart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::StatusCode;
use serde_json::json;
use shopstack_testkit::http::{client, json_of};
use shopstack_testkit::metrics::{metric_sum, scrape};
use shopstack_testkit::ports::{black_hole, closed_port};
use shopstack_testkit::server::TestServer;
use shopstack_testkit::services;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Stack {
    gateway: TestServer,
    catalog: TestServer,
    cart: TestServer,
}

async fn spawn_stack() -> Stack {
    let catalog = services::catalog().start().await;
    let cart = services::cart(&catalog.url("")).start().await;
    let gateway = services::gateway(&catalog.url(""), &cart.url("")).start().await;
    Stack {
        gateway,
        catalog,
        cart,
    }
}

/// Answers every request with bytes that are not HTTP.
async fn garbage_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let _ = socket.write_all(b"SMTP ready, definitely not HTTP\r\n\r\n").await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn simple_and_v1_cart_apis_work_through_the_gateway() {
    let stack = spawn_stack().await;
    let gw = |path: &str| stack.gateway.url(path);

    let info = json_of(client().get(gw("/")).send().await.unwrap()).await;
    assert_eq!(info["service"], "gateway");
    assert!(info["routes"].as_array().unwrap().len() >= 11);

    let list = json_of(client().get(gw("/catalog?q=headphones")).send().await.unwrap()).await;
    assert!(list["pagination"]["total"].as_u64().unwrap() >= 1);
    let product = client().get(gw("/catalog/prod-123")).send().await.unwrap();
    assert_eq!(product.status(), StatusCode::OK);
    assert_eq!(json_of(product).await["id"], "prod-123");
    assert_eq!(
        client().get(gw("/catalog/nope")).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    let added = client()
        .post(gw("/cart/add"))
        .json(&json!({"user_id": "gw-user", "product_id": "prod-123", "quantity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::OK);
    assert_eq!(added.headers()["etag"], "\"v1\"");
    let v1 = json_of(
        client()
            .post(gw("/v1/cart/gw-user"))
            .json(&json!({"product_id": "prod-456", "quantity": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v1["total_items"], 2);
    client()
        .post(gw("/v1/cart/gw-user/items"))
        .json(&json!({"product_id": "prod-789", "quantity": 1}))
        .send()
        .await
        .unwrap();
    let patched = client()
        .patch(gw("/v1/cart/gw-user/items/prod-789"))
        .json(&json!({"quantity": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let removed = client()
        .delete(gw("/v1/cart/gw-user/items/prod-456"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::OK);
    let cart = json_of(client().get(gw("/cart/gw-user")).send().await.unwrap()).await;
    assert_eq!(
        cart["items"],
        json!([{"product_id": "prod-123", "quantity": 2}, {"product_id": "prod-789", "quantity": 3}])
    );
    let bad = client()
        .post(gw("/v1/cart/gw-user"))
        .header("content-type", "application/json")
        .body("{\"quantity\": -1")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    let cleared = json_of(client().delete(gw("/v1/cart/gw-user")).send().await.unwrap()).await;
    assert_eq!(
        cleared,
        json!({"message": "Cart cleared successfully", "user_id": "gw-user"})
    );
    let empty = json_of(client().get(gw("/v1/cart/gw-user")).send().await.unwrap()).await;
    assert_eq!(empty["total_items"], 0);
    let simple_clear = json_of(client().delete(gw("/cart/gw-user")).send().await.unwrap()).await;
    assert_eq!(simple_clear["user_id"], "gw-user");
}

#[tokio::test]
async fn an_inbound_traceparent_reaches_every_backend_log() {
    let stack = spawn_stack().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = client()
        .post(stack.gateway.url("/v1/cart/traced-user"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("x-request-id", "req-trace-test-1")
        .json(&json!({"product_id": "prod-123", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-trace-id"], trace_id);
    assert_eq!(response.headers()["x-request-id"], "req-trace-test-1");

    let logs = shopstack_testkit::init_telemetry().json_lines();
    for service in ["gateway", "cart", "catalog"] {
        let line = logs
            .iter()
            .find(|line| {
                line["service"] == service
                    && line["trace_id"] == trace_id
                    && line["message"] == "request completed"
            })
            .unwrap_or_else(|| panic!("no {service} request log with the inbound trace id"));
        assert_eq!(line["request_id"], "req-trace-test-1", "{service}");
        assert!(line["span_id"].as_str().unwrap().len() == 16, "{service}");
        assert!(line["duration_ms"].is_number());
        // The server span's `http.request.method`, `http.route` and `url.path`, under log names.
        if service == "catalog" {
            assert!(line["method"].is_string() && line["path"].is_string(), "{line}");
            assert!(line["route"].as_str().unwrap().starts_with('/'));
        } else {
            assert_eq!(line["method"], "POST", "{service}");
            assert_eq!(line["route"], "/v1/cart/{user_id}", "{service}");
            assert_eq!(line["path"], "/v1/cart/traced-user", "{service}");
        }
        assert!(line["status"].is_number());
        assert_eq!(line["level"], "info");
        assert!(line["timestamp"].is_string());
        assert_eq!(line["pod_name"], format!("{service}-test"));
    }
    // Each hop has its own span: three distinct span ids.
    let spans: std::collections::HashSet<_> = logs
        .iter()
        .filter(|line| line["trace_id"] == trace_id && line["message"] == "request completed")
        .map(|line| line["span_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(spans.len(), 3);
    let _ = (&stack.catalog, &stack.cart);
}

#[tokio::test]
async fn a_downed_backend_gives_503_naming_it_and_shows_in_healthz() {
    let catalog = services::catalog().start().await;
    let gateway = services::gateway(&catalog.url(""), &closed_port().await)
        .start()
        .await;
    let response = client()
        .get(gateway.url("/v1/cart/someone"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert!(response.headers().contains_key("retry-after"));
    let problem = json_of(response).await;
    assert_eq!(problem["upstream"], "cart");
    assert_eq!(problem["status"], 503);

    // The catalog still works through the same gateway.
    assert_eq!(
        client()
            .get(gateway.url("/catalog/prod-123"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let health = client().get(gateway.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = json_of(health).await;
    assert_eq!(body["cart"], "unhealthy");
    assert_eq!(body["catalog"], "healthy");
    // A gateway with one backend down still takes traffic for the others.
    assert_eq!(
        client()
            .get(gateway.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_hung_backend_gives_504_and_a_broken_one_502() {
    let gateway = services::gateway(&black_hole().await, &garbage_server().await)
        .flags(&["--upstream-timeout", "300ms"])
        .start()
        .await;
    let hung = client()
        .get(gateway.url("/catalog/prod-123"))
        .send()
        .await
        .unwrap();
    assert_eq!(hung.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json_of(hung).await["upstream"], "catalog");
    let broken = client().get(gateway.url("/v1/cart/x")).send().await.unwrap();
    assert_eq!(broken.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(json_of(broken).await["upstream"], "cart");

    let (_, samples) = scrape(&gateway.url("/metrics")).await;
    assert_eq!(
        metric_sum(
            &samples,
            "gateway_upstream_requests_total",
            &[("upstream", "catalog"), ("status", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &samples,
            "gateway_upstream_requests_total",
            &[("upstream", "cart"), ("status", "bad_gateway")]
        ),
        1.0
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let stack = spawn_stack().await;
    let huge = format!(
        "{{\"product_id\":\"prod-123\",\"quantity\":1,\"pad\":\"{}\"}}",
        "x".repeat(200_000)
    );
    let response = client()
        .post(stack.gateway.url("/v1/cart/big"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn gateway_metrics_use_route_templates_only() {
    let stack = spawn_stack().await;
    for user in ["alice-secret-id", "bob-secret-id"] {
        client()
            .get(stack.gateway.url(&format!("/v1/cart/{user}")))
            .send()
            .await
            .unwrap();
    }
    let (text, samples) = scrape(&stack.gateway.url("/metrics")).await;
    assert_eq!(
        metric_sum(
            &samples,
            "http_requests_total",
            &[
                ("service", "gateway"),
                ("route", "/v1/cart/{user_id}"),
                ("method", "GET"),
                ("status", "200")
            ]
        ),
        2.0
    );
    assert_eq!(
        metric_sum(
            &samples,
            "gateway_upstream_requests_total",
            &[
                ("upstream", "cart"),
                ("route", "/v1/cart/{user_id}"),
                ("status", "200")
            ]
        ),
        2.0
    );
    assert!(!text.contains("secret-id"), "user ids must never become labels");
}

#[tokio::test]
async fn openapi_merges_backend_documents_and_adds_gateway_errors() {
    let stack = spawn_stack().await;
    let doc = json_of(
        client()
            .get(stack.gateway.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let add = &doc["paths"]["/v1/cart/{user_id}"]["post"];
    assert!(
        add["requestBody"].is_object(),
        "the cart's own description is used"
    );
    for status in ["502", "503", "504"] {
        assert!(add["responses"][status].is_object(), "{status} missing");
    }
    assert!(doc["paths"]["/catalog/{id}"]["get"]["responses"]["404"].is_object());
    assert!(doc["components"]["schemas"]["CartView"].is_object());
    assert!(doc["paths"]["/admin/cart/simulation"]["put"].is_object());
    let page = client().get(stack.gateway.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
}

#[tokio::test]
async fn operators_set_stock_through_the_gateway() {
    let stack = spawn_stack().await;
    let url = stack.gateway.url("/admin/stock/prod-111");
    let anonymous = client()
        .put(&url)
        .json(&json!({"stock": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let set = client()
        .put(&url)
        .header("authorization", "Bearer test-admin-token")
        .json(&json!({"stock": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    let product = json_of(
        client()
            .get(stack.gateway.url("/catalog/prod-111"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(product["stock"], 3);
    let add = |quantity: u32| {
        client()
            .post(stack.gateway.url("/v1/cart/stock-user/items"))
            .json(&json!({"product_id": "prod-111", "quantity": quantity}))
            .send()
    };
    assert_eq!(add(2).await.unwrap().status(), StatusCode::OK);
    let refused = add(2).await.unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(
        json_of(refused).await["message"],
        "Insufficient stock. Only 1 available."
    );
}

#[tokio::test]
async fn backend_simulation_is_reachable_through_the_gateway() {
    let stack = spawn_stack().await;
    let url = stack.gateway.url("/admin/cart/simulation");
    assert_eq!(
        client().get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let updated = client()
        .put(&url)
        .header("authorization", "Bearer test-admin-token")
        .json(&json!({"enabled": true, "applies_to": "writes", "failure_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), StatusCode::OK);
    let failed = client()
        .post(stack.gateway.url("/v1/cart/u"))
        .json(&json!({"product_id": "prod-123", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.headers()["x-injected-fault"], "true");
}
