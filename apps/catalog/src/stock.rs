//! The catalog's stock service: validates products, runs the inventory store, counts what
//! happens, gives expired reservations back, publishes stock levels as gauges, and knows when
//! the store lost its data (then readiness says so, and nothing is sold until operators set
//! the stock again).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shopstack_telemetry::metrics::{IntCounterVec, IntGaugeVec, Registry};

use crate::error::CatalogError;
use crate::inventory::{HoldOutcome, InventoryError, InventoryStore, Line, SeedOutcome};
use crate::products::Catalog;

#[derive(Clone)]
pub struct Inventory {
    store: Arc<dyn InventoryStore>,
    catalog: Arc<Catalog>,
    reservations: IntCounterVec<1>,
    stock_gauge: IntGaugeVec<1>,
    /// Until this process has seen the store, an empty store is taken as never initialised
    /// (and seeded); afterwards an empty one has lost its data.
    may_initialise: Arc<AtomicBool>,
    /// Products whose stock figure the store lost, as of the last check.
    lost: Arc<Mutex<Vec<String>>>,
}

impl Inventory {
    pub fn new(
        store: Arc<dyn InventoryStore>,
        catalog: Arc<Catalog>,
        registry: &Registry,
    ) -> shopstack_telemetry::metrics::Result<Self> {
        Ok(Self {
            store,
            catalog,
            reservations: registry.counter_vec(
                "inventory_reservations_total",
                "Reservation operations by result: reserved, released, insufficient, committed, restocked, expired, unavailable.",
                ["result"],
            )?,
            stock_gauge: registry.gauge_vec(
                "inventory_stock_available",
                "Units free to reserve, per product (a bounded set: the catalogue).",
                ["product_id"],
            )?,
            may_initialise: Arc::new(AtomicBool::new(true)),
            lost: Arc::new(Mutex::new(Vec::new())),
        })
    }

    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    fn count(&self, result: &str) {
        self.reservations.with_label_values(&[result]).inc();
    }

    fn map_error(&self, error: InventoryError) -> CatalogError {
        match error {
            InventoryError::Insufficient {
                product_id,
                available,
            } => {
                self.count("insufficient");
                CatalogError::InsufficientStock {
                    product_id,
                    available,
                }
            }
            InventoryError::Unavailable(cause) => {
                self.count("unavailable");
                tracing::warn!(%cause, "inventory store unavailable");
                CatalogError::InventoryUnavailable
            }
            InventoryError::StockUnknown { product_id } => {
                self.count("unavailable");
                CatalogError::StockUnknown(product_id)
            }
        }
    }

    fn known(&self, product_id: &str) -> Result<(), CatalogError> {
        match self.catalog.get(product_id) {
            Some(_) => Ok(()),
            None => Err(CatalogError::ProductNotFound(product_id.to_owned())),
        }
    }

    /// Give every product its initial stock in a store never initialised, and products new to
    /// the catalogue theirs; find out whether the store lost its data (see [`SeedOutcome`]).
    pub async fn seed(&self) -> Result<(), InventoryError> {
        let initial: Vec<(String, i64)> = self
            .catalog
            .all()
            .iter()
            .map(|product| (product.id.clone(), product.stock))
            .collect();
        let outcome = self
            .store
            .seed(&initial, self.may_initialise.load(Ordering::SeqCst))
            .await?;
        // Whatever the store said, this process has now seen it: an empty store from now on
        // is a store that lost its data.
        self.may_initialise.store(false, Ordering::SeqCst);
        let lost = match outcome {
            SeedOutcome::Ready => Vec::new(),
            SeedOutcome::Seeded => {
                tracing::info!(
                    products = initial.len(),
                    "stock seeded from the product file into a new store"
                );
                Vec::new()
            }
            SeedOutcome::Restored => {
                tracing::warn!("every product has a stock figure again; sales resume");
                Vec::new()
            }
            SeedOutcome::Lost(products) => products,
        };
        let mut known_lost = match self.lost.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !lost.is_empty() && *known_lost != lost {
            tracing::error!(
                products = lost.len(),
                first = %lost.first().map(String::as_str).unwrap_or_default(),
                "the stock store lost its data: these products are not sold until an operator sets their stock (PUT /admin/stock/{{product_id}})"
            );
        }
        *known_lost = lost;
        Ok(())
    }

    /// Why the catalog is not ready, while the store's stock is lost: the JSON `/readyz` shows
    /// under `stock`.
    pub fn lost_stock(&self) -> Option<serde_json::Value> {
        let lost = match self.lost.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if lost.is_empty() {
            return None;
        }
        Some(serde_json::json!({
            "status": "lost",
            "reason": format!(
                "The stock store lost its data: {} product(s) have no stock figure and are not sold until an operator sets it with PUT /admin/stock/{{product_id}}.",
                lost.len()
            ),
            "products": lost,
        }))
    }

    pub async fn stock_of(&self, product_ids: &[String]) -> Result<Vec<i64>, CatalogError> {
        self.store
            .stock(product_ids)
            .await
            .map_err(|error| self.map_error(error))
    }

    pub async fn set_stock(&self, product_id: &str, stock: i64) -> Result<(), CatalogError> {
        self.known(product_id)?;
        self.store
            .set_stock(product_id, stock)
            .await
            .map_err(|error| self.map_error(error))?;
        // After a loss, the last product set again ends it at once, not at the next tick.
        if let Err(error) = self.seed().await {
            tracing::debug!(%error, "stock state not re-checked after an override");
        }
        Ok(())
    }

    pub async fn set_hold(
        &self,
        owner: &str,
        product_id: &str,
        quantity: u32,
        ttl: Duration,
    ) -> Result<HoldOutcome, CatalogError> {
        self.known(product_id)?;
        let outcome = self
            .store
            .set_hold(owner, product_id, quantity, ttl)
            .await
            .map_err(|error| self.map_error(error))?;
        self.count(if quantity == 0 { "released" } else { "reserved" });
        Ok(outcome)
    }

    pub async fn holds(&self, owner: &str) -> Result<Vec<Line>, CatalogError> {
        self.store
            .holds(owner)
            .await
            .map_err(|error| self.map_error(error))
    }

    pub async fn release_owner(&self, owner: &str) -> Result<Vec<Line>, CatalogError> {
        let released = self
            .store
            .release_owner(owner)
            .await
            .map_err(|error| self.map_error(error))?;
        if !released.is_empty() {
            self.count("released");
        }
        Ok(released)
    }

    pub async fn commit(&self, order_id: &str, owner: &str, items: &[Line]) -> Result<(), CatalogError> {
        for item in items {
            self.known(&item.product_id)?;
        }
        self.store
            .commit(order_id, owner, items)
            .await
            .map_err(|error| self.map_error(error))?;
        self.count("committed");
        Ok(())
    }

    pub async fn restock(&self, order_id: &str, items: &[Line]) -> Result<bool, CatalogError> {
        for item in items {
            self.known(&item.product_id)?;
        }
        let applied = self
            .store
            .restock(order_id, items)
            .await
            .map_err(|error| self.map_error(error))?;
        if applied {
            self.count("restocked");
        }
        Ok(applied)
    }

    /// Every `interval`: give back expired holds, and refresh the stock gauges.
    pub fn spawn_housekeeping(&self, interval: Duration) {
        let inventory = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                inventory.housekeeping().await;
            }
        });
    }

    async fn housekeeping(&self) {
        // Cheap (one script) and it seeds a store that was down at start, and notices a store
        // that lost its data.
        if let Err(error) = self.seed().await {
            tracing::debug!(%error, "seeding stock skipped");
        }
        let ids: Vec<String> = self
            .catalog
            .all()
            .iter()
            .map(|product| product.id.clone())
            .collect();
        match self.store.reap_expired(&ids).await {
            Ok(reaped) => {
                for owner in &reaped {
                    self.count("expired");
                    tracing::info!(owner = %owner.owner, lines = owner.lines, "expired reservations given back");
                }
            }
            Err(error) => tracing::debug!(%error, "reaping expired reservations skipped"),
        }
        if let Ok(levels) = self.store.stock(&ids).await {
            for (id, level) in ids.iter().zip(levels) {
                self.stock_gauge.with_label_values(&[id]).set(level);
            }
        }
    }
}
