//! The cart's rules, independent of HTTP: validation, the catalog check, and optimistic
//! read-modify-write against the store.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use shopstack_base::ids;
use shopstack_telemetry::metrics::IntCounterVec;
use utoipa::ToSchema;

use crate::catalog_client::CatalogClient;
use crate::error::CartError;
use crate::events::CartEvents;
use crate::store::{CartStore, StoreError, StoredCart};

/// How often a write re-reads and retries after losing a version race before answering 409.
const MAX_WRITE_ATTEMPTS: usize = 5;

/// One cart line on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct CartItem {
    #[schema(example = "prod-123")]
    pub product_id: String,
    #[schema(example = 2)]
    pub quantity: u32,
}

/// A cart on the wire: its lines and their count, plus the version behind `ETag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct CartView {
    #[schema(example = "user-123")]
    pub user_id: String,
    pub items: Vec<CartItem>,
    /// Number of lines.
    pub total_items: usize,
    /// Bumped by every change; sent as `ETag: "v{version}"`, checked against `If-Match`.
    pub version: u64,
}

impl CartView {
    pub fn of(user_id: &str, cart: &StoredCart) -> Self {
        let items: Vec<CartItem> = cart
            .lines
            .iter()
            .map(|(product_id, &quantity)| CartItem {
                product_id: product_id.clone(),
                quantity,
            })
            .collect();
        Self {
            user_id: user_id.to_owned(),
            total_items: items.len(),
            items,
            version: cart.version,
        }
    }
}

/// What an item write does to the line's quantity.
#[derive(Debug, Clone, Copy)]
enum LineChange {
    /// Add to the current quantity (as Redis's HINCRBY does).
    Add(u32),
    /// Replace the quantity of an existing line.
    Set(u32),
    /// Remove an existing line.
    Remove,
}

/// How often a failed release of a cleared cart's reservations is retried in the background
/// (the reservations' own expiry is the last resort).
const RELEASE_RETRIES: u32 = 8;

#[derive(Clone)]
pub struct CartService {
    store: Arc<dyn CartStore>,
    catalog: CatalogClient,
    max_quantity: u32,
    /// Carts (and their reservations) expire this long after their last change.
    ttl: Duration,
    operations: IntCounterVec<2>,
    /// Where cart events go (see [`crate::events`]); none: not published.
    events: Option<CartEvents>,
}

impl CartService {
    pub fn new(
        store: Arc<dyn CartStore>,
        catalog: CatalogClient,
        max_quantity: u32,
        ttl: Duration,
        operations: IntCounterVec<2>,
    ) -> Self {
        Self {
            store,
            catalog,
            max_quantity,
            ttl,
            operations,
            events: None,
        }
    }

    /// Publish cart events on `events`.
    pub fn with_events(mut self, events: CartEvents) -> Self {
        self.events = Some(events);
        self
    }

    pub fn store(&self) -> &Arc<dyn CartStore> {
        &self.store
    }

    /// Largest quantity one line may hold (`MAX_ITEM_QUANTITY`).
    pub fn max_item_quantity(&self) -> u32 {
        self.max_quantity
    }

    fn count<T>(&self, op: &str, result: &Result<T, CartError>) {
        let label = match result {
            Ok(_) => "ok",
            Err(error) => error.result_label(),
        };
        self.operations.with_label_values(&[op, label]).inc();
    }

    pub async fn get(&self, user_id: &str) -> Result<CartView, CartError> {
        let result = async {
            validate_id("user_id", user_id)?;
            let cart = self.store.load(user_id).await.map_err(store_error)?;
            Ok(CartView::of(user_id, &cart))
        }
        .await;
        self.count("get", &result);
        result
    }

    pub async fn add(
        &self,
        user_id: &str,
        product_id: &str,
        quantity: i64,
        if_match: Option<u64>,
    ) -> Result<CartView, CartError> {
        let result = async {
            validate_id("user_id", user_id)?;
            validate_id("product_id", product_id)?;
            let quantity = self.validate_quantity(quantity)?;
            self.change_line(user_id, product_id, LineChange::Add(quantity), if_match)
                .await
        }
        .await;
        if let (Ok(view), Some(events)) = (&result, &self.events) {
            events.item_added(view, product_id, quantity);
        }
        self.count("add", &result);
        result
    }

    pub async fn set_quantity(
        &self,
        user_id: &str,
        product_id: &str,
        quantity: i64,
        if_match: Option<u64>,
    ) -> Result<CartView, CartError> {
        let result = async {
            validate_id("user_id", user_id)?;
            validate_id("product_id", product_id)?;
            let quantity = self.validate_quantity(quantity)?;
            self.change_line(user_id, product_id, LineChange::Set(quantity), if_match)
                .await
        }
        .await;
        if let (Ok(view), Some(events)) = (&result, &self.events) {
            events.item_updated(view, product_id);
        }
        self.count("update", &result);
        result
    }

    pub async fn remove(
        &self,
        user_id: &str,
        product_id: &str,
        if_match: Option<u64>,
    ) -> Result<CartView, CartError> {
        let result = async {
            validate_id("user_id", user_id)?;
            validate_id("product_id", product_id)?;
            self.change_line(user_id, product_id, LineChange::Remove, if_match)
                .await
        }
        .await;
        if let (Ok(view), Some(events)) = (&result, &self.events) {
            events.item_removed(view, product_id);
        }
        self.count("remove", &result);
        result
    }

    pub async fn clear(&self, user_id: &str, if_match: Option<u64>) -> Result<CartView, CartError> {
        let result = async {
            validate_id("user_id", user_id)?;
            for _ in 0..MAX_WRITE_ATTEMPTS {
                let cart = self.store.load(user_id).await.map_err(store_error)?;
                check_precondition(&cart, if_match)?;
                match self.store.clear(user_id, cart.version).await {
                    Ok(cleared) => {
                        if !cart.lines.is_empty() {
                            self.release_reservations(user_id).await;
                            if let Some(events) = &self.events {
                                events.cleared(&CartView::of(user_id, &cleared), cart.lines.len());
                            }
                        }
                        return Ok(CartView::of(user_id, &cleared));
                    }
                    Err(StoreError::VersionConflict { current }) if if_match.is_some() => {
                        return Err(CartError::PreconditionFailed { current });
                    }
                    Err(StoreError::VersionConflict { .. }) => continue,
                    Err(error) => return Err(store_error(error)),
                }
            }
            Err(CartError::Busy)
        }
        .await;
        self.count("clear", &result);
        result
    }

    /// Read, compute the new line, compare-and-set; re-read on a lost race unless the caller
    /// pinned a version with `If-Match`.
    async fn change_line(
        &self,
        user_id: &str,
        product_id: &str,
        change: LineChange,
        if_match: Option<u64>,
    ) -> Result<CartView, CartError> {
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let cart = self.store.load(user_id).await.map_err(store_error)?;
            check_precondition(&cart, if_match)?;
            let current = cart.quantity_of(product_id);
            let target = match change {
                LineChange::Add(quantity) => {
                    let target = current.saturating_add(quantity);
                    if target > self.max_quantity {
                        return Err(CartError::LineFull {
                            would_hold: target,
                            max: self.max_quantity,
                        });
                    }
                    target
                }
                LineChange::Set(_) | LineChange::Remove if current == 0 => {
                    return Err(CartError::ItemNotInCart(product_id.to_owned()));
                }
                LineChange::Set(quantity) => quantity,
                LineChange::Remove => 0,
            };
            // Reserve first: the cart never shows units the catalog hasn't set aside. The
            // hold is absolute, so setting it again on a retry is harmless.
            if target != current {
                self.catalog
                    .set_hold(user_id, product_id, target, self.ttl)
                    .await
                    .map_err(catalog_error)?;
            }
            match self
                .store
                .write_line(user_id, product_id, target, cart.version)
                .await
            {
                Ok(written) => return Ok(CartView::of(user_id, &written)),
                // Lost a race: the next attempt re-reads and sets the hold to its own target.
                Err(StoreError::VersionConflict { .. }) if if_match.is_none() => continue,
                Err(error) => {
                    self.realign_hold(user_id, product_id).await;
                    return Err(match error {
                        StoreError::VersionConflict { current } => CartError::PreconditionFailed { current },
                        other => store_error(other),
                    });
                }
            }
        }
        self.realign_hold(user_id, product_id).await;
        Err(CartError::Busy)
    }

    /// After a write that did not happen, put the hold back in line with what the cart holds.
    async fn realign_hold(&self, user_id: &str, product_id: &str) {
        let quantity = match self.store.load(user_id).await {
            Ok(cart) => cart.quantity_of(product_id),
            // The store is down: nothing can be known; the hold's expiry will settle it.
            Err(_) => return,
        };
        if let Err(error) = self
            .catalog
            .set_hold(user_id, product_id, quantity, self.ttl)
            .await
        {
            tracing::warn!(%error, user_id, product_id, "could not realign a reservation; it will expire with the cart");
        }
    }

    /// Give a cleared cart's reservations back; retried in the background if the catalog is down.
    async fn release_reservations(&self, user_id: &str) {
        if self.catalog.release_owner(user_id).await.is_ok() {
            return;
        }
        let catalog = self.catalog.clone();
        let user_id = user_id.to_owned();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(250);
            for _ in 0..RELEASE_RETRIES {
                tokio::time::sleep(delay).await;
                if catalog.release_owner(&user_id).await.is_ok() {
                    return;
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            tracing::warn!(
                user_id,
                "reservations of a cleared cart not released; they will expire"
            );
        });
    }

    fn validate_quantity(&self, quantity: i64) -> Result<u32, CartError> {
        if quantity <= 0 {
            return Err(CartError::BadRequest(format!(
                "quantity must be at least 1 (got {quantity})"
            )));
        }
        u32::try_from(quantity)
            .ok()
            .filter(|&quantity| quantity <= self.max_quantity)
            .ok_or_else(|| {
                CartError::BadRequest(format!(
                    "quantity must be at most {} (got {quantity})",
                    self.max_quantity
                ))
            })
    }
}

fn check_precondition(cart: &StoredCart, if_match: Option<u64>) -> Result<(), CartError> {
    match if_match {
        Some(expected) if expected != cart.version => Err(CartError::PreconditionFailed {
            current: cart.version,
        }),
        _ => Ok(()),
    }
}

fn store_error(error: StoreError) -> CartError {
    if let StoreError::Unavailable(cause) = &error {
        tracing::warn!(%cause, "cart store unavailable");
    }
    error.into()
}

fn catalog_error(error: crate::catalog_client::CatalogError) -> CartError {
    use crate::catalog_client::CatalogError;
    if matches!(error, CatalogError::Timeout(_) | CatalogError::Unavailable(_)) {
        tracing::warn!(%error, "catalog call failed");
    }
    error.into()
}

/// Ids follow the shared alphabet ([`ids`]): they become catalog URL paths and Redis keys.
pub fn validate_id(what: &str, value: &str) -> Result<(), CartError> {
    ids::check_id(what, value).map_err(CartError::BadRequest)
}
