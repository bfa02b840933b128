use std::time::Duration;

use shopstack_common::config::{CommonConfig, UrlList, parse_duration};

/// The gateway: ShopStack's front door on :8000.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gateway", version, about)]
pub struct GatewayConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Catalog base URL(s); a comma-separated list means replicas.
    #[arg(long, env = "CATALOG_SERVICE_URL", default_value = "http://127.0.0.1:8001")]
    pub catalog_service_url: UrlList,

    /// Cart base URL(s); a comma-separated list means replicas.
    #[arg(long, env = "CART_SERVICE_URL", default_value = "http://127.0.0.1:8002")]
    pub cart_service_url: UrlList,

    /// Orders base URL(s); a comma-separated list means replicas.
    #[arg(long, env = "ORDERS_SERVICE_URL", default_value = "http://127.0.0.1:8003")]
    pub orders_service_url: UrlList,

    /// How long one upstream call may take before the gateway answers 504, e.g. 5s or 800ms.
    #[arg(long, env = "UPSTREAM_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
}
