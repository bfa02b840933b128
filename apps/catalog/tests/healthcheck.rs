//! `catalog healthcheck`, the container probe: exit 0 while ready, 1 while draining or down.

shopstack_testkit::healthcheck_tests!(env!("CARGO_BIN_EXE_catalog"));
