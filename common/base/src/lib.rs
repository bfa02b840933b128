//! The vocabulary every ShopStack crate shares: settings, problems, ids, money, paging, health checks and simulated faults.
//!
//! Nothing here knows about logs, traces, Redis or the HTTP server: the crates above it do.
//! - [`config`]: the shared settings (env + `--flags`), validated before binding.
//! - [`problem`]: RFC 9457 errors; [`extract`]: extractors that reject with them.
//! - [`ids`]: the id alphabet every service checks; [`money`]: exact amounts;
//!   [`pagination`]: page parameters and the pagination block.
//! - [`health`]: dependency checks and the draining state behind the probes.
//! - [`simulation`]: injected latency and failures; [`admin`]: the admin token check.
//! - [`metrics`]: the metric types and the registry (`prometheus-client`); [`labels`]: metric
//!   label values every service agrees on.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod extract;
pub mod health;
pub mod ids;
pub mod labels;
pub mod metrics;
pub mod money;
pub mod pagination;
pub mod problem;
pub mod simulation;

pub use problem::Problem;
