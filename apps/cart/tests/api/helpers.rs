use std::time::Duration;

use cart::{AppState, CartConfig, app};
use clap::Parser;
use serde_json::Value;
use shopstack_common::Platform;
use shopstack_common::config::Settings;
use shopstack_common::telemetry;
use shopstack_common::testing::TestServer;

pub struct Stack {
    /// Held so the catalog keeps running for the test's duration.
    #[allow(dead_code)]
    pub catalog: TestServer,
    pub cart: TestServer,
}

pub async fn spawn_catalog() -> TestServer {
    telemetry::init_for_tests();
    let platform = Platform::new(Settings::for_tests("catalog")).unwrap();
    let config = catalog::CatalogConfig::parse_from(["catalog"]);
    let state = catalog::AppState::new(&config, platform.clone()).await.unwrap();
    TestServer::start(platform, catalog::app(state)).await.unwrap()
}

/// A cart pointed at `catalog_url`, with extra `--flags`.
pub async fn spawn_cart(catalog_url: &str, flags: &[&str]) -> TestServer {
    telemetry::init_for_tests();
    let platform = Platform::new(Settings::for_tests("cart")).unwrap();
    let mut args = vec!["cart", "--catalog-service-url", catalog_url];
    args.extend_from_slice(flags);
    let config = CartConfig::parse_from(args);
    let state = AppState::new(&config, platform.clone()).await.unwrap();
    TestServer::start(platform, app(state)).await.unwrap()
}

pub async fn spawn_stack() -> Stack {
    let catalog = spawn_catalog().await;
    let cart = spawn_cart(&catalog.url(""), &[]).await;
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

/// A port that accepts connections and never answers: a hung dependency.
pub async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}")
}

/// A port nothing listens on: a dependency that is down.
pub async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
