use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use reqwest::StatusCode;
use serde_json::{Value, json};
use shopstack_common::Platform;
use shopstack_common::config::Settings;
use shopstack_common::telemetry;
use shopstack_common::testing::{PostgresServer, TestServer};
use sqlx::Connection as _;

pub const ADMIN: &str = "Bearer test-admin-token";

/// Where the PostgreSQL tests create their databases: `TEST_POSTGRES_URL` when set, else this
/// test binary's own server (started on first use, shared by its tests).
async fn postgres_admin_url() -> String {
    tokio::task::spawn_blocking(PostgresServer::shared_url)
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("no PostgreSQL for this test: {error:#}"))
}

/// A fresh database for one test: a SQLite file in a new temporary directory, or a new
/// PostgreSQL database with a random name. Removed when dropped (also when the test panicked).
pub struct TestDb {
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("shopstack-orders-{}", uuid::Uuid::new_v4().simple()));
        // A nested directory that does not exist yet: the service creates it.
        let url = format!("sqlite://{}/data/orders.db", dir.display());
        Self {
            url,
            cleanup: Cleanup::Dir(dir),
        }
    }

    pub async fn postgres() -> Self {
        let admin_url = postgres_admin_url().await;
        let name = format!("orders_test_{}", uuid::Uuid::new_v4().simple());
        let mut connection = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|error| panic!("PostgreSQL at {admin_url} is needed for this test: {error}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut connection)
            .await
            .unwrap();
        connection.close().await.unwrap();
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin_url);
        Self {
            url: format!("{base}/{name}"),
            cleanup: Cleanup::Postgres { admin_url, name },
        }
    }

    pub async fn of(engine: Engine) -> Self {
        match engine {
            Engine::Sqlite => Self::sqlite(),
            Engine::Postgres => Self::postgres().await,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
                let _ = std::thread::spawn(move || {
                    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build()
                    else {
                        return;
                    };
                    runtime.block_on(async move {
                        if let Ok(mut connection) = sqlx::PgConnection::connect(&admin_url).await {
                            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            )))
                            .execute(&mut connection)
                            .await;
                            let _ = connection.close().await;
                        }
                    });
                })
                .join();
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Run `$scenario(engine)` as two tests, one per database engine.
#[macro_export]
macro_rules! on_both_engines {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$scenario($crate::helpers::Engine::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$scenario($crate::helpers::Engine::Postgres).await;
                }
            }
        )*
    };
}

/// Catalog, cart, orders and gateway, all real, on port 0.
pub struct Stack {
    pub catalog: TestServer,
    pub cart: TestServer,
    pub orders: TestServer,
    pub orders_state: orders::AppState,
    pub gateway: TestServer,
}

impl Stack {
    /// A URL on the gateway.
    pub fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }
}

pub async fn spawn_catalog() -> TestServer {
    telemetry::init_for_tests();
    let platform = Platform::new(Settings::for_tests("catalog")).unwrap();
    let config = catalog::CatalogConfig::parse_from(["catalog"]);
    let state = catalog::AppState::new(&config, platform.clone()).await.unwrap();
    TestServer::start(platform, catalog::app(state)).await.unwrap()
}

pub async fn spawn_cart(catalog_url: &str, nats_url: Option<&str>) -> TestServer {
    telemetry::init_for_tests();
    let platform = Platform::new(Settings::for_tests("cart")).unwrap();
    let mut args = vec!["cart", "--catalog-service-url", catalog_url];
    if let Some(nats_url) = nats_url {
        args.extend(["--nats-url", nats_url]);
    }
    let config = cart::CartConfig::parse_from(args);
    let state = cart::AppState::new(&config, platform.clone()).await.unwrap();
    TestServer::start(platform, cart::app(state)).await.unwrap()
}

/// The orders service on `db_url` (with its Redis read cache on `redis_url`), with extra `--flags`.
pub async fn spawn_orders(
    db_url: &str,
    catalog_url: &str,
    cart_url: &str,
    nats_url: Option<&str>,
    redis_url: Option<&str>,
    flags: &[&str],
) -> (TestServer, orders::AppState) {
    telemetry::init_for_tests();
    let mut settings = Settings::for_tests("orders");
    settings.redis_url = redis_url.map(str::to_owned);
    let platform = Platform::new(settings).unwrap();
    let mut args = vec![
        "orders",
        "--database-url",
        db_url,
        "--catalog-service-url",
        catalog_url,
        "--cart-service-url",
        cart_url,
        "--maintenance-interval",
        "200ms",
    ];
    if let Some(nats_url) = nats_url {
        args.extend(["--nats-url", nats_url]);
    }
    args.extend_from_slice(flags);
    let config = orders::OrdersConfig::parse_from(args);
    let state = orders::AppState::new(&config, platform.clone()).await.unwrap();
    let server = TestServer::start(platform, orders::app(state.clone()))
        .await
        .unwrap();
    (server, state)
}

pub async fn spawn_gateway(catalog_url: &str, cart_url: &str, orders_url: &str) -> TestServer {
    telemetry::init_for_tests();
    let platform = Platform::new(Settings::for_tests("gateway")).unwrap();
    let config = gateway::GatewayConfig::parse_from([
        "gateway",
        "--catalog-service-url",
        catalog_url,
        "--cart-service-url",
        cart_url,
        "--orders-service-url",
        orders_url,
    ]);
    let state = gateway::GatewayState::new(&config, platform.clone()).unwrap();
    TestServer::start(platform, gateway::app(state)).await.unwrap()
}

pub async fn spawn_stack(db: &TestDb, nats_url: Option<&str>, flags: &[&str]) -> Stack {
    spawn_stack_on(db, nats_url, None, flags).await
}

/// [`spawn_stack`] with the orders service's Redis read cache on `redis_url`.
pub async fn spawn_stack_on(
    db: &TestDb,
    nats_url: Option<&str>,
    redis_url: Option<&str>,
    flags: &[&str],
) -> Stack {
    let catalog = spawn_catalog().await;
    let cart = spawn_cart(&catalog.url(""), nats_url).await;
    let (orders, orders_state) = spawn_orders(
        &db.url,
        &catalog.url(""),
        &cart.url(""),
        nats_url,
        redis_url,
        flags,
    )
    .await;
    let gateway = spawn_gateway(&catalog.url(""), &cart.url(""), &orders.url("")).await;
    Stack {
        catalog,
        cart,
        orders,
        orders_state,
        gateway,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

pub async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

/// Free stock of a product as the catalog reports it.
pub async fn stock_of(stack: &Stack, product_id: &str) -> i64 {
    let product = json_of(
        client()
            .get(stack.catalog.url(&format!("/catalog/{product_id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    product["stock"].as_i64().unwrap()
}

pub async fn set_stock(stack: &Stack, product_id: &str, stock: i64) {
    let response = client()
        .put(stack.catalog.url(&format!("/admin/stock/{product_id}")))
        .header("authorization", ADMIN)
        .json(&json!({"stock": stock}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Add to `user`'s cart through the gateway (reserves the units).
pub async fn add_to_cart(stack: &Stack, user: &str, product_id: &str, quantity: i64) -> Value {
    let response = client()
        .post(stack.url(&format!("/v1/cart/{user}")))
        .json(&json!({"product_id": product_id, "quantity": quantity}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "add to cart");
    json_of(response).await
}

pub async fn get_cart(stack: &Stack, user: &str) -> Value {
    json_of(
        client()
            .get(stack.url(&format!("/v1/cart/{user}")))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// POST a checkout through the gateway.
pub async fn checkout(stack: &Stack, user: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = client()
        .post(stack.url("/api/orders/checkout"))
        .json(&json!({"user_id": user, "shipping_address": "1 Test Street"}));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

/// Cancel order `id` through the gateway.
pub async fn cancel_order(stack: &Stack, id: &str) -> reqwest::Response {
    client()
        .post(stack.url(&format!("/api/orders/{id}/cancel")))
        .send()
        .await
        .unwrap()
}

/// POST a direct order through the gateway.
pub async fn create_order(stack: &Stack, user: &str, items: &[(&str, i64)]) -> reqwest::Response {
    let items: Vec<Value> = items
        .iter()
        .map(|(product_id, quantity)| json!({"product_id": product_id, "quantity": quantity}))
        .collect();
    client()
        .post(stack.url("/api/orders"))
        .json(&json!({"user_id": user, "shipping_address": "1 Test Street", "order_items": items}))
        .send()
        .await
        .unwrap()
}

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

/// The value of the first series of `name` whose labels contain all of `labels`.
pub async fn metric(url: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let text = client().get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split([' ', '{']).next().is_some_and(|series| series == name))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// This test's own `nats-server` with JetStream, on a free port with a temporary store; stopped
/// (by PID) when dropped.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
}

impl NatsServer {
    pub async fn start() -> Self {
        let port = free_port();
        let store = std::env::temp_dir().join(format!("shopstack-nats-{}", uuid::Uuid::new_v4().simple()));
        let mut server = Self {
            child: None,
            port,
            store,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kill the server abruptly (SIGKILL to its PID).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it (again) on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        let candidates = match std::env::var("NATS_SERVER_BIN") {
            Ok(binary) => vec![binary],
            // Debian installs it in /usr/sbin, which a non-root PATH may lack.
            Err(_) => vec!["nats-server".into(), "/usr/sbin/nats-server".into()],
        };
        let child = candidates
            .iter()
            .find_map(|binary| {
                Command::new(binary)
                    .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
                    .arg(&self.store)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
            .unwrap_or_else(|| panic!("nats-server is needed for this test (tried {candidates:?})"));
        self.child = Some(child);
        let url = self.url();
        let up = eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                match async_nats::connect(&url).await {
                    Ok(client) => client.flush().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(up, "nats-server did not come up on port {}", self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Every event in the SHOPSTACK stream on `subject_prefix`, in stream order, as JSON.
pub async fn stream_events(nats_url: &str, subject_prefix: &str) -> Vec<Value> {
    let client = async_nats::connect(nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = match jetstream.get_stream("SHOPSTACK").await {
        Ok(stream) => stream,
        Err(_) => return Vec::new(),
    };
    let state = stream.info().await.unwrap().state.clone();
    let mut events = Vec::new();
    if state.messages == 0 {
        return events;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(sequence).await
            && message.subject.starts_with(subject_prefix)
        {
            events.push(serde_json::from_slice(&message.payload).unwrap());
        }
    }
    events
}
