//! Shared plumbing for the ShopStack services. Every service uses it the same way:
//!
//! ```text
//! main.rs:  Config::parse() → server::run(common, defaults, |platform| build(..., platform))
//! lib.rs:   fn app(state) -> Router { state.platform.service_router(api_routes, info) }
//! ```
//!
//! Layout:
//! - [`config`]: the shared settings (env + `--flags`), validated before binding.
//! - [`platform`]: [`platform::Platform`], one per service instance, and the router finishing
//!   that adds probes, `/metrics`, `/admin/simulation`, `/stress`, `/openapi.json`, `/docs`.
//! - [`observe`]: the request middleware (span, `x-request-id`, metrics, one log line).
//! - [`telemetry`]: JSON logs and OpenTelemetry tracing setup; [`propagation`]: W3C headers.
//! - [`metrics`]: the Prometheus registry and HTTP metrics.
//! - [`health`]: dependency checks and draining state behind the probes ([`routes`]).
//! - [`simulation`]: injected latency and failures.
//! - [`client`]: the outbound HTTP client that continues traces.
//! - [`events`]: domain events on NATS JetStream (or logged when `NATS_URL` is unset).
//! - [`ids`]: the id alphabet every service checks.
//! - [`problem`]: RFC 9457 errors; [`extract`]: extractors that reject with them.
//! - [`server`]: bind, serve, drain and stop; [`money`]: exact amounts; [`testing`]: test servers.
//! - [`probe`]: `<binary> healthcheck`, the container probe (no curl in a distroless image).
#![forbid(unsafe_code)]

pub mod admin;
pub mod client;
pub mod config;
pub mod events;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod ids;
pub mod logsink;
pub mod metrics;
pub mod money;
pub mod observe;
pub mod otlp;
pub mod pagination;
pub mod platform;
pub mod probe;
pub mod problem;
pub mod propagation;
pub mod redis;
pub mod routes;
pub mod server;
pub mod simulation;
pub mod span_queue;
pub mod telemetry;
pub mod testing;

pub use platform::{ApiInfo, Platform};
pub use problem::Problem;
