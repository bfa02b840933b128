use std::path::PathBuf;
use std::time::Duration;

use shopstack_base::config::{CommonConfig, parse_duration};

/// The catalog service: products, search, stock and reservations.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "catalog", version, about)]
pub struct CatalogConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// JSON product list to serve instead of the shipped catalogue.
    #[arg(long, env = "PRODUCTS_FILE")]
    pub products_file: Option<PathBuf>,

    /// How often expired reservations are given back and stock gauges refreshed.
    #[arg(long, env = "RESERVATION_REAP_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub reservation_reap_interval: Duration,
}
