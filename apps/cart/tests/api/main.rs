//! Cart tests over real HTTP on port 0, with a real catalog beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
mod routes;
mod store_contract;
