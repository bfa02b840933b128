//! The storefront in a real browser: the four service binaries started as `make run-all` starts
//! them (embedded stores, the local admin token; simulation off, so no injected failure lands
//! on a click at random), each on a free loopback port, and `ops/stack-tests/storefront/walk.py`
//! driving Debian's headless Chromium over WebDriver through the shop — browse, search, product,
//! "Add to cart", "Cart", "Checkout", "Place order", the confirmation, "Your orders", an
//! out-of-stock add, the pages at 390 px — with a screenshot of each step in
//! `target/storefront-screenshots/`. The order the page confirms is then read through the API.
//! A second gateway, with edge auth and `DEV_TOKEN_ROUTE` on, in front of the same services: the
//! page asks for a sign-in, a development token signs the shopper in, and their cart works
//! (screenshots in `target/storefront-screenshots/sign-in/`); that gateway forwards the page's
//! spans to a stand-in collector, and the "Add to cart" click's trace id is the one the gateway
//! logged for the request.
//!
//! Chromium, chromedriver and the Selenium venv (`target/storefront-venv`) come from `.ci/run`;
//! without them the test fails saying so, never skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use shopstack_testkit::db::TestDb;
use shopstack_testkit::process::{ServiceProcess, workspace_binary};
use stack_tests::repo_root;

const ADMIN_TOKEN: &str = "shopstack-local-admin";
/// The sign-in walk's gateway secret (HS256, at least 32 bytes).
const JWT_SECRET: &str = "storefront-walk-secret-0123456789abcdef";
/// The walk takes about 15 s; this bounds a browser that hangs.
const WALK_TIMEOUT: Duration = Duration::from_secs(120);

fn venv_python() -> PathBuf {
    repo_root().join("target/storefront-venv/bin/python")
}

/// What the browser test needs on the machine, or a message naming what is missing.
fn browser_tools() -> Result<(), String> {
    let mut missing = Vec::new();
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(tool).is_file() {
            missing.push(tool.to_owned());
        }
    }
    let python = venv_python();
    let has_selenium = Command::new(&python)
        .args(["-c", "import selenium"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !has_selenium {
        missing.push(format!("{} with selenium", python.display()));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the storefront browser test needs {}: run `bash .ci/run` once (it installs Debian's chromium and \
             chromium-driver and creates the venv from ops/stack-tests/storefront/requirements.txt)",
            missing.join(", ")
        ))
    }
}

/// Run `command`, killing it past `timeout`; its exit status, stdout and stderr.
fn run_bounded(mut command: Command, timeout: Duration) -> (Option<i32>, String, String) {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the walk starts");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let deadline = Instant::now() + timeout;
    match finished.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(output)) => (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ),
        Ok(Err(error)) => panic!("the walk could not be waited for: {error}"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("the storefront walk did not finish within {timeout:?}");
        }
    }
}

type Batches = Arc<Mutex<Vec<serde_json::Value>>>;

/// An OTLP/HTTP JSON receiver on a free port: its traces URL and what it received.
async fn collector() -> (String, Batches) {
    let batches: Batches = Arc::default();
    let kept = batches.clone();
    let router = Router::new().route(
        "/v1/traces",
        post(move |axum::Json(batch): axum::Json<serde_json::Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(batch);
                axum::Json(serde_json::json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}/v1/traces"), batches)
}

fn is_hex(value: &serde_json::Value, length: usize) -> bool {
    value
        .as_str()
        .is_some_and(|text| text.len() == length && text.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The page's span batches are OTLP JSON (a root span per action, the API calls' client spans
/// under it), and the gateway's request for the "Add to cart" click carries that click's trace id.
fn browser_traces_join_the_gateways(batches: &[serde_json::Value], gateway_log: &[String]) {
    assert!(!batches.is_empty(), "the page exported no spans");
    let mut clicks = Vec::new();
    for batch in batches {
        let resource = &batch["resourceSpans"][0];
        assert_eq!(
            resource["resource"]["attributes"][0],
            serde_json::json!({"key": "service.name", "value": {"stringValue": "storefront"}}),
            "{batch}"
        );
        let spans = resource["scopeSpans"][0]["spans"].as_array().unwrap();
        let root = &spans[0];
        assert!(root.get("parentSpanId").is_none(), "{root}");
        for span in spans {
            assert!(
                is_hex(&span["traceId"], 32) && is_hex(&span["spanId"], 16),
                "{span}"
            );
            assert_eq!(span["traceId"], root["traceId"], "one action, one trace: {batch}");
            let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
            let end: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
            assert!(end >= start, "{span}");
            assert!(span["kind"].is_u64() && span["status"]["code"].is_u64(), "{span}");
        }
        for call in &spans[1..] {
            assert_eq!(call["parentSpanId"], root["spanId"], "{call}");
            assert_eq!(call["kind"], 3, "a client span: {call}");
        }
        if root["name"] == "click Add to cart" {
            clicks.push(root["traceId"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(clicks.len(), 1, "one \"Add to cart\" click in the sign-in walk");
    let joined = gateway_log.iter().any(|line| {
        let line: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        line["route"] == "/v1/cart/{user_id}/items" && line["trace_id"] == clicks[0].as_str()
    });
    assert!(
        joined,
        "the gateway's log has no POST /v1/cart/{{user_id}}/items in trace {}",
        clicks[0]
    );
}

#[test]
fn a_shopper_walks_from_search_to_a_placed_order_in_a_real_browser() {
    if let Err(message) = browser_tools() {
        panic!("{message}");
    }
    let database = TestDb::sqlite();
    let common = [("ADMIN_TOKEN", ADMIN_TOKEN), ("SIMULATION", "off")];
    let catalog = ServiceProcess::spawn(&workspace_binary("catalog"), &common).unwrap();
    let catalog_url = catalog.url("");
    let mut cart_env = common.to_vec();
    cart_env.push(("CATALOG_SERVICE_URL", catalog_url.as_str()));
    let cart = ServiceProcess::spawn(&workspace_binary("cart"), &cart_env).unwrap();
    let cart_url = cart.url("");
    let mut orders_env = common.to_vec();
    orders_env.extend([
        ("CATALOG_SERVICE_URL", catalog_url.as_str()),
        ("CART_SERVICE_URL", cart_url.as_str()),
        ("DATABASE_URL", database.url.as_str()),
    ]);
    let orders = ServiceProcess::spawn(&workspace_binary("orders"), &orders_env).unwrap();
    let orders_url = orders.url("");
    let mut gateway_env = common.to_vec();
    gateway_env.extend([
        ("CATALOG_SERVICE_URL", catalog_url.as_str()),
        ("CART_SERVICE_URL", cart_url.as_str()),
        ("ORDERS_SERVICE_URL", orders_url.as_str()),
    ]);
    let gateway = ServiceProcess::spawn(&workspace_binary("gateway"), &gateway_env).unwrap();
    let shop = gateway.url("");

    let shots = repo_root().join("target/storefront-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let mut walk = Command::new(venv_python());
    walk.arg(repo_root().join("ops/stack-tests/storefront/walk.py"))
        .args(["--base", &shop, "--admin-token", ADMIN_TOKEN, "--shots"])
        .arg(&shots);
    let (code, stdout, stderr) = run_bounded(walk, WALK_TIMEOUT);
    assert_eq!(
        code,
        Some(0),
        "the storefront walk failed (screenshots in {}):\n{stderr}\n{stdout}\n--- gateway log (last lines)\n{}",
        shots.display(),
        gateway
            .output()
            .iter()
            .rev()
            .take(15)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the walk's result line");
    let order_id = result["order_id"].as_str().unwrap();
    let shopper = result["shopper"].as_str().unwrap();

    // The order the page confirmed is the API's: the shopper's, from their cart, two units.
    // Multi-threaded: the stand-in collector below keeps serving while the test waits on the walk.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let order: serde_json::Value = runtime.block_on(async {
        let answer = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{shop}/api/orders/{order_id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            200,
            "the confirmed order {order_id} is unknown to the API"
        );
        answer.json().await.unwrap()
    });
    let order = &order["data"];
    assert_eq!(order["id"], order_id);
    assert_eq!(order["user_id"], shopper);
    assert_eq!(order["source"], "checkout");
    assert_eq!(order["shipping_address"], "1 Browser Lane, Testville");
    assert_eq!(order["order_items"][0]["product_id"], "prod-110");
    assert_eq!(order["order_items"][0]["quantity"], 2);

    // With edge auth on and the development token route: a shopper signs in from the page. This
    // gateway also forwards the browser's spans, to a stand-in collector.
    let (collector_url, batches) = runtime.block_on(collector());
    let mut signed_env = gateway_env.clone();
    signed_env.extend([
        ("JWT_SECRET", JWT_SECRET),
        ("DEV_TOKEN_ROUTE", "true"),
        ("BROWSER_TRACES_URL", collector_url.as_str()),
    ]);
    let signed = ServiceProcess::spawn(&workspace_binary("gateway"), &signed_env).unwrap();
    let auth_shots = shots.join("sign-in");
    std::fs::create_dir_all(&auth_shots).unwrap();
    let mut walk = Command::new(venv_python());
    walk.arg(repo_root().join("ops/stack-tests/storefront/walk.py"))
        .args([
            "--sign-in",
            "--base",
            &signed.url(""),
            "--admin-token",
            ADMIN_TOKEN,
            "--shots",
        ])
        .arg(&auth_shots);
    let (code, stdout, stderr) = run_bounded(walk, WALK_TIMEOUT);
    assert_eq!(
        code,
        Some(0),
        "the sign-in walk failed (screenshots in {}):\n{stderr}\n{stdout}",
        auth_shots.display()
    );

    // The page sends a click's spans when the click is done, without waiting: give the last
    // batches a moment to land.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !batches
            .lock()
            .unwrap()
            .iter()
            .any(|batch| batch.to_string().contains("click Add to cart"))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    browser_traces_join_the_gateways(&batches.lock().unwrap(), &signed.output());

    let screenshots =
        std::fs::read_dir(&shots).unwrap().count() + std::fs::read_dir(&auth_shots).unwrap().count();
    assert!(
        screenshots >= 19,
        "expected a screenshot per step in {}, found {screenshots}",
        shots.display()
    );
    drop((signed, gateway, orders, cart, catalog));
}
