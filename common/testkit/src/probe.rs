//! The container probe (`<binary> healthcheck`) checked against a service binary's life.

use crate::process::{SERVICE_VARIABLES, ServiceProcess};

/// What `<binary> healthcheck` reported at each stage of a service's life (see [`probe_lifecycle`]).
#[derive(Debug)]
pub struct ProbeLifecycle {
    /// While the service serves normally.
    pub ready: ProbeRun,
    /// After SIGTERM, while the service drains (still serving, readiness failing).
    pub draining: ProbeRun,
    /// After the process is gone.
    pub stopped: ProbeRun,
}

/// One run of `<binary> healthcheck`.
#[derive(Debug)]
pub struct ProbeRun {
    pub success: bool,
    pub stderr: String,
}

/// Run `binary healthcheck` against `port`.
pub fn run_healthcheck(binary: &std::path::Path, port: u16) -> anyhow::Result<ProbeRun> {
    let mut command = std::process::Command::new(binary);
    for name in SERVICE_VARIABLES {
        command.env_remove(name);
    }
    let output = command
        .arg(shopstack_platform::probe::HEALTHCHECK_ARG)
        .env("PORT", port.to_string())
        .stdin(std::process::Stdio::null())
        .output()?;
    Ok(ProbeRun {
        success: output.status.success(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// The container probe's contract, for each service's test: `binary healthcheck` exits 0 while
/// the service is ready, fails while it drains (the service still answers, with 503) and once
/// it is gone. Panics (a test assertion) when any of that does not hold.
pub fn assert_healthcheck_follows_readiness(binary: &std::path::Path) -> anyhow::Result<()> {
    let lifecycle = probe_lifecycle(binary)?;
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
    Ok(())
}

/// The probe refuses an invalid `PORT` without reading the service's config (an invalid
/// service setting must not matter to it), and a port nobody listens on is a plain failure,
/// not a hang. Panics (a test assertion) when either does not hold.
pub fn assert_healthcheck_refuses_bad_and_closed_ports(binary: &std::path::Path) -> anyhow::Result<()> {
    let output = std::process::Command::new(binary)
        .args(["healthcheck"])
        .env("PORT", "not-a-port")
        .env("SIM_FAILURE_RATE", "7")
        .output()?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a port number"));
    let port = crate::ports::free_port()?;
    assert!(!run_healthcheck(binary, port)?.success);
    Ok(())
}

/// Start `binary`, probe it ready, send SIGTERM and probe it while it drains (a 10 s drain
/// window; polled up to 5 s for readiness to fail), then kill it and probe once more.
pub fn probe_lifecycle(binary: &std::path::Path) -> anyhow::Result<ProbeLifecycle> {
    let service = ServiceProcess::spawn(binary, &[("SIMULATION", "off"), ("SHUTDOWN_DRAIN_MS", "10000")])?;
    let port = service.addr.port();
    let ready = run_healthcheck(binary, port)?;
    service.terminate()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let draining = loop {
        let run = run_healthcheck(binary, port)?;
        if !run.success || std::time::Instant::now() >= deadline {
            break run;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    drop(service);
    let stopped = run_healthcheck(binary, port)?;
    Ok(ProbeLifecycle {
        ready,
        draining,
        stopped,
    })
}

/// The two probe tests every service binary has, named as in each service's `tests/healthcheck.rs`:
/// `healthcheck_tests!(env!("CARGO_BIN_EXE_<service>"));`.
#[macro_export]
macro_rules! healthcheck_tests {
    ($binary:expr) => {
        #[test]
        fn healthcheck_follows_readiness() -> $crate::anyhow::Result<()> {
            $crate::probe::assert_healthcheck_follows_readiness(::std::path::Path::new($binary))
        }

        #[test]
        fn healthcheck_rejects_a_bad_port_without_reading_the_service_config() -> $crate::anyhow::Result<()> {
            $crate::probe::assert_healthcheck_refuses_bad_and_closed_ports(::std::path::Path::new($binary))
        }
    };
}
