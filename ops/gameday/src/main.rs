//! `gameday`: the chaos run for users. Starts the clustered stack on this machine, drives the
//! load test's shopper mix through the gateway, injects a timeline of faults (process kills
//! and restarts, simulation switches) and writes an HTML and a JSON report with the failover
//! windows and the invariants passed or failed. docs/gameday.md is the user's guide.

mod checks;
mod report;
mod requests;
mod stack;
mod timeline;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde_json::Value;
use shopstack_testkit::events::{created_on_stream, orders_in_database};
use shopstack_testkit::stock::StockInvariant;

use crate::checks::Check;
use crate::report::{EventReport, Report};
use crate::stack::{CLIENT_TIMEOUT, ClusteredStack};
use crate::timeline::{Action, Timeline};

/// Start the clustered stack locally, shop through a timeline of faults, report.
///
/// Exit status: 0 every invariant held; 1 an invariant broke or a timeline event could not be
/// applied; 2 bad options or a bad timeline file (nothing started); 3 the stack did not start
/// or the load could not run.
#[derive(Debug, Parser)]
#[command(name = "gameday", version)]
struct Options {
    /// The timeline file: what happens, and when (docs/gameday.md).
    #[arg(long, default_value = "ops/gameday/timeline.txt")]
    timeline: PathBuf,
    /// Each run writes its report into a folder of its own under DIR.
    #[arg(long, value_name = "DIR", default_value = "target/gameday")]
    out: PathBuf,
    /// The folder of the service binaries [default: this program's own folder].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// Why a run ended without a verdict.
enum Stopped {
    Usage(anyhow::Error),
    Stack(anyhow::Error),
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let options = Options::parse();
    match run(options).await {
        Ok(report) if report.passed => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(Stopped::Usage(error)) => {
            eprintln!("gameday: {error:#}");
            ExitCode::from(2)
        }
        Err(Stopped::Stack(error)) => {
            eprintln!("gameday: {error:#}");
            ExitCode::from(3)
        }
    }
}

async fn run(options: Options) -> Result<Report, Stopped> {
    let timeline = Timeline::read(&options.timeline).map_err(Stopped::Usage)?;
    let bin_dir = match options.bin_dir.clone() {
        Some(dir) => dir,
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .context("cannot tell this program's folder: pass --bin-dir")
            .map_err(Stopped::Usage)?,
    };
    let run_dir = options
        .out
        .join(chrono::Local::now().format("%Y%m%d-%H%M%S").to_string());
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))
        .map_err(Stopped::Usage)?;

    let mut stack = ClusteredStack::start(&bin_dir).await.map_err(Stopped::Stack)?;
    let catalog = stack.catalog_url().map_err(Stopped::Stack)?;
    let initial = initial_stock(&catalog).await.map_err(Stopped::Stack)?;
    eprintln!(
        "[gameday] the stack is up: gateway {}; {} products; {} shoppers for {} s",
        stack.gateway.url(""),
        initial.len(),
        timeline.shoppers,
        timeline.duration.as_secs_f64()
    );
    eprintln!("[gameday] {}", stack.describe());

    let request_log = run_dir.join("requests.json");
    let args = load_test_args(&timeline, &stack, &run_dir, &request_log);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let load = tokio::spawn(loadtest::run_reporting_start(args, Some(started_tx)));
    let Ok(started) = started_rx.await else {
        let status = load.await.ok();
        return Err(Stopped::Stack(anyhow::anyhow!(
            "the load test did not start (its exit status: {status:?})"
        )));
    };
    let started_at = chrono::Local::now();

    // Kills and restarts here; the load test fires the simulation switches on the same clock.
    let mut fired: BTreeMap<usize, (f64, String, bool)> = BTreeMap::new();
    for (index, event) in timeline.events.iter().enumerate() {
        if matches!(event.action, Action::Simulation(_)) {
            continue;
        }
        tokio::time::sleep_until((started + event.at).into()).await;
        let at = started.elapsed().as_secs_f64();
        let outcome = match event.action {
            Action::Kill(target) => tokio::task::block_in_place(|| stack.kill(target)),
            Action::Restart(target) => stack.restart(target).await,
            Action::Simulation(_) => continue,
        };
        let (text, applied) = match outcome {
            Ok(text) => (text, true),
            Err(error) => (format!("failed: {error:#}"), false),
        };
        eprintln!("[gameday] +{at:.1}s line {}: {} — {text}", event.line, event.text);
        fired.insert(index, (at, text, applied));
    }
    let load_status = load
        .await
        .map_err(|error| Stopped::Stack(anyhow::anyhow!("the load test stopped: {error}")))?;
    let load_s = started
        .elapsed()
        .as_secs_f64()
        .min(timeline.duration.as_secs_f64() + 1.0);
    if matches!(
        load_status,
        loadtest::ExitStatus::Usage | loadtest::ExitStatus::Unreachable
    ) {
        return Err(Stopped::Stack(anyhow::anyhow!(
            "the load test could not run against the stack ({load_status:?})"
        )));
    }
    let summary_path = run_dir.join("loadtest.summary.json");
    let summary: Value = std::fs::read(&summary_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);
    let requests = requests::read_log(&request_log).map_err(Stopped::Stack)?;

    eprintln!("[gameday] the load is over: checking the invariants");
    let checks = invariants(&stack, &initial, &requests).await;
    if let Err(error) = stack.write_logs(&run_dir.join("logs")) {
        eprintln!("gameday: warning: the services' logs: {error:#}");
    }
    drop(stack);

    let events = event_reports(&timeline, &fired, &summary, &requests, load_s);
    let report = Report {
        timeline: options.timeline.display().to_string(),
        started_at: started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        duration_s: timeline.duration.as_secs_f64(),
        shoppers: timeline.shoppers,
        requests: requests.len() as u64,
        errors: requests.iter().filter(|request| request.is_error()).count() as u64,
        seconds: requests::per_second(&requests, timeline.duration),
        passed: report::verdict(&checks, &events),
        events,
        checks,
        load_test_files: ["loadtest.html", "loadtest.summary.json", "requests.json", "logs/"]
            .iter()
            .map(|name| run_dir.join(name).display().to_string())
            .collect(),
    };
    let (json, html) = (run_dir.join("report.json"), run_dir.join("report.html"));
    report.write(&json, &html).map_err(Stopped::Stack)?;
    print_verdict(&report, &html, &json);
    Ok(report)
}

/// Every product's stock before the load: the baseline of the stock invariant.
async fn initial_stock(catalog: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let client = reqwest::Client::new();
    let mut stock = BTreeMap::new();
    // Bounded: a catalog has far fewer pages.
    for page in 1..=1000 {
        let url = format!("{catalog}/catalog?page={page}&page_size=100");
        let listed: Value = client
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET {url}"))?
            .json()
            .await
            .with_context(|| format!("GET {url}: not JSON"))?;
        for product in listed["products"].as_array().into_iter().flatten() {
            let (Some(id), Some(units)) = (product["id"].as_str(), product["stock"].as_i64()) else {
                anyhow::bail!("a product without id or stock: {product}");
            };
            stock.insert(id.to_owned(), units);
        }
        if page >= listed["pagination"]["total_pages"].as_i64().unwrap_or(0) {
            break;
        }
    }
    anyhow::ensure!(!stock.is_empty(), "the catalog at {catalog} has no products");
    Ok(stock)
}

/// The load test's command line: the whole shopper mix through the gateway for the timeline's
/// duration, every request logged, the simulation switches as `--fault-at` steps.
fn load_test_args(
    timeline: &Timeline,
    stack: &ClusteredStack,
    run_dir: &Path,
    request_log: &Path,
) -> Vec<OsString> {
    let shoppers = timeline.shoppers.to_string();
    let mut args: Vec<OsString> = [
        "loadtest",
        "--host",
        &stack.gateway.url(""),
        "--users",
        &shoppers,
        "--hatch-rate",
        &shoppers,
        "--run-time",
        &format!("{}s", timeline.duration.as_secs_f64().ceil()),
        "--timeout",
        &CLIENT_TIMEOUT.as_secs().to_string(),
        // Errors are what a game day is about: the verdict is the invariants, not thresholds.
        "--threshold-error-rate",
        "1",
        "--threshold-p95-ms",
        "600000",
        "--no-truth-check",
        "--no-print-metrics",
        "--admin-token",
        &stack.admin_token,
        "--run-name",
        "loadtest",
    ]
    .map(OsString::from)
    .into();
    args.extend([
        OsString::from("--reports-dir"),
        run_dir.as_os_str().to_owned(),
        OsString::from("--request-log"),
        request_log.as_os_str().to_owned(),
        OsString::from("--request-format"),
        OsString::from("json"),
        OsString::from("--request-body"),
    ]);
    for event in &timeline.events {
        if let Action::Simulation(step) = &event.action {
            args.push("--fault-at".into());
            args.push(step.spec.clone().into());
        }
    }
    args
}

async fn invariants(
    stack: &ClusteredStack,
    initial: &BTreeMap<String, i64>,
    requests: &[requests::LoggedRequest],
) -> Vec<Check> {
    let mut checks = Vec::new();

    let redis = tokio::task::block_in_place(|| stack.redis.wait_until_ok(Duration::from_secs(10)));
    checks.push(match redis {
        Ok(()) => Check {
            name: checks::REDIS.to_owned(),
            passed: true,
            detail: "cluster_state:ok, 16384 slots served".to_owned(),
            items: Vec::new(),
        },
        Err(error) => checks::not_made(checks::REDIS, &error),
    });

    let late = requests::past_deadline(requests, CLIENT_TIMEOUT);
    checks.push(Check {
        name: checks::DEADLINES.to_owned(),
        passed: late.is_empty(),
        detail: format!(
            "{} requests, {} past the client's {} s timeout; the slowest took {} ms",
            requests.len(),
            late.len(),
            CLIENT_TIMEOUT.as_secs(),
            requests
                .iter()
                .map(|request| request.response_time)
                .max()
                .unwrap_or(0)
        ),
        items: late
            .iter()
            .take(50)
            .map(|request| checks::CheckItem {
                name: request.raw.url.clone(),
                passed: false,
                detail: format!(
                    "sent at {:.2} s, {} ms, status {} {}",
                    request.elapsed as f64 / 1000.0,
                    request.response_time,
                    request.status_code,
                    request.error
                ),
            })
            .collect(),
    });

    checks.push(match stock_check(stack, initial, requests).await {
        Ok(check) => check,
        Err(error) => checks::not_made(checks::STOCK, &error),
    });
    checks.push(match stream_check(stack).await {
        Ok(check) => check,
        Err(error) => checks::not_made(checks::STREAM, &error),
    });
    checks
}

/// The stock invariant once the shoppers' holds have expired (bounded wait), product by product.
async fn stock_check(
    stack: &ClusteredStack,
    initial: &BTreeMap<String, i64>,
    requests: &[requests::LoggedRequest],
) -> anyhow::Result<Check> {
    let owners = requests::cart_owners(requests);
    let invariant = StockInvariant::new(&stack.catalog_url()?, initial.clone())
        .orders(&stack.orders_url()?)
        .owners(owners);
    // Waits for the holds to expire and sagas to finish; the verdict is the ledger after it.
    let _ = invariant.settles(Duration::from_secs(45)).await;
    Ok(checks::stock(initial, &invariant.ledger().await?))
}

/// Every order in the database on the stream exactly once, after the outbox has relayed what
/// it could not publish while a node was down (bounded wait).
async fn stream_check(stack: &ClusteredStack) -> anyhow::Result<Check> {
    let orders = stack.orders_url()?;
    let nats = stack.nats_url()?;
    let waiting = Instant::now();
    loop {
        let in_database = orders_in_database(&orders).await?;
        let on_stream = created_on_stream(&nats).await?;
        let check = checks::stream(&in_database, &on_stream);
        if check.passed || waiting.elapsed() > Duration::from_secs(30) {
            return Ok(check);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Each event with when it happened, what it did and its failover window.
fn event_reports(
    timeline: &Timeline,
    fired: &BTreeMap<usize, (f64, String, bool)>,
    summary: &Value,
    requests: &[requests::LoggedRequest],
    load_s: f64,
) -> Vec<EventReport> {
    let records: Vec<&Value> = summary["faults"].as_array().into_iter().flatten().collect();
    let mut events: Vec<EventReport> = timeline
        .events
        .iter()
        .enumerate()
        .map(|(index, event)| {
            let (fired_s, outcome, applied) = match &event.action {
                Action::Simulation(step) => {
                    match records.iter().find(|record| record["spec"] == step.spec.as_str()) {
                        Some(record) => {
                            let calls: Vec<String> = record["requests"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|call| match call["error"].as_str() {
                                    None => format!(
                                        "PUT {} → {}",
                                        call["route"].as_str().unwrap_or(""),
                                        call["status"]
                                    ),
                                    Some(error) => format!(
                                        "PUT {} failed: {error}",
                                        call["route"].as_str().unwrap_or("")
                                    ),
                                })
                                .collect();
                            let applied = record["fired_s"].is_number()
                                && record["requests"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .all(|call| call["error"].is_null());
                            (record["fired_s"].as_f64(), calls.join("; "), applied)
                        }
                        None => (
                            None,
                            "not fired: the load test has no record of it".to_owned(),
                            false,
                        ),
                    }
                }
                Action::Kill(_) | Action::Restart(_) => match fired.get(&index) {
                    Some((at, text, applied)) => (Some(*at), text.clone(), *applied),
                    None => (None, "not fired".to_owned(), false),
                },
            };
            EventReport {
                line: event.line,
                statement: event.text.clone(),
                due_s: event.at.as_secs_f64(),
                fired_s,
                outcome,
                applied,
                window: None,
            }
        })
        .collect();
    let times: Vec<f64> = events
        .iter()
        .map(|event| event.fired_s.unwrap_or(event.due_s))
        .collect();
    for (event, window) in events.iter_mut().zip(requests::windows(requests, &times, load_s)) {
        event.window = window;
    }
    events
}

fn print_verdict(report: &Report, html: &Path, json: &Path) {
    let mut text = String::from("\ngame day: failover windows\n");
    for event in &report.events {
        let window = event.window.as_ref().map_or("no errors".to_owned(), |window| {
            format!(
                "{:.2} s ({} errors, {:.2} s → {:.2} s)",
                window.length_s, window.errors, window.first_error_s, window.last_error_s
            )
        });
        let at = event
            .fired_s
            .map_or("not fired".to_owned(), |at| format!("+{at:.1}s"));
        text.push_str(&format!("  {at:>9}  {:<40} {window}\n", event.statement));
        if !event.applied {
            text.push_str(&format!("             NOT APPLIED: {}\n", event.outcome));
        }
    }
    text.push_str("invariants\n");
    for check in &report.checks {
        let verdict = if check.passed { "passed" } else { "FAILED" };
        text.push_str(&format!("  {verdict}  {} ({})\n", check.name, check.detail));
        for item in check.items.iter().filter(|item| !item.passed).take(10) {
            text.push_str(&format!("          {}: {}\n", item.name, item.detail));
        }
    }
    text.push_str(&format!(
        "report: {}\n        {}\ngame day {}\n",
        html.display(),
        json.display(),
        if report.passed { "passed" } else { "FAILED" }
    ));
    eprint!("{text}");
}
