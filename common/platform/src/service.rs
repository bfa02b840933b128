//! The router finishing that wraps a service's business routes with everything every service
//! must have: the simulation, probes, `/metrics`, `/admin/simulation`, `/stress`,
//! `/openapi.json`, `/docs`, and the layers (body limit, panic → problem, the request observer).

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::OpenApi;
use utoipa::openapi::info::{ContactBuilder, LicenseBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::observe::observe_request;
use crate::platform::Platform;
use shopstack_base::problem::Problem;
use shopstack_base::simulation::inject_faults;

/// Who publishes every service's API, named in each OpenAPI document's `info.contact`.
pub const PROJECT_NAME: &str = "ShopStack";
/// The project's home (the workspace's `repository`), the contact's URL.
pub const PROJECT_URL: &str = "https://github.com/shopstack/shopstack";
/// The licence of the code and of the APIs' documents (the workspace's `license`).
pub const PROJECT_LICENSE: &str = env!("CARGO_PKG_LICENSE");

/// Title and description of a service's OpenAPI document.
#[derive(Debug, Clone, Copy)]
pub struct ApiInfo {
    pub title: &'static str,
    pub description: &'static str,
}

/// Set `keyword: value` on the schemas at the given JSON pointers of `openapi`, for what only the
/// running service knows (a configured limit), so the document tells clients the truth. A
/// pointer that names nothing is left alone.
pub fn set_schema_keywords(openapi: OpenApi, edits: &[(String, &str, serde_json::Value)]) -> OpenApi {
    let Ok(mut doc) = serde_json::to_value(&openapi) else {
        return openapi;
    };
    for (pointer, keyword, value) in edits {
        if let Some(schema) = doc
            .pointer_mut(pointer)
            .and_then(serde_json::Value::as_object_mut)
        {
            schema.insert((*keyword).to_owned(), value.clone());
        }
    }
    serde_json::from_value(doc).unwrap_or(openapi)
}

impl Platform {
    /// The standard service router: `api` (business routes, wrapped in the simulation and, with
    /// `SERVICE_AUTH_SECRET` set, behind the service credential check) plus the common routes,
    /// `/openapi.json`, `/docs`, and the common layers.
    pub fn service_router(&self, api: OpenApiRouter, info: ApiInfo) -> Router {
        self.service_router_with(api, info, |openapi| openapi)
    }

    /// [`Platform::service_router`], with a last edit of the document for what only the running
    /// service knows (a configured limit, say).
    pub fn service_router_with(
        &self,
        api: OpenApiRouter,
        info: ApiInfo,
        edit: impl FnOnce(OpenApi) -> OpenApi,
    ) -> Router {
        let mut guarded = self.simulated(api).merge(crate::routes::operations(self.clone()));
        if let Some(auth) = self.service_auth() {
            // Outside the simulation: a refused request costs a signature check, nothing more.
            guarded = guarded.layer(axum::middleware::from_fn_with_state(
                auth.clone(),
                crate::service_auth::require_credential,
            ));
        }
        let (router, openapi) = guarded
            .merge(crate::routes::probes_and_metrics(self.clone()))
            .split_for_parts();
        let openapi = edit(self.document(openapi, info));
        self.finish(router.merge(SwaggerUi::new("/docs").url("/openapi.json", openapi)))
    }

    /// `api` wrapped in the simulation, merged with the common routes (for services, like the
    /// gateway, that assemble their OpenAPI document themselves).
    pub fn with_common_routes(&self, api: OpenApiRouter) -> OpenApiRouter {
        self.simulated(api)
            .merge(crate::routes::operations(self.clone()))
            .merge(crate::routes::probes_and_metrics(self.clone()))
    }

    /// `api` wrapped in the simulation (injected latency and failures).
    fn simulated(&self, api: OpenApiRouter) -> OpenApiRouter {
        api.layer(axum::middleware::from_fn_with_state(
            self.simulation().clone(),
            inject_faults,
        ))
    }

    /// Fill in the document's info — ShopStack's own title, description, version, contact and
    /// licence, replacing what the OpenAPI library's defaults put there (its own author as the
    /// contact) — and the admin bearer scheme.
    pub fn document(&self, mut openapi: OpenApi, info: ApiInfo) -> OpenApi {
        openapi.info.title = info.title.to_owned();
        openapi.info.description = Some(info.description.to_owned());
        openapi.info.version = self.identity().version.clone();
        openapi.info.terms_of_service = None;
        openapi.info.contact = Some(
            ContactBuilder::new()
                .name(Some(PROJECT_NAME))
                .url(Some(PROJECT_URL))
                .build(),
        );
        openapi.info.license = Some(
            LicenseBuilder::new()
                .name(PROJECT_LICENSE)
                .identifier(Some(PROJECT_LICENSE))
                .build(),
        );
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        openapi
    }

    /// The interactive `/docs` page (Swagger UI, served from the binary: no CDN) for a document
    /// served elsewhere at `openapi_url`.
    pub fn docs_page(openapi_url: &str) -> Router {
        SwaggerUi::new("/docs")
            .config(utoipa_swagger_ui::Config::from(openapi_url.to_owned()))
            .into()
    }

    /// Fallbacks and the layers every service wears: body limit, panic → 500 problem, and the
    /// request observer outermost so it sees every response, including those three.
    pub fn finish(&self, router: Router) -> Router {
        router
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(self.settings().max_body_bytes))
            .layer(CatchPanicLayer::custom(panic_to_problem))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                observe_request,
            ))
    }
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!("No route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Problem {
    Problem::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The answer to a handler that panicked: a 500 problem (the panic logged, never sent).
pub fn panic_to_problem(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "handler panicked");
    Problem::internal().into_response()
}
