//! The order rules, independent of HTTP: placing an order (directly or from the cart) as a small
//! saga, the status machine, and the recovery of interrupted placements.
//!
//! Placing an order (docs/design/checkout.md tells the whole story):
//!
//! 1. record the saga (`order_sagas`, state `started`) with the order id chosen up front and the
//!    request's idempotency key; for a checkout this also takes the user's checkout lock;
//! 2. read the cart (checkout), price every line from the catalog, save the priced lines;
//! 3. commit the stock in the catalog (idempotent per order id) → `committed`;
//! 4. write the order, its items and `order.created` (outbox) in one transaction → `ordered`
//!    (checkout) or `completed` (direct). This is the commit point;
//! 5. checkout: clear the cart if it is still at the version read in 2 → `completed`.
//!
//! A failure before 4 undoes what was done (restock) and forgets the saga; a failure after 4
//! only leaves the cart clearing to retry. The recovery task does the same for placements
//! interrupted by a crash.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use serde::Serialize;
use serde_json::{Value, json};
use shopstack_base::ids;
use shopstack_base::money::Money;
use shopstack_base::pagination::{Page, Pagination};
use shopstack_events::events::{Event, EventBus};
use shopstack_redis::idempotency::{Keyed, Outcome};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::cache::OrderCache;
use crate::db::{Db, now};
use crate::error::OrdersError;
use crate::metrics::OrdersMetrics;
use crate::model::{Order, OrderSource, OrderStatus, PricedLine};
use crate::repo::{self, NewOrder, OrderFilter, Saga, SagaConflict, SagaState};
use crate::upstream::{CartClient, CatalogClient, ClearOutcome, CommitRefused, StockLine, UpstreamError};

/// Longest address or note accepted.
pub const MAX_TEXT_LEN: usize = 2000;
/// How often a status change re-reads and retries after losing a race before answering 409.
const MAX_STATUS_ATTEMPTS: usize = 5;

/// Limits on what one order may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_quantity: i64,
    pub max_lines: usize,
}

/// A validated direct order.
#[derive(Debug, Clone, Serialize)]
pub struct PlaceOrder {
    pub user_id: String,
    pub shipping_address: String,
    pub billing_address: Option<String>,
    pub notes: Option<String>,
    /// Product id → quantity, in the order first seen (duplicates merged).
    pub items: Vec<StockLine>,
}

/// A validated checkout request.
#[derive(Debug, Clone, Serialize)]
pub struct Checkout {
    pub user_id: String,
    pub shipping_address: String,
    pub billing_address: Option<String>,
    pub notes: Option<String>,
}

/// An order placed, or found again for a retried request.
#[derive(Debug, Clone)]
pub struct Placed {
    pub order: Order,
    /// True when an earlier request with the same Idempotency-Key placed it.
    pub replayed: bool,
}

#[derive(Clone)]
pub struct OrderService(Arc<Inner>);

struct Inner {
    db: Db,
    catalog: CatalogClient,
    cart: CartClient,
    bus: EventBus,
    metrics: OrdersMetrics,
    limits: Limits,
    cache: OrderCache,
    relay_wake: Arc<Notify>,
}

impl OrderService {
    pub fn new(
        db: Db,
        catalog: CatalogClient,
        cart: CartClient,
        bus: EventBus,
        metrics: OrdersMetrics,
        limits: Limits,
        cache: OrderCache,
    ) -> Self {
        Self(Arc::new(Inner {
            db,
            catalog,
            cart,
            bus,
            metrics,
            limits,
            cache,
            relay_wake: Arc::new(Notify::new()),
        }))
    }

    pub fn db(&self) -> &Db {
        &self.0.db
    }

    pub fn bus(&self) -> &EventBus {
        &self.0.bus
    }

    pub fn metrics(&self) -> &OrdersMetrics {
        &self.0.metrics
    }

    pub fn catalog(&self) -> &CatalogClient {
        &self.0.catalog
    }

    pub fn cart(&self) -> &CartClient {
        &self.0.cart
    }

    /// Woken whenever an event is written to the outbox.
    pub fn relay_wake(&self) -> Arc<Notify> {
        self.0.relay_wake.clone()
    }

    pub fn limits(&self) -> Limits {
        self.0.limits
    }

    pub fn cache(&self) -> &OrderCache {
        &self.0.cache
    }

    // -----------------------------------------------------------------------------------------
    // Reads

    /// One order: from the Redis cache when it is on and holds it, else from the database
    /// (and then into the cache).
    pub async fn get(&self, id: &str) -> Result<Order, OrdersError> {
        let uuid = parse_order_id(id)?;
        if let Some(order) = self.0.cache.get(uuid).await {
            return Ok(order);
        }
        let order = repo::get_order(&self.0.db, uuid)
            .await?
            .ok_or_else(|| OrdersError::OrderNotFound(id.to_owned()))?;
        self.0.cache.put(&order).await;
        Ok(order)
    }

    pub async fn list(
        &self,
        filter: &OrderFilter,
        page: Page,
    ) -> Result<(Vec<Order>, Pagination), OrdersError> {
        let (orders, total) = repo::list_orders(&self.0.db, filter, page).await?;
        Ok((orders, page.describe(total)))
    }

    // -----------------------------------------------------------------------------------------
    // Placing orders

    /// `POST /api/orders`: the items are in the request; stock is committed from free stock.
    pub async fn place(&self, request: PlaceOrder, keyed: Option<Keyed>) -> Result<Placed, OrdersError> {
        let (idempotency_key, fingerprint) = key_and_fingerprint(keyed);
        let order_id = Uuid::now_v7();
        let saga = Saga {
            order_id,
            kind: OrderSource::Direct,
            user_id: request.user_id.clone(),
            idempotency_key,
            request: fingerprint,
            cart_version: None,
            lines: None,
            state: SagaState::Started,
            updated_at: now(),
        };
        if let Some(placed) = self.begin(&saga).await? {
            return Ok(placed);
        }
        let prepared = async {
            let lines = self.price(&request.items).await?;
            repo::update_saga(&self.0.db, order_id, None, &lines).await?;
            Ok::<_, OrdersError>(NewOrder {
                id: order_id,
                user_id: request.user_id.clone(),
                currency: currency_of(&lines)?,
                shipping_address: request.shipping_address.clone(),
                billing_address: request.billing_address.clone(),
                notes: request.notes.clone(),
                source: OrderSource::Direct,
                lines,
            })
        }
        .await;
        let new_order = match prepared {
            Ok(new_order) => new_order,
            Err(error) => return Err(self.drop_saga(order_id, error).await),
        };
        match self
            .commit_and_write(&new_order, &direct_owner(order_id), None, SagaState::Completed)
            .await
        {
            Ok(order) => Ok(Placed {
                order,
                replayed: false,
            }),
            Err(Failed::Clean(error)) => Err(self.drop_saga(order_id, error).await),
            Err(Failed::Settled(error)) => Err(error),
        }
    }

    /// Checkout: the user's cart becomes an order; its reservations are committed and the cart
    /// is cleared.
    pub async fn checkout(&self, request: Checkout, keyed: Option<Keyed>) -> Result<Placed, OrdersError> {
        let result = self.checkout_inner(request, keyed).await;
        let label = match &result {
            Ok(placed) if placed.replayed => "replayed",
            Ok(_) => "ok",
            Err(error) => error.result_label(),
        };
        self.0.metrics.checkouts.with_label_values(&[label]).inc();
        result
    }

    async fn checkout_inner(&self, request: Checkout, keyed: Option<Keyed>) -> Result<Placed, OrdersError> {
        let (idempotency_key, fingerprint) = key_and_fingerprint(keyed);
        let order_id = Uuid::now_v7();
        let user_id = request.user_id.clone();
        let saga = Saga {
            order_id,
            kind: OrderSource::Checkout,
            user_id: user_id.clone(),
            idempotency_key,
            request: fingerprint,
            cart_version: None,
            lines: None,
            state: SagaState::Started,
            updated_at: now(),
        };
        if let Some(placed) = self.begin(&saga).await? {
            return Ok(placed);
        }
        // The user's checkout lock is held from here on: no other checkout of this cart runs
        // until this one is completed or undone. The cart is read only now, under the lock.
        let prepared = async {
            let cart = self.0.cart.get(&user_id).await?;
            if cart.items.is_empty() {
                return Err(OrdersError::EmptyCart(user_id.clone()));
            }
            let lines = self.price(&cart.items).await?;
            repo::update_saga(&self.0.db, order_id, Some(cart.version), &lines).await?;
            Ok((
                NewOrder {
                    id: order_id,
                    user_id: user_id.clone(),
                    currency: currency_of(&lines)?,
                    shipping_address: request.shipping_address.clone(),
                    billing_address: request.billing_address.clone(),
                    notes: request.notes.clone(),
                    source: OrderSource::Checkout,
                    lines,
                },
                cart.version,
            ))
        }
        .await;
        let (new_order, cart_version) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => return Err(self.drop_saga(order_id, error).await),
        };
        let order = match self
            .commit_and_write(&new_order, &user_id, Some(cart_version), SagaState::Ordered)
            .await
        {
            Ok(order) => order,
            Err(Failed::Clean(error)) => return Err(self.drop_saga(order_id, error).await),
            Err(Failed::Settled(error)) => return Err(error),
        };
        // The order stands whatever happens now; if the cart can't be cleared yet, the recovery
        // task retries (the checkout lock stays until then, so the cart can't be ordered twice).
        if let Err(error) = self.finish_checkout(order_id, &user_id, cart_version).await {
            tracing::warn!(order_id = %order_id, user_id, %error, "cart not cleared yet; the recovery task will retry");
        }
        Ok(Placed {
            order,
            replayed: false,
        })
    }

    /// Record `saga`, or find the earlier request it repeats. `Some`: the answer to a replay.
    /// A keyed request is counted in `idempotency_requests_total` by its outcome.
    async fn begin(&self, saga: &Saga) -> Result<Option<Placed>, OrdersError> {
        let result = self.begin_inner(saga).await;
        if saga.idempotency_key.is_some() {
            let outcome = match &result {
                Ok(None) => Outcome::Executed,
                Ok(Some(_)) => Outcome::Replayed,
                Err(OrdersError::IdempotencyMismatch(_)) => Outcome::Mismatch,
                Err(OrdersError::IdempotencyInFlight(_) | OrdersError::InFlight(_)) => Outcome::InFlight,
                Err(_) => Outcome::Unavailable,
            };
            self.0.metrics.idempotency.record(outcome);
        }
        result
    }

    async fn begin_inner(&self, saga: &Saga) -> Result<Option<Placed>, OrdersError> {
        if let Some(key) = &saga.idempotency_key
            && let Some(existing) = repo::saga_by_key(&self.0.db, &saga.user_id, saga.kind, key).await?
        {
            return self.replay(&existing, saga).await.map(Some);
        }
        match repo::insert_saga(&self.0.db, saga).await {
            Ok(()) => Ok(None),
            Err(SagaConflict::Db(error)) => Err(error.into()),
            Err(SagaConflict::Exists) => {
                if let Some(key) = &saga.idempotency_key
                    && let Some(existing) =
                        repo::saga_by_key(&self.0.db, &saga.user_id, saga.kind, key).await?
                {
                    return self.replay(&existing, saga).await.map(Some);
                }
                Err(OrdersError::InFlight(format!(
                    "A checkout for user {} is already in progress; retry shortly.",
                    saga.user_id
                )))
            }
        }
    }

    async fn replay(&self, existing: &Saga, new: &Saga) -> Result<Placed, OrdersError> {
        let key = new.idempotency_key.clone().unwrap_or_default();
        if existing.request != new.request {
            return Err(OrdersError::IdempotencyMismatch(key));
        }
        match existing.state {
            SagaState::Ordered | SagaState::Completed => {
                let order = repo::get_order(&self.0.db, existing.order_id)
                    .await?
                    .ok_or_else(|| {
                        OrdersError::Internal(format!("saga {} has no order", existing.order_id))
                    })?;
                Ok(Placed {
                    order,
                    replayed: true,
                })
            }
            SagaState::Started | SagaState::Committed | SagaState::Undoing => {
                Err(OrdersError::IdempotencyInFlight(key))
            }
        }
    }

    /// Forget a saga that failed before anything needed undoing (stock never committed).
    async fn drop_saga(&self, order_id: Uuid, error: OrdersError) -> OrdersError {
        if let Err(db_error) = repo::delete_saga(&self.0.db, order_id, SagaState::Started).await {
            tracing::warn!(%order_id, error = %db_error, "could not drop a failed saga; the recovery task will");
        }
        error
    }

    /// Price `items` from the catalog (all lookups at once). Unknown products are refused.
    async fn price(&self, items: &[StockLine]) -> Result<Vec<PricedLine>, OrdersError> {
        let lookups = join_all(items.iter().map(|item| self.0.catalog.product(&item.product_id))).await;
        let mut lines = Vec::with_capacity(items.len());
        for (item, lookup) in items.iter().zip(lookups) {
            let product = lookup?.ok_or_else(|| OrdersError::ProductNotFound(item.product_id.clone()))?;
            if product.price < Money::ZERO {
                return Err(OrdersError::Upstream(UpstreamError::Unexpected {
                    service: "catalog",
                    status: 200,
                    body: format!("negative price for {}", product.id),
                }));
            }
            lines.push(PricedLine {
                product_id: item.product_id.clone(),
                quantity: i32::try_from(item.quantity).map_err(|_| {
                    OrdersError::BadRequest(format!("quantity {} is too large", item.quantity))
                })?,
                unit_price_cents: product.price.cents(),
                currency: product.currency,
            });
        }
        Ok(lines)
    }

    /// Steps 3 and 4: commit the stock, then write the order with its `order.created` event.
    async fn commit_and_write(
        &self,
        order: &NewOrder,
        owner: &str,
        cart_version: Option<i64>,
        state_after: SagaState,
    ) -> Result<Order, Failed> {
        let order_id = order.id.to_string();
        let stock = stock_lines(&order.lines);
        match self.0.catalog.commit(&order_id, owner, &stock).await {
            Ok(Ok(())) => {}
            Ok(Err(CommitRefused::InsufficientStock {
                message,
                available,
                product_id,
            })) => {
                return Err(Failed::Clean(OrdersError::InsufficientStock {
                    message,
                    available,
                    product_id,
                }));
            }
            Ok(Err(CommitRefused::UnknownProduct(product_id))) => {
                return Err(Failed::Clean(OrdersError::ProductNotFound(product_id)));
            }
            Ok(Err(CommitRefused::StockUnknown(product_id))) => {
                return Err(Failed::Clean(OrdersError::StockUnknown(product_id)));
            }
            Err(error) => {
                // No answer: the stock may or may not be committed. The saga (with its lines)
                // stays for the recovery task, which finds out and gives back what was taken.
                tracing::warn!(%order_id, %error, "stock commit outcome unknown; the recovery task will undo it");
                return Err(Failed::Settled(error.into()));
            }
        }
        // Stock committed, order not written: a stop here is what the recovery task undoes
        // (the fault proofs stop orders here).
        shopstack_platform::failpoint::hit("orders.after_commit").await;
        match repo::transition_saga(&self.0.db, order.id, SagaState::Started, SagaState::Committed).await {
            Ok(true) => {}
            Ok(false) => return Err(Failed::Settled(taken_over(order.id))),
            Err(error) => {
                return Err(self
                    .give_back(order, &stock, SagaState::Started, error.into())
                    .await);
            }
        }
        let event = self.order_created_event(order, cart_version);
        match repo::insert_order(&self.0.db, order, state_after, &event).await {
            Ok(true) => {}
            Ok(false) => return Err(Failed::Settled(taken_over(order.id))),
            Err(error) => {
                return Err(self
                    .give_back(order, &stock, SagaState::Committed, error.into())
                    .await);
            }
        }
        self.0.relay_wake.notify_one();
        self.0
            .metrics
            .created
            .with_label_values(&[order.source.as_str()])
            .inc();
        self.0.metrics.value.observe(order.total().cents() as f64 / 100.0);
        tracing::info!(
            order_id = %order.id,
            user_id = %order.user_id,
            source = order.source.as_str(),
            total = %order.total(),
            items = order.lines.len(),
            "order placed"
        );
        repo::get_order(&self.0.db, order.id)
            .await
            .map_err(|error| Failed::Settled(error.into()))?
            .ok_or_else(|| {
                Failed::Settled(OrdersError::Internal(format!(
                    "order {} vanished after it was written",
                    order.id
                )))
            })
    }

    /// The stock is committed but the order could not be written: give the stock back now and
    /// drop the saga; if that fails too, the saga stays and the recovery task finishes the job.
    async fn give_back(
        &self,
        order: &NewOrder,
        stock: &[StockLine],
        state: SagaState,
        error: OrdersError,
    ) -> Failed {
        let order_id = order.id.to_string();
        match self.0.catalog.restock(&order_id, stock).await {
            Ok(()) => {
                if let Err(db_error) = repo::delete_saga(&self.0.db, order.id, state).await {
                    tracing::warn!(%order_id, error = %db_error, "stock given back but the saga record remains; the recovery task will drop it");
                }
            }
            Err(restock_error) => {
                tracing::error!(%order_id, error = %restock_error, "order not written and stock not given back yet; the recovery task will");
            }
        }
        Failed::Settled(error)
    }

    /// Step 5: clear the cart if it is unchanged since checkout, then close the saga.
    async fn finish_checkout(
        &self,
        order_id: Uuid,
        user_id: &str,
        cart_version: i64,
    ) -> Result<(), OrdersError> {
        match self.0.cart.clear(user_id, cart_version).await? {
            ClearOutcome::Cleared => {}
            ClearOutcome::Changed => {
                tracing::info!(%order_id, user_id, cart_version, "cart changed since checkout; left as it is");
            }
        }
        repo::transition_saga(&self.0.db, order_id, SagaState::Ordered, SagaState::Completed).await?;
        Ok(())
    }

    fn order_created_event(&self, order: &NewOrder, cart_version: Option<i64>) -> Event {
        let total = order.total();
        let items: Vec<Value> = order
            .lines
            .iter()
            .map(|line| {
                json!({
                    "product_id": line.product_id,
                    "quantity": line.quantity,
                    "unit_price": Money::from_cents(line.unit_price_cents),
                    "subtotal": line.subtotal(),
                })
            })
            .collect();
        self.0.bus.event(
            "order.created",
            Some(order.id.to_string()),
            json!({
                "order_id": order.id.to_string(),
                "user_id": order.user_id,
                "status": OrderStatus::Pending,
                "source": order.source,
                "total_amount": total,
                "total_amount_cents": total.cents(),
                "currency": order.currency,
                "cart_version": cart_version,
                "items": items,
            }),
        )
    }

    // -----------------------------------------------------------------------------------------
    // Status machine

    /// Move order `id` to `to`. Concurrent changes never lose one: each is applied against the
    /// version it read, and re-validated against the new status when it lost the race.
    pub async fn change_status(&self, id: &str, to: OrderStatus) -> Result<Order, OrdersError> {
        let uuid = parse_order_id(id)?;
        for _ in 0..MAX_STATUS_ATTEMPTS {
            let order = repo::get_order(&self.0.db, uuid)
                .await?
                .ok_or_else(|| OrdersError::OrderNotFound(id.to_owned()))?;
            let from = order.status;
            if !from.can_become(to) {
                return Err(OrdersError::InvalidTransition {
                    id: id.to_owned(),
                    from,
                    to,
                });
            }
            let cancelling = to == OrderStatus::Cancelled;
            let event = self.status_event(&order, to);
            if repo::change_status(&self.0.db, uuid, order.version, to, cancelling, &event).await? {
                self.0.relay_wake.notify_one();
                self.0
                    .metrics
                    .transitions
                    .with_label_values(&[from.as_str(), to.as_str()])
                    .inc();
                tracing::info!(order_id = id, %from, %to, "order status changed");
                if cancelling {
                    self.restock_cancelled(uuid).await;
                }
                let order = repo::get_order(&self.0.db, uuid)
                    .await?
                    .ok_or_else(|| OrdersError::OrderNotFound(id.to_owned()))?;
                // Write through: the cache holds the new version before the answer is sent.
                self.0.cache.put(&order).await;
                return Ok(order);
            }
        }
        Err(OrdersError::Busy(id.to_owned()))
    }

    fn status_event(&self, order: &Order, to: OrderStatus) -> Event {
        let event_type = if to == OrderStatus::Cancelled {
            "order.cancelled"
        } else {
            "order.status_changed"
        };
        self.0.bus.event(
            event_type,
            Some(order.id.clone()),
            json!({
                "order_id": order.id,
                "user_id": order.user_id,
                "from": order.status,
                "to": to,
                "status": to,
                "total_amount": order.total_amount,
                "total_amount_cents": order.total_amount.cents(),
                "currency": order.currency,
                "version": order.version + 1,
                "items": order.order_items.iter().map(|item| json!({
                    "product_id": item.product_id,
                    "quantity": item.quantity,
                })).collect::<Vec<_>>(),
            }),
        )
    }

    /// Give a cancelled order's units back to the catalog; on failure the maintenance task retries.
    pub async fn restock_cancelled(&self, id: Uuid) {
        let order = match repo::get_order(&self.0.db, id).await {
            Ok(Some(order)) => order,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(order_id = %id, %error, "cannot read a cancelled order to restock it; will retry");
                return;
            }
        };
        let stock: Vec<StockLine> = order
            .order_items
            .iter()
            .map(|item| StockLine {
                product_id: item.product_id.clone(),
                quantity: i64::from(item.quantity),
            })
            .collect();
        match self.0.catalog.restock(&order.id, &stock).await {
            Ok(()) => {
                if let Err(error) = repo::clear_restock_pending(&self.0.db, id).await {
                    tracing::warn!(order_id = %id, %error, "restocked, but not yet recorded; the (idempotent) restock will be repeated");
                }
            }
            Err(error) => {
                tracing::warn!(order_id = %id, %error, "restock of a cancelled order failed; will retry")
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Recovery and maintenance

    /// Resolve placements unfinished for longer than `stale_after`: before the order was written
    /// they are undone (the stock given back), after it the cart clearing is retried.
    pub async fn recover(&self, stale_after: Duration) -> Result<usize, OrdersError> {
        let before = Utc::now() - chrono::Duration::from_std(stale_after).unwrap_or_default();
        let sagas = repo::stale_sagas(&self.0.db, before, 100).await?;
        let mut resolved = 0;
        for saga in sagas {
            match self.recover_one(&saga, before).await {
                Ok(None) => {}
                Ok(Some(outcome)) => {
                    resolved += 1;
                    self.0.metrics.recoveries.with_label_values(&[outcome]).inc();
                    tracing::info!(order_id = %saga.order_id, user_id = %saga.user_id, state = saga.state.as_str(), outcome, "interrupted order placement resolved");
                }
                Err(error) => {
                    tracing::warn!(order_id = %saga.order_id, state = saga.state.as_str(), %error, "interrupted order placement not resolved yet; will retry");
                }
            }
        }
        Ok(resolved)
    }

    async fn recover_one(
        &self,
        saga: &Saga,
        before: chrono::DateTime<Utc>,
    ) -> Result<Option<&'static str>, OrdersError> {
        match saga.state {
            SagaState::Ordered => {
                let version = saga.cart_version.unwrap_or(-1);
                self.finish_checkout(saga.order_id, &saga.user_id, version)
                    .await?;
                Ok(Some("finished"))
            }
            SagaState::Started | SagaState::Committed | SagaState::Undoing => {
                if !repo::claim_for_undo(&self.0.db, saga.order_id, before).await? {
                    return Ok(None);
                }
                if let Some(lines) = &saga.lines {
                    let order_id = saga.order_id.to_string();
                    let stock = stock_lines(lines);
                    let owner = match saga.kind {
                        OrderSource::Checkout => saga.user_id.clone(),
                        OrderSource::Direct => direct_owner(saga.order_id),
                    };
                    // Was the stock committed? Committing again is idempotent per order id and
                    // answers the question: if it goes through, the units are taken (now or
                    // before) and go straight back; if refused, nothing was ever taken — or,
                    // refused as stock-unknown, the catalog lost the figure the units would go
                    // back to, and operators set it anew.
                    if self.0.catalog.commit(&order_id, &owner, &stock).await?.is_ok() {
                        self.0.catalog.restock(&order_id, &stock).await?;
                    }
                }
                repo::delete_saga(&self.0.db, saga.order_id, SagaState::Undoing).await?;
                Ok(Some("undone"))
            }
            SagaState::Completed => Ok(None),
        }
    }

    /// Retry the restock of cancelled orders whose stock has not been returned yet.
    pub async fn retry_restocks(&self) -> Result<(), OrdersError> {
        for id in repo::pending_restocks(&self.0.db, 100).await? {
            self.restock_cancelled(id).await;
        }
        Ok(())
    }

    /// Refresh `orders_by_status` and `outbox_backlog`.
    pub async fn refresh_gauges(&self) -> Result<(), OrdersError> {
        let counts: HashMap<String, i64> = repo::status_counts(&self.0.db).await?.into_iter().collect();
        for status in OrderStatus::ALL {
            self.0
                .metrics
                .by_status
                .with_label_values(&[status.as_str()])
                .set(counts.get(status.as_str()).copied().unwrap_or(0));
        }
        self.0
            .metrics
            .outbox_backlog
            .set(repo::outbox_backlog(&self.0.db).await?);
        Ok(())
    }
}

/// How a placement failed after its saga was recorded.
enum Failed {
    /// Nothing needs undoing (the stock was never committed): the caller drops the saga.
    Clean(OrdersError),
    /// Already dealt with (stock given back), or left to the recovery task: leave the saga alone.
    Settled(OrdersError),
}

fn taken_over(order_id: Uuid) -> OrdersError {
    OrdersError::Upstream(UpstreamError::Unavailable {
        service: "catalog",
        cause: format!("order {order_id} took too long and was undone by the recovery task"),
    })
}

fn stock_lines(lines: &[PricedLine]) -> Vec<StockLine> {
    lines
        .iter()
        .map(|line| StockLine {
            product_id: line.product_id.clone(),
            quantity: i64::from(line.quantity),
        })
        .collect()
}

/// The inventory owner of a direct order: it has no holds, so its stock comes from free stock.
fn direct_owner(order_id: Uuid) -> String {
    format!("order-{order_id}")
}

fn currency_of(lines: &[PricedLine]) -> Result<String, OrdersError> {
    let currency = lines
        .first()
        .map(|line| line.currency.clone())
        .unwrap_or_else(|| "USD".into());
    if lines.iter().any(|line| line.currency != currency) {
        return Err(OrdersError::BadRequest(
            "All products of one order must be priced in the same currency.".into(),
        ));
    }
    Ok(currency)
}

/// An order id from a path: a UUID, else 400.
pub fn parse_order_id(id: &str) -> Result<Uuid, OrdersError> {
    Uuid::parse_str(id.trim())
        .map_err(|_| OrdersError::BadRequest(format!("{id:?} is not a valid order id (a UUID was expected)")))
}

/// User and product ids follow the shared alphabet ([`ids`]): they end up in the cart's and
/// catalog's paths.
pub fn validate_id(what: &str, value: &str) -> Result<(), OrdersError> {
    ids::check_id(what, value).map_err(OrdersError::BadRequest)
}

/// A required id: present, and [`validate_id`]'s shape.
pub fn required_id(what: &str, value: Option<String>) -> Result<String, OrdersError> {
    let value = value.ok_or_else(|| OrdersError::BadRequest(format!("{what} is required")))?;
    validate_id(what, &value)?;
    Ok(value)
}

/// A required free-text field: bounded, no NUL, trimmed, non-empty.
pub fn required_text(what: &str, value: Option<&str>) -> Result<String, OrdersError> {
    optional_text(what, value)?.ok_or_else(|| OrdersError::BadRequest(format!("{what} is required")))
}

/// An optional free-text field: bounded (before trimming, as the document counts), no NUL
/// (PostgreSQL `text` cannot hold one), trimmed, blank → absent.
pub fn optional_text(what: &str, value: Option<&str>) -> Result<Option<String>, OrdersError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.chars().count() > MAX_TEXT_LEN {
        return Err(OrdersError::BadRequest(format!(
            "{what} must be at most {MAX_TEXT_LEN} characters"
        )));
    }
    if value.contains('\0') {
        return Err(OrdersError::BadRequest(format!(
            "{what} must not contain NUL characters"
        )));
    }
    let value = value.trim();
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

/// The saga's key and fingerprint: the request's [`Keyed`] scope within the user and kind
/// (the route), and the SHA-256 fingerprint every service compares. Unkeyed: nothing to compare.
fn key_and_fingerprint(keyed: Option<Keyed>) -> (Option<String>, String) {
    match keyed {
        Some(keyed) => (Some(keyed.key), keyed.fingerprint),
        None => (None, String::new()),
    }
}
