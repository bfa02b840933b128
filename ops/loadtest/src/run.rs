//! One load-test run, start to verdict.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Local;
use goose::config::GooseConfiguration;
use goose::metrics::GooseMetrics;
use goose::prelude::*;
use serde_json::{Map, Value};

use crate::cli::Cli;
use crate::faults::{self, Admin, FaultRecord};
use crate::live::LiveCounters;
use crate::report::{self, Summary, ThresholdSummary};
use crate::scenarios::{self, Context, StressParams};
use crate::target::{self, Unreachable};
use crate::truth::{self, Counts, TruthReport};

/// The process's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// Every threshold held and the truth check agreed.
    Passed = 0,
    /// A threshold was breached, the truth check found a gap, or a fault step did not apply.
    Failed = 1,
    /// Bad options.
    Usage = 2,
    /// The target isn't running or isn't usable.
    Unreachable = 3,
}

fn say(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Does the `--scenarios` pattern list select `name`? (Goose's rules: case-insensitive, `*`
/// matches any run of characters; no list selects everything.)
pub fn is_selected(config: &GooseConfiguration, name: &str) -> bool {
    let Some(scenarios) = &config.scenarios else {
        return true;
    };
    scenarios
        .active
        .iter()
        .any(|pattern| glob(&pattern.to_lowercase(), &name.to_lowercase()))
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|skip| rest.is_char_boundary(skip) && glob(tail, &rest[skip..]))
        }
    }
}

fn uses_test_plan(config: &GooseConfiguration) -> bool {
    serde_json::to_value(config)
        .ok()
        .and_then(|value| value.get("test_plan").cloned())
        .is_some_and(|plan| !plan.is_null())
}

fn context(
    cli: &Cli,
    products: Vec<String>,
    search_terms: Vec<String>,
    stress: Option<StressParams>,
) -> Arc<Context> {
    Arc::new(Context {
        products,
        search_terms,
        stress,
        stress_turn: tokio::sync::Mutex::new(()),
        live: LiveCounters::default(),
        run_id: format!("{:x}", Local::now().timestamp_millis()),
        max_quantity: cli.shop.max_quantity,
        think_time: (
            Duration::from_millis(cli.shop.think_time_ms.0),
            Duration::from_millis(cli.shop.think_time_ms.1),
        ),
        poll_interval: cli.shop.poll_interval,
    })
}

/// `ping` is for benchmarks: it runs only when `--scenarios` names it (not through a wildcard).
fn names_ping(config: &GooseConfiguration) -> bool {
    config
        .scenarios
        .as_ref()
        .is_some_and(|scenarios| scenarios.active.iter().any(|name| name == scenarios::ping::NAME))
}

fn attack(config: GooseConfiguration, ctx: &Arc<Context>) -> Result<GooseAttack, GooseError> {
    let with_ping = names_ping(&config);
    let mut attack = GooseAttack::initialize_with_config(config)?;
    for scenario in scenarios::all(ctx, with_ping)? {
        attack = attack.register_scenario(scenario);
    }
    Ok(attack)
}

/// Run the load test described by `args` (program name first).
pub async fn run(args: impl IntoIterator<Item = OsString>) -> ExitStatus {
    run_reporting_start(args, None).await
}

/// [`run`], sending `started` the instant the load begins: the clock `--fault-at` steps and
/// the request log's `elapsed` count from, so a caller can time its own faults against it.
/// Nothing is sent when the run ends before the load begins (bad options, target down).
pub async fn run_reporting_start(
    args: impl IntoIterator<Item = OsString>,
    started: Option<tokio::sync::oneshot::Sender<Instant>>,
) -> ExitStatus {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return match error.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitStatus::Passed
                }
                _ => ExitStatus::Usage,
            };
        }
    };
    // Listing scenarios or the version touches no target: Goose prints and exits.
    if cli.goose.list || cli.goose.scenarios_list || cli.goose.version {
        let ctx = context(
            &cli,
            Vec::new(),
            Vec::new(),
            Some(StressParams {
                cpu_iterations: cli.shop.stress_cpu_iterations,
                memory_mb: cli.shop.stress_memory_mb,
            }),
        );
        return match attack(cli.goose.clone(), &ctx) {
            Ok(attack) => match attack.execute().await {
                Ok(_) => ExitStatus::Passed,
                Err(error) => {
                    eprintln!("loadtest: {error}");
                    ExitStatus::Usage
                }
            },
            Err(error) => {
                eprintln!("loadtest: {error}");
                ExitStatus::Usage
            }
        };
    }
    if let Err(error) = cli.validate() {
        eprintln!("loadtest: {error:#}");
        return ExitStatus::Usage;
    }
    if cli.goose.no_metrics {
        eprintln!(
            "loadtest: --no-metrics leaves nothing to judge: thresholds, reports and the truth check need metrics"
        );
        return ExitStatus::Usage;
    }
    match Run::prepare(cli).await {
        Ok(run) => run.execute(started).await,
        Err(status) => status,
    }
}

/// Everything known before Goose starts.
struct Run {
    cli: Cli,
    host: String,
    client: reqwest::Client,
    ctx: Arc<Context>,
    stress: String,
    selected: Vec<&'static str>,
    admin: Option<Admin>,
    /// The profiles the fault steps will change, as they were before the run.
    originals: BTreeMap<String, Map<String, Value>>,
    before: Option<Counts>,
    name: String,
}

fn unreachable(host: &str, detail: &str) -> ExitStatus {
    eprintln!(
        "loadtest: ShopStack is not reachable at {host} ({detail}).\n\
         \x20 Start the stack first: `make run-all` (in another terminal), then run this again;\n\
         \x20 or point --host at a running ShopStack gateway."
    );
    ExitStatus::Unreachable
}

impl Run {
    async fn prepare(cli: Cli) -> Result<Self, ExitStatus> {
        let host = cli.host();
        let client = target::client().map_err(|error| {
            eprintln!("loadtest: {error:#}");
            ExitStatus::Usage
        })?;
        match target::preflight(&client, &host).await {
            Ok(None) => {}
            Ok(Some(unhealthy)) => eprintln!(
                "loadtest: warning: {host}/healthz reports a problem ({unhealthy}); running anyway, expect errors"
            ),
            Err(Unreachable::Down(detail)) => return Err(unreachable(&host, &detail)),
            Err(Unreachable::Unusable(detail)) => {
                eprintln!("loadtest: {detail}");
                return Err(ExitStatus::Unreachable);
            }
        }
        let mut selected: Vec<&'static str> = scenarios::NAMES
            .iter()
            .copied()
            .filter(|name| is_selected(&cli.goose, name))
            .collect();
        if names_ping(&cli.goose) {
            selected.push(scenarios::ping::NAME);
        }

        let (products, search_terms) = target::catalog(&client, &host).await.map_err(|error| {
            eprintln!("loadtest: could not read the catalog's product ids: {error:#}");
            ExitStatus::Unreachable
        })?;
        eprintln!("[loadtest] {} products in the catalog at {host}", products.len());

        let (stress, stress_text) = if selected.contains(&"journey") {
            let (enabled, text) = target::stress_enabled(&client, &host).await;
            let params = enabled.then_some(StressParams {
                cpu_iterations: cli.shop.stress_cpu_iterations,
                memory_mb: cli.shop.stress_memory_mb,
            });
            let text = match params {
                Some(params) => format!(
                    "{text}; each journey sends POST /stress?cpu_iterations={}&memory_mb={}",
                    params.cpu_iterations, params.memory_mb
                ),
                None => format!("{text}; the journey skips its stress step"),
            };
            (params, text)
        } else {
            (None, "not probed (journey scenario not selected)".to_owned())
        };
        eprintln!("[loadtest] stress: {stress_text}");

        let mut admin = None;
        let mut originals = BTreeMap::new();
        if !cli.shop.fault_at.is_empty() {
            let token = cli.shop.admin_token.clone().unwrap_or_default();
            let fault_admin = Admin::new(client.clone(), &host, &token);
            let services: std::collections::BTreeSet<&String> = cli
                .shop
                .fault_at
                .iter()
                .flat_map(|step| step.patches.keys())
                .collect();
            for service in services {
                match fault_admin.profile(service).await {
                    Ok(profile) => {
                        originals.insert(service.clone(), profile);
                    }
                    Err(error) => {
                        eprintln!("loadtest: --fault-at can't reach {service}'s simulation: {error:#}");
                        return Err(ExitStatus::Usage);
                    }
                }
            }
            admin = Some(fault_admin);
        }

        let before = if cli.shop.no_truth_check {
            None
        } else {
            match target::scrape(&client, &host, &cli.shop.truth_service).await {
                Ok(counts) => Some(counts),
                Err(error) => {
                    eprintln!(
                        "loadtest: the truth check needs the target's /metrics: {error:#} \
                         (use --no-truth-check to run without it)"
                    );
                    return Err(ExitStatus::Unreachable);
                }
            }
        };

        let name = cli
            .shop
            .run_name
            .clone()
            .unwrap_or_else(|| format!("loadtest-{}", Local::now().format("%Y%m%d-%H%M%S")));
        let ctx = context(&cli, products, search_terms, stress);
        Ok(Self {
            cli,
            host,
            client,
            ctx,
            stress: stress_text,
            selected,
            admin,
            originals,
            before,
            name,
        })
    }

    /// Goose's configuration with ShopStack's defaults and thresholds.
    fn goose_config(&self, reports: &mut Vec<String>) -> (GooseConfiguration, String, String) {
        let mut config = self.cli.goose.clone();
        config.host = Some(self.host.clone());
        if config.report_file.is_empty() {
            for ext in ["html", "json"] {
                let path = report::report_path(&self.cli.shop.reports_dir, &self.name, ext);
                config.report_file.push(path.to_string_lossy().into_owned());
            }
        }
        reports.extend(
            config
                .report_file
                .iter()
                .filter(|path| path.as_str() != goose::config::RUN_FOLDER)
                .cloned(),
        );
        // The truth check compares everything since the first scrape: keep the ramp-up's
        // metrics. (Goose never resets them with --iterations or --test-plan.)
        if config.iterations.unwrap_or(0) == 0 && !uses_test_plan(&config) {
            config.no_reset_metrics = true;
        }
        config.no_status_codes = false;
        let p95_rule = format!("p95<={}ms", self.cli.shop.threshold_p95_ms);
        let error_rule = format!("error-rate<={}%", self.cli.shop.threshold_error_rate * 100.0);
        config.threshold.push(p95_rule.clone());
        config.threshold.push(error_rule.clone());
        if !self.cli.shop.threshold_abort {
            config.no_threshold_abort = true;
        }
        (config, p95_rule, error_rule)
    }

    async fn execute(self, report_start: Option<tokio::sync::oneshot::Sender<Instant>>) -> ExitStatus {
        if let Err(error) = std::fs::create_dir_all(&self.cli.shop.reports_dir) {
            eprintln!(
                "loadtest: can't create {}: {error}",
                self.cli.shop.reports_dir.display()
            );
            return ExitStatus::Usage;
        }
        let mut reports = Vec::new();
        let (config, p95_rule, error_rule) = self.goose_config(&mut reports);
        let attack = match attack(config, &self.ctx) {
            Ok(attack) => attack,
            Err(error) => {
                eprintln!("loadtest: {error}");
                return ExitStatus::Usage;
            }
        };

        let started_at = Local::now();
        let started = Instant::now();
        if let Some(report_start) = report_start {
            let _ = report_start.send(started);
        }
        let fault_log: Arc<Mutex<Vec<FaultRecord>>> = Arc::default();
        let schedule = self.admin.clone().map(|admin| {
            tokio::spawn(faults::run_schedule(
                admin,
                self.cli.shop.fault_at.clone(),
                started,
                self.ctx.live.clone(),
                fault_log.clone(),
            ))
        });
        let result = attack.execute().await;
        if let Some(schedule) = schedule {
            schedule.abort();
            let _ = schedule.await;
        }
        let duration_s = started.elapsed().as_secs_f64();
        let mut fired = fault_log.lock().map(|log| log.clone()).unwrap_or_default();

        let metrics = match result {
            Ok(metrics) => metrics,
            Err(GooseError::ThresholdsFailed { metrics, .. }) => *metrics.0,
            Err(error) => {
                self.restore(&fired).await;
                eprintln!("loadtest: {error}");
                return ExitStatus::Usage;
            }
        };

        let (truth_check, truth_check_skipped) = self.truth_check(&metrics, &fired).await;
        let faults_restored = self.restore(&fired).await;

        let mut faults = fired.clone();
        faults.extend(faults::unfired(&self.cli.shop.fault_at, &fired));
        faults.sort_by(|a, b| a.due_s.partial_cmp(&b.due_s).unwrap_or(std::cmp::Ordering::Equal));
        fired.sort_by(|a, b| a.due_s.partial_cmp(&b.due_s).unwrap_or(std::cmp::Ordering::Equal));

        let thresholds: Vec<ThresholdSummary> = metrics
            .thresholds
            .iter()
            .map(|result| ThresholdSummary {
                flag: if result.rule == p95_rule {
                    "--threshold-p95-ms".to_owned()
                } else if result.rule == error_rule {
                    "--threshold-error-rate".to_owned()
                } else {
                    "--threshold".to_owned()
                },
                rule: result.rule.clone(),
                observed: result.observed.clone(),
                passed: result.passed,
            })
            .collect();

        let mut failures = Vec::new();
        for threshold in thresholds.iter().filter(|threshold| !threshold.passed) {
            failures.push(format!(
                "threshold breached: {} ({}, observed {})",
                threshold.flag, threshold.rule, threshold.observed
            ));
        }
        if let Some(truth) = &truth_check
            && !truth.passed
        {
            failures.push(format!(
                "truth check: this run sent {} requests ({} errors) but the gateway counted {} ({} errors): gaps {:.2} % / {:.2} % exceed {:.2} %",
                truth.sent_requests,
                truth.sent_errors,
                truth.gateway_requests,
                truth.gateway_errors,
                truth.request_gap * 100.0,
                truth.error_gap * 100.0,
                truth.tolerance * 100.0
            ));
        }
        for fault in fired.iter().filter(|fault| !fault.succeeded()) {
            failures.push(format!("fault step {} did not apply", fault.spec));
        }

        let summary_path = report::report_path(&self.cli.shop.reports_dir, &self.name, "summary.json");
        let csv_path = report::report_path(&self.cli.shop.reports_dir, &self.name, "requests.csv");
        reports.push(summary_path.to_string_lossy().into_owned());
        reports.push(csv_path.to_string_lossy().into_owned());

        let summary = Summary {
            run: self.name.clone(),
            target: self.host.clone(),
            started_at: started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            duration_s,
            passed: failures.is_empty(),
            failures,
            scenarios: report::scenarios(&metrics, &self.selected, &self.ctx.live),
            requests: report::requests(&metrics),
            all_requests: report::all_requests(&metrics),
            thresholds,
            stress: self.stress.clone(),
            phases: report::phases(&faults, &self.ctx.live, duration_s),
            faults,
            faults_restored,
            truth_check,
            truth_check_skipped,
            reports,
        };

        for path in &summary.reports {
            let lower = path.to_ascii_lowercase();
            if (lower.ends_with(".html") || lower.ends_with(".htm"))
                && let Err(error) = report::annotate_html(std::path::Path::new(path), &summary)
            {
                eprintln!("loadtest: warning: {error:#}");
            }
        }
        if let Err(error) = report::write_json(&summary_path, &summary) {
            eprintln!("loadtest: warning: {error:#}");
        }
        if let Err(error) = report::write_csv(&csv_path, &summary) {
            eprintln!("loadtest: warning: {error:#}");
        }
        say(&report::console(&summary));
        if summary.passed {
            ExitStatus::Passed
        } else {
            ExitStatus::Failed
        }
    }

    async fn truth_check(
        &self,
        metrics: &GooseMetrics,
        fired: &[FaultRecord],
    ) -> (Option<TruthReport>, Option<String>) {
        let Some(before) = &self.before else {
            return (None, Some("--no-truth-check".to_owned()));
        };
        let after = match target::scrape(&self.client, &self.host, &self.cli.shop.truth_service).await {
            Ok(after) => after,
            Err(error) => {
                return (None, Some(format!("the scrape after the run failed: {error:#}")));
            }
        };
        if after.is_empty() {
            return (
                None,
                Some(format!(
                    "the target's /metrics has no http_requests_total{{service=\"{}\"}}: is --host the gateway? (see --truth-service)",
                    self.cli.shop.truth_service
                )),
            );
        }
        let mut sent = Counts::new();
        for (key, aggregate) in &metrics.requests {
            let (method, name) = key.split_once(' ').unwrap_or(("", key.as_str()));
            let route = truth::route_of(name);
            for (status, count) in &aggregate.status_code_counts {
                *sent
                    .entry((method.to_owned(), route.to_owned(), *status))
                    .or_default() += *count as u64;
            }
        }
        for request in fired.iter().flat_map(|fault| &fault.requests) {
            *sent
                .entry((request.method.to_owned(), request.route.clone(), request.status))
                .or_default() += 1;
        }
        let delta = truth::delta(before, &after);
        (
            Some(truth::compare(
                &self.cli.shop.truth_service,
                &sent,
                &delta,
                self.cli.shop.truth_tolerance,
            )),
            None,
        )
    }

    /// Put back the profiles the fault steps changed; returns the services restored.
    async fn restore(&self, fired: &[FaultRecord]) -> Vec<String> {
        let Some(admin) = &self.admin else {
            return Vec::new();
        };
        if self.cli.shop.keep_faults || fired.is_empty() {
            return Vec::new();
        }
        let touched: std::collections::BTreeSet<&str> = fired
            .iter()
            .flat_map(|fault| fault.requests.iter().map(|request| request.service.as_str()))
            .collect();
        let mut restored = Vec::new();
        for service in touched {
            let Some(original) = self.originals.get(service) else {
                continue;
            };
            match admin.put(service, original).await {
                (_, None) => restored.push(service.to_owned()),
                (_, Some(error)) => {
                    eprintln!("loadtest: warning: could not put {service}'s simulation back: {error}");
                }
            }
        }
        restored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_patterns_follow_goose() {
        assert!(glob("browse", "browse"));
        assert!(glob("b*", "browse"));
        assert!(glob("*se", "browse"));
        assert!(glob("*", "cart"));
        assert!(!glob("cart", "browse"));
        assert!(!glob("c*t*x", "cart"));
        let cli = Cli::try_parse_from(["loadtest", "--scenarios", "Browse,c*"].map(OsString::from))
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(is_selected(&cli.goose, "browse"));
        assert!(is_selected(&cli.goose, "cart"));
        assert!(!is_selected(&cli.goose, "poller"));
    }
}
