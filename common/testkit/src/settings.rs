//! Settings for a service started inside a test.

use std::net::IpAddr;
use std::time::Duration;

use shopstack_base::config::{
    ConnectionTimeouts, QueueSettings, ServiceIdentity, Settings, SignalExport, default_sampler,
};
use shopstack_base::simulation::SimulationProfile;

/// The admin token of every service started with [`settings`]: `Authorization: Bearer` it on
/// the admin routes.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Settings for a service named `name` started inside a test: 127.0.0.1 port 0, simulation off,
/// the admin token [`ADMIN_TOKEN`], a short shutdown.
pub fn settings(name: &str) -> Settings {
    Settings {
        identity: ServiceIdentity {
            name: name.to_string(),
            version: "test".into(),
            environment: "test".into(),
            pod_name: format!("{name}-test"),
            node_name: "test-node".into(),
        },
        bind_addr: IpAddr::from([127, 0, 0, 1]),
        port: 0,
        connection_timeouts: ConnectionTimeouts::default(),
        max_connections: None,
        log_level: "info".into(),
        log_file: None,
        traces_export: SignalExport::None,
        logs_export: SignalExport::None,
        resource_attributes: Vec::new(),
        sampler: default_sampler(),
        decides_sampling: name == "gateway",
        span_queue: QueueSettings::default(),
        redis_url: None,
        simulation: SimulationProfile::OFF,
        admin_token: Some(ADMIN_TOKEN.into()),
        service_auth_secret: None,
        stress_enabled: true,
        stress_require_admin: false,
        max_body_bytes: 64 * 1024,
        shutdown_drain: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
    }
}
