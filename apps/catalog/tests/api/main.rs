//! The catalog over real HTTP on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod inventory;
mod routes;
