//! Stock and reservations: products never go below zero, under any concurrency, across any
//! number of catalog and cart replicas.
//!
//! `stock` is what is still free to reserve. A *hold* is one owner's (a cart's user's)
//! reservation of one product; setting a hold is absolute (`quantity` N, not "+N"), so retries
//! are harmless. Every hold of an owner expires together, `ttl` after the owner's last change
//! (the cart's time-to-live), and the reaper gives expired holds back — a cart that crashed
//! between reserving and saving cannot keep stock forever. Checkout *commits* an owner's holds
//! (they become sold units); cancelling an order *restocks*. Both are idempotent per order id.
//!
//! Two backends: in memory (one catalog) and Redis, where every operation is one Lua script —
//! atomic on the server, no lock held across the network — so replicas share stock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use shopstack_redis::redis::Redis;
use utoipa::ToSchema;

/// How long commit/restock markers are kept to recognise a retried order id.
pub const ORDER_MARKER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most units one line may carry through the inventory API (the cart's `MAX_ITEM_QUANTITY`
/// tops out at the same number).
pub const MAX_LINE_QUANTITY: u32 = 1_000_000;

/// A product and a number of units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Line {
    #[schema(
        example = "prod-123",
        pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$",
        min_length = 1,
        max_length = 128
    )]
    pub product_id: String,
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(deserialize_with = "shopstack_base::extract::whole_number")]
    pub quantity: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InventoryError {
    /// Not enough free stock; nothing changed.
    #[error("Insufficient stock. Only {available} available.")]
    Insufficient { product_id: String, available: i64 },
    /// The stock store cannot be reached; nothing is known to have changed.
    #[error("inventory store unavailable: {0}")]
    Unavailable(String),
    /// The store has no stock figure for this product (lost with the store's data, and not set
    /// again by an operator yet); nothing changed.
    #[error("the stock of {product_id} is not known")]
    StockUnknown { product_id: String },
}

/// What seeding found in the store (docs/design/inventory.md, "When Redis loses its data").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedOutcome {
    /// The store was initialised before: only products new to the catalogue got their stock.
    Ready,
    /// A store never initialised: every product got its initial stock, and the marker is set.
    Seeded,
    /// The marker was missing but every product has a stock figure again (set by operators):
    /// the marker is set again.
    Restored,
    /// The store's data is gone: these products have no stock figure, and none is made up.
    Lost(Vec<String>),
}

/// The result of setting a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldOutcome {
    /// The hold now in place.
    pub quantity: u32,
    /// Free stock left afterwards.
    pub stock: i64,
}

/// Owners whose holds expired and were given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    pub owner: String,
    pub lines: usize,
}

pub trait InventoryStore: Send + Sync + 'static {
    fn backend(&self) -> &'static str;

    /// Give each product its initial stock in a store never initialised (`may_initialise`:
    /// this process has not seen the store initialised, so an empty store is taken as new);
    /// in an initialised one, only products without a figure (new to the catalogue). Never
    /// writes into a store that lost its data.
    fn seed<'a>(
        &'a self,
        initial: &'a [(String, i64)],
        may_initialise: bool,
    ) -> BoxFuture<'a, Result<SeedOutcome, InventoryError>>;

    /// Free stock of each product, in order (0 for a product without stock).
    fn stock<'a>(&'a self, product_ids: &'a [String]) -> BoxFuture<'a, Result<Vec<i64>, InventoryError>>;

    /// Operator override of a product's free stock.
    fn set_stock<'a>(&'a self, product_id: &'a str, stock: i64) -> BoxFuture<'a, Result<(), InventoryError>>;

    /// Set `owner`'s hold on `product_id` to `quantity` (0 releases it), taking the difference
    /// from (or giving it back to) free stock; restarts the owner's expiry.
    fn set_hold<'a>(
        &'a self,
        owner: &'a str,
        product_id: &'a str,
        quantity: u32,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<HoldOutcome, InventoryError>>;

    fn holds<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Line>, InventoryError>>;

    /// Give all of `owner`'s holds back; returns what was released.
    fn release_owner<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Line>, InventoryError>>;

    /// Turn `owner`'s holds on `items` into sold units (a shortfall comes from free stock).
    /// All or nothing; a repeat with the same `order_id` does nothing and succeeds.
    fn commit<'a>(
        &'a self,
        order_id: &'a str,
        owner: &'a str,
        items: &'a [Line],
    ) -> BoxFuture<'a, Result<(), InventoryError>>;

    /// Return `items` to free stock once per `order_id`; false when already done.
    fn restock<'a>(
        &'a self,
        order_id: &'a str,
        items: &'a [Line],
    ) -> BoxFuture<'a, Result<bool, InventoryError>>;

    /// Give back the holds of owners whose expiry is past.
    fn reap_expired(&self) -> BoxFuture<'_, Result<Vec<Reaped>, InventoryError>>;
}

/// Merge duplicate products so an order listing one twice is checked as one line.
pub fn merge_lines(items: &[Line]) -> Vec<Line> {
    let mut merged: BTreeMap<&str, u32> = BTreeMap::new();
    for item in items {
        let entry = merged.entry(item.product_id.as_str()).or_default();
        *entry = entry.saturating_add(item.quantity);
    }
    merged
        .into_iter()
        .map(|(product_id, quantity)| Line {
            product_id: product_id.to_owned(),
            quantity,
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// In memory

#[derive(Default)]
struct OwnerHolds {
    lines: HashMap<String, u32>,
    expires_at_ms: u64,
}

#[derive(Default)]
struct MemoryState {
    stock: HashMap<String, i64>,
    holds: HashMap<String, OwnerHolds>,
    /// order id → expiry (ms) of its commit / restock marker.
    committed: HashMap<String, u64>,
    restocked: HashMap<String, u64>,
}

/// Stock in the catalog process: for a single catalog.
#[derive(Default)]
pub struct MemoryInventory {
    state: Mutex<MemoryState>,
}

impl MemoryInventory {
    fn with_state<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> T {
        let mut guard = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

impl InventoryStore for MemoryInventory {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn seed<'a>(
        &'a self,
        initial: &'a [(String, i64)],
        _may_initialise: bool,
    ) -> BoxFuture<'a, Result<SeedOutcome, InventoryError>> {
        // The numbers live and die with this process: they cannot be lost while it runs.
        Box::pin(async move {
            self.with_state(|state| {
                for (product_id, stock) in initial {
                    state.stock.entry(product_id.clone()).or_insert(*stock);
                }
            });
            Ok(SeedOutcome::Ready)
        })
    }

    fn stock<'a>(&'a self, product_ids: &'a [String]) -> BoxFuture<'a, Result<Vec<i64>, InventoryError>> {
        Box::pin(async move {
            Ok(self.with_state(|state| {
                product_ids
                    .iter()
                    .map(|id| state.stock.get(id).copied().unwrap_or(0))
                    .collect()
            }))
        })
    }

    fn set_stock<'a>(&'a self, product_id: &'a str, stock: i64) -> BoxFuture<'a, Result<(), InventoryError>> {
        Box::pin(async move {
            self.with_state(|state| state.stock.insert(product_id.to_owned(), stock));
            Ok(())
        })
    }

    fn set_hold<'a>(
        &'a self,
        owner: &'a str,
        product_id: &'a str,
        quantity: u32,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<HoldOutcome, InventoryError>> {
        Box::pin(async move {
            self.with_state(|state| {
                let current = state
                    .holds
                    .get(owner)
                    .and_then(|holds| holds.lines.get(product_id))
                    .copied()
                    .unwrap_or(0);
                let stock = state.stock.entry(product_id.to_owned()).or_insert(0);
                let delta = i64::from(quantity) - i64::from(current);
                if delta > *stock {
                    return Err(InventoryError::Insufficient {
                        product_id: product_id.to_owned(),
                        available: *stock,
                    });
                }
                *stock = stock.saturating_sub(delta);
                let stock = *stock;
                let holds = state.holds.entry(owner.to_owned()).or_default();
                if quantity == 0 {
                    holds.lines.remove(product_id);
                } else {
                    holds.lines.insert(product_id.to_owned(), quantity);
                }
                holds.expires_at_ms = now_ms() + ttl.as_millis() as u64;
                if holds.lines.is_empty() {
                    state.holds.remove(owner);
                }
                Ok(HoldOutcome { quantity, stock })
            })
        })
    }

    fn holds<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Line>, InventoryError>> {
        Box::pin(async move {
            Ok(self.with_state(|state| {
                let lines: Vec<Line> = state
                    .holds
                    .get(owner)
                    .map(|holds| {
                        holds
                            .lines
                            .iter()
                            .map(|(product_id, &quantity)| Line {
                                product_id: product_id.clone(),
                                quantity,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                merge_lines(&lines)
            }))
        })
    }

    fn release_owner<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Line>, InventoryError>> {
        Box::pin(async move { Ok(self.with_state(|state| release_in_memory(state, owner))) })
    }

    fn commit<'a>(
        &'a self,
        order_id: &'a str,
        owner: &'a str,
        items: &'a [Line],
    ) -> BoxFuture<'a, Result<(), InventoryError>> {
        Box::pin(async move {
            let items = merge_lines(items);
            self.with_state(|state| {
                let now = now_ms();
                state.committed.retain(|_, expires| *expires > now);
                if state.committed.contains_key(order_id) {
                    return Ok(());
                }
                let held = |state: &MemoryState, product_id: &str| {
                    state
                        .holds
                        .get(owner)
                        .and_then(|holds| holds.lines.get(product_id))
                        .copied()
                        .unwrap_or(0)
                };
                for item in &items {
                    let shortfall = i64::from(item.quantity)
                        - i64::from(held(state, &item.product_id).min(item.quantity));
                    let available = state.stock.get(&item.product_id).copied().unwrap_or(0);
                    if shortfall > available {
                        return Err(InventoryError::Insufficient {
                            product_id: item.product_id.clone(),
                            available,
                        });
                    }
                }
                for item in &items {
                    let current = held(state, &item.product_id);
                    let taken = current.min(item.quantity);
                    let shortfall = i64::from(item.quantity - taken);
                    if let Some(holds) = state.holds.get_mut(owner) {
                        if current == taken {
                            holds.lines.remove(&item.product_id);
                        } else {
                            holds.lines.insert(item.product_id.clone(), current - taken);
                        }
                    }
                    if let Some(stock) = state.stock.get_mut(&item.product_id) {
                        *stock = stock.saturating_sub(shortfall);
                    }
                }
                if state.holds.get(owner).is_some_and(|holds| holds.lines.is_empty()) {
                    state.holds.remove(owner);
                }
                state
                    .committed
                    .insert(order_id.to_owned(), now + ORDER_MARKER_TTL.as_millis() as u64);
                Ok(())
            })
        })
    }

    fn restock<'a>(
        &'a self,
        order_id: &'a str,
        items: &'a [Line],
    ) -> BoxFuture<'a, Result<bool, InventoryError>> {
        Box::pin(async move {
            Ok(self.with_state(|state| {
                let now = now_ms();
                state.restocked.retain(|_, expires| *expires > now);
                if state.restocked.contains_key(order_id) {
                    return false;
                }
                for item in items {
                    let stock = state.stock.entry(item.product_id.clone()).or_insert(0);
                    *stock = stock.saturating_add(i64::from(item.quantity));
                }
                state
                    .restocked
                    .insert(order_id.to_owned(), now + ORDER_MARKER_TTL.as_millis() as u64);
                true
            }))
        })
    }

    fn reap_expired(&self) -> BoxFuture<'_, Result<Vec<Reaped>, InventoryError>> {
        Box::pin(async move {
            Ok(self.with_state(|state| {
                let now = now_ms();
                let expired: Vec<String> = state
                    .holds
                    .iter()
                    .filter(|(_, holds)| holds.expires_at_ms <= now)
                    .map(|(owner, _)| owner.clone())
                    .collect();
                expired
                    .into_iter()
                    .map(|owner| {
                        let lines = release_in_memory(state, &owner).len();
                        Reaped { owner, lines }
                    })
                    .collect()
            }))
        })
    }
}

fn release_in_memory(state: &mut MemoryState, owner: &str) -> Vec<Line> {
    let Some(holds) = state.holds.remove(owner) else {
        return Vec::new();
    };
    let mut released = Vec::new();
    for (product_id, quantity) in holds.lines {
        let stock = state.stock.entry(product_id.clone()).or_insert(0);
        *stock = stock.saturating_add(i64::from(quantity));
        released.push(Line { product_id, quantity });
    }
    merge_lines(&released)
}

// ---------------------------------------------------------------------------------------------
// Redis

const STOCK_PREFIX: &str = "stock:";
const HOLD_PREFIX: &str = "hold:";
const EXPIRY_KEY: &str = "holds:expiry";
const COMMITTED_PREFIX: &str = "inventory:committed:";
const RESTOCKED_PREFIX: &str = "inventory:restocked:";
/// Written with the first seed: a store without it either was never initialised or lost its
/// data (docs/design/inventory.md).
const INITIALISED_KEY: &str = "inventory:initialised";
/// Owners reaped per script run, so one run never blocks Redis for long.
const REAP_BATCH: usize = 100;

/// Seed. KEYS: marker. ARGV: '1' when the store may be initialised, stock prefix, marker value,
/// then product, stock pairs. Returns {'ready'}, {'seeded'}, {'restored'} or {'lost', products…}.
const SEED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 4, #ARGV, 2 do redis.call('SET', ARGV[2] .. ARGV[i], ARGV[i + 1], 'NX') end
  return {'ready'}
end
local missing = {}
for i = 4, #ARGV, 2 do
  if redis.call('EXISTS', ARGV[2] .. ARGV[i]) == 0 then table.insert(missing, ARGV[i]) end
end
if #missing == 0 then
  redis.call('SET', KEYS[1], ARGV[3])
  return {'restored'}
end
if ARGV[1] == '1' and #missing * 2 == #ARGV - 3 then
  for i = 4, #ARGV, 2 do redis.call('SET', ARGV[2] .. ARGV[i], ARGV[i + 1]) end
  redis.call('SET', KEYS[1], ARGV[3])
  return {'seeded'}
end
table.insert(missing, 1, 'lost')
return missing
";

/// Set one hold. KEYS: stock, hold, expiry. ARGV: product, quantity, expires_at_ms, owner.
/// Returns {hold, stock}, {-1, available} when short, {-2, 0} when the stock is not known.
const SET_HOLD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2, 0} end
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local wanted = tonumber(ARGV[2])
local delta = wanted - current
if delta > stock then return {-1, stock} end
stock = redis.call('DECRBY', KEYS[1], delta)
if wanted == 0 then redis.call('HDEL', KEYS[2], ARGV[1]) else redis.call('HSET', KEYS[2], ARGV[1], wanted) end
if redis.call('HLEN', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[4])
else
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
end
return {wanted, stock}
";

/// Release an owner. KEYS: hold, expiry. ARGV: owner, stock prefix. Returns the released pairs.
/// Units go back only to a product whose stock is known: a lost figure is not re-created from
/// a part of it.
const RELEASE_OWNER: &str = r"
local lines = redis.call('HGETALL', KEYS[1])
for i = 1, #lines, 2 do
  local key = ARGV[2] .. lines[i]
  if redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, lines[i + 1]) end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return lines
";

/// Commit. KEYS: hold, expiry, marker. ARGV: owner, stock prefix, marker ttl, then product,
/// quantity pairs. Returns {0} done, {1} already done, {-1, product, available} short,
/// {-2, product} when a product's stock is not known.
const COMMIT: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then return {1} end
for i = 4, #ARGV, 2 do
  if redis.call('EXISTS', ARGV[2] .. ARGV[i]) == 0 then return {-2, ARGV[i]} end
end
for i = 4, #ARGV, 2 do
  local held = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local need = tonumber(ARGV[i + 1])
  local shortfall = need - math.min(held, need)
  if shortfall > 0 then
    local stock = tonumber(redis.call('GET', ARGV[2] .. ARGV[i]) or '0')
    if stock < shortfall then return {-1, ARGV[i], stock} end
  end
end
for i = 4, #ARGV, 2 do
  local held = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local need = tonumber(ARGV[i + 1])
  local taken = math.min(held, need)
  if held - taken == 0 then redis.call('HDEL', KEYS[1], ARGV[i]) else redis.call('HSET', KEYS[1], ARGV[i], held - taken) end
  if need - taken > 0 then redis.call('DECRBY', ARGV[2] .. ARGV[i], need - taken) end
end
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('SET', KEYS[3], '1', 'EX', ARGV[3])
return {0}
";

/// Restock. KEYS: marker. ARGV: stock prefix, marker ttl, then product, quantity pairs.
/// Returns 1 done, 0 already done, {-2, product} when a product's stock is not known.
const RESTOCK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 3, #ARGV, 2 do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then return {-2, ARGV[i]} end
end
for i = 3, #ARGV, 2 do redis.call('INCRBY', ARGV[1] .. ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
return 1
";

/// Reap. KEYS: expiry. ARGV: now_ms, stock prefix, hold prefix, batch. Returns owner, lines pairs.
const REAP: &str = r"
local owners = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[4])
local reaped = {}
for _, owner in ipairs(owners) do
  local key = ARGV[3] .. owner
  local lines = redis.call('HGETALL', key)
  for i = 1, #lines, 2 do
    local stock = ARGV[2] .. lines[i]
    if redis.call('EXISTS', stock) == 1 then redis.call('INCRBY', stock, lines[i + 1]) end
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], owner)
  table.insert(reaped, owner)
  table.insert(reaped, #lines / 2)
end
return reaped
";

/// Stock shared through Redis: keys `stock:{product_id}`, `hold:{owner}` (hash product →
/// quantity), `holds:expiry` (sorted set owner → expiry ms).
pub struct RedisInventory {
    redis: Redis,
    seed: redis::Script,
    set_hold: redis::Script,
    release_owner: redis::Script,
    commit: redis::Script,
    restock: redis::Script,
    reap: redis::Script,
}

impl RedisInventory {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            seed: redis::Script::new(SEED),
            set_hold: redis::Script::new(SET_HOLD),
            release_owner: redis::Script::new(RELEASE_OWNER),
            commit: redis::Script::new(COMMIT),
            restock: redis::Script::new(RESTOCK),
            reap: redis::Script::new(REAP),
        }
    }
}

fn unavailable(error: shopstack_redis::redis::RedisUnavailable) -> InventoryError {
    InventoryError::Unavailable(error.0)
}

fn pairs_to_lines(pairs: Vec<String>) -> Vec<Line> {
    let lines: Vec<Line> = pairs
        .chunks(2)
        .filter_map(|pair| match pair {
            [product_id, quantity] => Some(Line {
                product_id: product_id.clone(),
                quantity: quantity.parse().ok()?,
            }),
            _ => None,
        })
        .collect();
    merge_lines(&lines)
}

impl InventoryStore for RedisInventory {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn seed<'a>(
        &'a self,
        initial: &'a [(String, i64)],
        may_initialise: bool,
    ) -> BoxFuture<'a, Result<SeedOutcome, InventoryError>> {
        Box::pin(async move {
            let answer: Vec<String> = self
                .redis
                .run("EVALSHA", "inventory.seed", |mut connection| async move {
                    let mut invocation = self.seed.key(INITIALISED_KEY);
                    invocation
                        .arg(if may_initialise { "1" } else { "0" })
                        .arg(STOCK_PREFIX)
                        .arg(now_ms());
                    for (product_id, stock) in initial {
                        invocation.arg(product_id).arg(stock);
                    }
                    invocation.invoke_async(&mut connection).await
                })
                .await
                .map_err(unavailable)?;
            Ok(match answer.split_first() {
                Some((tag, products)) if tag == "lost" => SeedOutcome::Lost(products.to_vec()),
                Some((tag, _)) if tag == "seeded" => SeedOutcome::Seeded,
                Some((tag, _)) if tag == "restored" => SeedOutcome::Restored,
                _ => SeedOutcome::Ready,
            })
        })
    }

    fn stock<'a>(&'a self, product_ids: &'a [String]) -> BoxFuture<'a, Result<Vec<i64>, InventoryError>> {
        Box::pin(async move {
            if product_ids.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = product_ids
                .iter()
                .map(|id| format!("{STOCK_PREFIX}{id}"))
                .collect();
            let values: Vec<Option<i64>> = self
                .redis
                .run("MGET", "inventory.stock", |mut connection| async move {
                    redis::cmd("MGET").arg(&keys).query_async(&mut connection).await
                })
                .await
                .map_err(unavailable)?;
            Ok(values.into_iter().map(Option::unwrap_or_default).collect())
        })
    }

    fn set_stock<'a>(&'a self, product_id: &'a str, stock: i64) -> BoxFuture<'a, Result<(), InventoryError>> {
        Box::pin(async move {
            self.redis
                .run("SET", "inventory.set_stock", |mut connection| async move {
                    redis::cmd("SET")
                        .arg(format!("{STOCK_PREFIX}{product_id}"))
                        .arg(stock)
                        .query_async::<()>(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)
        })
    }

    fn set_hold<'a>(
        &'a self,
        owner: &'a str,
        product_id: &'a str,
        quantity: u32,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<HoldOutcome, InventoryError>> {
        Box::pin(async move {
            let expires_at = now_ms() + ttl.as_millis() as u64;
            let (hold, stock): (i64, i64) = self
                .redis
                .run("EVALSHA", "inventory.set_hold", |mut connection| async move {
                    self.set_hold
                        .key(format!("{STOCK_PREFIX}{product_id}"))
                        .key(format!("{HOLD_PREFIX}{owner}"))
                        .key(EXPIRY_KEY)
                        .arg(product_id)
                        .arg(quantity)
                        .arg(expires_at)
                        .arg(owner)
                        .invoke_async(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)?;
            if hold == -2 {
                return Err(InventoryError::StockUnknown {
                    product_id: product_id.to_owned(),
                });
            }
            if hold < 0 {
                return Err(InventoryError::Insufficient {
                    product_id: product_id.to_owned(),
                    available: stock,
                });
            }
            Ok(HoldOutcome { quantity, stock })
        })
    }

    fn holds<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Line>, InventoryError>> {
        Box::pin(async move {
            let pairs: Vec<String> = self
                .redis
                .run("HGETALL", "inventory.holds", |mut connection| async move {
                    redis::cmd("HGETALL")
                        .arg(format!("{HOLD_PREFIX}{owner}"))
                        .query_async(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)?;
            Ok(pairs_to_lines(pairs))
        })
    }

    fn release_owner<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Line>, InventoryError>> {
        Box::pin(async move {
            let pairs: Vec<String> = self
                .redis
                .run("EVALSHA", "inventory.release", |mut connection| async move {
                    self.release_owner
                        .key(format!("{HOLD_PREFIX}{owner}"))
                        .key(EXPIRY_KEY)
                        .arg(owner)
                        .arg(STOCK_PREFIX)
                        .invoke_async(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)?;
            Ok(pairs_to_lines(pairs))
        })
    }

    fn commit<'a>(
        &'a self,
        order_id: &'a str,
        owner: &'a str,
        items: &'a [Line],
    ) -> BoxFuture<'a, Result<(), InventoryError>> {
        Box::pin(async move {
            let items = merge_lines(items);
            let outcome: Vec<redis::Value> = self
                .redis
                .run("EVALSHA", "inventory.commit", |mut connection| async move {
                    let mut invocation = self.commit.key(format!("{HOLD_PREFIX}{owner}"));
                    invocation
                        .key(EXPIRY_KEY)
                        .key(format!("{COMMITTED_PREFIX}{order_id}"))
                        .arg(owner)
                        .arg(STOCK_PREFIX)
                        .arg(ORDER_MARKER_TTL.as_secs());
                    for item in &items {
                        invocation.arg(&item.product_id).arg(item.quantity);
                    }
                    invocation.invoke_async(&mut connection).await
                })
                .await
                .map_err(unavailable)?;
            match outcome.as_slice() {
                [redis::Value::Int(-1), product, available] => Err(InventoryError::Insufficient {
                    product_id: redis::from_redis_value_ref(product).unwrap_or_default(),
                    available: redis::from_redis_value_ref(available).unwrap_or_default(),
                }),
                [redis::Value::Int(-2), product] => Err(InventoryError::StockUnknown {
                    product_id: redis::from_redis_value_ref(product).unwrap_or_default(),
                }),
                _ => Ok(()),
            }
        })
    }

    fn restock<'a>(
        &'a self,
        order_id: &'a str,
        items: &'a [Line],
    ) -> BoxFuture<'a, Result<bool, InventoryError>> {
        Box::pin(async move {
            let items = merge_lines(items);
            let applied: redis::Value = self
                .redis
                .run("EVALSHA", "inventory.restock", |mut connection| async move {
                    let mut invocation = self.restock.key(format!("{RESTOCKED_PREFIX}{order_id}"));
                    invocation.arg(STOCK_PREFIX).arg(ORDER_MARKER_TTL.as_secs());
                    for item in &items {
                        invocation.arg(&item.product_id).arg(item.quantity);
                    }
                    invocation.invoke_async(&mut connection).await
                })
                .await
                .map_err(unavailable)?;
            match applied {
                redis::Value::Int(applied) => Ok(applied == 1),
                redis::Value::Array(unknown) => Err(InventoryError::StockUnknown {
                    product_id: unknown
                        .get(1)
                        .and_then(|product| redis::from_redis_value_ref(product).ok())
                        .unwrap_or_default(),
                }),
                other => Err(InventoryError::Unavailable(format!(
                    "unexpected answer to a restock: {other:?}"
                ))),
            }
        })
    }

    fn reap_expired(&self) -> BoxFuture<'_, Result<Vec<Reaped>, InventoryError>> {
        Box::pin(async move {
            let pairs: Vec<redis::Value> = self
                .redis
                .run("EVALSHA", "inventory.reap", |mut connection| async move {
                    self.reap
                        .key(EXPIRY_KEY)
                        .arg(now_ms())
                        .arg(STOCK_PREFIX)
                        .arg(HOLD_PREFIX)
                        .arg(REAP_BATCH)
                        .invoke_async(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)?;
            Ok(pairs
                .chunks(2)
                .filter_map(|pair| match pair {
                    [owner, lines] => Some(Reaped {
                        owner: redis::from_redis_value_ref(owner).ok()?,
                        lines: redis::from_redis_value_ref(lines).ok()?,
                    }),
                    _ => None,
                })
                .collect())
        })
    }
}
