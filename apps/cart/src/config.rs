use std::time::Duration;

use shopstack_base::config::{CommonConfig, UrlList, parse_duration};
use shopstack_events::events::EventsConfig;

/// The cart service: shopping carts in memory or on Redis.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "cart", version, about)]
pub struct CartConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Catalog base URL(s); a comma-separated list means replicas, used in turn.
    #[arg(long, env = "CATALOG_SERVICE_URL", default_value = "http://127.0.0.1:8001")]
    pub catalog_service_url: UrlList,

    /// How long to wait for the catalog, e.g. 2s or 500ms.
    #[arg(long, env = "CATALOG_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub catalog_timeout: Duration,

    /// Largest quantity one cart line may hold.
    #[arg(long, env = "MAX_ITEM_QUANTITY", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_item_quantity: u32,

    /// Carts untouched this long expire, e.g. 30d, 12h, 90s.
    #[arg(long, env = "CART_TTL", default_value = "30d", value_parser = parse_duration)]
    pub cart_ttl: Duration,

    /// Most Idempotency-Key answers kept in memory (without Redis); past it the oldest are
    /// forgotten first, and a retry of a forgotten key runs again.
    #[arg(long, env = "IDEMPOTENCY_MAX_KEYS", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub idempotency_max_keys: u32,

    /// Cart events out, `order.created` in.
    #[command(flatten)]
    pub events: EventsConfig,
}
