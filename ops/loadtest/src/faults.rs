//! Incidents on a timer: `--fault-at 30s:cart.failure_rate=0.2` changes a service's simulation
//! through the admin API while the run goes on, and the report says when.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Local};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::cli::parse_duration;
use crate::live::LiveCounters;

/// The simulation profile's fields (`common/src/simulation.rs`), with the kind of value each takes.
const FIELDS: &[(&str, FieldKind)] = &[
    ("enabled", FieldKind::Bool),
    ("applies_to", FieldKind::AppliesTo),
    ("latency_min_ms", FieldKind::Millis),
    ("latency_max_ms", FieldKind::Millis),
    ("latency_rate", FieldKind::Share),
    ("failure_rate", FieldKind::Share),
    ("failure_status", FieldKind::Status),
    ("header_faults", FieldKind::Bool),
];

#[derive(Debug, Clone, Copy)]
enum FieldKind {
    Bool,
    AppliesTo,
    Millis,
    Share,
    Status,
}

impl FieldKind {
    fn parse(self, field: &str, raw: &str) -> anyhow::Result<Value> {
        let raw = raw.trim();
        let bad = || anyhow!("{field}={raw}: {}", self.expected());
        Ok(match self {
            FieldKind::Bool => match raw.to_ascii_lowercase().as_str() {
                "true" | "on" | "1" | "yes" => Value::Bool(true),
                "false" | "off" | "0" | "no" => Value::Bool(false),
                _ => return Err(bad()),
            },
            FieldKind::AppliesTo => match raw.to_ascii_lowercase().as_str() {
                value @ ("reads" | "writes" | "all" | "none") => Value::String(value.to_owned()),
                _ => return Err(bad()),
            },
            FieldKind::Millis => Value::from(raw.parse::<u64>().map_err(|_| bad())?),
            FieldKind::Share => {
                let share = raw.parse::<f64>().map_err(|_| bad())?;
                if !(0.0..=1.0).contains(&share) {
                    return Err(bad());
                }
                Value::from(share)
            }
            FieldKind::Status => {
                let status = raw.parse::<u16>().map_err(|_| bad())?;
                if !(400..=599).contains(&status) {
                    return Err(bad());
                }
                Value::from(status)
            }
        })
    }

    fn expected(self) -> &'static str {
        match self {
            FieldKind::Bool => "expected true or false",
            FieldKind::AppliesTo => "expected reads, writes, all or none",
            FieldKind::Millis => "expected whole milliseconds",
            FieldKind::Share => "expected a share between 0 and 1",
            FieldKind::Status => "expected an HTTP error status (400-599)",
        }
    }
}

/// One `--fault-at` step: when, and the partial profile for each service it touches.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultStep {
    /// How long after the run starts.
    pub at: Duration,
    /// The step as given, for the report.
    pub spec: String,
    /// Service → the partial profile `PUT` to its admin route.
    pub patches: BTreeMap<String, Map<String, Value>>,
}

impl FromStr for FaultStep {
    type Err = anyhow::Error;

    fn from_str(value: &str) -> anyhow::Result<Self> {
        let (when, changes) = value.split_once(':').with_context(|| {
            format!("{value:?}: expected TIME:SERVICE.FIELD=VALUE, e.g. 30s:cart.failure_rate=0.2")
        })?;
        let at = parse_duration(when).map_err(|error| anyhow!("{error}"))?;
        let mut patches: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for change in changes.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let (target, raw) = change
                .split_once('=')
                .with_context(|| format!("{change:?}: expected SERVICE.FIELD=VALUE"))?;
            let (service, field) = target
                .trim()
                .split_once('.')
                .with_context(|| format!("{change:?}: expected SERVICE.FIELD=VALUE"))?;
            if service.is_empty()
                || !service
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                bail!("{change:?}: {service:?} is not a service name (gateway, catalog, cart, …)");
            }
            let kind = FIELDS
                .iter()
                .find(|(name, _)| *name == field)
                .map(|(_, kind)| *kind)
                .with_context(|| {
                    let names: Vec<&str> = FIELDS.iter().map(|(name, _)| *name).collect();
                    format!(
                        "{change:?}: unknown field {field:?}; use one of {}",
                        names.join(", ")
                    )
                })?;
            let parsed = kind.parse(field, raw)?;
            patches
                .entry(service.to_owned())
                .or_default()
                .insert(field.to_owned(), parsed);
        }
        if patches.is_empty() {
            bail!("{value:?}: no SERVICE.FIELD=VALUE after the time");
        }
        Ok(Self {
            at,
            spec: value.trim().to_owned(),
            patches,
        })
    }
}

/// The admin route of a service's simulation, as the gateway exposes it.
pub fn admin_path(service: &str) -> String {
    if service == "gateway" {
        "/admin/simulation".to_owned()
    } else {
        format!("/admin/{service}/simulation")
    }
}

/// What happened to one fault step.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// The step as given.
    pub spec: String,
    /// When it was due, seconds after the run started.
    pub due_s: f64,
    /// When it was sent, seconds after the run started; `None` if the run ended first.
    pub fired_s: Option<f64>,
    /// Local wall-clock time it was sent (as the HTML report's plan overview shows times).
    pub fired_at: Option<String>,
    /// Each request it made: service, status (0: no answer) and any error text.
    pub requests: Vec<FaultRequest>,
    /// Requests and failures this run had counted when the step fired.
    pub requests_before: u64,
    pub errors_before: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultRequest {
    pub service: String,
    pub method: &'static str,
    pub route: String,
    pub status: u16,
    pub error: Option<String>,
}

impl FaultRecord {
    pub fn succeeded(&self) -> bool {
        self.fired_s.is_some() && self.requests.iter().all(|request| request.error.is_none())
    }
}

/// Talks to the services' admin API through the target.
#[derive(Clone)]
pub struct Admin {
    client: reqwest::Client,
    host: String,
    token: String,
}

impl Admin {
    pub fn new(client: reqwest::Client, host: &str, token: &str) -> Self {
        Self {
            client,
            host: host.to_owned(),
            token: token.to_owned(),
        }
    }

    /// The live profile of `service`, checking the token and the route on the way.
    pub async fn profile(&self, service: &str) -> anyhow::Result<Map<String, Value>> {
        let path = admin_path(service);
        let response = self
            .client
            .get(format!("{}{path}", self.host))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        match status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                bail!("GET {path}: {status}: the admin token was refused; check ADMIN_TOKEN")
            }
            StatusCode::NOT_FOUND => {
                bail!("GET {path}: 404: the target has no simulation admin route for {service:?}")
            }
            _ => bail!("GET {path}: unexpected {status}"),
        }
        response
            .json::<Map<String, Value>>()
            .await
            .with_context(|| format!("GET {path}: the profile is not a JSON object"))
    }

    /// `PUT` a partial profile; returns the status (0 when nothing answered) and an error text
    /// when it did not take.
    pub async fn put(&self, service: &str, patch: &Map<String, Value>) -> (u16, Option<String>) {
        let path = admin_path(service);
        match self
            .client
            .put(format!("{}{path}", self.host))
            .bearer_auth(&self.token)
            .json(patch)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status.is_success() {
                    (status.as_u16(), None)
                } else {
                    (status.as_u16(), Some(format!("{status}: {}", body.trim())))
                }
            }
            Err(error) => (0, Some(format!("no answer: {error}"))),
        }
    }
}

/// Fire each step at its time (measured from `started`); returns what happened to each, also
/// for steps the run ended before (the caller aborts this task when the run ends, so records
/// are kept in `log` as they happen).
pub async fn run_schedule(
    admin: Admin,
    steps: Vec<FaultStep>,
    started: Instant,
    live: LiveCounters,
    log: std::sync::Arc<std::sync::Mutex<Vec<FaultRecord>>>,
) {
    let mut ordered: Vec<(usize, FaultStep)> = steps.into_iter().enumerate().collect();
    ordered.sort_by_key(|(index, step)| (step.at, *index));
    for (_, step) in ordered {
        tokio::time::sleep_until((started + step.at).into()).await;
        let fired = started.elapsed();
        let (requests_before, errors_before) = live.totals();
        let fired_at: DateTime<Local> = Local::now();
        let mut requests = Vec::new();
        for (service, patch) in &step.patches {
            let (status, error) = admin.put(service, patch).await;
            requests.push(FaultRequest {
                service: service.clone(),
                method: "PUT",
                route: admin_path(service),
                status,
                error,
            });
        }
        let record = FaultRecord {
            spec: step.spec.clone(),
            due_s: step.at.as_secs_f64(),
            fired_s: Some(fired.as_secs_f64()),
            fired_at: Some(fired_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()),
            requests,
            requests_before,
            errors_before,
        };
        print_fired(&record);
        if let Ok(mut log) = log.lock() {
            log.push(record);
        }
    }
}

fn print_fired(record: &FaultRecord) {
    let outcome: Vec<String> = record
        .requests
        .iter()
        .map(|request| match &request.error {
            None => format!("{} {} → {}", request.method, request.route, request.status),
            Some(error) => format!("{} {} FAILED: {error}", request.method, request.route),
        })
        .collect();
    eprintln!(
        "[loadtest] fault at +{:.1}s ({}): {} — {}",
        record.fired_s.unwrap_or_default(),
        record.fired_at.as_deref().unwrap_or(""),
        record.spec,
        outcome.join("; ")
    );
}

/// Records for the steps that never fired, so the report lists them too.
pub fn unfired(steps: &[FaultStep], fired: &[FaultRecord]) -> Vec<FaultRecord> {
    let mut remaining: Vec<&FaultRecord> = fired.iter().collect();
    let mut missing = Vec::new();
    for step in steps {
        if let Some(position) = remaining.iter().position(|record| record.spec == step.spec) {
            remaining.remove(position);
        } else {
            missing.push(FaultRecord {
                spec: step.spec.clone(),
                due_s: step.at.as_secs_f64(),
                fired_s: None,
                fired_at: None,
                requests: Vec::new(),
                requests_before: 0,
                errors_before: 0,
            });
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_into_partial_profiles() {
        let step: FaultStep = "30s:cart.failure_rate=0.2"
            .parse()
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(step.at, Duration::from_secs(30));
        assert_eq!(step.patches["cart"]["failure_rate"], Value::from(0.2));

        let step: FaultStep = "1m:catalog.latency_min_ms=100, catalog.latency_max_ms=300,gateway.enabled=true,cart.applies_to=all"
            .parse()
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(step.at, Duration::from_secs(60));
        assert_eq!(step.patches.len(), 3);
        assert_eq!(step.patches["catalog"].len(), 2);
        assert_eq!(step.patches["gateway"]["enabled"], Value::Bool(true));
        assert_eq!(step.patches["cart"]["applies_to"], Value::from("all"));
    }

    #[test]
    fn bad_steps_are_refused_with_a_reason() {
        for bad in [
            "cart.failure_rate=0.2",
            "30s:",
            "30s:cart.failure_rate=1.5",
            "30s:cart.failure_status=200",
            "30s:cart.nonsense=1",
            "30s:Cart!.enabled=true",
            "30s:cart.enabled=maybe",
            "30x:cart.enabled=true",
            "30s:failure_rate=0.1",
        ] {
            assert!(bad.parse::<FaultStep>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn admin_paths_follow_the_gateway() {
        assert_eq!(admin_path("gateway"), "/admin/simulation");
        assert_eq!(admin_path("cart"), "/admin/cart/simulation");
    }

    #[test]
    fn unfired_steps_are_listed() {
        let steps: Vec<FaultStep> = ["1s:cart.enabled=true", "90s:cart.enabled=false"]
            .iter()
            .map(|spec| spec.parse().unwrap_or_else(|error| panic!("{error}")))
            .collect();
        let fired = vec![FaultRecord {
            spec: steps[0].spec.clone(),
            due_s: 1.0,
            fired_s: Some(1.0),
            fired_at: None,
            requests: Vec::new(),
            requests_before: 0,
            errors_before: 0,
        }];
        let missing = unfired(&steps, &fired);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].spec, "90s:cart.enabled=false");
    }
}
