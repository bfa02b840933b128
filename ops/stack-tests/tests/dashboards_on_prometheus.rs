//! Every dashboard query returns data: the services run in-process on port 0, a real
//! Prometheus (Debian's binary) scrapes them every second with a localhost variant of
//! `observability/prometheus/prometheus.yml` and evaluates the recording rules, traffic
//! (including real errors, injected faults and upstream timeouts) flows through the gateway,
//! and then every PromQL query of every dashboard — and every template-variable query — is
//! evaluated through Prometheus's HTTP API and must return at least one series. Prometheus
//! scrapes OpenMetrics and stores exemplars, as in the Docker stack: the latency panels' links
//! to traces have exemplars to show.
//!
//! Panels for metrics that other work has not landed yet are listed in [`PENDING`], with the
//! work that brings them: they may be empty, and the test says so out loud.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{Value, json};
use shopstack_testkit::http::client_with_timeout;
use shopstack_testkit::server::TestServer;
use shopstack_testkit::settings::ADMIN_TOKEN;
use shopstack_testkit::stack::Stack;
use stack_tests::dashboards::{self, Query};
use stack_tests::observability_path;
use stack_tests::prometheus::{self, Prometheus};

/// Panels whose metrics do not exist yet, and the work that brings them. Their queries may
/// return no series until then; every other query must return at least one. When a listed
/// panel starts returning data the test prints a notice: remove it from this list.
const PENDING: &[(&str, &str, &str)] = &[
    // Empty: every panel's query returns data from the running services. (Counters whose
    // labels are known up front — saga recoveries, consumed order events — start at 0.)
];

fn pending_reason(query: &Query) -> Option<&'static str> {
    PENDING
        .iter()
        .find(|(dashboard, panel, _)| *dashboard == query.dashboard && *panel == query.panel)
        .map(|(_, _, reason)| *reason)
}

/// Turn the simulation on: the catalog fails 10 % of reads with 503 and honours
/// `x-fault-delay-ms`; the cart fails 10 % of writes with 500; both add a little latency.
async fn inject_faults(client: &Client, gateway: &TestServer) {
    for (path, profile) in [
        (
            "/admin/catalog/simulation",
            json!({"enabled": true, "applies_to": "reads", "latency_min_ms": 1, "latency_max_ms": 5,
                   "latency_rate": 0.5, "failure_rate": 0.1, "failure_status": 503, "header_faults": true}),
        ),
        (
            "/admin/cart/simulation",
            json!({"enabled": true, "applies_to": "writes", "latency_min_ms": 1, "latency_max_ms": 5,
                   "latency_rate": 0.5, "failure_rate": 0.1, "failure_status": 500}),
        ),
    ] {
        let response = client
            .put(gateway.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&profile)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}: {:?}", response.text().await);
    }
}

/// One round of the traffic mix, through the gateway and directly.
async fn traffic_round(client: &Client, gateway: &str, catalog: &str, cart: &str, round: u64) {
    let user = format!("user-{}", round % 7);
    let get = |url: String| client.get(url);
    let requests = vec![
        get(format!("{gateway}/catalog")),
        get(format!("{gateway}/catalog?q=wireless&page_size=5")),
        get(format!("{gateway}/catalog/prod-110")),
        get(format!("{gateway}/catalog/no-such-product")),
        get(format!("{gateway}/catalog?page=0")),
        client
            .post(format!("{gateway}/cart/add"))
            .json(&json!({"user_id": user, "product_id": "prod-111", "quantity": 1})),
        get(format!("{gateway}/cart/{user}")),
        client
            .post(format!("{gateway}/v1/cart/{user}"))
            .json(&json!({"product_id": "prod-112", "quantity": 2})),
        // The same idempotent write twice: executed, then replayed.
        client
            .post(format!("{gateway}/v1/cart/{user}/items"))
            .header("idempotency-key", format!("obs-{round}"))
            .json(&json!({"product_id": "prod-113", "quantity": 1})),
        client
            .post(format!("{gateway}/v1/cart/{user}/items"))
            .header("idempotency-key", format!("obs-{round}"))
            .json(&json!({"product_id": "prod-113", "quantity": 1})),
        client
            .patch(format!("{gateway}/v1/cart/{user}/items/prod-112"))
            .json(&json!({"quantity": 3})),
        client.delete(format!("{gateway}/v1/cart/{user}/items/prod-113")),
        get(format!("{gateway}/v1/cart/{user}")),
        // Real client errors: unknown product, malformed body, bad quantity.
        client
            .post(format!("{gateway}/v1/cart/{user}"))
            .json(&json!({"product_id": "no-such-product", "quantity": 1})),
        client
            .post(format!("{gateway}/v1/cart/{user}"))
            .header("content-type", "application/json")
            .body("{"),
        client
            .post(format!("{gateway}/v1/cart/{user}"))
            .json(&json!({"product_id": "prod-112", "quantity": 0})),
        client.delete(format!("{gateway}/v1/cart/{user}")),
        client.delete(format!("{gateway}/cart/{user}")),
        get(format!("{gateway}/no-such-route")),
        // Straight to the backends, as the SPEC allows.
        get(format!("{catalog}/catalog/prod-114")),
        get(format!("{cart}/v1/cart/{user}")),
        get(format!("{gateway}/healthz")),
        get(format!("{catalog}/healthz")),
        get(format!("{cart}/healthz")),
    ];
    for request in requests {
        let _ = request.send().await;
    }
    orders_round(client, gateway, round).await;
    // An upstream timeout: the catalog sleeps 1 s, the gateway gives up after 300 ms.
    if round.is_multiple_of(2) {
        let _ = client
            .get(format!("{gateway}/catalog/prod-115"))
            .header("x-fault-delay-ms", "1000")
            .send()
            .await;
    }
}

/// Orders traffic: a checkout (then cancelled, so the stock goes back), a direct order moved
/// along the status machine, an illegal move and an unknown order.
async fn orders_round(client: &Client, gateway: &str, round: u64) {
    let buyer = format!("buyer-{round}");
    let _ = client
        .post(format!("{gateway}/v1/cart/{buyer}"))
        .json(&json!({"product_id": "prod-116", "quantity": 1}))
        .send()
        .await;
    let order_id = |response: Option<reqwest::Response>| async move {
        let body: Value = response?.json().await.ok()?;
        body["data"]["id"].as_str().map(str::to_owned)
    };
    let checkout = client
        .post(format!("{gateway}/api/orders/checkout"))
        .header("idempotency-key", format!("obs-checkout-{round}"))
        .json(&json!({"user_id": buyer, "shipping_address": "1 Dashboard Row"}))
        .send()
        .await
        .ok();
    if let Some(id) = order_id(checkout).await {
        let _ = client.get(format!("{gateway}/api/orders/{id}")).send().await;
        let _ = client
            .post(format!("{gateway}/api/orders/{id}/cancel"))
            .send()
            .await;
    }
    let direct = client
        .post(format!("{gateway}/api/orders"))
        .json(&json!({"user_id": buyer, "shipping_address": "1 Dashboard Row",
                      "order_items": [{"product_id": "prod-115", "quantity": 1}]}))
        .send()
        .await
        .ok();
    if let Some(id) = order_id(direct).await {
        for status in ["confirmed", "shipped", "pending"] {
            let _ = client
                .patch(format!("{gateway}/api/orders/{id}/status"))
                .json(&json!({"status": status}))
                .send()
                .await;
        }
    }
    let _ = client
        .get(format!("{gateway}/api/users/{buyer}/orders"))
        .send()
        .await;
    let _ = client
        .get(format!(
            "{gateway}/api/orders/00000000-0000-0000-0000-000000000000"
        ))
        .send()
        .await;
}

#[derive(Debug)]
enum Outcome {
    Series(usize),
    Error(String),
}

async fn evaluate(prometheus: &Prometheus, query: &Query) -> Outcome {
    let result = match dashboards::parse_label_values(&query.expr) {
        Some((selector, label)) => prometheus.series(&selector).await.map(|series| {
            series
                .iter()
                .filter(|labels| labels.get(&label).is_some())
                .cloned()
                .collect::<Vec<Value>>()
        }),
        None => prometheus.query(&query.expr).await,
    };
    match result {
        Ok(series) => Outcome::Series(series.len()),
        Err(error) => Outcome::Error(format!("{error:#}")),
    }
}

/// `- record: name` lines of the recording rules file.
fn recording_rule_names() -> Vec<String> {
    let text = std::fs::read_to_string(observability_path("prometheus/rules/recording.yml")).unwrap();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("- record:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_returns_data_from_the_real_services() {
    shopstack_testkit::init_telemetry();
    let binary = prometheus::find_binary().unwrap();

    let stack = Stack::builder()
        .orders(|orders| orders.flags(&["--maintenance-interval", "500ms"]))
        // Short, so an injected 1 s catalog delay becomes a gateway timeout (504).
        .gateway(|gateway| gateway.flags(&["--upstream-timeout", "300ms"]))
        .start()
        .await;
    let (catalog, cart, orders, gateway) = (&stack.catalog, &stack.cart, &stack.orders, &stack.gateway);

    let port = prometheus::free_port().unwrap();
    let self_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let original = std::fs::read_to_string(observability_path("prometheus/prometheus.yml")).unwrap();
    let config = prometheus::localhost_config(
        &original,
        &[
            ("gateway:8000", gateway.addr),
            ("catalog:8001", catalog.addr),
            ("cart:8002", cart.addr),
            ("orders:8003", orders.addr),
        ],
        self_addr,
        &observability_path("prometheus/rules").canonicalize().unwrap(),
    )
    .unwrap();
    let prometheus = Prometheus::start(&binary, &config, self_addr).await.unwrap();

    let client = client_with_timeout(Duration::from_secs(5));
    inject_faults(&client, gateway).await;

    // Traffic until the checks are done (at most two minutes).
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let client = client.clone();
        let (gateway, catalog, cart) = (gateway.url(""), catalog.url(""), cart.url(""));
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                traffic_round(&client, &gateway, &catalog, &cart, round).await;
                round += 1;
            }
            round
        })
    };

    let mut queries = Vec::new();
    let boards = dashboards::load_all(&observability_path("grafana/dashboards")).unwrap();
    assert!(
        boards.len() >= 5,
        "expected the five dashboards, found {}",
        boards.len()
    );
    for board in &boards {
        queries.extend(board.queries().unwrap());
    }
    let (promql, others): (Vec<Query>, Vec<Query>) = queries
        .into_iter()
        .partition(|query| query.datasource.kind == "prometheus");
    assert!(promql.len() > 50, "only {} PromQL queries found", promql.len());
    let rules = recording_rule_names();
    assert!(rules.len() >= 10, "recording rules not found: {rules:?}");

    // Poll until every query that must return data does (bounded).
    let deadline = Instant::now() + Duration::from_secs(90);
    let (outcomes, rule_outcomes) = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut outcomes = Vec::new();
        for query in &promql {
            outcomes.push((query, evaluate(&prometheus, query).await));
        }
        let mut rule_outcomes = Vec::new();
        for rule in &rules {
            let outcome = match prometheus.query(rule).await {
                Ok(series) => Outcome::Series(series.len()),
                Err(error) => Outcome::Error(format!("{error:#}")),
            };
            rule_outcomes.push((rule.clone(), outcome));
        }
        // Settled: data, an allowed gap, or a query Prometheus rejects (that will not change).
        let done = outcomes.iter().all(|(query, outcome)| match outcome {
            Outcome::Series(n) => *n > 0 || pending_reason(query).is_some(),
            Outcome::Error(message) => message.starts_with("bad_data"),
        }) && rule_outcomes
            .iter()
            .all(|(_, outcome)| matches!(outcome, Outcome::Series(n) if *n > 0));
        if done || Instant::now() >= deadline {
            break (outcomes, rule_outcomes);
        }
    };
    stop.store(true, Ordering::Relaxed);
    let rounds = traffic.await.unwrap();

    let mut failures = Vec::new();
    let mut notices = Vec::new();
    for (query, outcome) in &outcomes {
        match (outcome, pending_reason(query)) {
            (Outcome::Error(message), _) => failures.push(format!(
                "{}: Prometheus rejected the query: {message}\n      {}",
                query.name(),
                query.expr
            )),
            (Outcome::Series(0), None) => {
                failures.push(format!("{}: no series\n      {}", query.name(), query.expr))
            }
            (Outcome::Series(0), Some(reason)) => {
                notices.push(format!("pending ({reason}): {}", query.name()));
            }
            (Outcome::Series(n), Some(reason)) => notices.push(format!(
                "NOW RETURNS {n} series — remove it from PENDING ({reason}): {}",
                query.name()
            )),
            (Outcome::Series(_), None) => {}
        }
    }
    for (rule, outcome) in &rule_outcomes {
        match outcome {
            Outcome::Series(n) if *n > 0 => {}
            other => failures.push(format!("recording rule {rule}: {other:?}")),
        }
    }
    // Every rule Prometheus loaded (recording and alerting) evaluates without error.
    let loaded = prometheus.rules().await.unwrap();
    assert!(loaded.len() > rules.len(), "rules loaded: {loaded:?}");
    for (name, health, error) in &loaded {
        if health != "ok" {
            failures.push(format!("rule {name}: health {health:?} {error}"));
        }
    }
    let targets = prometheus.targets().await.unwrap();
    // The latency panels' exemplars: stored, each the trace id of a request, for every service.
    for service in ["gateway", "catalog", "cart", "orders"] {
        let selector = format!("http_request_duration_seconds_bucket{{service=\"{service}\"}}");
        let exemplars = prometheus
            .exemplars(&selector, Duration::from_secs(600))
            .await
            .unwrap();
        if exemplars.is_empty() {
            failures.push(format!("no exemplars stored for {selector}"));
        }
        for labels in exemplars {
            let trace_id = labels.get("trace_id").and_then(Value::as_str).unwrap_or_default();
            let only_a_trace_id = labels.as_object().is_some_and(|labels| labels.len() == 1)
                && trace_id.len() == 32
                && trace_id.bytes().all(|byte| byte.is_ascii_hexdigit());
            if !only_a_trace_id {
                failures.push(format!(
                    "exemplar of {selector} is not a trace id alone: {labels}"
                ));
            }
        }
    }

    eprintln!(
        "{} PromQL queries and {} recording rules checked after {rounds} traffic rounds; targets: {targets:?}",
        outcomes.len(),
        rule_outcomes.len()
    );
    for notice in &notices {
        eprintln!("  {notice}");
    }
    for query in &others {
        eprintln!(
            "  not evaluated here (no {} in this test; checked statically): {}",
            query.datasource.kind,
            query.name()
        );
    }
    assert!(
        targets
            .iter()
            .filter(|(job, _)| ["gateway", "catalog", "cart", "orders"].contains(&job.as_str()))
            .all(|(_, health)| health == "up"),
        "every service target is up: {targets:?}"
    );
    assert!(
        failures.is_empty(),
        "{} dashboard queries or rules returned nothing or failed:\n  {}\nPrometheus log:\n{}",
        failures.len(),
        failures.join("\n  "),
        prometheus.log()
    );

    drop(prometheus);
    stack.stop().await.unwrap();
}
