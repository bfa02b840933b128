//! The service kit: what turns a service's routes into a running ShopStack service (the `Platform` one instance owns, the common routes and layers, the request observer, the outbound client, the server and its graceful shutdown).
//!
//! Every service uses it the same way:
//!
//! ```text
//! main.rs:  Config::parse() -> server::run(common, defaults, |platform| build(..., platform))
//! lib.rs:   fn app(state) -> Router { state.platform.service_router(api_routes, info) }
//! ```
//!
//! - [`platform`]: [`Platform`], one per service instance.
//! - [`service`]: the router finishing that adds probes, `/metrics`, `/admin/simulation`,
//!   `/stress`, `/openapi.json`, `/docs` and the common layers; [`routes`]: those routes.
//! - [`observe`]: the request middleware (span, `x-request-id`, metrics, one log line);
//!   [`request_id`]: the request id kept per request.
//! - [`client`]: the outbound HTTP client that continues traces; [`service_auth`]: the
//!   credentials between services (`SERVICE_AUTH_SECRET`) it signs and the API layer checks.
//! - [`server`]: bind, serve (each connection's socket under its timeouts: `connection`),
//!   drain and stop; [`probe`]: `<binary> healthcheck`, the container
//!   probe.
#![forbid(unsafe_code)]

pub mod client;
mod connection;
pub mod observe;
pub mod platform;
pub mod probe;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod service;
pub mod service_auth;

pub use platform::Platform;
pub use service::ApiInfo;
