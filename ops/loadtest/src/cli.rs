//! The command line: every Goose flag (`--host`, `--users`, `--run-time`, `--report-file`,
//! `--scenarios`, …) plus ShopStack's own (thresholds, incidents, truth check, reports).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, FromArgMatches};
use goose::config::GooseConfiguration;

use crate::faults::FaultStep;

/// Where `make run-all` puts the gateway.
pub const DEFAULT_HOST: &str = "http://127.0.0.1:8000";

/// ShopStack's options, next to Goose's.
#[derive(Debug, Clone, Args)]
pub struct ShopOptions {
    /// Fail the run when the 95th percentile response time of all requests is above MS.
    ///
    /// The default passes against the default simulation (catalog reads 20-60 ms, cart writes
    /// 30-90 ms plus the catalog lookup behind them) with room for a busy laptop.
    #[arg(
        help_heading = "ShopStack thresholds",
        long,
        value_name = "MS",
        default_value_t = 500.0
    )]
    pub threshold_p95_ms: f64,

    /// Fail the run when failed requests (no response, or a status other than 2xx) are more
    /// than RATE (0..1) of all requests.
    ///
    /// The default allows the default simulation's 1 % injected failures on cart writes with
    /// room to spare; injected 500s count as errors, as a user would see them.
    #[arg(
        help_heading = "ShopStack thresholds",
        long,
        value_name = "RATE",
        default_value_t = 0.02
    )]
    pub threshold_error_rate: f64,

    /// Stop the run as soon as a threshold fails (checked once a second) instead of judging
    /// at the end.
    #[arg(help_heading = "ShopStack thresholds", long)]
    pub threshold_abort: bool,

    /// Incident on a timer: at TIME into the run, change a service's simulation, e.g.
    /// `30s:cart.failure_rate=0.2` or `1m:catalog.latency_min_ms=200,catalog.latency_max_ms=400`.
    ///
    /// SERVICE is gateway, catalog, cart (or any service the gateway proxies
    /// `/admin/<service>/simulation` for); FIELD is one of enabled, applies_to,
    /// latency_min_ms, latency_max_ms, latency_rate, failure_rate, failure_status,
    /// header_faults. Sent as `PUT /admin/<service>/simulation` through the target with
    /// `Authorization: Bearer $ADMIN_TOKEN`. Repeatable. The profiles touched are put back
    /// as they were when the run ends, unless --keep-faults.
    #[arg(help_heading = "ShopStack incidents", long, value_name = "TIME:SERVICE.FIELD=VALUE[,...]", value_parser = parse_fault)]
    pub fault_at: Vec<FaultStep>,

    /// Leave the simulation as the last fault step set it when the run ends.
    #[arg(help_heading = "ShopStack incidents", long)]
    pub keep_faults: bool,

    /// Bearer token for the admin API (needed by --fault-at). `make run-all` uses
    /// shopstack-local-admin.
    #[arg(
        help_heading = "ShopStack incidents",
        long,
        env = "ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Skip the truth check (scraping the target's /metrics before and after the run).
    #[arg(help_heading = "ShopStack truth check", long)]
    pub no_truth_check: bool,

    /// The `service` label whose `http_requests_total` the truth check compares with.
    #[arg(
        help_heading = "ShopStack truth check",
        long,
        value_name = "NAME",
        default_value = "gateway"
    )]
    pub truth_service: String,

    /// Largest gap (0..1) between what the run counted and what the target's metrics say
    /// before the truth check fails the run.
    #[arg(
        help_heading = "ShopStack truth check",
        long,
        value_name = "SHARE",
        default_value_t = 0.01
    )]
    pub truth_tolerance: f64,

    /// Folder for the reports (HTML, Goose's JSON, the ShopStack summary JSON and a CSV).
    #[arg(
        help_heading = "ShopStack reports",
        long,
        value_name = "DIR",
        default_value = "reports"
    )]
    pub reports_dir: PathBuf,

    /// Base name of this run's report files [default: loadtest-<local time>].
    #[arg(help_heading = "ShopStack reports", long, value_name = "NAME")]
    pub run_name: Option<String>,

    /// Pause between a user's transactions, `MIN-MAX` in milliseconds (or one number).
    #[arg(help_heading = "ShopStack traffic", long, value_name = "MS", default_value = "100-1000", value_parser = parse_range_ms)]
    pub think_time_ms: (u64, u64),

    /// How often each poller user fetches /healthz and /metrics.
    #[arg(help_heading = "ShopStack traffic", long, value_name = "TIME", default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Largest quantity a cart user adds or sets on one line.
    #[arg(help_heading = "ShopStack traffic", long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_quantity: u32,

    /// `cpu_iterations` of the journey's `POST /stress` (the service caps it at 10000).
    #[arg(help_heading = "ShopStack traffic", long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub stress_cpu_iterations: u32,

    /// `memory_mb` of the journey's `POST /stress` (the service caps it at 1000).
    #[arg(help_heading = "ShopStack traffic", long, value_name = "MB", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub stress_memory_mb: u32,
}

/// The whole command line.
#[derive(Clone)]
pub struct Cli {
    pub goose: GooseConfiguration,
    pub shop: ShopOptions,
}

const ABOUT: &str = "ShopStack load test (Goose): browsing and cart users over the simple and v1 \
cart APIs, a user journey, checkouts through the orders API, a health/metrics poller, shoppers \
opening the storefront page, thresholds, incidents on a timer and a truth check against the \
gateway's metrics. --host defaults to http://127.0.0.1:8000 (`make run-all`); --hatch-rate and \
--spawn-rate are accepted for --increase-rate.";

const EXAMPLES: &str = "Examples:
  loadtest                                  # all scenarios, local stack
  loadtest -u 50 --hatch-rate 10 -t 60s     # what `make load-test` runs
  loadtest --scenarios browse,cart -u 20 -t 30s
  loadtest -t 90s --fault-at 30s:cart.failure_rate=0.2 \\
                  --fault-at 60s:cart.failure_rate=0.01
  loadtest -t 20s --threshold-p95-ms 1      # impossible: the run fails
Scenarios (for --scenarios): browse, cart, journey, checkout, poller, storefront.
Exit status: 0 passed; 1 a threshold, the truth check or a fault step failed;
2 bad options; 3 the target is not running or not usable.";

/// The command: Goose's, with ShopStack's options and help added.
pub fn command() -> clap::Command {
    let goose = GooseConfiguration::command();
    ShopOptions::augment_args(goose)
        .name("loadtest")
        .bin_name("loadtest")
        .about(ABOUT)
        .after_help(EXAMPLES)
        .after_long_help(EXAMPLES)
}

/// Locust's and older Goose's names for `--increase-rate`, kept so their users feel at home.
fn rename_legacy_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .map(|arg| {
            let Some(text) = arg.to_str() else {
                return arg;
            };
            for legacy in ["--hatch-rate", "--spawn-rate"] {
                if text == legacy {
                    return OsString::from("--increase-rate");
                }
                if let Some(value) = text.strip_prefix(legacy).and_then(|rest| rest.strip_prefix('=')) {
                    return OsString::from(format!("--increase-rate={value}"));
                }
            }
            arg
        })
        .collect()
}

impl Cli {
    /// Parse `args` (program name first).
    pub fn try_parse_from(args: impl IntoIterator<Item = OsString>) -> Result<Self, clap::Error> {
        let matches = command().try_get_matches_from(rename_legacy_flags(args))?;
        let goose = GooseConfiguration::from_arg_matches(&matches)?;
        let shop = ShopOptions::from_arg_matches(&matches)?;
        Ok(Self { goose, shop })
    }

    /// The target's base URL: `--host`, or the local stack.
    pub fn host(&self) -> String {
        self.goose
            .host
            .clone()
            .filter(|host| !host.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_owned())
            .trim_end_matches('/')
            .to_owned()
    }

    /// Checks Goose leaves to us.
    pub fn validate(&self) -> anyhow::Result<()> {
        let shop = &self.shop;
        if !(shop.threshold_p95_ms > 0.0 && shop.threshold_p95_ms.is_finite()) {
            bail!("--threshold-p95-ms must be a positive number of milliseconds");
        }
        if !(0.0..=1.0).contains(&shop.threshold_error_rate) {
            bail!("--threshold-error-rate is a share between 0 and 1, e.g. 0.02 for 2 %");
        }
        if !(0.0..=1.0).contains(&shop.truth_tolerance) {
            bail!("--truth-tolerance is a share between 0 and 1, e.g. 0.01 for 1 %");
        }
        if !shop.fault_at.is_empty() && shop.admin_token.as_deref().is_none_or(str::is_empty) {
            bail!(
                "--fault-at changes the simulation through the admin API: set ADMIN_TOKEN \
                 (or --admin-token) to the services' token (`make run-all` uses shopstack-local-admin)"
            );
        }
        if let Some(name) = &shop.run_name
            && (name.is_empty() || name.contains(['/', '\\']))
        {
            bail!("--run-name must be a plain file name without slashes");
        }
        reqwest::Url::parse(&self.host())
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .with_context(|| format!("--host {:?} must be an http:// or https:// URL", self.host()))?;
        Ok(())
    }
}

fn parse_fault(value: &str) -> Result<FaultStep, String> {
    value.parse::<FaultStep>().map_err(|error| format!("{error:#}"))
}

/// `100-1000` → (100, 1000); `250` → (250, 250).
pub fn parse_range_ms(value: &str) -> Result<(u64, u64), String> {
    let number = |part: &str| {
        part.trim()
            .parse::<u64>()
            .map_err(|_| format!("{value:?}: expected MIN-MAX or N milliseconds"))
    };
    let (min, max) = match value.split_once('-') {
        Some((min, max)) => (number(min)?, number(max)?),
        None => {
            let both = number(value)?;
            (both, both)
        }
    };
    if min > max {
        return Err(format!("{value:?}: MIN is above MAX"));
    }
    Ok((min, max))
}

/// A duration such as `30s`, `1m30s`, `500ms`, `2m` or `1h`; a bare number is seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let text = value.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|_| format!("{value:?}: not a duration"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{value:?}: a unit (ms, s, m, h) must follow {rest:?}"))?;
        if digits == 0 {
            return Err(format!("{value:?}: expected a number before {rest:?}"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{value:?}: {:?} is not a number", &rest[..digits]))?;
        let after = &rest[digits..];
        let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let seconds = match &after[..unit_len] {
            "ms" => number / 1000.0,
            "s" => number,
            "m" => number * 60.0,
            "h" => number * 3600.0,
            other => return Err(format!("{value:?}: unknown unit {other:?} (use ms, s, m or h)")),
        };
        total += Duration::try_from_secs_f64(seconds).map_err(|_| format!("{value:?}: not a duration"))?;
        rest = &after[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(
            std::iter::once("loadtest")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10y").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range_ms("100-1000"), Ok((100, 1000)));
        assert_eq!(parse_range_ms("0"), Ok((0, 0)));
        assert!(parse_range_ms("9-1").is_err());
    }

    #[test]
    fn goose_and_shopstack_flags_parse_together() {
        let cli = parse(&[
            "--host",
            "http://127.0.0.1:9000/",
            "--users",
            "50",
            "--hatch-rate",
            "10",
            "--run-time",
            "60s",
            "--scenarios",
            "browse,cart",
            "--threshold-p95-ms",
            "200",
            "--fault-at",
            "30s:cart.failure_rate=0.2",
            "--fault-at=1m:catalog.latency_min_ms=100,catalog.latency_max_ms=200",
        ])
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(cli.goose.users, Some(50));
        assert_eq!(cli.goose.increase_rate.as_deref(), Some("10"));
        assert_eq!(cli.goose.run_time.as_deref(), Some("60s"));
        assert_eq!(cli.host(), "http://127.0.0.1:9000");
        assert_eq!(cli.shop.threshold_p95_ms, 200.0);
        assert_eq!(cli.shop.threshold_error_rate, 0.02);
        assert_eq!(cli.shop.fault_at.len(), 2);
        assert_eq!(cli.shop.fault_at[1].at, Duration::from_secs(60));
    }

    #[test]
    fn spawn_rate_with_equals_is_renamed() {
        let cli = parse(&["--spawn-rate=4"]).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(cli.goose.increase_rate.as_deref(), Some("4"));
        assert_eq!(cli.host(), DEFAULT_HOST);
    }

    #[test]
    fn faults_need_a_token_and_thresholds_are_checked() {
        let mut cli =
            parse(&["--fault-at", "1s:cart.failure_rate=1"]).unwrap_or_else(|error| panic!("{error}"));
        cli.shop.admin_token = None;
        assert!(cli.validate().is_err());
        cli.shop.admin_token = Some("a-token-long-enough".into());
        assert!(cli.validate().is_ok());
        cli.shop.threshold_error_rate = 2.0;
        assert!(cli.validate().is_err());
        assert!(parse(&["--fault-at", "1s:cart.bogus=1"]).is_err());
    }
}
