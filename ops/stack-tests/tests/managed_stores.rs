//! The stores a production deployment rents, reached over TLS: Redis at `rediss://`, PostgreSQL
//! with `sslmode=verify-full`, NATS at `tls://`, each serving a certificate from a test
//! authority the services are told to trust (`SSL_CERT_FILE` for Redis and NATS, `sslrootcert`
//! for PostgreSQL). The catalog, cart and orders binaries run on them, a checkout goes through
//! and its event reaches the stream; a service that does not trust the authority fails to
//! reach the store rather than talking to it unverified.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use shopstack_testkit::nats::NatsServer;
use shopstack_testkit::postgres::PostgresServer;
use shopstack_testkit::process::{ServiceProcess, workspace_binary};
use shopstack_testkit::redis::RedisServer;
use shopstack_testkit::tls::TestCertificates;
use shopstack_testkit::wait::eventually;

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_run_on_redis_postgresql_and_nats_over_verified_tls() {
    let certificates = TestCertificates::generate().unwrap();
    let redis = RedisServer::start_tls(&certificates).unwrap();
    let nats = NatsServer::start_tls(&certificates).await.unwrap();
    let postgres = PostgresServer::start_tls(&certificates).unwrap();
    let database_url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        postgres.port,
        certificates.ca.display()
    );
    let ca = certificates.ca.to_str().unwrap().to_owned();
    let trust = [("SSL_CERT_FILE", ca.as_str()), ("SIM_FAILURE_RATE", "0")];

    let catalog = ServiceProcess::spawn(
        &workspace_binary("catalog"),
        &[trust[0], trust[1], ("REDIS_URL", &redis.url())],
    )
    .unwrap();
    let cart = ServiceProcess::spawn(
        &workspace_binary("cart"),
        &[
            trust[0],
            trust[1],
            ("REDIS_URL", &redis.url()),
            ("NATS_URL", &nats.url()),
            ("CATALOG_SERVICE_URL", &catalog.url("")),
        ],
    )
    .unwrap();
    let orders = ServiceProcess::spawn(
        &workspace_binary("orders"),
        &[
            trust[0],
            trust[1],
            ("DATABASE_URL", &database_url),
            ("NATS_URL", &nats.url()),
            ("CATALOG_SERVICE_URL", &catalog.url("")),
            ("CART_SERVICE_URL", &cart.url("")),
        ],
    )
    .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for (service, dependencies) in [
        (&catalog, &["redis"][..]),
        (&cart, &["redis", "nats"][..]),
        (&orders, &["database", "nats"][..]),
    ] {
        let url = service.url("/healthz");
        let healthy = eventually(Duration::from_secs(10), || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let (_, health) = json(http.get(url).send().await.unwrap()).await;
                dependencies
                    .iter()
                    .all(|dependency| health[*dependency] == "healthy")
            }
        })
        .await;
        assert!(healthy, "{url}: {dependencies:?} not healthy over TLS");
    }

    let (status, cart_answer) = json(
        http.post(cart.url("/v1/cart/tls-user"))
            .json(&json!({"product_id": "prod-451", "quantity": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{cart_answer}");
    let (status, placed) = json(
        http.post(orders.url("/api/orders/checkout"))
            .header("Idempotency-Key", "tls-checkout")
            .json(&json!({"user_id": "tls-user", "shipping_address": "1 Main St"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{placed}");
    let order_id = placed["data"]["id"].as_str().unwrap().to_owned();

    // The order's event is on the stream, read over TLS with the same trust.
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(certificates.ca.clone())
        .connect(nats.url())
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let found = eventually(Duration::from_secs(10), || {
        let jetstream = jetstream.clone();
        let order_id = order_id.clone();
        async move {
            let Ok(stream) = jetstream.get_stream("SHOPSTACK").await else {
                return false;
            };
            let Ok(last) = stream.get_last_raw_message_by_subject("order.created").await else {
                return false;
            };
            String::from_utf8_lossy(&last.payload).contains(&order_id)
        }
    })
    .await;
    assert!(found, "order.created for {order_id} on the stream");

    // Without the authority's certificate the cart does not talk to Redis unverified.
    let untrusting = ServiceProcess::spawn(
        &workspace_binary("cart"),
        &[
            ("REDIS_URL", &redis.url()),
            ("CATALOG_SERVICE_URL", &catalog.url("")),
            ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
        ],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, health) = json(http.get(untrusting.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(health["redis"], "unhealthy", "{health}");
    drop((untrusting, orders, cart, catalog));
}
