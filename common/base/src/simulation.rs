//! Injected latency and failures: the knobs a load test turns during an incident rehearsal.
//!
//! A [`SimulationProfile`] applies to a service's business routes (never to probes, metrics or
//! the admin API). It is read from the environment at start and replaced at runtime through
//! `GET/PUT /admin/simulation`. Every injected failure is visible as such: the response carries
//! `x-injected-fault: true`, the request log line has `injected: true`, and
//! `simulation_faults_injected_total{kind}` counts it apart from real errors.

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::metrics::{IntCounterVec, IntGauge, Registry};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::problem::Problem;

/// Longest injected delay, so a typo cannot park requests for hours.
pub const MAX_LATENCY_MS: u64 = 60_000;

/// Which business routes a profile touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AppliesTo {
    /// GET and HEAD.
    Reads,
    /// POST, PUT, PATCH and DELETE.
    Writes,
    All,
    None,
}

impl FromStr for AppliesTo {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "reads" | "read" => Ok(Self::Reads),
            "writes" | "write" => Ok(Self::Writes),
            "all" => Ok(Self::All),
            "none" => Ok(Self::None),
            other => Err(format!("{other:?}: expected reads, writes, all or none")),
        }
    }
}

impl AppliesTo {
    fn covers(self, method: &Method) -> bool {
        let is_read = matches!(*method, Method::GET | Method::HEAD);
        match self {
            Self::Reads => is_read,
            Self::Writes => !is_read && *method != Method::OPTIONS,
            Self::All => true,
            Self::None => false,
        }
    }
}

/// The faults a service injects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SimulationProfile {
    /// Master switch; `SIMULATION=off` sets it false.
    pub enabled: bool,
    /// Routes the profile applies to.
    pub applies_to: AppliesTo,
    /// Injected latency, lower bound (ms).
    pub latency_min_ms: u64,
    /// Injected latency, upper bound (ms); each request draws uniformly in between.
    pub latency_max_ms: u64,
    /// Share of covered requests that get the latency (0..=1).
    pub latency_rate: f64,
    /// Share of covered requests answered with an injected failure (0..=1).
    pub failure_rate: f64,
    /// Status of an injected failure (400-599).
    pub failure_status: u16,
    /// Honour `x-fault-delay-ms` and `x-fault-abort` request headers.
    pub header_faults: bool,
}

/// A partial update for `PUT /admin/simulation`: fields left out keep their value.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulationPatch {
    pub enabled: Option<bool>,
    pub applies_to: Option<AppliesTo>,
    /// At most `latency_max_ms` (the new or the current one; 422 otherwise).
    #[schema(maximum = 60_000)]
    #[serde(default, deserialize_with = "crate::extract::optional_whole_number")]
    pub latency_min_ms: Option<u64>,
    #[schema(maximum = 60_000)]
    #[serde(default, deserialize_with = "crate::extract::optional_whole_number")]
    pub latency_max_ms: Option<u64>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub latency_rate: Option<f64>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub failure_rate: Option<f64>,
    #[schema(minimum = 400, maximum = 599)]
    #[serde(default, deserialize_with = "crate::extract::optional_whole_number")]
    pub failure_status: Option<u16>,
    pub header_faults: Option<bool>,
}

impl SimulationProfile {
    /// Nothing injected (benchmarks, most tests).
    pub const OFF: Self = Self {
        enabled: false,
        applies_to: AppliesTo::None,
        latency_min_ms: 0,
        latency_max_ms: 0,
        latency_rate: 1.0,
        failure_rate: 0.0,
        failure_status: 500,
        header_faults: false,
    };

    /// The catalog's default profile: reads take 20–60 ms.
    pub const DEFAULT_CATALOG: Self = Self {
        enabled: true,
        applies_to: AppliesTo::Reads,
        latency_min_ms: 20,
        latency_max_ms: 60,
        ..Self::OFF
    };

    /// The cart's default profile: writes take 30–90 ms and 1 % of them fail.
    pub const DEFAULT_CART: Self = Self {
        enabled: true,
        applies_to: AppliesTo::Writes,
        latency_min_ms: 30,
        latency_max_ms: 90,
        failure_rate: 0.01,
        ..Self::OFF
    };

    /// Nothing injected until switched on at runtime (gateway, orders).
    pub const QUIET: Self = Self {
        enabled: true,
        applies_to: AppliesTo::All,
        ..Self::OFF
    };

    pub fn validate(&self) -> Result<(), String> {
        if self.latency_min_ms > self.latency_max_ms {
            return Err(format!(
                "latency_min_ms ({}) is above latency_max_ms ({})",
                self.latency_min_ms, self.latency_max_ms
            ));
        }
        if self.latency_max_ms > MAX_LATENCY_MS {
            return Err(format!("latency_max_ms must be at most {MAX_LATENCY_MS}"));
        }
        for (name, rate) in [
            ("latency_rate", self.latency_rate),
            ("failure_rate", self.failure_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        if !(400..=599).contains(&self.failure_status) {
            return Err(format!(
                "failure_status must be an HTTP error status (400-599), got {}",
                self.failure_status
            ));
        }
        Ok(())
    }

    /// The profile with `patch` applied, validated; `self` is unchanged on error.
    pub fn patched(&self, patch: SimulationPatch) -> Result<Self, String> {
        let mut next = self.clone();
        if let Some(value) = patch.enabled {
            next.enabled = value;
        }
        if let Some(value) = patch.applies_to {
            next.applies_to = value;
        }
        if let Some(value) = patch.latency_min_ms {
            next.latency_min_ms = value;
        }
        if let Some(value) = patch.latency_max_ms {
            next.latency_max_ms = value;
        }
        if let Some(value) = patch.latency_rate {
            next.latency_rate = value;
        }
        if let Some(value) = patch.failure_rate {
            next.failure_rate = value;
        }
        if let Some(value) = patch.failure_status {
            next.failure_status = value;
        }
        if let Some(value) = patch.header_faults {
            next.header_faults = value;
        }
        next.validate()?;
        Ok(next)
    }
}

/// What the simulation decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision {
    delay: Option<Duration>,
    abort: Option<StatusCode>,
}

/// Marker put in response extensions when a failure was injected, so the request log says so.
#[derive(Debug, Clone, Copy)]
pub struct InjectedFault;

/// The live profile plus its metrics; shared by the middleware and the admin API.
#[derive(Clone)]
pub struct Simulation {
    profile: Arc<RwLock<SimulationProfile>>,
    injected: IntCounterVec<2>,
    failure_rate_ppm: IntGauge,
    latency_max_ms: IntGauge,
}

impl Simulation {
    pub fn new(profile: SimulationProfile, registry: &Registry) -> crate::metrics::Result<Self> {
        let injected = registry.counter_vec(
            "simulation_faults_injected_total",
            "Faults injected by the simulation, by route and kind (latency or error).",
            ["route", "kind"],
        )?;
        let failure_rate_ppm = registry.gauge(
            "simulation_failure_rate_ppm",
            "Configured injected failure rate in parts per million (0 when simulation is off).",
        )?;
        let latency_max_ms = registry.gauge(
            "simulation_latency_max_ms",
            "Configured upper bound of injected latency in ms (0 when simulation is off).",
        )?;
        let simulation = Self {
            profile: Arc::new(RwLock::new(profile.clone())),
            injected,
            failure_rate_ppm,
            latency_max_ms,
        };
        simulation.publish_gauges(&profile);
        Ok(simulation)
    }

    pub fn profile(&self) -> SimulationProfile {
        match self.profile.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replace the profile with `patch` applied; returns the new profile.
    pub fn update(&self, patch: SimulationPatch) -> Result<SimulationProfile, String> {
        let mut guard = match self.profile.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let next = guard.patched(patch)?;
        *guard = next.clone();
        drop(guard);
        self.publish_gauges(&next);
        Ok(next)
    }

    fn publish_gauges(&self, profile: &SimulationProfile) {
        let active = profile.enabled && profile.applies_to != AppliesTo::None;
        let rate = if active { profile.failure_rate } else { 0.0 };
        self.failure_rate_ppm.set((rate * 1_000_000.0).round() as i64);
        let latency = if active { profile.latency_max_ms } else { 0 };
        self.latency_max_ms.set(latency as i64);
    }

    fn decide(&self, method: &Method, headers: &axum::http::HeaderMap) -> Decision {
        let profile = self.profile();
        let mut decision = Decision {
            delay: None,
            abort: None,
        };
        if !profile.enabled {
            return decision;
        }
        let mut rng = rand::rng();
        if profile.applies_to.covers(method) {
            if profile.latency_max_ms > 0 && rng.random_bool(profile.latency_rate) {
                let ms = rng.random_range(profile.latency_min_ms..=profile.latency_max_ms);
                decision.delay = Some(Duration::from_millis(ms));
            }
            if profile.failure_rate > 0.0 && rng.random_bool(profile.failure_rate) {
                decision.abort = StatusCode::from_u16(profile.failure_status).ok();
            }
        }
        if profile.header_faults {
            if let Some(ms) = header_number(headers, "x-fault-delay-ms") {
                decision.delay = Some(Duration::from_millis(ms.min(MAX_LATENCY_MS)));
            }
            if let Some(status) = header_number(headers, "x-fault-abort")
                .and_then(|code| u16::try_from(code).ok())
                .filter(|code| (400..=599).contains(code))
                .and_then(|code| StatusCode::from_u16(code).ok())
            {
                decision.abort = Some(status);
            }
        }
        decision
    }
}

fn header_number(headers: &axum::http::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl Simulation {
    /// Apply the profile to one request of `route` (the matched template): wait out the
    /// injected latency, and return the injected failure's answer, if any. `None`: serve the
    /// request.
    pub async fn apply(
        &self,
        route: &str,
        method: &Method,
        headers: &axum::http::HeaderMap,
    ) -> Option<Response> {
        let decision = self.decide(method, headers);
        if let Some(delay) = decision.delay {
            self.injected.with_label_values(&[route, "latency"]).inc();
            tokio::time::sleep(delay).await;
        }
        let status = decision.abort?;
        self.injected.with_label_values(&[route, "error"]).inc();
        let mut response = Problem::new(
            status,
            "injected-fault",
            "Injected failure (simulation). Turn it off with SIMULATION=off or PUT /admin/simulation.",
        )
        .with_title("Injected fault")
        .with("injected", true)
        .with_header(
            axum::http::HeaderName::from_static("x-injected-fault"),
            HeaderValue::from_static("true"),
        )
        .into_response();
        response.extensions_mut().insert(InjectedFault);
        Some(response)
    }
}

/// Middleware applied to business routes only.
pub async fn inject_faults(State(simulation): State<Simulation>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(crate::labels::UNMATCHED_ROUTE, MatchedPath::as_str);
    if let Some(injected) = simulation.apply(route, request.method(), request.headers()).await {
        return injected;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profiles_are_valid() {
        for profile in [
            SimulationProfile::OFF,
            SimulationProfile::DEFAULT_CATALOG,
            SimulationProfile::DEFAULT_CART,
            SimulationProfile::QUIET,
        ] {
            assert_eq!(profile.validate(), Ok(()));
        }
    }

    #[test]
    fn patch_is_validated_and_partial() {
        let base = SimulationProfile::DEFAULT_CART;
        let next = base
            .patched(SimulationPatch {
                failure_rate: Some(0.2),
                ..Default::default()
            })
            .unwrap_or_else(|_| base.clone());
        assert_eq!(next.failure_rate, 0.2);
        assert_eq!(next.latency_min_ms, 30);
        assert!(
            base.patched(SimulationPatch {
                failure_rate: Some(1.5),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            base.patched(SimulationPatch {
                latency_min_ms: Some(100),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn applies_to_classes() {
        assert!(AppliesTo::Reads.covers(&Method::GET));
        assert!(!AppliesTo::Reads.covers(&Method::POST));
        assert!(AppliesTo::Writes.covers(&Method::DELETE));
        assert!(!AppliesTo::Writes.covers(&Method::GET));
        assert!(!AppliesTo::None.covers(&Method::GET));
    }

    #[test]
    fn failure_rate_distribution_matches_profile() {
        let registry = Registry::with_constant_label("service", "test");
        let Ok(simulation) = Simulation::new(
            SimulationProfile {
                enabled: true,
                applies_to: AppliesTo::All,
                failure_rate: 0.25,
                ..SimulationProfile::OFF
            },
            &registry,
        ) else {
            panic!("metrics register");
        };
        let headers = axum::http::HeaderMap::new();
        let trials = 20_000;
        let aborted = (0..trials)
            .filter(|_| simulation.decide(&Method::GET, &headers).abort.is_some())
            .count();
        let observed = aborted as f64 / trials as f64;
        // 20k Bernoulli(0.25) trials: the standard deviation is ~0.003, so 0.02 is > 6 sigma.
        assert!(
            (observed - 0.25).abs() < 0.02,
            "observed failure share {observed}"
        );
    }
}
