//! The Redis-backed pieces services share: the connection handle (fast failure while Redis is down, recovery, a span per command) and `Idempotency-Key` handling over memory or Redis.
#![forbid(unsafe_code)]

pub mod idempotency;
pub mod redis;
