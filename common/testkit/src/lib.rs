//! The test kit: one way to start each ShopStack service and the servers it needs (Redis, NATS, PostgreSQL) for a test, plus the helpers tests share. Never linked into a service binary: a dev-dependency of the services and shared crates, and a dependency of the ops tool that starts the stack locally (gameday).
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`services`] | each service in-process on port 0 (`services::cart(&catalog_url).start().await`) |
//! | [`stack`] | all four in-process, wired to each other |
//! | [`server`] | [`server::TestServer`]: a router or front served on a free loopback port |
//! | [`process`] | a service binary as a child process |
//! | [`probe`] | the container probe's tests (`healthcheck_tests!`) |
//! | [`redis`], [`nats`], [`postgres`] | private servers on free ports, stopped by PID |
//! | [`redis_cluster`], [`nats_cluster`] | a 6-node Redis Cluster and a 3-node NATS JetStream cluster, the same way |
//! | [`tls`] | a throwaway certificate authority and server certificate (TLS to managed stores) |
//! | [`db`] | a fresh orders database (SQLite file or PostgreSQL database) per test |
//! | [`http`] | the HTTP client and JSON helpers |
//! | [`idempotency`] | the `Idempotency-Key` contract every keyed write passes |
//! | [`events`] | the orders in the database and their `order.created` events on the stream |
//! | [`stock`] | the stock invariant, `free + held + sold == initial` per product |
//! | [`ports`] | free, closed and never-answering loopback addresses |
//! | [`wait`] | `eventually`: wait, within a bound, for what should happen soon |
//! | [`metrics`] | Prometheus text parsed strictly, and sums over it |
//! | [`openapi`] | checks on served OpenAPI documents |
//! | [`settings`], [`logs`] | a service's test settings, and its log lines captured |
#![forbid(unsafe_code)]

pub mod db;
pub mod events;
pub mod http;
pub mod idempotency;
pub mod logs;
pub mod metrics;
pub mod nats;
pub mod nats_cluster;
pub mod openapi;
pub mod ports;
pub mod postgres;
pub mod probe;
pub mod process;
pub mod redis;
pub mod redis_cluster;
pub mod server;
pub mod services;
pub mod settings;
pub mod stack;
pub mod stock;
pub mod tls;
pub mod wait;

pub use logs::init_telemetry;
pub use settings::settings;

/// For [`healthcheck_tests!`]'s expansion in a test crate.
#[doc(hidden)]
pub use anyhow;
