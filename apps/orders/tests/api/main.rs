//! Orders tests over real HTTP on port 0, with the real catalog, cart and gateway beside the
//! service, on SQLite and on PostgreSQL (a fresh database per test, on a server this test binary
//! starts for itself unless `TEST_POSTGRES_URL` names one), and with the test's own `nats-server`
//! where events are concerned.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cache;
mod checkout;
mod contract;
mod events;
mod helpers;
mod idempotency;
