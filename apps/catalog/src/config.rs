use std::path::PathBuf;

use shopstack_common::config::CommonConfig;

/// The catalog service: products, search and stock.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "catalog", version, about)]
pub struct CatalogConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// JSON product list to serve instead of the shipped catalogue.
    #[arg(long, env = "PRODUCTS_FILE")]
    pub products_file: Option<PathBuf>,
}
