//! The catalog service: products from a shipped data file, search and pagination, and the
//! stock every product carries.
//!
//! - [`config`]: the service's settings; [`products`]: loading and searching the catalogue;
//! - [`api`]: the HTTP handlers; [`error`]: the service's error enum.

pub mod api;
pub mod config;
pub mod error;
pub mod products;

use std::sync::Arc;

use axum::Router;
use shopstack_common::Platform;
use shopstack_common::config::ServiceDefaults;
use shopstack_common::simulation::SimulationProfile;

pub use config::CatalogConfig;
use products::Catalog;

pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "catalog",
    port: 8001,
    simulation: SimulationProfile::SEED_CATALOG,
};

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    pub catalog: Arc<Catalog>,
}

impl AppState {
    pub async fn new(config: &CatalogConfig, platform: Platform) -> anyhow::Result<Self> {
        let catalog = Arc::new(Catalog::load(config.products_file.as_deref())?);
        tracing::info!(products = catalog.all().len(), "catalogue loaded");
        Ok(Self { platform, catalog })
    }
}

/// The catalog's router, ready to serve (tests bind it on port 0).
pub fn app(state: AppState) -> Router {
    let platform = state.platform.clone();
    platform.service_router(api::router(state), api::INFO)
}
