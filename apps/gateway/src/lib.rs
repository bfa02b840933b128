//! The gateway: ShopStack's front door on :8000. A routing table ([`routes`]) maps every public
//! route to the backend that serves it; [`proxy`] forwards requests (continuing the trace) and
//! answers JSON 502/503/504 naming the backend when it can't.
//!
//! - [`config`]: settings; [`upstream`]: backend replicas; [`openapi`]: the merged document;
//! - [`error`]: the gateway's error enum.

pub mod config;
pub mod error;
pub mod openapi;
pub mod proxy;
pub mod routes;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::routing::{MethodFilter, get, on};
use serde::Serialize;
use shopstack_common::config::ServiceDefaults;
use shopstack_common::extract::Json;
use shopstack_common::simulation::SimulationProfile;
use shopstack_common::{ApiInfo, Platform};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use config::GatewayConfig;
use openapi::BackendDocs;
use proxy::UpstreamMetrics;
use routes::{Backend, RouteSpec};
use upstream::Upstreams;

pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "gateway",
    port: 8000,
    simulation: SimulationProfile::QUIET,
};

pub const INFO: ApiInfo = ApiInfo {
    title: "ShopStack gateway",
    description: "The front door: every catalog, cart and orders route, proxied, with JSON 502/503/504 naming the backend that failed.",
};

#[derive(Clone)]
pub struct GatewayState {
    pub platform: Platform,
    pub upstreams: Upstreams,
    pub metrics: UpstreamMetrics,
    pub upstream_timeout: Duration,
    pub routes: Arc<Vec<RouteSpec>>,
    docs: BackendDocs,
}

impl GatewayState {
    pub fn new(config: &GatewayConfig, platform: Platform) -> anyhow::Result<Self> {
        let upstreams = Upstreams::new(
            config.catalog_service_url.0.clone(),
            config.cart_service_url.0.clone(),
            config.orders_service_url.0.clone(),
        );
        for backend in Backend::ALL {
            let upstream = upstreams.get(backend).clone();
            let client = platform.client().clone();
            platform.health().register(backend.name(), false, move || {
                let upstream = upstream.clone();
                let client = client.clone();
                Box::pin(async move { any_replica_live(&client, &upstream).await })
            });
        }
        Ok(Self {
            metrics: UpstreamMetrics::new(platform.metrics().registry())?,
            upstreams,
            upstream_timeout: config.upstream_timeout,
            routes: Arc::new(routes::table()),
            docs: BackendDocs::default(),
            platform,
        })
    }
}

/// Healthy when at least one replica answers `/livez`.
async fn any_replica_live(
    client: &shopstack_common::client::HttpClient,
    upstream: &upstream::Upstream,
) -> bool {
    for replica in &upstream.replicas {
        let mut url = replica.clone();
        url.set_path("/livez");
        let live = client
            .inner()
            .get(url)
            .timeout(shopstack_common::health::CHECK_TIMEOUT)
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
    routes: Vec<ProxiedRoute>,
    docs: String,
}

/// What this gateway is and where it sends each route.
#[utoipa::path(get, path = "/", tag = "gateway", responses((status = 200, body = GatewayInfo)))]
async fn index(State(state): State<GatewayState>) -> Json<GatewayInfo> {
    let identity = state.platform.identity();
    let upstreams = Backend::ALL
        .iter()
        .map(|&backend| {
            let replicas: Vec<String> = state
                .upstreams
                .get(backend)
                .replicas
                .iter()
                .map(|url| url.to_string())
                .collect();
            (backend.name().to_owned(), serde_json::json!(replicas))
        })
        .collect();
    Json(GatewayInfo {
        service: identity.name.clone(),
        version: identity.version.clone(),
        environment: identity.environment.clone(),
        upstreams,
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

/// The gateway's router, ready to serve.
pub fn app(state: GatewayState) -> Router {
    let mut api: OpenApiRouter<GatewayState> = OpenApiRouter::new().routes(routes!(index));
    for spec in state.routes.iter() {
        let Ok(filter) = MethodFilter::try_from(spec.method.clone()) else {
            tracing::error!(method = %spec.method, path = spec.path, "route table entry with an unsupported method skipped");
            continue;
        };
        let spec = Arc::new(spec.clone());
        api = api.route(
            spec.path,
            on(
                filter,
                move |State(state): State<GatewayState>, request: Request| {
                    let spec = spec.clone();
                    async move { proxy::forward(state, &spec, request).await }
                },
            ),
        );
    }
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
        .merge(Platform::docs_page("/openapi.json"));
    platform.finish(router)
}
