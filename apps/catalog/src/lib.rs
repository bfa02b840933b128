//! The catalog service: products from a shipped data file, search and pagination, and the
//! stock every product carries — with reservations that never oversell.
//!
//! - [`config`]: the service's settings; [`products`]: loading and searching the catalogue;
//! - [`inventory`]: the stock store (memory or Redis) and its atomic operations;
//! - [`stock`]: the stock service (validation, metrics, expiry reaper);
//! - [`api`] and [`inventory_api`]: the HTTP handlers; [`error`]: the service's error enum.

pub mod api;
pub mod config;
pub mod error;
pub mod inventory;
pub mod inventory_api;
pub mod products;
pub mod stock;

use std::sync::Arc;

use axum::Router;
use shopstack_base::config::ServiceDefaults;
use shopstack_base::simulation::SimulationProfile;
use shopstack_platform::Platform;

pub use config::CatalogConfig;
use inventory::{InventoryStore, MemoryInventory, RedisInventory};
use products::Catalog;
use stock::Inventory;

pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "catalog",
    port: 8001,
    simulation: SimulationProfile::DEFAULT_CATALOG,
    decides_sampling: false,
};

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    pub catalog: Arc<Catalog>,
    pub inventory: Inventory,
}

impl AppState {
    pub async fn new(config: &CatalogConfig, platform: Platform) -> anyhow::Result<Self> {
        let catalog = Arc::new(Catalog::load(config.products_file.as_deref())?);
        let store: Arc<dyn InventoryStore> = match platform.redis(true).await? {
            Some(redis) => Arc::new(RedisInventory::new(redis)),
            None => Arc::new(MemoryInventory::default()),
        };
        let inventory = Inventory::new(store, catalog.clone(), platform.metrics().registry())?;
        if let Err(error) = inventory.seed().await {
            tracing::warn!(%error, "initial stock not written yet; retrying in the background");
        }
        inventory.spawn_housekeeping(config.reservation_reap_interval);
        let stock = inventory.clone();
        platform
            .health()
            .register_condition("stock", move || stock.lost_stock());
        tracing::info!(
            products = catalog.all().len(),
            stock = inventory.backend(),
            "catalogue loaded"
        );
        Ok(Self {
            platform,
            catalog,
            inventory,
        })
    }
}

/// The catalog's router, ready to serve (tests bind it on port 0).
pub fn app(state: AppState) -> Router {
    let platform = state.platform.clone();
    let routes = api::router(state.clone()).merge(inventory_api::router(state));
    platform.service_router(routes, api::INFO)
}
