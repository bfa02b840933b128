//! `gateway healthcheck`, the container probe: exit 0 while ready, 1 while draining or down.

use std::path::Path;

use shopstack_common::testing::{
    assert_healthcheck_follows_readiness, assert_healthcheck_refuses_bad_and_closed_ports,
};

const BINARY: &str = env!("CARGO_BIN_EXE_gateway");

#[test]
fn healthcheck_follows_readiness() -> anyhow::Result<()> {
    assert_healthcheck_follows_readiness(Path::new(BINARY))
}

#[test]
fn healthcheck_rejects_a_bad_port_without_reading_the_service_config() -> anyhow::Result<()> {
    assert_healthcheck_refuses_bad_and_closed_ports(Path::new(BINARY))
}
