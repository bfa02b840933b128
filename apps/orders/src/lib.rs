//! The orders service: the orders API and checkout, on SQLite (embedded default) or
//! PostgreSQL, with order events relayed from a transactional outbox to NATS JetStream.
//!
//! - [`config`]: settings; [`db`]: the two engines behind one API; [`repo`]: every SQL statement;
//! - [`model`]: orders on the wire and the status machine; [`service`]: the order rules and the
//!   checkout saga; [`upstream`]: calls to the catalog and the cart;
//! - [`tasks`]: the outbox relay and the maintenance loop; [`api`]: HTTP handlers;
//! - [`cache`]: the optional Redis cache for order reads;
//! - [`error`]: the error enum; [`metrics`]: business metrics.

pub mod api;
pub mod cache;
pub mod config;
pub mod db;
pub mod error;
pub mod metrics;
pub mod model;
pub mod repo;
pub mod service;
pub mod tasks;
pub mod upstream;

use std::sync::Arc;

use axum::Router;
use shopstack_base::config::ServiceDefaults;
use shopstack_base::simulation::SimulationProfile;
use shopstack_events::events::EventBus;
use shopstack_platform::Platform;

use cache::OrderCache;
pub use config::OrdersConfig;
use db::Db;
use metrics::OrdersMetrics;
use service::{Limits, OrderService};
use tasks::{BackgroundTasks, Maintenance};
use upstream::{CartClient, CatalogClient};

pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "orders",
    port: 8003,
    simulation: SimulationProfile::QUIET,
    decides_sampling: false,
};

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    pub orders: OrderService,
    /// Aborted when the last clone of the state is dropped.
    _tasks: Arc<BackgroundTasks>,
}

impl AppState {
    pub async fn new(config: &OrdersConfig, platform: Platform) -> anyhow::Result<Self> {
        let db = Db::connect(config.database_url.as_deref(), config.database_max_connections).await?;
        let checked = db.clone();
        platform.health().register("database", true, move || {
            let db = checked.clone();
            Box::pin(async move { db.ping().await })
        });
        let registry = platform.metrics().registry();
        let bus = EventBus::from_config(
            &config.events,
            &platform.identity().name,
            registry,
            platform.health(),
        )
        .await?;
        let catalog = CatalogClient::new(
            platform.client().clone(),
            config.catalog_service_url.0.clone(),
            config.upstream_timeout,
        );
        let cart = CartClient::new(
            platform.client().clone(),
            config.cart_service_url.0.clone(),
            config.upstream_timeout,
        );
        for (name, live) in [
            ("catalog", UpstreamCheck::Catalog(catalog.clone())),
            ("cart", UpstreamCheck::Cart(cart.clone())),
        ] {
            platform.health().register(name, false, move || {
                let live = live.clone();
                Box::pin(async move { live.live().await })
            });
        }
        // Not needed for readiness: without the cache, reads go to the database.
        let redis = platform.redis(false).await?;
        let metrics = OrdersMetrics::new(registry)?;
        let cache = OrderCache::new(redis, config.order_cache_ttl, metrics.cache_requests.clone());
        let orders = OrderService::new(
            db,
            catalog,
            cart,
            bus,
            metrics,
            Limits {
                max_quantity: i64::from(config.max_item_quantity),
                max_lines: config.max_order_lines as usize,
            },
            cache,
        );
        let tasks = tasks::spawn(
            orders.clone(),
            Maintenance {
                interval: config.maintenance_interval,
                recovery_after: config.saga_recovery_after,
                idempotency_ttl: config.idempotency_ttl,
            },
        );
        Ok(Self {
            platform,
            orders,
            _tasks: Arc::new(tasks),
        })
    }
}

#[derive(Clone)]
enum UpstreamCheck {
    Catalog(CatalogClient),
    Cart(CartClient),
}

impl UpstreamCheck {
    async fn live(&self) -> bool {
        match self {
            UpstreamCheck::Catalog(client) => client.live().await,
            UpstreamCheck::Cart(client) => client.live().await,
        }
    }
}

/// The orders router, ready to serve (tests bind it on port 0).
pub fn app(state: AppState) -> Router {
    let platform = state.platform.clone();
    let limits = state.orders.limits();
    platform.service_router_with(api::router(state), api::INFO, |doc| {
        api::document_limits(doc, limits)
    })
}
