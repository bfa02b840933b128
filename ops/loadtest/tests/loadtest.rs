//! The `loadtest` binary against gateway + catalog + cart + orders started in this process on port 0.
//!
//! Goose installs process-wide state (a Ctrl-C handler, its logger), so each run is the real
//! binary as a child process (`CARGO_BIN_EXE_loadtest`), pointed at the in-process gateway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use shopstack_base::simulation::{AppliesTo, SimulationProfile};
use shopstack_testkit::ports::closed_port;
use shopstack_testkit::settings::ADMIN_TOKEN;
use shopstack_testkit::stack::Stack;

/// No run may take longer than this, whatever happens.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Catalog reads take 20-40 ms, as in the default simulation profile (so a 1 ms p95 is impossible).
fn catalog_latency() -> SimulationProfile {
    SimulationProfile {
        enabled: true,
        applies_to: AppliesTo::Reads,
        latency_min_ms: 20,
        latency_max_ms: 40,
        ..SimulationProfile::OFF
    }
}

/// Cart writes covered by the simulation but nothing injected until a fault step says so.
fn cart_quiet() -> SimulationProfile {
    SimulationProfile {
        enabled: true,
        applies_to: AppliesTo::Writes,
        ..SimulationProfile::OFF
    }
}

/// Gateway, catalog, cart and orders, the catalog and the cart with these simulation profiles.
async fn stack(catalog_simulation: SimulationProfile, cart_simulation: SimulationProfile) -> Stack {
    Stack::builder()
        .catalog(|catalog| catalog.settings(|settings| settings.simulation = catalog_simulation))
        .cart(|cart| cart.settings(|settings| settings.simulation = cart_simulation))
        .start()
        .await
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
    summary: Option<Value>,
    dir: PathBuf,
    name: String,
}

impl Outcome {
    fn summary(&self) -> &Value {
        self.summary.as_ref().unwrap_or_else(|| {
            panic!(
                "no summary written (exit {}).\nstdout:\n{}\nstderr:\n{}",
                self.code, self.stdout, self.stderr
            )
        })
    }

    fn report(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.name))
    }

    fn scenario(&self, name: &str) -> &Value {
        self.summary()["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .find(|scenario| scenario["name"] == name)
            .unwrap_or_else(|| panic!("no scenario {name} in the summary"))
    }
}

fn reports_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shopstack-loadtest-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run the binary against `host` for a few seconds with `extra` options.
async fn loadtest(host: &str, test: &str, extra: &[&str]) -> Outcome {
    let dir = reports_dir(test);
    let name = format!("run-{test}");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"));
    command
        .args(["--host", host, "--reports-dir"])
        .arg(&dir)
        .args([
            "--run-name",
            &name,
            "--no-telnet",
            "--no-websocket",
            "--think-time-ms",
            "5-30",
            "--poll-interval",
            "500ms",
        ])
        .args(extra)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("loadtest binary starts");
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("the run ends within its time limit")
        .expect("loadtest output");
    let summary = std::fs::read_to_string(dir.join(format!("{name}.summary.json")))
        .ok()
        .map(|text| serde_json::from_str(&text).unwrap());
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        summary,
        dir,
        name,
    }
}

async fn gateway_counts(stack: &Stack) -> loadtest::truth::Counts {
    let text = reqwest::get(stack.gateway.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    loadtest::truth::parse_requests_total(&text, "gateway")
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_the_truth_check_matches_the_gateway() {
    let stack = stack(catalog_latency(), cart_quiet()).await;
    let host = stack.gateway.url("");
    let run = loadtest(
        &host,
        "mix",
        &["--users", "8", "--hatch-rate", "8", "--run-time", "3s"],
    )
    .await;
    assert_eq!(run.code, 0, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let summary = run.summary();
    assert_eq!(summary["passed"], true);

    // Every scenario ran and made requests.
    for name in ["browse", "cart", "journey", "checkout", "poller", "storefront"] {
        let scenario = run.scenario(name);
        assert!(scenario["users"].as_u64().unwrap() > 0, "{name}: {scenario}");
        assert!(scenario["requests"].as_u64().unwrap() > 0, "{name}: {scenario}");
    }
    // Requests are named by route template, and the stress step ran (the test stack enables it).
    let names: Vec<&str> = summary["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|request| request["name"].as_str().unwrap())
        .collect();
    for expected in [
        "GET /catalog",
        "GET /catalog/{id}",
        "GET /catalog?q={q}",
        "GET /v1/cart/{user_id}",
        "POST /v1/cart/{user_id}",
        "POST /stress",
        "POST /api/orders/checkout",
        "GET /healthz",
        "GET /metrics",
        "GET /",
        "GET /storefront/{file}",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    assert!(
        names
            .iter()
            .all(|name| !name.contains("prod-") && !name.contains("lt-")),
        "{names:?}"
    );
    // The line of all requests counts every request, with percentiles over all of them.
    let counted: u64 = summary["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|request| request["requests"].as_u64().unwrap())
        .sum();
    let all = &summary["all_requests"];
    assert_eq!(all["requests"].as_u64(), Some(counted), "{all}");
    assert!(
        all["p50_ms"].as_f64().unwrap() <= all["p99_ms"].as_f64().unwrap(),
        "{all}"
    );

    // The reports: Goose's HTML (with ShopStack's section) and JSON, the summary, the CSV.
    let html = std::fs::read_to_string(run.report("html")).unwrap();
    assert!(html.contains("Goose Attack Report"));
    assert!(html.contains("ShopStack verdict"));
    assert!(html.contains("browse: view product"));
    assert!(html.contains("cart: add items"));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(run.report("json")).unwrap()).unwrap();
    assert!(json.is_object());
    let csv = std::fs::read_to_string(run.report("requests.csv")).unwrap();
    assert!(csv.lines().count() > 5, "{csv}");

    // The truth check agreed…
    let truth = &summary["truth_check"];
    assert_eq!(truth["passed"], true, "{truth}");
    assert_eq!(truth["sent_requests"], truth["gateway_requests"]);
    assert_eq!(truth["sent_errors"], truth["gateway_errors"]);
    assert!(truth["sent_requests"].as_u64().unwrap() > 0);

    // …and what it says the gateway counted is what the gateway counts. The gateway is fresh,
    // so its counters are the run plus the tool's own requests before it: one catalog page
    // read (`GET /catalog`) and one stress probe (`POST /stress`).
    let counters = gateway_counts(&stack).await;
    for row in truth["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["compared"] == true)
    {
        let (method, route) = (row["method"].as_str().unwrap(), row["route"].as_str().unwrap());
        let counted: u64 = counters
            .iter()
            .filter(|((m, r, _), _)| m == method && r == route)
            .map(|(_, count)| count)
            .sum();
        let setup = match (method, route) {
            ("GET", "/catalog") | ("POST", "/stress") => 1,
            _ => 0,
        };
        assert_eq!(row["sent"], row["gateway"], "{row}");
        assert_eq!(
            counted,
            row["gateway"].as_u64().unwrap() + setup,
            "{method} {route}: {row}"
        );
    }
    cleanup(&run.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_p95_threshold_fails_the_run() {
    let stack = stack(catalog_latency(), cart_quiet()).await;
    let host = stack.gateway.url("");
    let run = loadtest(
        &host,
        "p95",
        &[
            "--users",
            "2",
            "--hatch-rate",
            "2",
            "--run-time",
            "2s",
            "--scenarios",
            "browse",
            "--threshold-p95-ms",
            "1",
        ],
    )
    .await;
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("RESULT: FAILED — threshold breached: --threshold-p95-ms"),
        "{}",
        run.stdout
    );
    let summary = run.summary();
    assert_eq!(summary["passed"], false);
    let thresholds = summary["thresholds"].as_array().unwrap();
    let p95 = thresholds
        .iter()
        .find(|threshold| threshold["flag"] == "--threshold-p95-ms")
        .unwrap();
    assert_eq!(p95["passed"], false, "{p95}");
    let errors = thresholds
        .iter()
        .find(|threshold| threshold["flag"] == "--threshold-error-rate")
        .unwrap();
    assert_eq!(errors["passed"], true, "{errors}");
    // Only browse ran; the report was still written and the truth check still agreed.
    assert_eq!(summary["scenarios"].as_array().unwrap().len(), 1);
    assert!(run.scenario("browse")["requests"].as_u64().unwrap() > 0);
    assert!(run.report("html").exists());
    assert_eq!(summary["truth_check"]["passed"], true);
    cleanup(&run.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_step_changes_the_error_rate_and_is_undone() {
    let stack = stack(SimulationProfile::OFF, cart_quiet()).await;
    let host = stack.gateway.url("");
    let run = loadtest(
        &host,
        "fault",
        &[
            "--users",
            "3",
            "--hatch-rate",
            "3",
            "--run-time",
            "4s",
            "--scenarios",
            "cart",
            "--threshold-error-rate",
            "1",
            "--fault-at",
            "2s:cart.failure_rate=0.6",
            "--fault-at",
            "10m:cart.failure_rate=1",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let summary = run.summary();

    // The step fired on time through the gateway; the one due after the end is listed unfired.
    let faults = summary["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 2);
    let fired = &faults[0];
    assert_eq!(fired["spec"], "2s:cart.failure_rate=0.6");
    assert!(fired["fired_s"].as_f64().unwrap() >= 2.0, "{fired}");
    assert_eq!(fired["requests"][0]["route"], "/admin/cart/simulation");
    assert_eq!(fired["requests"][0]["status"], 200);
    assert!(faults[1]["fired_s"].is_null());

    // Before the step nothing failed; after it, cart writes did.
    let phases = summary["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    let (before, after) = (&phases[0], &phases[1]);
    assert!(before["requests"].as_u64().unwrap() > 0, "{before}");
    assert_eq!(before["errors"], 0, "{before}");
    assert!(after["errors"].as_u64().unwrap() > 0, "{after}");
    assert!(after["error_rate"].as_f64().unwrap() > before["error_rate"].as_f64().unwrap());
    let injected: u64 = summary["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|request| request["statuses"]["500"].as_u64())
        .sum();
    assert_eq!(injected, after["errors"].as_u64().unwrap());

    // The truth check counted the admin PUT and the injected 500s exactly.
    let truth = &summary["truth_check"];
    assert_eq!(truth["passed"], true, "{truth}");
    assert_eq!(truth["sent_errors"].as_u64().unwrap(), injected);
    assert_eq!(truth["gateway_errors"].as_u64().unwrap(), injected);
    let admin_row = truth["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["route"] == "/admin/cart/simulation")
        .unwrap();
    assert_eq!(
        (admin_row["sent"].as_u64(), admin_row["gateway"].as_u64()),
        (Some(1), Some(1))
    );

    // The run put the cart's simulation back as it found it.
    assert_eq!(summary["faults_restored"], serde_json::json!(["cart"]));
    assert_eq!(stack.cart_state.platform.simulation().profile(), cart_quiet());
    let html = std::fs::read_to_string(run.report("html")).unwrap();
    assert!(html.contains("2s:cart.failure_rate=0.6"));
    cleanup(&run.dir);
}

#[tokio::test]
async fn a_stack_that_is_not_running_is_named_as_such() {
    let run = loadtest(&closed_port().await, "down", &["--run-time", "1s"]).await;
    assert_eq!(run.code, 3, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("ShopStack is not reachable"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("make run-all"), "{}", run.stderr);
    assert!(run.summary.is_none());
    cleanup(&run.dir);
}
