use std::time::Duration;

use cart::{AppState, CartConfig, app};
use clap::Parser;
use serde_json::{Value, json};
use shopstack_common::Platform;
use shopstack_common::config::Settings;
use shopstack_common::telemetry;
use shopstack_common::testing::TestServer;

pub const ADMIN: &str = "Bearer test-admin-token";

pub struct Stack {
    /// Held so the catalog keeps running for the test's duration.
    pub catalog: TestServer,
    pub cart: TestServer,
}

/// Test settings, on Redis when `redis_url` is given.
pub fn settings(name: &str, redis_url: Option<&str>) -> Settings {
    let mut settings = Settings::for_tests(name);
    settings.redis_url = redis_url.map(str::to_owned);
    settings
}

pub async fn spawn_catalog_with(settings: Settings, flags: &[&str]) -> TestServer {
    telemetry::init_for_tests();
    let platform = Platform::new(settings).unwrap();
    let mut args = vec!["catalog", "--reservation-reap-interval", "100ms"];
    args.extend_from_slice(flags);
    let config = catalog::CatalogConfig::parse_from(args);
    let state = catalog::AppState::new(&config, platform.clone()).await.unwrap();
    TestServer::start(platform, catalog::app(state)).await.unwrap()
}

pub async fn spawn_catalog() -> TestServer {
    spawn_catalog_with(settings("catalog", None), &[]).await
}

/// A cart pointed at `catalog_url`, with extra `--flags`.
pub async fn spawn_cart_with(settings: Settings, catalog_url: &str, flags: &[&str]) -> TestServer {
    telemetry::init_for_tests();
    let platform = Platform::new(settings).unwrap();
    let mut args = vec!["cart", "--catalog-service-url", catalog_url];
    args.extend_from_slice(flags);
    let config = CartConfig::parse_from(args);
    let state = AppState::new(&config, platform.clone()).await.unwrap();
    TestServer::start(platform, app(state)).await.unwrap()
}

pub async fn spawn_cart(catalog_url: &str, flags: &[&str]) -> TestServer {
    spawn_cart_with(settings("cart", None), catalog_url, flags).await
}

pub async fn spawn_stack() -> Stack {
    let catalog = spawn_catalog().await;
    let cart = spawn_cart(&catalog.url(""), &[]).await;
    Stack { catalog, cart }
}

/// Catalog and cart sharing the Redis at `redis_url`.
pub async fn spawn_redis_stack(redis_url: &str, cart_flags: &[&str]) -> Stack {
    let catalog = spawn_catalog_with(settings("catalog", Some(redis_url)), &[]).await;
    let cart = spawn_cart_with(settings("cart", Some(redis_url)), &catalog.url(""), cart_flags).await;
    Stack { catalog, cart }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

/// Free stock of a product as the catalog reports it.
pub async fn stock_of(catalog: &TestServer, product_id: &str) -> i64 {
    let product = json_of(
        client()
            .get(catalog.url(&format!("/catalog/{product_id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    product["stock"].as_i64().unwrap()
}

pub async fn set_stock(catalog: &TestServer, product_id: &str, stock: i64) {
    let response = client()
        .put(catalog.url(&format!("/admin/stock/{product_id}")))
        .header("authorization", ADMIN)
        .json(&json!({"stock": stock}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
}

pub use shopstack_common::testing::{black_hole, closed_port};

/// Poll `check` every 100 ms until it holds, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
