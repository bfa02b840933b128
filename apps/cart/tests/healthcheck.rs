//! `cart healthcheck`, the container probe: exit 0 while ready, 1 while draining or down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use shopstack_common::testing::{probe_lifecycle, run_healthcheck};

const BINARY: &str = env!("CARGO_BIN_EXE_cart");

#[test]
fn healthcheck_follows_readiness() {
    let lifecycle = probe_lifecycle(Path::new(BINARY)).unwrap();
    assert!(
        lifecycle.ready.success,
        "ready service: {}",
        lifecycle.ready.stderr
    );
    assert!(!lifecycle.draining.success, "a draining service is not ready");
    assert!(
        lifecycle.draining.stderr.contains("answered 503"),
        "while draining the service still answers, with 503: {}",
        lifecycle.draining.stderr
    );
    assert!(!lifecycle.stopped.success, "nothing listens any more");
}

#[test]
fn healthcheck_rejects_a_bad_port_without_reading_the_service_config() {
    let mut command = std::process::Command::new(BINARY);
    // An invalid service setting must not matter to the probe: it never parses the config.
    let output = command
        .args(["healthcheck"])
        .env("PORT", "not-a-port")
        .env("SIM_FAILURE_RATE", "7")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a port number"));
    // And a port nobody listens on is a plain failure, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    assert!(!run_healthcheck(Path::new(BINARY), port).unwrap().success);
}
