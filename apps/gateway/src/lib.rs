//! The gateway: ShopStack's front door on :8000. A routing table ([`routes`]) maps every public
//! route to the backend that serves it and says who may call it; [`edge`] takes the requests on
//! those routes and observes them, [`proxy`] forwards them (continuing the trace) through the
//! edge policies and answers JSON problems naming the backend when it can't.
//!
//! - [`config`]: settings; [`upstream`]: replicas, balancing, outlier ejection and the per-backend
//!   state; [`pool`]: keep-alive connections to a replica, [`exchange`]: one request and its
//!   answer on one; [`breaker`]: circuit breakers; [`retry`]: retry rules, backoff and budget;
//! - [`ratelimit`]: per-client rate limits; [`auth`]: JWT verification and minting;
//! - [`metrics`]: the gateway's metrics; [`openapi`]: the merged document; [`error`]: its errors.

pub mod auth;
pub mod breaker;
pub mod config;
pub mod edge;
pub mod error;
pub mod exchange;
pub mod metrics;
pub mod openapi;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod retry;
pub mod routes;
pub mod storefront;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use shopstack_base::config::ServiceDefaults;
use shopstack_base::extract::Json;
use shopstack_base::simulation::SimulationProfile;
use shopstack_platform::ApiInfo;
use shopstack_platform::Platform;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use auth::Auth;
use breaker::BreakerSettings;
pub use config::GatewayConfig;
use metrics::EdgeMetrics;
use openapi::BackendDocs;
use ratelimit::RateLimiter;
use routes::{Backend, RouteSpec};
use upstream::{OutlierSettings, Upstream, UpstreamSettings, Upstreams};

pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "gateway",
    port: 8000,
    simulation: SimulationProfile::QUIET,
    decides_sampling: true,
};

pub const INFO: ApiInfo = ApiInfo {
    title: "ShopStack gateway",
    description: "The front door: every catalog, cart and orders route, proxied with retries, circuit breakers, load shedding, rate limits and (when configured) JWT auth; JSON 502/503/504 naming the backend that failed.",
};

/// Edge settings that apply to every request.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub deadline: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub trust_forwarded_for: bool,
}

#[derive(Clone)]
pub struct GatewayState {
    pub platform: Platform,
    pub upstreams: Upstreams,
    pub metrics: EdgeMetrics,
    pub edge: Arc<EdgeSettings>,
    pub auth: Option<Arc<Auth>>,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    pub routes: Arc<Vec<RouteSpec>>,
    pub storefront: Arc<storefront::Storefront>,
    docs: BackendDocs,
}

impl GatewayState {
    /// Needs a Tokio runtime (it starts the rate limiter's clean-up task).
    pub fn new(config: &GatewayConfig, platform: Platform) -> anyhow::Result<Self> {
        config.validate()?;
        let metrics = EdgeMetrics::new(platform.metrics().registry())?;
        let mut upstreams = Vec::new();
        for (backend, urls) in config.upstream_urls() {
            let settings = UpstreamSettings {
                timeout: config.upstream_timeout.for_backend(backend),
                idle_timeout: config.upstream_idle_timeout,
                max_concurrency: config.upstream_max_concurrency,
                retry_budget_ratio: config.retry_budget_ratio,
                breaker: BreakerSettings {
                    failure_threshold: config.breaker_failure_threshold,
                    failure_ratio: config.breaker_failure_ratio,
                    min_requests: config.breaker_min_requests,
                    open_duration: config.breaker_open_duration,
                },
                outlier: OutlierSettings {
                    consecutive_failures: config.outlier_consecutive_failures,
                    base_ejection: config.outlier_base_ejection,
                    probe_interval: config.outlier_probe_interval,
                },
            };
            upstreams.push(Upstream::new(
                backend,
                urls,
                settings,
                metrics.clone(),
                platform.client().inner().clone(),
            )?);
        }
        for backend in Backend::ALL {
            if !upstreams.iter().any(|upstream| upstream.backend == backend) {
                anyhow::bail!("no URL configured for the {} backend", backend.name());
            }
        }
        let upstreams = Upstreams::new(upstreams);
        for upstream in upstreams.iter() {
            let upstream = upstream.clone();
            let client = platform.client().clone();
            platform.health().register(upstream.name(), false, move || {
                let upstream = upstream.clone();
                let client = client.clone();
                Box::pin(async move { any_replica_live(&client, &upstream).await })
            });
        }
        let auth = Auth::from_config(config)?;
        let storefront = Arc::new(storefront::Storefront::new(config, auth.is_some()));
        let rate_limiter = RateLimiter::new(config.rate_limit_rps, config.rate_limit_burst);
        tracing::info!(
            auth = auth.is_some(),
            rate_limit_rps = config.rate_limit_rps,
            max_attempts = config.retry_max_attempts,
            deadline_ms = config.request_deadline.as_millis() as u64,
            "edge policies ready"
        );
        Ok(Self {
            metrics,
            upstreams,
            edge: Arc::new(EdgeSettings {
                deadline: config.request_deadline,
                max_attempts: config.retry_max_attempts,
                backoff_base: config.retry_backoff_base,
                backoff_max: config.retry_backoff_max,
                trust_forwarded_for: config.trust_forwarded_for,
            }),
            auth,
            rate_limiter,
            routes: Arc::new(routes::table()),
            storefront,
            docs: BackendDocs::default(),
            platform,
        })
    }
}

/// Healthy when at least one replica answers `/livez`.
async fn any_replica_live(
    client: &shopstack_platform::client::HttpClient,
    upstream: &upstream::Upstream,
) -> bool {
    for replica in &upstream.replicas {
        let mut url = replica.url.clone();
        url.set_path(&format!("{}/livez", url.path().trim_end_matches('/')));
        let live = client
            .inner()
            .get(url)
            .timeout(shopstack_base::health::CHECK_TIMEOUT)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if live {
            return true;
        }
    }
    false
}

#[derive(Serialize, ToSchema)]
struct ProxiedRoute {
    method: String,
    path: String,
    upstream: String,
}

#[derive(Serialize, ToSchema)]
struct GatewayInfo {
    service: String,
    version: String,
    environment: String,
    /// Each backend and its replicas.
    #[schema(value_type = Object)]
    upstreams: serde_json::Map<String, serde_json::Value>,
    /// Each backend's circuit breaker (`closed`, `half_open`, `open`) and ejected replicas.
    #[schema(value_type = Object)]
    resilience: serde_json::Map<String, serde_json::Value>,
    /// Whether bearer tokens are checked on user routes.
    auth: bool,
    routes: Vec<ProxiedRoute>,
    docs: String,
}

// A browser, whose `Accept` prefers HTML, gets the storefront instead (the page's answer says
// `Vary: Accept`; the JSON answer stays exactly what API clients always had).
/// What this gateway is and where it sends each route.
#[utoipa::path(get, path = "/", tag = "gateway", responses((status = 200, body = GatewayInfo)))]
async fn index(State(state): State<GatewayState>, headers: HeaderMap) -> Response {
    if storefront::prefers_html(&headers) {
        storefront::page(&state, &headers)
    } else {
        // The answer depends on `Accept`: a cache must not hand the JSON to a browser.
        let mut info = service_info(&state).into_response();
        info.headers_mut().insert(
            axum::http::header::VARY,
            axum::http::HeaderValue::from_static("Accept"),
        );
        info
    }
}

fn service_info(state: &GatewayState) -> Json<GatewayInfo> {
    let identity = state.platform.identity();
    let upstreams = state
        .upstreams
        .iter()
        .map(|upstream| {
            let replicas: Vec<&str> = upstream.replicas.iter().map(|replica| replica.label()).collect();
            (upstream.name().to_owned(), serde_json::json!(replicas))
        })
        .collect();
    let resilience = state
        .upstreams
        .iter()
        .map(|upstream| {
            let ejected: Vec<&str> = upstream
                .replicas
                .iter()
                .filter(|replica| replica.is_ejected())
                .map(|replica| replica.label())
                .collect();
            (
                upstream.name().to_owned(),
                serde_json::json!({"breaker": upstream.breaker.state().name(), "ejected": ejected}),
            )
        })
        .collect();
    Json(GatewayInfo {
        service: identity.name.clone(),
        version: identity.version.clone(),
        environment: identity.environment.clone(),
        upstreams,
        resilience,
        auth: state.auth.is_some(),
        routes: state
            .routes
            .iter()
            .map(|spec| ProxiedRoute {
                method: spec.method.to_string(),
                path: spec.path.to_owned(),
                upstream: spec.backend.name().to_owned(),
            })
            .collect(),
        docs: "/docs".into(),
    })
}

/// The gateway, ready to serve: its [`edge::Edge`] takes the proxied routes and hands the rest
/// to the axum router of the gateway's own routes built here. (Where other services return
/// their `Router`, the gateway returns the front that wraps it; tests serve either the same way.)
pub fn app(state: GatewayState) -> edge::Edge {
    let api: OpenApiRouter<GatewayState> = OpenApiRouter::new().routes(routes!(index));
    let platform = state.platform.clone();
    let (router, own_doc) = platform
        .with_common_routes(api.with_state(state.clone()))
        .split_for_parts();
    let own_doc = serde_json::to_value(platform.document(own_doc, INFO)).unwrap_or_default();
    let docs_state = state.clone();
    let router = router
        .route(
            "/openapi.json",
            get(move || {
                let state = docs_state.clone();
                let own_doc = own_doc.clone();
                async move { axum::Json(openapi::document(&state, &own_doc).await) }
            }),
        )
        .merge(Platform::docs_page("/openapi.json"))
        .merge(storefront::router(state.clone()));
    edge::Edge::new(state, platform.finish(router))
}
