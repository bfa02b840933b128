//! The chaos run: the whole shop on clustered stores, shoppers under load, and three crashes in
//! the middle of it — a Redis master, a NATS server and a cart replica, each killed with SIGKILL.
//!
//! A 6-node Redis Cluster (3 masters, 3 replicas), a 3-node NATS JetStream cluster (the stream
//! with 3 replicas), one PostgreSQL, two replicas each of catalog, cart and orders (the debug
//! binaries) and one gateway in front, every backend a comma list of its replicas. Shoppers fill
//! carts and check out through the gateway with `Idempotency-Key`s and client deadlines.
//! Afterwards, with every hold expired: the stock adds up product by product, every order is on
//! the stream exactly once as `order.created`, no client waited past its deadline, and the
//! failover window the shoppers saw is printed and written to `target/chaos-report.json`.
//! docs/design/inventory.md ("Proved under chaos") says what this stands for and what it does not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use shopstack_testkit::db::TestDb;
use shopstack_testkit::events::{created_on_stream, orders_in_database};
use shopstack_testkit::http::client_with_timeout;
use shopstack_testkit::nats_cluster::NatsCluster;
use shopstack_testkit::process::{ServiceProcess, workspace_binary};
use shopstack_testkit::redis_cluster::RedisCluster;
use shopstack_testkit::stock::{StockInvariant, TestCatalogue};

/// Concurrent shoppers.
const SHOPPERS: usize = 24;
/// How long the shoppers keep shopping.
const LOAD: Duration = Duration::from_secs(45);
/// When, into the load, each fault lands.
const KILL_REDIS_MASTER_AT: Duration = Duration::from_secs(10);
const KILL_NATS_NODE_AT: Duration = Duration::from_secs(20);
const KILL_CART_REPLICA_AT: Duration = Duration::from_secs(30);
/// The gateway's deadline for one request (`REQUEST_DEADLINE`) and each client's own timeout.
const GATEWAY_DEADLINE: Duration = Duration::from_secs(4);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(6);
/// What a request may take beyond its client timeout before it counts as a hang (scheduling on
/// a loaded 2-core machine).
const MARGIN: Duration = Duration::from_millis(500);
/// A cart line's hold lives this long: short, so the invariant settles soon after the load.
const HOLD_TTL: &str = "3s";
const PRODUCTS: usize = 8;
const UNITS: i64 = 600;

fn spawn(binary: &str, env: &[(&str, &str)]) -> ServiceProcess {
    ServiceProcess::spawn(&workspace_binary(binary), env)
        .unwrap_or_else(|error| panic!("cannot start {binary}: {error:#}"))
}

fn urls(replicas: &[ServiceProcess]) -> String {
    replicas
        .iter()
        .map(|replica| replica.url(""))
        .collect::<Vec<_>>()
        .join(",")
}

/// What one request of a shopper came to.
#[derive(Debug, Clone)]
struct Request {
    /// Sent this long after the load began.
    at: Duration,
    took: Duration,
    what: &'static str,
    /// The status, or why there was none.
    outcome: Result<StatusCode, String>,
    /// A problem's `type`, for the report.
    problem: Option<String>,
}

impl Request {
    /// An error a shopper saw: a 5xx or no answer at all.
    fn is_error(&self) -> bool {
        self.outcome
            .as_ref()
            .map_or(true, |status| status.is_server_error())
    }
}

/// How a request that timed out on the client is described.
const TIMED_OUT: &str = "timed out";

/// Why `part` of a request came to nothing; a client timeout starts with [`TIMED_OUT`].
fn no_answer(part: &str, error: &reqwest::Error) -> String {
    if error.is_timeout() {
        format!("{TIMED_OUT}: {part}: {error}")
    } else {
        format!("{part}: {error}")
    }
}

/// One shopper: adds one or two products to its cart, then checks out with an
/// `Idempotency-Key`, sending the same key again while the answer is an error (a client that
/// did not learn whether its order was placed); until `LOAD` is over. The ids of the orders it
/// was answered 201 for.
async fn shop(
    gateway: String,
    user: String,
    seed: usize,
    began: Instant,
    log: Arc<Mutex<Vec<Request>>>,
) -> Vec<String> {
    let client = client_with_timeout(CLIENT_TIMEOUT);
    let mut placed = Vec::new();
    let send = |what: &'static str, request: reqwest::RequestBuilder| {
        let log = log.clone();
        async move {
            let sent = Instant::now();
            let answer = request.send().await;
            let (outcome, body) = match answer {
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(body) => (Ok(status), serde_json::from_slice::<Value>(&body).ok()),
                        Err(error) => (Err(no_answer("body", &error)), None),
                    }
                }
                Err(error) => (Err(no_answer("request", &error)), None),
            };
            let problem = body
                .as_ref()
                .and_then(|body| body["type"].as_str())
                .map(|kind| kind.rsplit('/').next().unwrap_or(kind).to_owned());
            log.lock().unwrap().push(Request {
                at: sent.duration_since(began),
                took: sent.elapsed(),
                what,
                outcome: outcome.clone(),
                problem,
            });
            (outcome, body)
        }
    };
    let mut round = 0usize;
    // Bounded by the time and, in any case, by the number of rounds.
    while began.elapsed() < LOAD && round < 10_000 {
        round += 1;
        for line in 0..(1 + (seed + round) % 2) {
            let product = format!("chaos-{}", (seed * 7 + round * 3 + line) % PRODUCTS);
            let request = client
                .post(format!("{gateway}/v1/cart/{user}"))
                .header("idempotency-key", format!("{user}-add-{round}-{line}"))
                .json(&json!({"product_id": product, "quantity": 1}));
            let _ = send("add to cart", request).await;
        }
        let key = format!("{user}-checkout-{round}");
        for _attempt in 0..5 {
            let request = client
                .post(format!("{gateway}/api/orders/checkout"))
                .header("idempotency-key", &key)
                .json(&json!({"user_id": user, "shipping_address": "1 Chaos Street"}));
            let (outcome, body) = send("checkout", request).await;
            match outcome {
                Ok(StatusCode::CREATED) => {
                    let id = body.as_ref().and_then(|body| body["data"]["id"].as_str());
                    placed.push(id.expect("a 201 names its order").to_owned());
                    break;
                }
                Ok(status) if !status.is_server_error() && status != StatusCode::CONFLICT => break,
                // 5xx, no answer, or 409 (the same key still in flight): send the key again.
                _ if began.elapsed() < LOAD => tokio::time::sleep(Duration::from_millis(300)).await,
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoppers_through_crashes_of_a_redis_master_a_nats_node_and_a_cart_replica_lose_nothing() {
    let mut redis = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
        .unwrap();
    let mut nats = NatsCluster::start().await.unwrap();
    let database = TestDb::postgres().await;
    let products = TestCatalogue::write((0..PRODUCTS).map(|n| (format!("chaos-{n}"), UNITS))).unwrap();
    let (redis_url, nats_url) = (redis.url(), nats.url());
    let products_file = products.file().to_owned();
    let stores = [
        ("REDIS_URL", redis_url.as_str()),
        ("NATS_URL", nats_url.as_str()),
        ("EVENTS_STREAM_REPLICAS", "3"),
        ("SIMULATION", "off"),
    ];

    let catalog_env: Vec<(&str, &str)> = stores
        .iter()
        .copied()
        .chain([
            ("PRODUCTS_FILE", products_file.as_str()),
            ("RESERVATION_REAP_INTERVAL", "200ms"),
        ])
        .collect();
    let catalogs = [spawn("catalog", &catalog_env), spawn("catalog", &catalog_env)];
    let catalog_urls = urls(&catalogs);
    let cart_env: Vec<(&str, &str)> = stores
        .iter()
        .copied()
        .chain([
            ("CATALOG_SERVICE_URL", catalog_urls.as_str()),
            ("CART_TTL", HOLD_TTL),
        ])
        .collect();
    let mut carts = vec![spawn("cart", &cart_env), spawn("cart", &cart_env)];
    let cart_urls = urls(&carts);
    let orders_env: Vec<(&str, &str)> = stores
        .iter()
        .copied()
        .chain([
            ("DATABASE_URL", database.url.as_str()),
            ("CATALOG_SERVICE_URL", catalog_urls.as_str()),
            ("CART_SERVICE_URL", cart_urls.as_str()),
            ("SAGA_RECOVERY_AFTER", "2s"),
            ("MAINTENANCE_INTERVAL", "200ms"),
        ])
        .collect();
    let orders = [spawn("orders", &orders_env), spawn("orders", &orders_env)];
    let orders_urls = urls(&orders);
    let deadline = format!("{}ms", GATEWAY_DEADLINE.as_millis());
    let gateway = spawn(
        "gateway",
        &[
            ("CATALOG_SERVICE_URL", catalog_urls.as_str()),
            ("CART_SERVICE_URL", cart_urls.as_str()),
            ("ORDERS_SERVICE_URL", orders_urls.as_str()),
            ("REQUEST_DEADLINE", deadline.as_str()),
            ("SIMULATION", "off"),
        ],
    );

    let users: Vec<String> = (0..SHOPPERS).map(|n| format!("chaos-shopper-{n}")).collect();
    let log: Arc<Mutex<Vec<Request>>> = Arc::default();
    let began = Instant::now();
    let shoppers: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(seed, user)| tokio::spawn(shop(gateway.url(""), user.clone(), seed, began, log.clone())))
        .collect();

    // The faults, each at its moment into the load.
    tokio::time::sleep(KILL_REDIS_MASTER_AT).await;
    let master = *tokio::task::block_in_place(|| redis.masters())
        .first()
        .expect("the cluster has masters");
    let redis_killed_at = began.elapsed();
    redis.kill(master);
    tokio::time::sleep(KILL_NATS_NODE_AT.saturating_sub(began.elapsed())).await;
    let nats_killed_at = began.elapsed();
    nats.kill(0);
    tokio::time::sleep(KILL_CART_REPLICA_AT.saturating_sub(began.elapsed())).await;
    let cart_killed_at = began.elapsed();
    carts[0].kill().unwrap();

    let mut placed: Vec<String> = Vec::new();
    for shopper in shoppers {
        placed.extend(shopper.await.unwrap());
    }
    let load_took = began.elapsed();
    let requests = std::mem::take(&mut *log.lock().unwrap());

    // The cluster took the dead master's slots over (its replica), and serves them all.
    tokio::task::block_in_place(|| redis.wait_until_ok(Duration::from_secs(10)))
        .expect("the Redis Cluster serves every slot after the failover");
    assert!(
        !tokio::task::block_in_place(|| redis.masters()).contains(&master),
        "the killed master is no master any more"
    );

    // The failover window: from the first error the shoppers saw to the last.
    let errors: Vec<&Request> = requests.iter().filter(|request| request.is_error()).collect();
    let window = errors
        .iter()
        .min_by_key(|request| request.at)
        .zip(errors.iter().max_by_key(|request| request.at + request.took))
        .map(|(first, last)| (first.at, last.at + last.took));
    // Every answer by kind, and the ones that were not a success by the second they were sent.
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut refusals_per_second: BTreeMap<u64, BTreeMap<String, usize>> = BTreeMap::new();
    for request in &requests {
        let key = match &request.outcome {
            Ok(status) => format!(
                "{} {} {}",
                request.what,
                status.as_u16(),
                request.problem.as_deref().unwrap_or_default()
            ),
            Err(_) => format!("{} no answer", request.what),
        };
        if !request.outcome.as_ref().is_ok_and(StatusCode::is_success) {
            *refusals_per_second
                .entry(request.at.as_secs())
                .or_default()
                .entry(key.clone())
                .or_default() += 1;
        }
        *statuses.entry(key).or_default() += 1;
    }

    // Each fault's window: the first to the last error sent from its moment to the next fault's.
    let faults = [
        ("redis_master_sigkill", redis_killed_at),
        ("nats_node_sigkill", nats_killed_at),
        ("cart_replica_sigkill", cart_killed_at),
    ];
    let mut windows = serde_json::Map::new();
    for (index, (fault, at)) in faults.iter().enumerate() {
        // Requests sent just before the kill fail with it.
        let from = at.saturating_sub(Duration::from_millis(500));
        let until = faults.get(index + 1).map_or(LOAD, |(_, next)| *next);
        let seen: Vec<&&Request> = errors
            .iter()
            .filter(|request| request.at >= from && request.at < until)
            .collect();
        let first = seen.iter().map(|request| request.at).min();
        let last = seen.iter().map(|request| request.at + request.took).max();
        windows.insert(
            (*fault).to_owned(),
            json!({
                "killed_at": at.as_secs_f64(),
                "errors": seen.len(),
                "first_error": first.map(|first| first.as_secs_f64()),
                "last_error": last.map(|last| last.as_secs_f64()),
                "length": first.zip(last).map(|(first, last)| last.saturating_sub(first).as_secs_f64()),
            }),
        );
    }
    let mut report = json!({
        "shoppers": SHOPPERS,
        "load_seconds": load_took.as_secs_f64(),
        "requests": requests.len(),
        "errors": errors.len(),
        "statuses": statuses,
        "failover_window_seconds": window.map(|(first, last)| json!({
            "first_error": first.as_secs_f64(),
            "last_error": last.as_secs_f64(),
            "length": last.saturating_sub(first).as_secs_f64(),
        })),
        "failover_windows_by_fault_seconds": windows,
        "slowest_request_seconds": requests.iter().map(|request| request.took).max().unwrap_or_default().as_secs_f64(),
        "not_successful_by_second": refusals_per_second,
        "invariants": "not checked yet",
    });
    // Written now too, so a run whose invariants break leaves what the shoppers saw.
    write_report(&report);

    // No client waited past its deadline: every request answered or gave up within its
    // timeout (plus scheduling), and none gave up because nothing came back — the gateway
    // answers within REQUEST_DEADLINE, below the client's timeout.
    let late: Vec<&Request> = requests
        .iter()
        .filter(|request| request.took > CLIENT_TIMEOUT + MARGIN)
        .collect();
    assert!(late.is_empty(), "requests past their deadline: {late:?}");
    let hung: Vec<&Request> = requests
        .iter()
        .filter(|request| {
            request
                .outcome
                .as_ref()
                .is_err_and(|error| error.starts_with(TIMED_OUT))
        })
        .collect();
    assert!(hung.is_empty(), "requests nobody answered: {hung:?}");
    let unexpected: Vec<&Request> = requests
        .iter()
        .filter(|request| match &request.outcome {
            Ok(status) => ![
                StatusCode::OK,
                StatusCode::CREATED,
                StatusCode::CONFLICT,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
            ]
            .contains(status),
            Err(_) => true,
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "answers a shopper cannot act on: {unexpected:?}"
    );

    // The stock adds up, product by product, once every hold has expired.
    let invariant = StockInvariant::new(&catalogs[1].url(""), products.initial.clone())
        .orders(&orders[1].url(""))
        .owners(users.iter().cloned());
    let ledger = invariant
        .settles(Duration::from_secs(30))
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));
    let sold: i64 = ledger.values().map(|terms| terms.sold).sum();

    // Every order is on the stream exactly once as order.created: the ones the shoppers were
    // answered 201 for, and every one in the database.
    let in_database = orders_in_database(&orders[1].url("")).await.unwrap();
    let answered: BTreeSet<String> = placed.iter().cloned().collect();
    assert_eq!(answered.len(), placed.len(), "an order answered 201 twice");
    let missing: Vec<&String> = answered.difference(&in_database).collect();
    assert!(
        missing.is_empty(),
        "answered 201 but not in the database: {missing:?}"
    );
    assert!(
        in_database.len() >= 20,
        "too few orders to prove anything: {}",
        in_database.len()
    );
    let surviving = nats.nodes[1].url();
    // The outbox relays what it could not publish while a node was down: wait for it (bounded).
    let waiting = Instant::now();
    let (published, on_stream) = loop {
        let on_stream = created_on_stream(&surviving).await.unwrap();
        let published = in_database.iter().all(|id| on_stream.contains_key(id));
        if published || waiting.elapsed() > Duration::from_secs(30) {
            break (published, on_stream);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let unpublished: Vec<&String> = in_database
        .iter()
        .filter(|id| !on_stream.contains_key(*id))
        .collect();
    assert!(
        published,
        "orders never published as order.created: {unpublished:?}"
    );
    let doubled: Vec<(&String, &usize)> = on_stream.iter().filter(|(_, count)| **count != 1).collect();
    assert!(doubled.is_empty(), "order.created more than once: {doubled:?}");
    let unknown: Vec<&String> = on_stream.keys().filter(|id| !in_database.contains(*id)).collect();
    assert!(
        unknown.is_empty(),
        "order.created for orders not in the database: {unknown:?}"
    );

    report["orders_placed"] = json!(in_database.len());
    report["orders_answered_201"] = json!(answered.len());
    report["units_sold"] = json!(sold);
    report["invariants"] = json!("passed");
    write_report(&report);
    drop((gateway, orders, carts, catalogs));
}

/// The report, printed and written to `target/chaos-report.json`.
fn write_report(report: &Value) {
    eprintln!("chaos report: {report:#}");
    let target = workspace_binary("gateway")
        .parent()
        .and_then(std::path::Path::parent)
        .map(|dir| dir.join("chaos-report.json"));
    if let Some(target) = target {
        let _ = std::fs::write(target, serde_json::to_vec_pretty(report).unwrap());
    }
}
