use std::time::Duration;

use shopstack_base::config::{CommonConfig, UrlList, parse_duration};
use shopstack_events::events::EventsConfig;

/// The orders service: the orders API and checkout, on SQLite or PostgreSQL.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "orders", version, about)]
pub struct OrdersConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// `postgres://user@host/db` (`?sslmode=verify-full` for TLS) or `sqlite://path/orders.db`
    /// [default: sqlite://data/orders.db, created with its directory if missing].
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Largest number of pooled database connections.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub database_max_connections: u32,

    /// Catalog base URL(s) (prices and stock); a comma-separated list means replicas.
    #[arg(long, env = "CATALOG_SERVICE_URL", default_value = "http://127.0.0.1:8001")]
    pub catalog_service_url: UrlList,

    /// Cart base URL(s) (checkout); a comma-separated list means replicas.
    #[arg(long, env = "CART_SERVICE_URL", default_value = "http://127.0.0.1:8002")]
    pub cart_service_url: UrlList,

    /// How long one call to the catalog or the cart may take, e.g. 3s or 800ms.
    #[arg(long, env = "UPSTREAM_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// Order events out (the outbox relay publishes them).
    #[command(flatten)]
    pub events: EventsConfig,

    /// How long an order stays in the Redis read cache (on when REDIS_URL is set), e.g. 5m.
    #[arg(long, env = "ORDER_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub order_cache_ttl: Duration,

    /// Largest quantity of one order line.
    #[arg(long, env = "MAX_ITEM_QUANTITY", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_item_quantity: u32,

    /// Most lines one order may have.
    #[arg(long, env = "MAX_ORDER_LINES", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_order_lines: u32,

    /// How long a finished request's Idempotency-Key is remembered, e.g. 24h.
    #[arg(long, env = "IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,

    /// An order placement unfinished this long counts as interrupted and is finished or undone
    /// by the recovery task, e.g. 30s. Must exceed the longest placement (a few upstream calls).
    #[arg(long, env = "SAGA_RECOVERY_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub saga_recovery_after: Duration,

    /// How often the maintenance task runs (recovery, restock retries, gauges), e.g. 2s.
    #[arg(long, env = "MAINTENANCE_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub maintenance_interval: Duration,
}
