//! Every SQL statement of the service, each written once for both engines (see [`crate::db`]).
//!
//! Writes that announce something (an order placed, a status changed) insert their event into
//! the `outbox` table in the same transaction, so the change and its event commit together.

use chrono::{DateTime, Utc};
use shopstack_base::money::Money;
use shopstack_base::pagination::Page;
use shopstack_events::events::Event;
use sqlx::Row as _;
use uuid::Uuid;

use crate::db::{BeginWrite as _, Db, DbId, is_unique_violation, now, query};
use crate::model::{Order, OrderItem, OrderSource, OrderStatus, PricedLine};
use crate::on_db;

const ORDER_COLUMNS: &str = "o.id, o.user_id, o.status, o.total_amount_cents, o.currency, o.shipping_address, \
     o.billing_address, o.notes, o.source, o.version, o.created_at, o.updated_at";

/// An order about to be written.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub id: Uuid,
    pub user_id: String,
    pub currency: String,
    pub shipping_address: String,
    pub billing_address: Option<String>,
    pub notes: Option<String>,
    pub source: OrderSource,
    pub lines: Vec<PricedLine>,
}

impl NewOrder {
    pub fn total(&self) -> Money {
        self.lines.iter().map(PricedLine::subtotal).sum()
    }
}

/// Which orders a list shows.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub user_id: Option<String>,
    pub status: Option<OrderStatus>,
}

/// The saga record of an order being placed (table `order_sagas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    pub order_id: Uuid,
    pub kind: OrderSource,
    pub user_id: String,
    pub idempotency_key: Option<String>,
    /// The canonical request, to tell a retry from a different request with the same key.
    pub request: String,
    pub cart_version: Option<i64>,
    pub lines: Option<Vec<PricedLine>>,
    pub state: SagaState,
    pub updated_at: DateTime<Utc>,
}

/// How far a saga got. See docs/design/checkout.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaState {
    /// Recorded; stock may or may not be committed.
    Started,
    /// Stock committed in the catalog; no order written yet.
    Committed,
    /// Order written (checkout only): the cart still has to be cleared.
    Ordered,
    /// Done; kept for idempotent replays until pruned.
    Completed,
    /// Taken over by the recovery task, which gives the stock back and then drops the record.
    Undoing,
}

impl SagaState {
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Started => "started",
            SagaState::Committed => "committed",
            SagaState::Ordered => "ordered",
            SagaState::Completed => "completed",
            SagaState::Undoing => "undoing",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "committed" => SagaState::Committed,
            "ordered" => SagaState::Ordered,
            "completed" => SagaState::Completed,
            "undoing" => SagaState::Undoing,
            _ => SagaState::Started,
        }
    }
}

/// Why a saga could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum SagaConflict {
    /// Another saga already uses this (user, kind, idempotency key), or the user already has an
    /// unfinished checkout.
    #[error("a conflicting order request is already recorded")]
    Exists,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// One outbox row waiting to be relayed.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub payload: String,
}

/// The columns of one row of the order/items join.
struct JoinedRow {
    id: DbId,
    user_id: String,
    status: String,
    total_cents: i64,
    currency: String,
    shipping_address: String,
    billing_address: Option<String>,
    notes: Option<String>,
    source: String,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    item: Option<(DbId, String, i32, i64, i64)>,
}

macro_rules! joined_row {
    ($row:expr) => {{
        let row = $row;
        let item_id: Option<DbId> = row.try_get("item_id")?;
        JoinedRow {
            id: row.try_get("id")?,
            user_id: row.try_get("user_id")?,
            status: row.try_get("status")?,
            total_cents: row.try_get("total_amount_cents")?,
            currency: row.try_get("currency")?,
            shipping_address: row.try_get("shipping_address")?,
            billing_address: row.try_get("billing_address")?,
            notes: row.try_get("notes")?,
            source: row.try_get("source")?,
            version: row.try_get("version")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            item: match item_id {
                Some(item_id) => Some((
                    item_id,
                    row.try_get("product_id")?,
                    row.try_get("quantity")?,
                    row.try_get("unit_price_cents")?,
                    row.try_get("subtotal_cents")?,
                )),
                None => None,
            },
        }
    }};
}

/// Fold joined rows (ordered by order, then item position) into orders.
fn fold_orders(rows: Vec<JoinedRow>) -> Vec<Order> {
    let mut orders: Vec<Order> = Vec::new();
    for row in rows {
        let id = row.id.0.to_string();
        if orders.last().is_none_or(|last| last.id != id) {
            orders.push(Order {
                id,
                user_id: row.user_id,
                status: row.status.parse().unwrap_or(OrderStatus::Pending),
                total_amount: Money::from_cents(row.total_cents),
                currency: row.currency,
                shipping_address: row.shipping_address,
                billing_address: row.billing_address,
                notes: row.notes,
                order_items: Vec::new(),
                source: OrderSource::parse(&row.source),
                version: row.version,
                created_at: row.created_at,
                updated_at: row.updated_at,
            });
        }
        if let (Some(order), Some((item_id, product_id, quantity, unit, subtotal))) =
            (orders.last_mut(), row.item)
        {
            order.order_items.push(OrderItem {
                id: item_id.0.to_string(),
                product_id,
                quantity,
                unit_price: Money::from_cents(unit),
                subtotal: Money::from_cents(subtotal),
            });
        }
    }
    orders
}

fn where_clause() -> &'static str {
    "($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR status = $2)"
}

/// Write `order` with its items and `event` in one transaction, and move its saga from
/// `committed` to `saga_state`. False (nothing written) when the saga is no longer `committed`
/// (the recovery task took it over).
pub async fn insert_order(
    db: &Db,
    order: &NewOrder,
    saga_state: SagaState,
    event: &Event,
) -> sqlx::Result<bool> {
    let at = now();
    let payload = serde_json::to_string(event).unwrap_or_default();
    let event_id = Uuid::parse_str(&event.id).unwrap_or_else(|_| Uuid::now_v7());
    on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        let owned = query(
            "UPDATE order_sagas SET state = $1, updated_at = $2 WHERE order_id = $3 AND state = 'committed'",
        )
        .bind(saga_state.as_str())
        .bind(at)
        .bind(DbId(order.id))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if owned != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        query(
            "INSERT INTO orders (id, user_id, status, total_amount_cents, currency, shipping_address, \
             billing_address, notes, source, version, restock_pending, created_at, updated_at) \
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, 1, FALSE, $9, $9)",
        )
        .bind(DbId(order.id))
        .bind(&order.user_id)
        .bind(order.total().cents())
        .bind(&order.currency)
        .bind(&order.shipping_address)
        .bind(&order.billing_address)
        .bind(&order.notes)
        .bind(order.source.as_str())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        for (position, line) in order.lines.iter().enumerate() {
            query(
                "INSERT INTO order_items (id, order_id, position, product_id, quantity, unit_price_cents, \
                 subtotal_cents, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
            )
            .bind(DbId(Uuid::now_v7()))
            .bind(DbId(order.id))
            .bind(i32::try_from(position).unwrap_or(i32::MAX))
            .bind(&line.product_id)
            .bind(line.quantity)
            .bind(line.unit_price_cents)
            .bind(line.subtotal().cents())
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        query(
            "INSERT INTO outbox (event_id, event_type, aggregate_id, payload, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(DbId(event_id))
        .bind(&event.event_type)
        .bind(DbId(order.id))
        .bind(&payload)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    })
}

/// One order with its items.
pub async fn get_order(db: &Db, id: Uuid) -> sqlx::Result<Option<Order>> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS}, i.id AS item_id, i.product_id, i.quantity, i.unit_price_cents, i.subtotal_cents \
         FROM orders o LEFT JOIN order_items i ON i.order_id = o.id WHERE o.id = $1 ORDER BY i.position"
    );
    let rows = on_db!(db, pool => {
        let rows = query(sqlx::AssertSqlSafe(sql)).bind(DbId(id)).fetch_all(pool).await?;
        let mut joined = Vec::with_capacity(rows.len());
        for row in &rows {
            joined.push(joined_row!(row));
        }
        joined
    });
    Ok(fold_orders(rows).into_iter().next())
}

/// A page of orders, newest first, and how many match in all. One statement, so the page and
/// its items come from the same snapshot.
pub async fn list_orders(db: &Db, filter: &OrderFilter, page: Page) -> sqlx::Result<(Vec<Order>, u64)> {
    let count_sql = format!("SELECT COUNT(*) AS total FROM orders WHERE {}", where_clause());
    let page_sql = format!(
        "SELECT {ORDER_COLUMNS}, i.id AS item_id, i.product_id, i.quantity, i.unit_price_cents, i.subtotal_cents \
         FROM (SELECT * FROM orders WHERE {} ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4) o \
         LEFT JOIN order_items i ON i.order_id = o.id \
         ORDER BY o.created_at DESC, o.id DESC, i.position",
        where_clause()
    );
    let status = filter.status.map(OrderStatus::as_str);
    let limit = i64::from(page.page_size);
    let offset = i64::try_from(page.offset()).unwrap_or(i64::MAX);
    let (total, rows) = on_db!(db, pool => {
        let total: i64 = query(sqlx::AssertSqlSafe(count_sql))
            .bind(&filter.user_id)
            .bind(status)
            .fetch_one(pool)
            .await?
            .try_get("total")?;
        let rows = query(sqlx::AssertSqlSafe(page_sql))
            .bind(&filter.user_id)
            .bind(status)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await?;
        let mut joined = Vec::with_capacity(rows.len());
        for row in &rows {
            joined.push(joined_row!(row));
        }
        (total, joined)
    });
    Ok((fold_orders(rows), u64::try_from(total).unwrap_or(0)))
}

/// Move order `id` from `from` (at `version`) to `to`, with `event` in the outbox, in one
/// transaction. False when the order is no longer at `version` (someone else changed it first).
pub async fn change_status(
    db: &Db,
    id: Uuid,
    version: i64,
    to: OrderStatus,
    restock_pending: bool,
    event: &Event,
) -> sqlx::Result<bool> {
    let at = now();
    let payload = serde_json::to_string(event).unwrap_or_default();
    let event_id = Uuid::parse_str(&event.id).unwrap_or_else(|_| Uuid::now_v7());
    on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        let changed = query(
            "UPDATE orders SET status = $1, version = version + 1, restock_pending = $2, updated_at = $3 \
             WHERE id = $4 AND version = $5",
        )
        .bind(to.as_str())
        .bind(restock_pending)
        .bind(at)
        .bind(DbId(id))
        .bind(version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        query(
            "INSERT INTO outbox (event_id, event_type, aggregate_id, payload, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(DbId(event_id))
        .bind(&event.event_type)
        .bind(DbId(id))
        .bind(&payload)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    })
}

/// The stock of cancelled order `id` is back in the catalog.
pub async fn clear_restock_pending(db: &Db, id: Uuid) -> sqlx::Result<()> {
    on_db!(db, pool => {
        query("UPDATE orders SET restock_pending = FALSE WHERE id = $1")
            .bind(DbId(id))
            .execute(pool)
            .await
            .map(|_| ())
    })
}

/// Cancelled orders whose stock has not been returned yet.
pub async fn pending_restocks(db: &Db, limit: i64) -> sqlx::Result<Vec<Uuid>> {
    on_db!(db, pool => {
        let rows = query("SELECT id FROM orders WHERE restock_pending ORDER BY id LIMIT $1")
            .bind(limit)
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|row| row.try_get::<DbId, _>("id").map(|id| id.0))
            .collect()
    })
}

/// Orders per status.
pub async fn status_counts(db: &Db) -> sqlx::Result<Vec<(String, i64)>> {
    on_db!(db, pool => {
        let rows = query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status")
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get::<String, _>("status")?, row.try_get::<i64, _>("n")?)))
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// Sagas

macro_rules! saga_row {
    ($row:expr) => {{
        let row = $row;
        let lines: Option<String> = row.try_get("lines")?;
        Saga {
            order_id: row.try_get::<DbId, _>("order_id")?.0,
            kind: OrderSource::parse(&row.try_get::<String, _>("kind")?),
            user_id: row.try_get("user_id")?,
            idempotency_key: row.try_get("idempotency_key")?,
            request: row.try_get("request")?,
            cart_version: row.try_get("cart_version")?,
            lines: lines.and_then(|text| serde_json::from_str(&text).ok()),
            state: SagaState::parse(&row.try_get::<String, _>("state")?),
            updated_at: row.try_get("updated_at")?,
        }
    }};
}

const SAGA_COLUMNS: &str =
    "order_id, kind, user_id, idempotency_key, request, cart_version, lines, state, updated_at";

/// Record a new saga in state `started`.
pub async fn insert_saga(db: &Db, saga: &Saga) -> Result<(), SagaConflict> {
    let at = now();
    let lines = saga
        .lines
        .as_ref()
        .map(|lines| serde_json::to_string(lines).unwrap_or_default());
    let result = on_db!(db, pool => {
        query(
            "INSERT INTO order_sagas (order_id, kind, user_id, idempotency_key, request, cart_version, lines, \
             state, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(DbId(saga.order_id))
        .bind(saga.kind.as_str())
        .bind(&saga.user_id)
        .bind(&saga.idempotency_key)
        .bind(&saga.request)
        .bind(saga.cart_version)
        .bind(lines)
        .bind(saga.state.as_str())
        .bind(at)
        .execute(pool)
        .await
        .map(|_| ())
    });
    match result {
        Ok(_) => Ok(()),
        Err(error) if is_unique_violation(&error) => Err(SagaConflict::Exists),
        Err(error) => Err(SagaConflict::Db(error)),
    }
}

/// The saga an Idempotency-Key names in its scope: the user, the kind (the route) and the key.
pub async fn saga_by_key(db: &Db, user_id: &str, kind: OrderSource, key: &str) -> sqlx::Result<Option<Saga>> {
    let sql = format!(
        "SELECT {SAGA_COLUMNS} FROM order_sagas WHERE user_id = $1 AND kind = $2 AND idempotency_key = $3"
    );
    on_db!(db, pool => {
        match query(sqlx::AssertSqlSafe(sql)).bind(user_id).bind(kind.as_str()).bind(key).fetch_optional(pool).await? {
            Some(row) => Ok(Some(saga_row!(&row))),
            None => Ok(None),
        }
    })
}

/// The user's unfinished checkout, if any.
pub async fn open_checkout(db: &Db, user_id: &str) -> sqlx::Result<Option<Saga>> {
    let sql = format!(
        "SELECT {SAGA_COLUMNS} FROM order_sagas WHERE user_id = $1 AND kind = 'checkout' AND state <> 'completed'"
    );
    on_db!(db, pool => {
        match query(sqlx::AssertSqlSafe(sql)).bind(user_id).fetch_optional(pool).await? {
            Some(row) => Ok(Some(saga_row!(&row))),
            None => Ok(None),
        }
    })
}

/// Save what the saga learned (cart version, priced lines).
pub async fn update_saga(
    db: &Db,
    order_id: Uuid,
    cart_version: Option<i64>,
    lines: &[PricedLine],
) -> sqlx::Result<()> {
    let lines = serde_json::to_string(lines).unwrap_or_default();
    on_db!(db, pool => {
        query("UPDATE order_sagas SET cart_version = $1, lines = $2, updated_at = $3 WHERE order_id = $4")
            .bind(cart_version)
            .bind(lines)
            .bind(now())
            .bind(DbId(order_id))
            .execute(pool)
            .await
            .map(|_| ())
    })
}

/// Move a saga from `from` to `to`; false when it is no longer in `from`.
pub async fn transition_saga(db: &Db, order_id: Uuid, from: SagaState, to: SagaState) -> sqlx::Result<bool> {
    on_db!(db, pool => {
        query("UPDATE order_sagas SET state = $1, updated_at = $2 WHERE order_id = $3 AND state = $4")
            .bind(to.as_str())
            .bind(now())
            .bind(DbId(order_id))
            .bind(from.as_str())
            .execute(pool)
            .await
            .map(|result| result.rows_affected() == 1)
    })
}

/// The recovery task takes over an interrupted saga (state `started`, `committed` or a stale
/// `undoing`) untouched since `before`; false when someone else moved it meanwhile.
pub async fn claim_for_undo(db: &Db, order_id: Uuid, before: DateTime<Utc>) -> sqlx::Result<bool> {
    on_db!(db, pool => {
        query(
            "UPDATE order_sagas SET state = 'undoing', updated_at = $1 WHERE order_id = $2 \
             AND state IN ('started', 'committed', 'undoing') AND updated_at < $3",
        )
        .bind(now())
        .bind(DbId(order_id))
        .bind(before)
        .execute(pool)
        .await
        .map(|result| result.rows_affected() == 1)
    })
}

/// Forget a saga that left nothing behind, if it is still in `state`: its idempotency key (and
/// the user's checkout lock) are free again.
pub async fn delete_saga(db: &Db, order_id: Uuid, state: SagaState) -> sqlx::Result<bool> {
    on_db!(db, pool => {
        query("DELETE FROM order_sagas WHERE order_id = $1 AND state = $2")
            .bind(DbId(order_id))
            .bind(state.as_str())
            .execute(pool)
            .await
            .map(|result| result.rows_affected() == 1)
    })
}

/// Unfinished sagas not touched since `before` (interrupted: the recovery finishes or undoes them).
pub async fn stale_sagas(db: &Db, before: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<Saga>> {
    let sql = format!(
        "SELECT {SAGA_COLUMNS} FROM order_sagas WHERE state <> 'completed' AND updated_at < $1 \
         ORDER BY updated_at LIMIT $2"
    );
    on_db!(db, pool => {
        let rows = query(sqlx::AssertSqlSafe(sql)).bind(before).bind(limit).fetch_all(pool).await?;
        let mut sagas = Vec::with_capacity(rows.len());
        for row in &rows {
            sagas.push(saga_row!(row));
        }
        Ok(sagas)
    })
}

/// Drop finished sagas older than `before` (their idempotency keys expire).
pub async fn prune_sagas(db: &Db, before: DateTime<Utc>) -> sqlx::Result<u64> {
    on_db!(db, pool => {
        query("DELETE FROM order_sagas WHERE state = 'completed' AND updated_at < $1")
            .bind(before)
            .execute(pool)
            .await
            .map(|result| result.rows_affected())
    })
}

// ---------------------------------------------------------------------------------------------
// Outbox

/// The oldest events not yet published, in the order they were written.
pub async fn unpublished(db: &Db, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
    on_db!(db, pool => {
        let rows = query("SELECT id, payload FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1")
            .bind(limit)
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|row| Ok(OutboxRow { id: row.try_get("id")?, payload: row.try_get("payload")? }))
            .collect()
    })
}

pub async fn mark_published(db: &Db, ids: &[i64]) -> sqlx::Result<()> {
    let at = now();
    on_db!(db, pool => {
        let mut tx = pool.begin_write().await?;
        for id in ids {
            query("UPDATE outbox SET published_at = $1, attempts = attempts + 1 WHERE id = $2")
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    })
}

pub async fn mark_failed(db: &Db, id: i64, error: &str) -> sqlx::Result<()> {
    on_db!(db, pool => {
        query("UPDATE outbox SET attempts = attempts + 1, last_error = $1 WHERE id = $2")
            .bind(error)
            .bind(id)
            .execute(pool)
            .await
            .map(|_| ())
    })
}

/// Events written but not yet published.
pub async fn outbox_backlog(db: &Db) -> sqlx::Result<i64> {
    on_db!(db, pool => {
        query("SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?
            .try_get("n")
    })
}

/// Drop published events older than `before`.
pub async fn prune_outbox(db: &Db, before: DateTime<Utc>) -> sqlx::Result<u64> {
    on_db!(db, pool => {
        query("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1")
            .bind(before)
            .execute(pool)
            .await
            .map(|result| result.rows_affected())
    })
}
