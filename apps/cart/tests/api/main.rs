//! Cart tests over real HTTP on port 0, with a real catalog beside it, on both stores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
mod idempotency;
mod inventory;
mod redis;
mod routes;
mod store_contract;
