//! With `SERVICE_AUTH_SECRET` set, the services behind the gateway answer only the gateway and
//! each other: the four binaries run as child processes (edge auth on too), a shopper's journey
//! through the gateway works, and the same calls made straight to each backend are refused —
//! without a credential, with a forged one, and with the user named in a bare header — while
//! the probes and `/metrics` stay open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};
use shopstack_testkit::db::TestDb;
use shopstack_testkit::process::{ServiceProcess, workspace_binary};

const SERVICE_AUTH_SECRET: &str = "behind-the-edge-test-secret-0123456789";
const JWT_SECRET: &str = "behind-the-edge-jwt-secret-0123456789";
const ADMIN_TOKEN: &str = "behind-the-edge-admin";

/// A credential as the services write it (an HS256 JWS), but signed with another secret.
const FORGED_CREDENTIAL: &str = concat!(
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.",
    "eyJpc3MiOiJnYXRld2F5Iiwic3ViIjoiYWxpY2UiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMH0.",
    "c2lnbmVkLXdpdGgtYW5vdGhlci1zZWNyZXQtYWFhYWFhYWFhYWFh"
);

struct Shop {
    catalog: ServiceProcess,
    cart: ServiceProcess,
    orders: ServiceProcess,
    gateway: ServiceProcess,
    _database: TestDb,
}

fn start_shop() -> Shop {
    let database = TestDb::sqlite();
    let common = [
        ("SERVICE_AUTH_SECRET", SERVICE_AUTH_SECRET),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("SIM_FAILURE_RATE", "0"),
    ];
    let with = |extra: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        common
            .iter()
            .chain(extra)
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect()
    };
    let spawn = |name: &str, env: Vec<(&'static str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
        ServiceProcess::spawn(&workspace_binary(name), &env).unwrap()
    };
    let catalog = spawn("catalog", with(&[]));
    let catalog_url = catalog.url("");
    let cart = spawn("cart", with(&[("CATALOG_SERVICE_URL", &catalog_url)]));
    let cart_url = cart.url("");
    let orders = spawn(
        "orders",
        with(&[
            ("CATALOG_SERVICE_URL", &catalog_url),
            ("CART_SERVICE_URL", &cart_url),
            ("DATABASE_URL", &database.url),
        ]),
    );
    let orders_url = orders.url("");
    let gateway = spawn(
        "gateway",
        with(&[
            ("CATALOG_SERVICE_URL", &catalog_url),
            ("CART_SERVICE_URL", &cart_url),
            ("ORDERS_SERVICE_URL", &orders_url),
            ("JWT_SECRET", JWT_SECRET),
        ]),
    );
    Shop {
        catalog,
        cart,
        orders,
        gateway,
        _database: database,
    }
}

/// A user's token, signed by `gateway mint-token`.
fn token_for(user: &str) -> String {
    let output = Command::new(workspace_binary("gateway"))
        .args(["mint-token", "--sub", user])
        .env("JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_answer_the_gateway_and_each_other_and_refuse_everyone_else() {
    let shop = start_shop();
    let http = http();
    let alice = token_for("alice");

    // The journey through the gateway: search, add (the cart reserves at the catalog), check
    // out (orders reads the cart and commits at the catalog), read the order back.
    let (status, found) = send(http.get(shop.gateway.url("/catalog?q=coffee"))).await;
    assert_eq!(status, 200, "{found}");
    let product = found["products"][0]["id"].as_str().unwrap().to_owned();
    let (status, cart) = send(
        http.post(shop.gateway.url("/v1/cart/alice"))
            .bearer_auth(&alice)
            .json(&json!({"product_id": product, "quantity": 1})),
    )
    .await;
    assert_eq!(status, 200, "{cart}");
    let (status, placed) = send(
        http.post(shop.gateway.url("/api/orders/checkout"))
            .bearer_auth(&alice)
            .header("Idempotency-Key", "behind-the-edge-1")
            .json(&json!({"user_id": "alice", "shipping_address": "1 Main St"})),
    )
    .await;
    assert_eq!(status, 201, "{placed}");
    let order_id = placed["data"]["id"].as_str().unwrap().to_owned();
    let (status, order) = send(
        http.get(shop.gateway.url(&format!("/api/orders/{order_id}")))
            .bearer_auth(&alice),
    )
    .await;
    assert_eq!(status, 200, "{order}");

    // The credential's user owns the idempotency key: bob's checkout with alice's key is bob's.
    let bob = token_for("bob");
    let (status, _) = send(
        http.post(shop.gateway.url("/v1/cart/bob"))
            .bearer_auth(&bob)
            .json(&json!({"product_id": product, "quantity": 1})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, bobs) = send(
        http.post(shop.gateway.url("/api/orders/checkout"))
            .bearer_auth(&bob)
            .header("Idempotency-Key", "behind-the-edge-1")
            .json(&json!({"user_id": "bob", "shipping_address": "1 Main St"})),
    )
    .await;
    assert_eq!(status, 201, "{bobs}");
    assert_ne!(bobs["data"]["id"], placed["data"]["id"], "{bobs}");
    assert_eq!(bobs["data"]["user_id"], "bob", "{bobs}");

    // The same calls straight to the backends: refused, whatever the caller adds.
    let direct: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("catalog search", http.get(shop.catalog.url("/catalog?q=coffee"))),
        (
            "catalog product",
            http.get(shop.catalog.url(&format!("/catalog/{product}"))),
        ),
        (
            "catalog restock",
            http.post(shop.catalog.url("/inventory/restock"))
                .json(&json!({"order_id": "made-up", "items": [{"product_id": product, "quantity": 1000}]})),
        ),
        (
            "catalog hold",
            http.put(shop.catalog.url(&format!("/inventory/holds/mallory/{product}")))
                .json(&json!({"quantity": 1})),
        ),
        ("cart read", http.get(shop.cart.url("/v1/cart/alice"))),
        (
            "cart add",
            http.post(shop.cart.url("/v1/cart/alice"))
                .json(&json!({"product_id": product, "quantity": 1})),
        ),
        ("orders list", http.get(shop.orders.url("/api/orders"))),
        (
            "orders read",
            http.get(shop.orders.url(&format!("/api/orders/{order_id}"))),
        ),
        (
            "orders status",
            http.patch(shop.orders.url(&format!("/api/orders/{order_id}/status")))
                .json(&json!({"status": "cancelled"})),
        ),
    ];
    for (what, request) in direct {
        for (how, request) in [
            ("bare", request.try_clone().unwrap()),
            (
                "as alice, by header",
                request
                    .try_clone()
                    .unwrap()
                    .header("x-user-id", "alice")
                    .bearer_auth(&alice),
            ),
            (
                "forged credential",
                request.header("x-service-credential", FORGED_CREDENTIAL),
            ),
        ] {
            let response = request.send().await.unwrap();
            let status = response.status();
            let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
            let challenge = response.headers().get("www-authenticate").cloned();
            let body: Value = response.json().await.unwrap();
            assert_eq!(status, 401, "{what} ({how}) straight to the backend: {body}");
            assert_eq!(content_type, "application/problem+json", "{what} ({how})");
            assert!(challenge.is_some(), "{what} ({how}): no WWW-Authenticate");
            assert_eq!(body["status"], 401, "{what} ({how}): {body}");
        }
    }

    // Nothing the refused calls tried happened: the order is still as placed.
    let (status, order) = send(
        http.get(shop.gateway.url(&format!("/api/orders/{order_id}")))
            .bearer_auth(&alice),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(order["data"]["status"], placed["data"]["status"], "{order}");

    // Kubelets and scrapers need no credential.
    for service in [&shop.catalog, &shop.cart, &shop.orders] {
        for path in ["/livez", "/readyz", "/healthz", "/metrics", "/openapi.json"] {
            let status = http.get(service.url(path)).send().await.unwrap().status();
            assert_eq!(status, 200, "{path} on {}", service.url(""));
        }
    }
    drop(shop);
}
