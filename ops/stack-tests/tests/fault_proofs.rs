//! Fault proofs on real processes: the service binaries run as child processes (on free
//! loopback ports, with a Redis of the test's own), and each test stops one of them — SIGTERM
//! or SIGKILL — or kills Redis, in the middle of the work, then checks what clients saw and that
//! the stock adds up (`shopstack_testkit::stock`). The proofs that involve the stores run twice:
//! on one Redis, and on the clustered stores (`Stores`: a Redis Cluster and a NATS JetStream
//! cluster; tests named `…_on_clustered_stores`). docs/design/inventory.md and
//! docs/design/checkout.md say what each proof stands for.
//!
//! The binaries are the workspace's debug builds (`cargo build --workspace --bins` first), which
//! have the test-only failpoints (`SHOPSTACK_FAILPOINTS`) that hold a process at a named step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use shopstack_testkit::db::TestDb;
use shopstack_testkit::http::{client, client_with_timeout, json_of};
use shopstack_testkit::nats_cluster::NatsCluster;
use shopstack_testkit::ports::closed_port;
use shopstack_testkit::process::{ServiceProcess, workspace_binary};
use shopstack_testkit::redis::RedisServer;
use shopstack_testkit::redis_cluster::RedisCluster;
use shopstack_testkit::stock::{StockInvariant, TestCatalogue};
use shopstack_testkit::wait::eventually;

const ADMIN_TOKEN: &str = "fault-proofs-admin";

/// The stores a proof runs on: one Redis server (events logged only), or the clustered stores —
/// a 6-node Redis Cluster and a 3-node NATS JetStream cluster whose stream orders creates with
/// 3 replicas. The proofs that involve the stores run on both.
enum Stores {
    Single(RedisServer),
    Clustered { redis: RedisCluster, nats: NatsCluster },
}

impl Stores {
    fn single() -> Self {
        Self::Single(RedisServer::start().unwrap())
    }

    async fn clustered() -> Self {
        let redis = tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .unwrap()
            .unwrap();
        let nats = NatsCluster::start().await.unwrap();
        Self::Clustered { redis, nats }
    }

    /// `REDIS_URL`: one node, or the cluster's node list.
    fn redis(&self) -> String {
        match self {
            Self::Single(redis) => redis.url(),
            Self::Clustered { redis, .. } => redis.url(),
        }
    }

    /// The events settings orders takes on these stores.
    fn events(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Single(_) => Vec::new(),
            Self::Clustered { nats, .. } => vec![
                ("NATS_URL", nats.url()),
                ("EVENTS_STREAM_REPLICAS", "3".to_owned()),
            ],
        }
    }
}

/// `settings` borrowed, as `spawn` and `orders` take them.
fn borrowed<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}

fn spawn(binary: &str, env: &[(&str, &str)]) -> ServiceProcess {
    ServiceProcess::spawn(&workspace_binary(binary), env)
        .unwrap_or_else(|error| panic!("cannot start {binary}: {error:#}"))
}

/// The catalog on `redis`, its holds reaped every 200 ms.
fn catalog(redis: &str, products: &TestCatalogue) -> ServiceProcess {
    spawn(
        "catalog",
        &[
            ("REDIS_URL", redis),
            ("PRODUCTS_FILE", products.file()),
            ("RESERVATION_REAP_INTERVAL", "200ms"),
            ("SIMULATION", "off"),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
}

/// The cart on `redis`, its carts and holds kept `ttl`, with `failpoints` armed.
fn cart(redis: &str, catalog: &ServiceProcess, ttl: &str, failpoints: &str) -> ServiceProcess {
    spawn(
        "cart",
        &[
            ("REDIS_URL", redis),
            ("CATALOG_SERVICE_URL", &catalog.url("")),
            ("CART_TTL", ttl),
            ("SIMULATION", "off"),
            ("SHOPSTACK_FAILPOINTS", failpoints),
        ],
    )
}

/// Orders on `database`, interrupted placements resolved after 1 s, a grace period of 500 ms at
/// shutdown, with `failpoints` armed; `extra` adds or overrides settings.
fn orders(
    database: &str,
    catalog: &ServiceProcess,
    cart: &ServiceProcess,
    failpoints: &str,
    extra: &[(&str, &str)],
) -> ServiceProcess {
    let (catalog_url, cart_url) = (catalog.url(""), cart.url(""));
    let mut env = vec![
        ("DATABASE_URL", database),
        ("CATALOG_SERVICE_URL", catalog_url.as_str()),
        ("CART_SERVICE_URL", cart_url.as_str()),
        ("SAGA_RECOVERY_AFTER", "1s"),
        ("MAINTENANCE_INTERVAL", "200ms"),
        ("SHUTDOWN_GRACE_MS", "500"),
        ("SIMULATION", "off"),
        ("SHOPSTACK_FAILPOINTS", failpoints),
    ];
    // Later entries win: the child's environment is built in order.
    env.extend_from_slice(extra);
    spawn("orders", &env)
}

async fn add_to_cart(cart: &ServiceProcess, user: &str, product: &str, quantity: u32) -> reqwest::Response {
    client()
        .post(cart.url(&format!("/v1/cart/{user}")))
        .json(&json!({"product_id": product, "quantity": quantity}))
        .send()
        .await
        .unwrap()
}

async fn checkout(orders: &ServiceProcess, user: &str) -> reqwest::Response {
    client()
        .post(orders.url("/api/orders/checkout"))
        .json(&json!({"user_id": user, "shipping_address": "1 Test Street"}))
        .send()
        .await
        .unwrap()
}

async fn set_stock(catalog: &ServiceProcess, product: &str, stock: i64) -> StatusCode {
    client()
        .put(catalog.url(&format!("/admin/stock/{product}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"stock": stock}))
        .send()
        .await
        .unwrap()
        .status()
}

/// Wait (at most 10 s) until `service` printed that it reached `failpoint`.
async fn held_at(service: &ServiceProcess, failpoint: &str) {
    let reached = eventually(Duration::from_secs(10), || async {
        service
            .output()
            .iter()
            .any(|line| line.contains("failpoint reached") && line.contains(failpoint))
    })
    .await;
    assert!(
        reached,
        "{failpoint} was not reached:\n{}",
        service.output().join("\n")
    );
}

/// A 503 problem with `Retry-After`, answered within `bound` of `started`.
async fn assert_fast_503(what: &str, started: Instant, response: reqwest::Response, bound: Duration) {
    let elapsed = started.elapsed();
    let status = response.status();
    let retry_after = response.headers().get("retry-after").cloned();
    let content_type = response.headers().get("content-type").cloned();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    assert!(retry_after.is_some(), "{what}: a 503 without Retry-After: {body}");
    assert_eq!(
        content_type.as_ref().and_then(|value| value.to_str().ok()),
        Some("application/problem+json"),
        "{what}: {body}"
    );
    assert!(
        elapsed < bound,
        "{what} took {elapsed:?}: it must fail fast, not hang"
    );
}

/// The 503 `stock-unknown` problem naming `product`, with `Retry-After`: refused, not "out of
/// stock".
async fn assert_stock_unknown(what: &str, response: reqwest::Response, product: &str) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert!(response.headers().contains_key("retry-after"), "{what}");
    let problem = json_of(response).await;
    assert!(
        problem["type"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/stock-unknown"),
        "{what}: {problem}"
    );
    assert_eq!(problem["product_id"], product, "{what}: {problem}");
}

// ---------------------------------------------------------------------------------------------
// SIGTERM to the gateway under load

/// What one readiness probe on a new connection came to, and when.
type Probe = (Instant, Result<StatusCode, String>);

/// What one request through the gateway came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Answered(StatusCode),
    /// No connection: the gateway no longer accepts them.
    Refused,
    /// A connection, then no (whole) answer.
    Failed(String),
}

/// One request through the gateway: when it was sent and what it came to.
#[derive(Debug)]
struct Sent {
    at: Instant,
    outcome: Outcome,
}

/// SIGTERM to the gateway in the middle of a load: readiness fails first; every request sent
/// during the drain (`SHUTDOWN_DRAIN_MS`) is served, on new connections too; requests still in
/// flight when the drain ends finish; only then are new connections refused — the clients keep
/// sending until they are, and none of their requests fails otherwise; the exit is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_gateway_under_load_fails_no_request_it_accepted() {
    const DRAIN: Duration = Duration::from_secs(2);
    let catalog = spawn(
        "catalog",
        // The catalog's default simulation: reads take 20–60 ms, so requests are in flight
        // when the signal lands; x-fault-delay-ms makes the slow ones.
        &[("SIMULATION", "on"), ("SIM_HEADER_FAULTS", "true")],
    );
    let nowhere = closed_port().await;
    let mut gateway = spawn(
        "gateway",
        &[
            ("CATALOG_SERVICE_URL", &catalog.url("")),
            ("CART_SERVICE_URL", &nowhere),
            ("ORDERS_SERVICE_URL", &nowhere),
            ("SIMULATION", "off"),
            ("SHUTDOWN_DRAIN_MS", "2000"),
            ("SHUTDOWN_GRACE_MS", "10000"),
        ],
    );
    let product_url = gateway.url("/catalog/prod-110");
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();

    // The load: 8 clients in a loop, on keep-alive connections (reqwest's pool), each until its
    // connection is refused — clients that never noticed readiness; the deadline bounds the
    // loop in any case.
    let load_client = client_with_timeout(Duration::from_secs(10));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, url, sent) = (load_client.clone(), product_url.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let at = Instant::now();
                let outcome = match client.get(&url).send().await {
                    Ok(response) => {
                        let status = response.status();
                        match response.bytes().await {
                            Ok(_) => Outcome::Answered(status),
                            Err(error) => Outcome::Failed(format!("body: {error:?}")),
                        }
                    }
                    Err(error) if error.is_connect() => Outcome::Refused,
                    Err(error) => Outcome::Failed(format!("{error:?}")),
                };
                let refused = outcome == Outcome::Refused;
                sent.lock().unwrap().push(Sent { at, outcome });
                if refused {
                    return;
                }
            }
        }));
    }

    // Readiness and acceptance, probed on a new connection every 25 ms: what a load balancer
    // sees of the gateway.
    let probes: Arc<Mutex<Vec<Probe>>> = Arc::default();
    let prober = {
        let (url, probes) = (gateway.url("/readyz"), probes.clone());
        tokio::spawn(async move {
            let fresh = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let outcome = fresh
                    .get(&url)
                    .send()
                    .await
                    .map(|response| response.status())
                    .map_err(|error| format!("{error:?}"));
                let refused = outcome.is_err();
                probes.lock().unwrap().push((Instant::now(), outcome));
                if refused {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let signalled = Instant::now();
    gateway.terminate().unwrap();

    // Half-way through the drain: requests that will still be in flight when it ends, each on
    // a new connection.
    tokio::time::sleep(DRAIN / 2).await;
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let url = product_url.clone();
            tokio::spawn(async move {
                client_with_timeout(Duration::from_secs(10))
                    .get(url)
                    .header("x-fault-delay-ms", "2000")
                    .send()
                    .await
                    .map(|response| response.status())
                    .map_err(|error| format!("{error:?}"))
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    for request in slow {
        assert_eq!(
            request.await.unwrap(),
            Ok(StatusCode::OK),
            "a request in flight when the drain ended must finish"
        );
    }
    prober.await.unwrap();
    let exit = tokio::task::spawn_blocking(move || {
        let status = gateway.wait_for_exit(Duration::from_secs(15));
        (status, gateway)
    })
    .await
    .unwrap();
    let (status, gateway) = exit;
    assert!(
        status.is_some_and(|status| status.success()),
        "the gateway did not exit cleanly: {status:?}\n{}",
        gateway.output().join("\n")
    );

    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let failed: Vec<&Sent> = sent
        .iter()
        .filter(|sent| !matches!(sent.outcome, Outcome::Answered(StatusCode::OK) | Outcome::Refused))
        .collect();
    let offsets: Vec<String> = failed
        .iter()
        .map(|sent| match sent.at.checked_duration_since(signalled) {
            Some(after) => format!("sent {after:?} after SIGTERM"),
            None => format!("sent {:?} before SIGTERM", signalled.duration_since(sent.at)),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed ({offsets:?}): {failed:?}",
        failed.len(),
        sent.len()
    );
    let refused: Vec<Instant> = sent
        .iter()
        .filter(|sent| sent.outcome == Outcome::Refused)
        .map(|sent| sent.at)
        .collect();
    assert_eq!(refused.len(), 8, "every client ends refused, after the drain");
    assert!(
        refused
            .iter()
            .all(|at| *at >= signalled + DRAIN - Duration::from_millis(100)),
        "a connection refused before the {DRAIN:?} drain ended: {:?}",
        refused
            .iter()
            .map(|at| at.duration_since(signalled))
            .collect::<Vec<_>>()
    );
    let during_drain = sent.iter().filter(|sent| sent.at > signalled).count();
    assert!(
        sent.len() > 50 && during_drain > 10,
        "too little load to prove anything: {} sent, {during_drain} during the drain",
        sent.len()
    );

    let probes = std::mem::take(&mut *probes.lock().unwrap());
    let first_not_ready = probes
        .iter()
        .find(|(_, outcome)| *outcome != Ok(StatusCode::OK))
        .expect("readiness never failed");
    assert!(first_not_ready.0 > signalled);
    assert_eq!(
        first_not_ready.1,
        Ok(StatusCode::SERVICE_UNAVAILABLE),
        "readiness fails (503) before connections are refused"
    );
    let (refused_at, _) = probes
        .last()
        .filter(|(_, outcome)| outcome.is_err())
        .expect("new connections were never refused");
    assert!(
        *refused_at >= signalled + DRAIN - Duration::from_millis(100),
        "new connections refused {:?} after SIGTERM, before the {DRAIN:?} drain ended",
        refused_at.duration_since(signalled)
    );
    let served_during_drain = probes
        .iter()
        .filter(|(at, outcome)| *at > signalled && *outcome == Ok(StatusCode::SERVICE_UNAVAILABLE))
        .count();
    assert!(
        served_during_drain > 5,
        "new connections must be served during the drain: {probes:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// SIGKILL of the cart between reserving and saving; SIGTERM to orders mid-checkout

/// The cart is killed (SIGKILL) after the catalog set its hold and before the cart saved the
/// line: the hold stays until the cart's time-to-live, then the reaper gives it back; nothing
/// is lost or sold twice, and the restarted cart works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_cart_between_reserving_and_saving_leaves_no_stock_behind() {
    sigkill_of_the_cart_between_reserving_and_saving(Stores::single()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_cart_between_reserving_and_saving_leaves_no_stock_behind_on_clustered_stores() {
    sigkill_of_the_cart_between_reserving_and_saving(Stores::clustered().await).await;
}

async fn sigkill_of_the_cart_between_reserving_and_saving(redis: Stores) {
    let products = TestCatalogue::write([("fp-a", 10), ("fp-b", 10)]).unwrap();
    let catalog = catalog(&redis.redis(), &products);
    let mut crashing = cart(&redis.redis(), &catalog, "2s", "cart.after_reserve=pause");
    let invariant =
        StockInvariant::new(&catalog.url(""), products.initial.clone()).owners(["u-crash", "u-after"]);

    let add = tokio::spawn({
        let url = crashing.url("/v1/cart/u-crash");
        async move {
            client()
                .post(url)
                .json(&json!({"product_id": "fp-a", "quantity": 3}))
                .send()
                .await
        }
    });
    held_at(&crashing, "cart.after_reserve").await;
    let ledger = invariant.check().await.unwrap();
    assert_eq!(ledger["fp-a"].held, 3, "the hold is set before the line is saved");
    crashing.kill().unwrap();
    assert!(add.await.unwrap().is_err(), "the request dies with the cart");

    let settled = invariant.settles(Duration::from_secs(15)).await.unwrap();
    assert_eq!(
        settled["fp-a"].free, 10,
        "the expired hold went back: {settled:?}"
    );

    let cart = cart(&redis.redis(), &catalog, "2s", "");
    let lost = json_of(client().get(cart.url("/v1/cart/u-crash")).send().await.unwrap()).await;
    assert_eq!(lost["items"], json!([]), "the line was never saved");
    assert_eq!(
        add_to_cart(&cart, "u-after", "fp-a", 4).await.status(),
        StatusCode::OK
    );
    let ledger = invariant.check().await.unwrap();
    assert_eq!((ledger["fp-a"].free, ledger["fp-a"].held), (6, 4));
}

/// Orders is stopped (SIGTERM, the grace period running out) while a checkout is held after
/// the stock commit and before the order is written: the client gets no order, and the
/// restarted service's recovery gives the committed units back; a new checkout then sells
/// them once. The stock adds up at every settled point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_orders_mid_checkout_is_undone_and_the_stock_adds_up() {
    sigterm_to_orders_mid_checkout(Stores::single()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_orders_mid_checkout_is_undone_and_the_stock_adds_up_on_clustered_stores() {
    sigterm_to_orders_mid_checkout(Stores::clustered().await).await;
}

async fn sigterm_to_orders_mid_checkout(redis: Stores) {
    let database = TestDb::sqlite();
    let products = TestCatalogue::write([("fp-a", 10), ("fp-b", 10)]).unwrap();
    let catalog = catalog(&redis.redis(), &products);
    let cart = cart(&redis.redis(), &catalog, "3s", "");
    let events = redis.events();
    let events = borrowed(&events);
    let mut stopping = orders(
        &database.url,
        &catalog,
        &cart,
        "orders.after_commit=pause",
        &events,
    );
    assert_eq!(
        add_to_cart(&cart, "u-1", "fp-a", 2).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        add_to_cart(&cart, "u-1", "fp-b", 1).await.status(),
        StatusCode::OK
    );

    let placing = tokio::spawn({
        let url = stopping.url("/api/orders/checkout");
        async move {
            client()
                .post(url)
                .json(&json!({"user_id": "u-1", "shipping_address": "1 Test Street"}))
                .send()
                .await
                .map(|response| response.status())
        }
    });
    held_at(&stopping, "orders.after_commit").await;
    stopping.terminate().unwrap();
    let (status, stopping) =
        tokio::task::spawn_blocking(move || (stopping.wait_for_exit(Duration::from_secs(10)), stopping))
            .await
            .unwrap();
    assert!(
        status.is_some(),
        "orders did not stop:\n{}",
        stopping.output().join("\n")
    );
    let answer = placing.await.unwrap();
    assert!(
        !matches!(answer, Ok(status) if status.is_success()),
        "a checkout cut at shutdown placed no order: {answer:?}"
    );

    let orders = orders(&database.url, &catalog, &cart, "", &events);
    let invariant = StockInvariant::new(&catalog.url(""), products.initial.clone())
        .orders(&orders.url(""))
        .owners(["u-1"]);
    let settled = invariant.settles(Duration::from_secs(15)).await.unwrap();
    assert_eq!(
        (settled["fp-a"].free, settled["fp-a"].sold),
        (10, 0),
        "the interrupted checkout was undone: {settled:?}"
    );

    let placed = checkout(&orders, "u-1").await;
    assert_eq!(
        placed.status(),
        StatusCode::CREATED,
        "{}",
        placed.text().await.unwrap_or_default()
    );
    let settled = invariant.settles(Duration::from_secs(15)).await.unwrap();
    assert_eq!(
        (settled["fp-a"].free, settled["fp-a"].sold),
        (8, 2),
        "{settled:?}"
    );
    assert_eq!(
        (settled["fp-b"].free, settled["fp-b"].sold),
        (9, 1),
        "{settled:?}"
    );
}

/// SIGTERM to orders while a checkout is in flight (slowed at the same step): readiness fails
/// at once, the checkout finishes within the grace period and the process exits cleanly; the
/// order is sold exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_orders_lets_a_checkout_in_flight_finish() {
    sigterm_to_orders_with_a_checkout_in_flight(Stores::single()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_orders_lets_a_checkout_in_flight_finish_on_clustered_stores() {
    sigterm_to_orders_with_a_checkout_in_flight(Stores::clustered().await).await;
}

async fn sigterm_to_orders_with_a_checkout_in_flight(redis: Stores) {
    let database = TestDb::sqlite();
    let products = TestCatalogue::write([("fp-a", 10)]).unwrap();
    let catalog = catalog(&redis.redis(), &products);
    let cart = cart(&redis.redis(), &catalog, "3s", "");
    let events = redis.events();
    let events = borrowed(&events);
    let mut slow = events.clone();
    // Recovery would take over a placement slower than SAGA_RECOVERY_AFTER: not here.
    slow.extend([
        ("SHUTDOWN_DRAIN_MS", "500"),
        ("SHUTDOWN_GRACE_MS", "10000"),
        ("SAGA_RECOVERY_AFTER", "30s"),
    ]);
    let stopping = orders(
        &database.url,
        &catalog,
        &cart,
        "orders.after_commit=sleep(1500)",
        &slow,
    );
    assert_eq!(
        add_to_cart(&cart, "u-1", "fp-a", 2).await.status(),
        StatusCode::OK
    );
    let placing = tokio::spawn(checkout_status(stopping.url("/api/orders/checkout"), "u-1"));
    held_at(&stopping, "orders.after_commit").await;
    stopping.terminate().unwrap();
    let ready = client().get(stopping.url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "readiness fails at once"
    );
    let placed = placing.await.unwrap();
    assert!(
        matches!(&placed, Ok((StatusCode::CREATED, _))),
        "the checkout in flight finishes: {placed:?}"
    );
    let (status, stopping) = tokio::task::spawn_blocking(move || {
        let mut stopping = stopping;
        (stopping.wait_for_exit(Duration::from_secs(15)), stopping)
    })
    .await
    .unwrap();
    assert!(
        status.is_some_and(|status| status.success()),
        "orders did not exit cleanly: {status:?}\n{}",
        stopping.output().join("\n")
    );

    let orders = orders(&database.url, &catalog, &cart, "", &events);
    let settled = StockInvariant::new(&catalog.url(""), products.initial.clone())
        .orders(&orders.url(""))
        .owners(["u-1"])
        .settles(Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(
        (settled["fp-a"].free, settled["fp-a"].sold),
        (8, 2),
        "{settled:?}"
    );
}

/// A checkout's status and body (or why none came back).
async fn checkout_status(url: String, user: &'static str) -> Result<(StatusCode, String), String> {
    let response = client()
        .post(url)
        .json(&json!({"user_id": user, "shipping_address": "1 Test Street"}))
        .send()
        .await
        .map_err(|error| format!("{error:?}"))?;
    let status = response.status();
    Ok((status, response.text().await.unwrap_or_default()))
}

// ---------------------------------------------------------------------------------------------
// Redis killed mid-operation

/// A few shoppers filling carts and checking out, each request's status kept.
fn shoppers(
    cart: &ServiceProcess,
    orders: &ServiceProcess,
    users: &[String],
    until: Instant,
) -> Vec<tokio::task::JoinHandle<Vec<StatusCode>>> {
    users
        .iter()
        .cloned()
        .map(|user| {
            let (cart_url, orders_url) = (
                cart.url(&format!("/v1/cart/{user}")),
                orders.url("/api/orders/checkout"),
            );
            tokio::spawn(async move {
                let client = client();
                let mut statuses = Vec::new();
                let mut round = 0u32;
                while Instant::now() < until && round < 1000 {
                    round += 1;
                    let product = if round.is_multiple_of(2) { "fp-a" } else { "fp-b" };
                    let response = if round.is_multiple_of(4) {
                        client
                            .post(&orders_url)
                            .json(&json!({"user_id": user, "shipping_address": "1 Test Street"}))
                            .send()
                            .await
                    } else {
                        client
                            .post(&cart_url)
                            .json(&json!({"product_id": product, "quantity": 1}))
                            .send()
                            .await
                    };
                    statuses.push(response.map_or(StatusCode::IM_A_TEAPOT, |response| response.status()));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                statuses
            })
        })
        .collect()
}

/// Redis is killed (SIGKILL) under load and restarted with its data (an append-only file synced
/// on every write): while it is down the catalog, the cart and orders answer fast 503s with
/// `Retry-After`; within 5 s of its return they all work again; the stock adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_with_its_data_fails_fast_recovers_and_adds_up() {
    let mut redis = RedisServer::start_persistent().unwrap();
    let database = TestDb::sqlite();
    let products = TestCatalogue::write([("fp-a", 200), ("fp-b", 200)]).unwrap();
    let catalog = catalog(&redis.url(), &products);
    let cart = cart(&redis.url(), &catalog, "3s", "");
    // Its read cache on the same Redis: a cache that is down never fails a read.
    let orders = orders(&database.url, &catalog, &cart, "", &[("REDIS_URL", &redis.url())]);
    let users: Vec<String> = (0..4).map(|i| format!("shopper-{i}")).collect();
    assert_eq!(
        add_to_cart(&cart, "early", "fp-b", 1).await.status(),
        StatusCode::OK
    );
    let early = checkout(&orders, "early").await;
    assert_eq!(early.status(), StatusCode::CREATED);
    let early = json_of(early).await["data"]["id"].as_str().unwrap().to_owned();

    let load = shoppers(
        &cart,
        &orders,
        &users,
        Instant::now() + Duration::from_millis(1500),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.kill();
    let mut statuses = Vec::new();
    for shopper in load {
        statuses.extend(shopper.await.unwrap());
    }
    // Every answer is one a client can act on: done, out of stock, in progress, or 503.
    let allowed = [
        StatusCode::OK,
        StatusCode::CREATED,
        StatusCode::CONFLICT,
        StatusCode::SERVICE_UNAVAILABLE,
    ];
    assert!(
        statuses.iter().all(|status| allowed.contains(status)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "Redis was down mid-load: {statuses:?}"
    );

    let bound = Duration::from_secs(2);
    let started = Instant::now();
    let hold = client()
        .put(catalog.url("/inventory/holds/probe/fp-a"))
        .json(&json!({"quantity": 1, "ttl_secs": 3}))
        .send()
        .await
        .unwrap();
    assert_fast_503("a catalog hold", started, hold, bound).await;
    let started = Instant::now();
    assert_fast_503(
        "a cart add",
        started,
        add_to_cart(&cart, "probe", "fp-a", 1).await,
        bound,
    )
    .await;
    let started = Instant::now();
    assert_fast_503("a checkout", started, checkout(&orders, "probe").await, bound).await;
    let read = client()
        .get(orders.url(&format!("/api/orders/{early}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        read.status(),
        StatusCode::OK,
        "an order is read from the database meanwhile"
    );

    redis.restart().unwrap();
    let back = Instant::now();
    let recovered = eventually(Duration::from_secs(5), || async {
        add_to_cart(&cart, "after", "fp-a", 1).await.status() == StatusCode::OK
    })
    .await;
    assert!(
        recovered,
        "the cart (and the catalog under it) recovers within 5 s of Redis"
    );
    let recovered = eventually(Duration::from_secs(5).saturating_sub(back.elapsed()), || async {
        checkout(&orders, "after").await.status() == StatusCode::CREATED
    })
    .await;
    assert!(recovered, "checkout recovers within 5 s of Redis");
    assert_eq!(
        client()
            .get(catalog.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "no stock was lost: the data was kept"
    );

    let mut owners = users.clone();
    owners.extend(["probe".to_owned(), "after".to_owned(), "early".to_owned()]);
    let invariant = StockInvariant::new(&catalog.url(""), products.initial.clone())
        .orders(&orders.url(""))
        .owners(owners);
    let settled = invariant.settles(Duration::from_secs(20)).await.unwrap();
    assert!(settled["fp-a"].sold > 0, "something was sold: {settled:?}");
}

/// Redis comes back empty: the catalog does not make stock up. Readiness fails naming the lost
/// products; reservations and orders are refused with 503 (never 409 "out of stock", never
/// sold); no seeding happens however long it waits; an operator setting a product's stock
/// through the admin route makes that product sell again, and setting the last one ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_sells_nothing_until_the_stock_is_set_again() {
    let mut redis = RedisServer::start().unwrap();
    let database = TestDb::sqlite();
    let products = TestCatalogue::write([("fp-a", 10), ("fp-b", 10)]).unwrap();
    let catalog = catalog(&redis.url(), &products);
    let cart = cart(&redis.url(), &catalog, "30s", "");
    let orders = orders(&database.url, &catalog, &cart, "", &[]);
    assert_eq!(
        add_to_cart(&cart, "u-before", "fp-a", 2).await.status(),
        StatusCode::OK
    );

    redis.restart_empty().unwrap();
    let noticed = eventually(Duration::from_secs(10), || async {
        let ready = client().get(catalog.url("/readyz")).send().await.unwrap();
        ready.status() == StatusCode::SERVICE_UNAVAILABLE && json_of(ready).await["stock"]["status"] == "lost"
    })
    .await;
    assert!(noticed, "the catalog's readiness says the stock is lost");
    let ready = json_of(client().get(catalog.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(ready["stock"]["products"], json!(["fp-a", "fp-b"]), "{ready}");
    assert!(
        ready["stock"]["reason"]
            .as_str()
            .unwrap()
            .contains("/admin/stock/"),
        "{ready}"
    );

    // Several reaper ticks later nothing has been re-seeded, and nothing sells.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hold = client()
        .put(catalog.url("/inventory/holds/u-after/fp-a"))
        .json(&json!({"quantity": 1, "ttl_secs": 30}))
        .send()
        .await
        .unwrap();
    assert_stock_unknown("a catalog hold", hold, "fp-a").await;
    // The cart and orders pass the catalog's refusal on, naming the product.
    let add = add_to_cart(&cart, "u-after", "fp-a", 1).await;
    assert_stock_unknown("a cart add", add, "fp-a").await;
    let direct = client()
        .post(orders.url("/api/orders"))
        .json(
            &json!({"user_id": "u-direct", "shipping_address": "1 Test Street",
                      "order_items": [{"product_id": "fp-b", "quantity": 1}]}),
        )
        .send()
        .await
        .unwrap();
    assert_stock_unknown("a direct order", direct, "fp-b").await;
    let listed = json_of(client().get(orders.url("/api/orders")).send().await.unwrap()).await;
    assert_eq!(listed["data"], json!([]), "nothing was sold");

    // The operator counts the shelves and sets the stock: each product sells again once set.
    assert_eq!(set_stock(&catalog, "fp-a", 7).await, StatusCode::OK);
    assert_eq!(
        add_to_cart(&cart, "u-after", "fp-a", 1).await.status(),
        StatusCode::OK
    );
    let add = add_to_cart(&cart, "u-after", "fp-b", 1).await;
    assert_stock_unknown("a cart add", add, "fp-b").await;
    let ready = json_of(client().get(catalog.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(ready["stock"]["products"], json!(["fp-b"]), "{ready}");
    assert_eq!(set_stock(&catalog, "fp-b", 4).await, StatusCode::OK);
    assert_eq!(
        client()
            .get(catalog.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        add_to_cart(&cart, "u-after", "fp-b", 1).await.status(),
        StatusCode::OK
    );
    let placed = checkout(&orders, "u-after").await;
    assert_eq!(
        placed.status(),
        StatusCode::CREATED,
        "{}",
        placed.text().await.unwrap_or_default()
    );

    let baseline = BTreeMap::from([("fp-a".to_owned(), 7), ("fp-b".to_owned(), 4)]);
    let invariant = StockInvariant::new(&catalog.url(""), baseline)
        .orders(&orders.url(""))
        .owners(["u-before", "u-after"]);
    let ledger = invariant.settles(Duration::from_secs(15)).await.unwrap();
    assert_eq!((ledger["fp-a"].free, ledger["fp-a"].sold), (6, 1), "{ledger:?}");
    assert_eq!((ledger["fp-b"].free, ledger["fp-b"].sold), (3, 1), "{ledger:?}");
}
