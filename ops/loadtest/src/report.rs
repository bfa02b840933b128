//! ShopStack's part of the reports: the verdict, incidents, phases and truth check, as a
//! summary JSON, a per-request CSV, a section added to Goose's HTML report, and the console.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use goose::metrics::{GooseMetrics, GooseRequestMetricAggregate, GooseRequestMetricTimingData};
use serde::Serialize;

use crate::faults::FaultRecord;
use crate::live::LiveCounters;
use crate::truth::{TruthReport, route_of};

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run: String,
    pub target: String,
    pub started_at: String,
    pub duration_s: f64,
    pub passed: bool,
    /// Why the run failed, one line each (empty when it passed).
    pub failures: Vec<String>,
    pub scenarios: Vec<ScenarioSummary>,
    pub requests: Vec<RequestSummary>,
    /// Every request of the run as one line (`name` "all"): percentiles over all requests,
    /// e.g. for `make bench`'s whole-journey case.
    pub all_requests: RequestSummary,
    pub thresholds: Vec<ThresholdSummary>,
    /// What the `/stress` probe found.
    pub stress: String,
    pub faults: Vec<FaultRecord>,
    /// The run cut at each fault step: requests and failures between steps.
    pub phases: Vec<Phase>,
    /// Services whose simulation was put back as it was before the run.
    pub faults_restored: Vec<String>,
    pub truth_check: Option<TruthReport>,
    /// Why there is no truth check, when there is none.
    pub truth_check_skipped: Option<String>,
    pub reports: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    pub name: String,
    pub users: usize,
    pub iterations: usize,
    pub requests: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestSummary {
    /// As Goose's report names it, e.g. `GET /catalog/{id}`.
    pub name: String,
    pub method: String,
    /// The route template (the name without any `?…`).
    pub route: String,
    pub requests: usize,
    pub failures: usize,
    /// Status → count; 0 means no answer.
    pub statuses: std::collections::BTreeMap<u16, usize>,
    pub average_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThresholdSummary {
    /// The flag that set it (`--threshold-p95-ms`, `--threshold-error-rate` or `--threshold`).
    pub flag: String,
    pub rule: String,
    pub observed: String,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// What was in force, e.g. `start` or the fault step.
    pub label: String,
    pub from_s: f64,
    /// `None` for the last phase (it ran to the end).
    pub to_s: Option<f64>,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
}

/// Per-request lines from Goose's metrics, sorted by name.
pub fn requests(metrics: &GooseMetrics) -> Vec<RequestSummary> {
    let mut rows: Vec<RequestSummary> = metrics
        .requests
        .iter()
        .map(|(key, aggregate)| {
            let (method, name) = key.split_once(' ').unwrap_or(("", key.as_str()));
            request_line(
                key,
                method,
                route_of(name),
                &aggregate.raw_data,
                aggregate.success_count + aggregate.fail_count,
                aggregate.fail_count,
                aggregate.status_code_counts.iter(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

/// All requests as one line: Goose's timing buckets of every request name merged, so the
/// percentiles are of all requests, not an average of each name's percentiles.
pub fn all_requests(metrics: &GooseMetrics) -> RequestSummary {
    let aggregates: Vec<&GooseRequestMetricAggregate> = metrics.requests.values().collect();
    let timing = merged_timing(aggregates.iter().map(|aggregate| &aggregate.raw_data));
    let requests = aggregates
        .iter()
        .map(|aggregate| aggregate.success_count + aggregate.fail_count)
        .sum();
    let failures = aggregates.iter().map(|aggregate| aggregate.fail_count).sum();
    let statuses = aggregates
        .iter()
        .flat_map(|aggregate| aggregate.status_code_counts.iter());
    request_line("all", "", "", &timing, requests, failures, statuses)
}

fn merged_timing<'a>(
    parts: impl IntoIterator<Item = &'a GooseRequestMetricTimingData>,
) -> GooseRequestMetricTimingData {
    let mut timing = GooseRequestMetricTimingData::default();
    for part in parts {
        for (&bucket, &count) in part.times_us.iter() {
            let merged = timing.times_us.get(&bucket).copied().unwrap_or(0) + count;
            timing.times_us.insert(bucket, merged);
        }
        if part.counter > 0 && (timing.counter == 0 || part.minimum_time_us < timing.minimum_time_us) {
            timing.minimum_time_us = part.minimum_time_us;
        }
        timing.maximum_time_us = timing.maximum_time_us.max(part.maximum_time_us);
        timing.total_time_us += part.total_time_us;
        timing.counter += part.counter;
    }
    timing
}

fn request_line<'a>(
    name: &str,
    method: &str,
    route: &str,
    timing: &GooseRequestMetricTimingData,
    requests: usize,
    failures: usize,
    statuses: impl Iterator<Item = (&'a u16, &'a usize)>,
) -> RequestSummary {
    let ms = |us: u64| us as f64 / 1000.0;
    let mut counts = std::collections::BTreeMap::new();
    for (status, count) in statuses {
        *counts.entry(*status).or_insert(0) += *count;
    }
    RequestSummary {
        name: name.to_owned(),
        method: method.to_owned(),
        route: route.to_owned(),
        requests,
        failures,
        statuses: counts,
        average_ms: if timing.counter == 0 {
            0.0
        } else {
            ms(timing.total_time_us) / timing.counter as f64
        },
        p50_ms: ms(timing.percentile_us(0.50)),
        p95_ms: ms(timing.percentile_us(0.95)),
        p99_ms: ms(timing.percentile_us(0.99)),
        max_ms: ms(timing.maximum_time_us),
    }
}

/// One line per scenario that ran.
pub fn scenarios(metrics: &GooseMetrics, selected: &[&str], live: &LiveCounters) -> Vec<ScenarioSummary> {
    let by_scenario = live.by_scenario();
    selected
        .iter()
        .map(|name| {
            let aggregate = metrics.scenarios.iter().find(|scenario| &*scenario.name == *name);
            let counts = by_scenario.get(*name).copied().unwrap_or_default();
            ScenarioSummary {
                name: (*name).to_owned(),
                users: aggregate.map_or(0, |scenario| scenario.users.len()),
                iterations: aggregate.map_or(0, |scenario| scenario.run_times.counter),
                requests: counts.requests,
                errors: counts.errors,
            }
        })
        .collect()
}

/// The run cut at each fault step that fired.
pub fn phases(faults: &[FaultRecord], live: &LiveCounters, duration_s: f64) -> Vec<Phase> {
    let mut fired: Vec<&FaultRecord> = faults.iter().filter(|fault| fault.fired_s.is_some()).collect();
    fired.sort_by(|a, b| {
        a.fired_s
            .partial_cmp(&b.fired_s)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let (total_requests, total_errors) = live.totals();
    let mut phases = Vec::new();
    let mut label = "start".to_owned();
    let mut from = 0.0;
    let mut at = (0, 0);
    for fault in fired {
        let to = fault.fired_s.unwrap_or_default();
        let (requests, errors) = (
            fault.requests_before.saturating_sub(at.0),
            fault.errors_before.saturating_sub(at.1),
        );
        phases.push(phase(label, from, Some(to), requests, errors));
        label = fault.spec.clone();
        from = to;
        at = (fault.requests_before, fault.errors_before);
    }
    let (requests, errors) = (
        total_requests.saturating_sub(at.0),
        total_errors.saturating_sub(at.1),
    );
    let mut last = phase(label, from, None, requests, errors);
    if phases.is_empty() {
        last.to_s = Some(duration_s);
    }
    phases.push(last);
    phases
}

fn phase(label: String, from_s: f64, to_s: Option<f64>, requests: u64, errors: u64) -> Phase {
    Phase {
        label,
        from_s,
        to_s,
        requests,
        errors,
        error_rate: if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        },
    }
}

fn percent(share: f64) -> String {
    format!("{:.2} %", share * 100.0)
}

/// The console block printed after Goose's own tables.
pub fn console(summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n=== ShopStack load test {} against {} ===",
        summary.run, summary.target
    );
    let _ = writeln!(out, "Scenarios:");
    for scenario in &summary.scenarios {
        let _ = writeln!(
            out,
            "  {:<8} {:>4} users {:>6} iterations {:>8} requests {:>6} failed",
            scenario.name, scenario.users, scenario.iterations, scenario.requests, scenario.errors
        );
    }
    let (requests, failed) = summary.requests.iter().fold((0, 0), |(total, failed), request| {
        (total + request.requests, failed + request.failures)
    });
    let _ = writeln!(
        out,
        "Total requests: {requests} ({failed} failed) in {:.1}s",
        summary.duration_s
    );
    let _ = writeln!(out, "Stress step (journey): {}", summary.stress);
    if !summary.faults.is_empty() {
        let _ = writeln!(out, "Incidents:");
        for fault in &summary.faults {
            let _ = writeln!(out, "  {}", fault_line(fault));
        }
        let _ = writeln!(out, "Phases:");
        for phase in &summary.phases {
            let _ = writeln!(out, "  {}", phase_line(phase));
        }
        if !summary.faults_restored.is_empty() {
            let _ = writeln!(
                out,
                "  simulation put back as before the run on: {}",
                summary.faults_restored.join(", ")
            );
        }
    }
    let _ = writeln!(out, "Thresholds:");
    for threshold in &summary.thresholds {
        let _ = writeln!(
            out,
            "  {}  {} (observed {}) [{}]",
            if threshold.passed { "PASS" } else { "FAIL" },
            threshold.rule,
            threshold.observed,
            threshold.flag
        );
    }
    match (&summary.truth_check, &summary.truth_check_skipped) {
        (Some(truth), _) => {
            let _ = writeln!(
                out,
                "Truth check: this run vs http_requests_total{{service=\"{}\"}} delta (probe/scrape routes and `unmatched` not compared):",
                truth.service
            );
            let _ = writeln!(
                out,
                "  {:<48} {:>9} {:>9} {:>8} {:>8}",
                "route", "sent", "gateway", "sent err", "gw err"
            );
            for row in &truth.routes {
                let mark = if !row.compared {
                    "  (not compared)"
                } else if row.sent != row.gateway || row.sent_errors != row.gateway_errors {
                    "  <-- differs"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "  {:<48} {:>9} {:>9} {:>8} {:>8}{mark}",
                    format!("{} {}", row.method, row.route),
                    row.sent,
                    row.gateway,
                    row.sent_errors,
                    row.gateway_errors
                );
            }
            let _ = writeln!(
                out,
                "  requests: sent {} / gateway {} (gap {}); errors: sent {} / gateway {} (gap {}); tolerance {} → {}",
                truth.sent_requests,
                truth.gateway_requests,
                percent(truth.request_gap),
                truth.sent_errors,
                truth.gateway_errors,
                percent(truth.error_gap),
                percent(truth.tolerance),
                if truth.passed { "OK" } else { "FAILED" }
            );
            if truth.no_response > 0 {
                let _ = writeln!(
                    out,
                    "  {} requests got no answer at all and are not compared",
                    truth.no_response
                );
            }
        }
        (None, Some(reason)) => {
            let _ = writeln!(out, "Truth check: skipped ({reason})");
        }
        (None, None) => {}
    }
    let _ = writeln!(out, "Reports:");
    for report in &summary.reports {
        let _ = writeln!(out, "  {report}");
    }
    if summary.passed {
        let _ = writeln!(out, "RESULT: PASSED");
    } else {
        for failure in &summary.failures {
            let _ = writeln!(out, "RESULT: FAILED — {failure}");
        }
    }
    out
}

fn fault_line(fault: &FaultRecord) -> String {
    match fault.fired_s {
        None => format!(
            "due +{:.1}s  {}  NOT FIRED (the run ended first)",
            fault.due_s, fault.spec
        ),
        Some(fired) => {
            let outcome: Vec<String> = fault
                .requests
                .iter()
                .map(|request| match &request.error {
                    None => format!("{} {} → {}", request.method, request.route, request.status),
                    Some(error) => format!("{} {} FAILED ({error})", request.method, request.route),
                })
                .collect();
            format!(
                "fired +{fired:.1}s at {}  {}  {}",
                fault.fired_at.as_deref().unwrap_or("?"),
                fault.spec,
                outcome.join("; ")
            )
        }
    }
}

fn phase_line(phase: &Phase) -> String {
    let to = phase
        .to_s
        .map_or_else(|| "end".to_owned(), |to| format!("{to:.1}s"));
    format!(
        "{:.1}s–{to}  [{}]  {} requests, {} failed ({})",
        phase.from_s,
        phase.label,
        phase.requests,
        phase.errors,
        percent(phase.error_rate)
    )
}

pub fn write_json(path: &Path, summary: &Summary) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(summary).context("serialising the summary")?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// One line per request name: counts, latencies and, for compared routes, the gateway's count.
pub fn write_csv(path: &Path, summary: &Summary) -> anyhow::Result<()> {
    let mut out =
        String::from("name,method,route,requests,failures,average_ms,p50_ms,p95_ms,p99_ms,max_ms,statuses\n");
    for request in &summary.requests {
        let statuses: Vec<String> = request
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}:{count}"))
            .collect();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{}",
            csv_field(&request.name),
            request.method,
            csv_field(&request.route),
            request.requests,
            request.failures,
            request.average_ms,
            request.p50_ms,
            request.p95_ms,
            request.p99_ms,
            request.max_ms,
            statuses.join(" ")
        );
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The ShopStack section of the HTML report.
pub fn html_section(summary: &Summary) -> String {
    let mut out = String::new();
    let verdict = if summary.passed {
        "PASSED".to_owned()
    } else {
        format!("FAILED: {}", summary.failures.join("; "))
    };
    let _ = write!(
        out,
        "\n        <div class=\"shopstack\" id=\"shopstack\">\n            <h2>ShopStack verdict</h2>\n            <p><strong>{}</strong></p>\n",
        escape(&verdict)
    );
    out.push_str("            <table><thead><tr><th>Scenario</th><th>Users</th><th>Iterations</th><th>Requests</th><th>Failed</th></tr></thead><tbody>\n");
    for scenario in &summary.scenarios {
        let _ = writeln!(
            out,
            "                <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&scenario.name),
            scenario.users,
            scenario.iterations,
            scenario.requests,
            scenario.errors
        );
    }
    out.push_str("            </tbody></table>\n");
    let _ = writeln!(
        out,
        "            <p>Stress step (journey): {}</p>",
        escape(&summary.stress)
    );

    out.push_str("            <h2>Thresholds (ShopStack flags)</h2>\n");
    out.push_str("            <table><thead><tr><th>Flag</th><th>Rule</th><th>Observed</th><th>Result</th></tr></thead><tbody>\n");
    for threshold in &summary.thresholds {
        let _ = writeln!(
            out,
            "                <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&threshold.flag),
            escape(&threshold.rule),
            escape(&threshold.observed),
            if threshold.passed { "PASS" } else { "FAIL" }
        );
    }
    out.push_str("            </tbody></table>\n");

    out.push_str("            <h2>Incidents (fault steps)</h2>\n");
    if summary.faults.is_empty() {
        out.push_str("            <p>No --fault-at steps in this run.</p>\n");
    } else {
        out.push_str("            <p>Times are seconds after the run started and local wall-clock time, as in the plan overview above; the graphs below show the same moments.</p>\n");
        out.push_str("            <table><thead><tr><th>Step</th><th>Due</th><th>Fired</th><th>At</th><th>Admin requests</th></tr></thead><tbody>\n");
        for fault in &summary.faults {
            let requests: Vec<String> = fault
                .requests
                .iter()
                .map(|request| match &request.error {
                    None => format!("{} {} → {}", request.method, request.route, request.status),
                    Some(error) => format!("{} {} FAILED ({error})", request.method, request.route),
                })
                .collect();
            let _ = writeln!(
                out,
                "                <tr><td>{}</td><td>+{:.1}s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&fault.spec),
                fault.due_s,
                fault.fired_s.map_or_else(
                    || "not fired (run ended first)".to_owned(),
                    |s| format!("+{s:.1}s")
                ),
                escape(fault.fired_at.as_deref().unwrap_or("")),
                escape(&requests.join("; "))
            );
        }
        out.push_str("            </tbody></table>\n");
        out.push_str("            <table><thead><tr><th>Phase</th><th>From</th><th>To</th><th>Requests</th><th>Failed</th><th>Error rate</th></tr></thead><tbody>\n");
        for phase in &summary.phases {
            let _ = writeln!(
                out,
                "                <tr><td>{}</td><td>{:.1}s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&phase.label),
                phase.from_s,
                phase
                    .to_s
                    .map_or_else(|| "end".to_owned(), |to| format!("{to:.1}s")),
                phase.requests,
                phase.errors,
                percent(phase.error_rate)
            );
        }
        out.push_str("            </tbody></table>\n");
    }

    out.push_str("            <h2>Truth check</h2>\n");
    match (&summary.truth_check, &summary.truth_check_skipped) {
        (Some(truth), _) => {
            let _ = writeln!(
                out,
                "            <p>What this run sent against the delta of <code>http_requests_total{{service=\"{}\"}}</code> over the run. Probe and scrape routes and <code>unmatched</code> are shown but not compared. Requests: sent {} / gateway {} (gap {}); errors: sent {} / gateway {} (gap {}); tolerance {}: <strong>{}</strong>.</p>",
                escape(&truth.service),
                truth.sent_requests,
                truth.gateway_requests,
                percent(truth.request_gap),
                truth.sent_errors,
                truth.gateway_errors,
                percent(truth.error_gap),
                percent(truth.tolerance),
                if truth.passed { "OK" } else { "FAILED" }
            );
            out.push_str("            <table><thead><tr><th>Route</th><th>Sent</th><th>Gateway</th><th>Sent errors</th><th>Gateway errors</th><th>Compared</th></tr></thead><tbody>\n");
            for row in &truth.routes {
                let _ = writeln!(
                    out,
                    "                <tr><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&row.method),
                    escape(&row.route),
                    row.sent,
                    row.gateway,
                    row.sent_errors,
                    row.gateway_errors,
                    if row.compared { "yes" } else { "no" }
                );
            }
            out.push_str("            </tbody></table>\n");
        }
        (None, reason) => {
            let _ = writeln!(
                out,
                "            <p>Skipped: {}</p>",
                escape(reason.as_deref().unwrap_or("not run"))
            );
        }
    }
    out.push_str("        </div>\n");
    out
}

/// Add the ShopStack section to a Goose HTML report, above its request metrics.
pub fn annotate_html(path: &Path, summary: &Summary) -> anyhow::Result<()> {
    let html = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let section = html_section(summary);
    let annotated = if let Some(at) = html.find("<div class=\"requests\">") {
        format!("{}{section}\n        {}", &html[..at], &html[at..])
    } else if let Some(at) = html.rfind("</body>") {
        format!("{}{section}{}", &html[..at], &html[at..])
    } else {
        format!("{html}{section}")
    };
    std::fs::write(path, annotated).with_context(|| format!("writing {}", path.display()))
}

/// `dir/name.ext`.
pub fn report_path(dir: &Path, name: &str, ext: &str) -> PathBuf {
    dir.join(format!("{name}.{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(spec: &str, fired: f64, requests: u64, errors: u64) -> FaultRecord {
        FaultRecord {
            spec: spec.to_owned(),
            due_s: fired,
            fired_s: Some(fired),
            fired_at: Some("2025-01-01 00:00:00.000".into()),
            requests: Vec::new(),
            requests_before: requests,
            errors_before: errors,
        }
    }

    #[test]
    fn phases_split_the_run_at_each_fault() {
        let live = LiveCounters::default();
        for index in 0..30 {
            live.record("cart", index < 10 || index % 2 == 0);
        }
        let faults = vec![record("20s:cart.failure_rate=0.5", 20.0, 10, 0)];
        let phases = phases(&faults, &live, 40.0);
        assert_eq!(phases.len(), 2);
        assert_eq!((phases[0].requests, phases[0].errors), (10, 0));
        assert_eq!(phases[0].to_s, Some(20.0));
        assert_eq!((phases[1].requests, phases[1].errors), (20, 10));
        assert_eq!(phases[1].label, "20s:cart.failure_rate=0.5");
        assert!((phases[1].error_rate - 0.5).abs() < 1e-9);
    }

    fn timing(times_us: &[(u64, usize)]) -> GooseRequestMetricTimingData {
        let mut timing = GooseRequestMetricTimingData::default();
        for &(us, count) in times_us {
            timing.times_us.insert(us, count);
            timing.counter += count;
            timing.total_time_us += us * count as u64;
            if timing.minimum_time_us == 0 || us < timing.minimum_time_us {
                timing.minimum_time_us = us;
            }
            timing.maximum_time_us = timing.maximum_time_us.max(us);
        }
        timing
    }

    #[test]
    fn all_requests_take_percentiles_over_every_request() {
        // 97 fast reads and 3 slow checkouts: the slow ones are the top 3 % of all requests,
        // which neither name's own p99 says.
        let reads = timing(&[(1_000, 97)]);
        let checkouts = timing(&[(100_000, 3)]);
        let all = merged_timing([&reads, &checkouts]);
        assert_eq!(all.counter, 100);
        assert_eq!((all.minimum_time_us, all.maximum_time_us), (1_000, 100_000));
        let statuses = [(200_u16, 99_usize), (503, 1)];
        let line = request_line("all", "", "", &all, 100, 1, statuses.iter().map(|(s, c)| (s, c)));
        assert!(line.p50_ms < 2.0, "{line:?}");
        assert!(line.p99_ms > 90.0, "{line:?}");
        assert!((line.average_ms - 3.97).abs() < 1e-9, "{line:?}");
        assert_eq!(line.statuses.get(&503), Some(&1));
    }

    #[test]
    fn html_section_escapes_and_lands_above_the_requests() {
        let summary = Summary {
            run: "r".into(),
            target: "http://127.0.0.1:1".into(),
            started_at: String::new(),
            duration_s: 1.0,
            passed: false,
            failures: vec!["threshold <breached>".into()],
            scenarios: Vec::new(),
            requests: Vec::new(),
            all_requests: request_line(
                "all",
                "",
                "",
                &GooseRequestMetricTimingData::default(),
                0,
                0,
                std::iter::empty(),
            ),
            thresholds: Vec::new(),
            stress: "enabled".into(),
            faults: vec![record("1s:cart.failure_rate=1", 1.0, 0, 0)],
            phases: Vec::new(),
            faults_restored: Vec::new(),
            truth_check: None,
            truth_check_skipped: Some("--no-truth-check".into()),
            reports: Vec::new(),
        };
        let dir = std::env::temp_dir().join(format!("loadtest-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("{error}"));
        let path = dir.join("r.html");
        std::fs::write(
            &path,
            "<html><body><div class=\"info\"></div><div class=\"requests\"></div></body></html>",
        )
        .unwrap_or_else(|error| panic!("{error}"));
        annotate_html(&path, &summary).unwrap_or_else(|error| panic!("{error}"));
        let html = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{error}"));
        let section = html.find("id=\"shopstack\"").unwrap_or(usize::MAX);
        let requests = html.find("<div class=\"requests\">").unwrap_or(0);
        assert!(section < requests, "{html}");
        assert!(html.contains("threshold &lt;breached&gt;"));
        assert!(html.contains("1s:cart.failure_rate=1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
