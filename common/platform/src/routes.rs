//! Routes every service serves the same way: probes, `/metrics`, `/admin/simulation`, `/stress`.

use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::platform::Platform;
use shopstack_base::admin;
use shopstack_base::extract::{Json, Query};
use shopstack_base::problem::Problem;
use shopstack_base::simulation::{SimulationPatch, SimulationProfile};

pub const PROBES_TAG: &str = "probes";
pub const OPERATIONS_TAG: &str = "operations";

/// What kubelets, load balancers and scrapers call: the probes and `/metrics`, open to anyone
/// who reaches the service.
pub(crate) fn probes_and_metrics(platform: Platform) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(livez))
        .routes(routes!(health))
        .routes(routes!(readyz))
        .routes(routes!(ready))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .with_state(platform)
}

/// What operators call: the runtime simulation and `/stress` (admin token; behind the service
/// credential like the API when `SERVICE_AUTH_SECRET` is set).
pub(crate) fn operations(platform: Platform) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(get_simulation, put_simulation))
        .routes(routes!(stress))
        .with_state(platform)
}

/// Liveness: the process is up.
#[derive(Serialize, ToSchema)]
struct Alive {
    /// Always `alive`.
    status: &'static str,
    service: String,
}

fn alive(platform: &Platform) -> Json<Alive> {
    Json(Alive {
        status: "alive",
        service: platform.identity().name.clone(),
    })
}

/// Liveness probe: 200 while the process runs.
#[utoipa::path(get, path = "/livez", tag = PROBES_TAG, responses((status = 200, body = Alive)))]
async fn livez(State(platform): State<Platform>) -> Json<Alive> {
    alive(&platform)
}

/// Liveness probe, the same as `/livez`: 200 while the process runs.
#[utoipa::path(get, path = "/health", tag = PROBES_TAG, responses((status = 200, body = Alive)))]
async fn health(State(platform): State<Platform>) -> Json<Alive> {
    alive(&platform)
}

async fn readiness(platform: &Platform) -> Response {
    if platform.health().is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "5")],
            axum::Json(json!({"status": "draining", "service": platform.identity().name})),
        )
            .into_response();
    }
    let statuses = platform.health().check_all().await;
    let mut body = Map::new();
    let ready = statuses
        .iter()
        .all(|status| status.healthy || !status.required_for_readiness);
    body.insert("status".into(), json!(if ready { "ready" } else { "not_ready" }));
    body.insert("service".into(), json!(platform.identity().name));
    for status in statuses {
        body.insert(
            status.name,
            json!(if status.healthy { "healthy" } else { "unhealthy" }),
        );
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(Value::Object(body))).into_response()
}

/// Readiness probe (Kubernetes name): 503 while draining or while a required dependency is down.
#[utoipa::path(get, path = "/readyz", tag = PROBES_TAG, responses(
    (status = 200, description = "Ready for traffic", body = Object),
    (status = 503, description = "Draining or a required dependency is down", body = Object,
        headers(("Retry-After" = u32, description = "Seconds to wait while draining"))),
))]
async fn readyz(State(platform): State<Platform>) -> Response {
    readiness(&platform).await
}

/// Readiness probe, the same as `/readyz`.
#[utoipa::path(get, path = "/ready", tag = PROBES_TAG, responses(
    (status = 200, description = "Ready for traffic", body = Object),
    (status = 503, description = "Draining or a required dependency is down", body = Object,
        headers(("Retry-After" = u32, description = "Seconds to wait while draining"))),
))]
async fn ready(State(platform): State<Platform>) -> Response {
    readiness(&platform).await
}

/// Health with one field per dependency, 503 when any is down.
#[utoipa::path(get, path = "/healthz", tag = PROBES_TAG, responses(
    (status = 200, description = "All dependencies healthy", body = Object,
        example = json!({"status": "healthy", "service": "cart", "pod_name": "cart-abc123", "node_name": "node-1", "version": "0.1.0", "redis": "healthy"})),
    (status = 503, description = "A dependency is down", body = Object),
))]
async fn healthz(State(platform): State<Platform>) -> Response {
    let statuses = platform.health().check_all().await;
    let identity = platform.identity();
    let healthy = statuses.iter().all(|status| status.healthy);
    let mut body = Map::new();
    body.insert(
        "status".into(),
        json!(if healthy { "healthy" } else { "unhealthy" }),
    );
    body.insert("service".into(), json!(identity.name));
    body.insert("pod_name".into(), json!(identity.pod_name));
    body.insert("node_name".into(), json!(identity.node_name));
    body.insert("version".into(), json!(identity.version));
    let gauge = &platform.metrics().dependency_up;
    for status in statuses {
        gauge
            .with_label_values(&[&status.name])
            .set(i64::from(status.healthy));
        body.insert(
            status.name,
            json!(if status.healthy { "healthy" } else { "unhealthy" }),
        );
    }
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(Value::Object(body))).into_response()
}

/// Every metric of the service, as OpenMetrics or the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = OPERATIONS_TAG, responses(
    (status = 200, description = "The Prometheus text format 0.0.4, or OpenMetrics 1.0.0 (with exemplars) when `Accept` asks for `application/openmetrics-text`", content(
        (String = "text/plain"),
        (String = "application/openmetrics-text"),
    )),
))]
async fn metrics(State(platform): State<Platform>, headers: HeaderMap) -> Response {
    platform.metrics().render(&headers)
}

/// The live simulation profile.
#[utoipa::path(get, path = "/admin/simulation", tag = OPERATIONS_TAG,
    security(("admin_token" = [])),
    responses(
        (status = 200, body = SimulationProfile),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String))),
    ))]
async fn get_simulation(
    State(platform): State<Platform>,
    headers: HeaderMap,
) -> Result<Json<SimulationProfile>, Problem> {
    admin::authorize(platform.settings().admin_token.as_deref(), &headers)?;
    Ok(Json(platform.simulation().profile()))
}

/// Change the simulation at runtime; fields left out keep their value.
#[utoipa::path(put, path = "/admin/simulation", tag = OPERATIONS_TAG,
    security(("admin_token" = [])),
    request_body = SimulationPatch,
    responses(
        (status = 200, description = "The profile now in force", body = SimulationProfile),
        (status = 400, description = "Malformed or out-of-range values; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String))),
        (status = 422, description = "latency_min_ms would be above latency_max_ms; nothing changed", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put_simulation(
    State(platform): State<Platform>,
    headers: HeaderMap,
    body: Result<Json<SimulationPatch>, Problem>,
) -> Result<Json<SimulationProfile>, Problem> {
    // Authorise before reading the body: an anonymous caller learns nothing about its shape.
    admin::authorize(platform.settings().admin_token.as_deref(), &headers)?;
    let Json(patch) = body?;
    // Each value may be fine on its own and still clash with the other bound (given, or in force).
    let current = platform.simulation().profile();
    let min = patch.latency_min_ms.unwrap_or(current.latency_min_ms);
    let max = patch.latency_max_ms.unwrap_or(current.latency_max_ms);
    if min > max && max <= shopstack_base::simulation::MAX_LATENCY_MS {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "inconsistent-latency",
            format!("latency_min_ms ({min}) would be above latency_max_ms ({max}); nothing changed"),
        ));
    }
    let profile = platform
        .simulation()
        .update(patch)
        .map_err(Problem::bad_request)?;
    tracing::warn!(
        enabled = profile.enabled,
        failure_rate = profile.failure_rate,
        latency_min_ms = profile.latency_min_ms,
        latency_max_ms = profile.latency_max_ms,
        applies_to = ?profile.applies_to,
        "simulation profile changed"
    );
    Ok(Json(profile))
}

/// Caps of `POST /stress`, so one request cannot take the service down.
pub const MAX_STRESS_CPU_ITERATIONS: u32 = 10_000;
pub const MAX_STRESS_MEMORY_MB: u32 = 1_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StressParams {
    /// Prime-counting iterations (default 1000, max 10000).
    cpu_iterations: Option<u32>,
    /// MiB to allocate and touch while computing (default 100, max 1000).
    memory_mb: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
struct StressReport {
    cpu_iterations: u32,
    memory_mb: u32,
    /// Primes below 10 000 counted per iteration (1229).
    primes_calculated: u64,
    /// Wall time, e.g. `3.456s`.
    computation_time: String,
    message: String,
}

/// Artificial CPU and memory load (autoscaling demos). Off unless `STRESS_ENABLED=true`;
/// one run at a time; with `STRESS_REQUIRE_ADMIN=true` (the gateway sets it when its edge auth
/// is on) it needs the admin token.
#[utoipa::path(post, path = "/stress", tag = OPERATIONS_TAG, params(StressParams), responses(
    (status = 200, body = StressReport),
    (status = 400, description = "A parameter is above its cap", body = Problem, content_type = "application/problem+json"),
    (status = 401, description = "STRESS_REQUIRE_ADMIN is on and the admin token is missing or wrong", body = Problem, content_type = "application/problem+json",
        headers(("WWW-Authenticate" = String))),
    (status = 403, description = "Stress is disabled on this service", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "A stress run is already in progress", body = Problem, content_type = "application/problem+json"),
))]
async fn stress(
    State(platform): State<Platform>,
    headers: HeaderMap,
    params: Result<Query<StressParams>, Problem>,
) -> Result<Json<StressReport>, Problem> {
    // Authorise before looking at the parameters: an anonymous caller learns nothing.
    if platform.settings().stress_require_admin {
        admin::authorize(platform.settings().admin_token.as_deref(), &headers)?;
    }
    let Query(params) = params?;
    if !platform.settings().stress_enabled {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "stress-disabled",
            "POST /stress is disabled on this service; start it with STRESS_ENABLED=true.",
        ));
    }
    let cpu_iterations = params.cpu_iterations.unwrap_or(1000);
    let memory_mb = params.memory_mb.unwrap_or(100);
    if cpu_iterations > MAX_STRESS_CPU_ITERATIONS {
        return Err(Problem::bad_request(format!(
            "cpu_iterations must be at most {MAX_STRESS_CPU_ITERATIONS}"
        )));
    }
    if memory_mb > MAX_STRESS_MEMORY_MB {
        return Err(Problem::bad_request(format!(
            "memory_mb must be at most {MAX_STRESS_MEMORY_MB}"
        )));
    }
    let Ok(permit) = platform.stress_slot().try_acquire_owned() else {
        return Err(
            Problem::conflict("A stress run is already in progress; try again when it ends.").retry_after(1),
        );
    };
    let started = Instant::now();
    let primes = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        burn(cpu_iterations, memory_mb)
    })
    .await
    .map_err(|error| {
        tracing::error!(%error, "stress task failed");
        Problem::internal()
    })?;
    Ok(Json(StressReport {
        cpu_iterations,
        memory_mb,
        primes_calculated: primes,
        computation_time: format!("{:.3}s", started.elapsed().as_secs_f64()),
        message: "Stress test completed successfully".into(),
    }))
}

/// Hold `memory_mb` MiB of touched pages while counting primes below 10 000 `iterations` times.
fn burn(iterations: u32, memory_mb: u32) -> u64 {
    const PAGE: usize = 4096;
    let mut ballast = vec![0u8; memory_mb as usize * 1024 * 1024];
    // Write one byte per page so the memory is really resident, not just reserved.
    for index in (0..ballast.len()).step_by(PAGE) {
        ballast[index] = 1;
    }
    let mut primes = 0;
    for _ in 0..iterations {
        primes = (2..10_000u64).filter(|&n| is_prime(n)).count() as u64;
    }
    std::hint::black_box(&ballast);
    primes
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    #[test]
    fn burn_counts_the_primes_below_ten_thousand() {
        assert_eq!(super::burn(2, 1), 1229);
    }
}
