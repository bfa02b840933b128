//! Domain events of ShopStack: CloudEvents JSON published on NATS JetStream (or logged when `NATS_URL` is unset), and durable consumers.
#![forbid(unsafe_code)]

pub mod events;
