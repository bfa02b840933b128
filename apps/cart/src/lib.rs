//! The cart service: the simple cart API and the v1 cart API over one storage trait.
//!
//! - [`config`]: settings; [`store`]: the storage trait and its backends;
//! - [`service`]: the cart rules (validation, catalog check, optimistic writes);
//! - [`catalog_client`]: calls to the catalog; [`api`]: HTTP handlers; [`error`]: the error enum;
//! - [`events`]: cart events out, order events in (NATS JetStream when `NATS_URL` is set).

pub mod api;
pub mod catalog_client;
pub mod config;
pub mod error;
pub mod events;
pub mod redis_store;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use shopstack_base::config::ServiceDefaults;
use shopstack_base::simulation::SimulationProfile;
use shopstack_platform::Platform;
use shopstack_redis::idempotency::Idempotency;

use catalog_client::CatalogClient;
pub use config::CartConfig;
use events::CartEvents;
use redis_store::RedisStore;
use service::CartService;
use shopstack_events::events::EventBus;
use store::{CartStore, MemoryStore};

pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "cart",
    port: 8002,
    simulation: SimulationProfile::DEFAULT_CART,
    decides_sampling: false,
};

/// How often the in-memory store drops expired carts.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    pub carts: CartService,
    pub idempotency: Idempotency,
}

impl AppState {
    pub async fn new(config: &CartConfig, platform: Platform) -> anyhow::Result<Self> {
        let registry = platform.metrics().registry();
        let operations = registry.counter_vec(
            "cart_operations_total",
            "Cart operations by operation and result.",
            ["op", "result"],
        )?;
        let redis = platform.redis(true).await?;
        let store: Arc<dyn CartStore> = match &redis {
            Some(redis) => Arc::new(RedisStore::new(redis.clone(), config.cart_ttl)),
            None => {
                let memory = Arc::new(MemoryStore::new(config.cart_ttl));
                spawn_sweeper(memory.clone());
                memory
            }
        };
        let idempotency = Idempotency::new(
            &platform.identity().name,
            redis,
            registry,
            platform.settings().max_body_bytes,
            config.idempotency_max_keys as usize,
        )?;
        let catalog = CatalogClient::new(
            platform.client().clone(),
            config.catalog_service_url.0.clone(),
            config.catalog_timeout,
        );
        let bus = EventBus::from_config(
            &config.events,
            &platform.identity().name,
            registry,
            platform.health(),
        )
        .await?;
        let carts = CartService::new(
            store,
            catalog,
            config.max_item_quantity,
            config.cart_ttl,
            operations,
        )
        .with_events(CartEvents::start(bus.clone()));
        events::consume_order_events(&bus, carts.clone());
        tracing::info!(store = carts.store().backend(), "cart store ready");
        Ok(Self {
            platform,
            carts,
            idempotency,
        })
    }
}

fn spawn_sweeper(store: Arc<MemoryStore>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            ticker.tick().await;
            let expired = store.sweep_expired();
            if !expired.is_empty() {
                tracing::info!(carts = expired.len(), "expired carts removed");
            }
        }
    });
}

/// The cart's router, ready to serve.
pub fn app(state: AppState) -> Router {
    let platform = state.platform.clone();
    let max_item_quantity = state.carts.max_item_quantity();
    platform.service_router_with(api::router(state), api::INFO, |doc| {
        api::document_quantity_cap(doc, max_item_quantity)
    })
}
