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
//! Two backends: in memory (one catalog) and Redis (one server or a cluster), where every step
//! is one Lua script on one product's hash slot — atomic on the server, no lock held across the
//! network — so replicas share stock; a commit across products is a saga of such steps.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use shopstack_redis::redis::{COMMAND_TIMEOUT, Redis};
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

    /// Give back the holds of owners whose expiry is past, on the catalogue's `product_ids`
    /// (a bounded, known set).
    fn reap_expired<'a>(
        &'a self,
        product_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Reaped>, InventoryError>>;
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

    fn reap_expired<'a>(
        &'a self,
        _product_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Reaped>, InventoryError>> {
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

// One layout on one server and on a cluster: every key a script touches carries the product's
// hash tag, so each script runs in one hash slot (docs/design/inventory.md, "Redis layout").
const INITIALISED_KEY: &str = "inventory:initialised";
/// Owners reaped per product and script run, so one run never blocks Redis for long.
const REAP_BATCH: usize = 100;
/// How long an owner's product index outlives the owner's holds: the reaper, not the index's
/// own expiry, gives the units back, so the index must still be there when it runs late.
const OWNER_INDEX_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Rounds of the one-time migration of old hold hashes (`MIGRATION_BATCH` owners each); every
/// round removes what it moved, so this only bounds a pathological store.
const MIGRATION_ROUNDS: usize = 100_000;
const MIGRATION_BATCH: isize = 100;
/// Added to a commit lease beyond the time its steps can take.
const COMMIT_LEASE_MARGIN: Duration = Duration::from_secs(2);

fn stock_key(product_id: &str) -> String {
    format!("stock:{{{product_id}}}")
}
fn holds_key(product_id: &str) -> String {
    format!("holds:{{{product_id}}}")
}
fn expiry_key(product_id: &str) -> String {
    format!("holdexp:{{{product_id}}}")
}
fn owner_key(owner: &str) -> String {
    format!("owner:{{{owner}}}")
}
/// The lease one attempt of a commit holds on its order (its own slot).
fn commit_lease_key(order_id: &str) -> String {
    format!("committing:{{{order_id}}}")
}
fn commit_key(product_id: &str, order_id: &str) -> String {
    format!("commit:{{{product_id}}}:{order_id}")
}
fn restock_key(product_id: &str, order_id: &str) -> String {
    format!("restock:{{{product_id}}}:{order_id}")
}

/// The keys of the layout before hash tags (one server only), moved by [`RedisInventory::migrate`].
mod legacy {
    pub fn stock_key(product_id: &str) -> String {
        format!("stock:{product_id}")
    }
    pub fn hold_key(owner: &str) -> String {
        format!("hold:{owner}")
    }
    pub const EXPIRY_KEY: &str = "holds:expiry";
    pub fn committed_key(order_id: &str) -> String {
        format!("inventory:committed:{order_id}")
    }
    pub fn restocked_key(order_id: &str) -> String {
        format!("inventory:restocked:{order_id}")
    }
}

/// Set one hold. KEYS: stock, holds, holdexp. ARGV: owner, quantity, expires_at_ms.
/// Returns {hold, stock}, {-1, available} when short, {-2, 0} when the stock is not known.
const SET_HOLD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2, 0} end
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local wanted = tonumber(ARGV[2])
local delta = wanted - current
if delta > stock then return {-1, stock} end
stock = redis.call('DECRBY', KEYS[1], delta)
if wanted == 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], wanted)
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
end
return {wanted, stock}
";

/// Release one owner's hold on one product. KEYS: stock, holds, holdexp. ARGV: owner.
/// Returns the units released. They go back only to a product whose stock is known: a lost
/// figure is not re-created from a part of it.
const RELEASE: &str = r"
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if held > 0 and redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], held) end
return held
";

/// One product's step of a commit. KEYS: stock, holds, holdexp, marker. ARGV: owner, quantity,
/// marker ttl (s). The marker keeps what the step took — from the hold, from free stock, and
/// the hold's expiry — so the step can be undone. Returns {0} done, {1} already done,
/// {-1, available} short, {-2} when the stock is not known.
const COMMIT_STEP: &str = r"
if redis.call('EXISTS', KEYS[4]) == 1 then return {1} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
local held = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local need = tonumber(ARGV[2])
local taken = math.min(held, need)
local shortfall = need - taken
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
if shortfall > stock then return {-1, stock} end
local expiry = redis.call('ZSCORE', KEYS[3], ARGV[1]) or ''
if held - taken == 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], held - taken)
end
if shortfall > 0 then redis.call('DECRBY', KEYS[1], shortfall) end
redis.call('SET', KEYS[4], taken .. ':' .. shortfall .. ':' .. expiry, 'EX', ARGV[3])
return {0}
";

/// Undo one product's commit step. KEYS: stock, holds, holdexp, marker. ARGV: owner, now_ms.
/// Gives the hold back what was taken from it (with its expiry) and free stock what was taken
/// from it, then deletes the marker; without a marker it does nothing. Returns 1 or 0.
const UNDO_COMMIT_STEP: &str = r"
local marker = redis.call('GET', KEYS[4])
if not marker then return 0 end
local taken, shortfall, expiry = string.match(marker, '^(%d+):(%d+):(.*)$')
taken = tonumber(taken)
shortfall = tonumber(shortfall)
if taken > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[1], taken)
  if expiry == '' then expiry = ARGV[2] end
  redis.call('ZADD', KEYS[3], 'NX', expiry, ARGV[1])
end
if shortfall > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCRBY', KEYS[1], shortfall)
end
redis.call('DEL', KEYS[4])
return 1
";

/// Give back a commit lease. KEYS: lease. ARGV: token. Deletes it only while it is this
/// attempt's (a lapsed lease may be another attempt's by now).
const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// One product's restock. KEYS: stock, marker. ARGV: quantity, marker ttl (s).
/// Returns 1 done, 0 already done, -2 when the stock is not known.
const RESTOCK_STEP: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
";

/// Reap one product. KEYS: stock, holds, holdexp. ARGV: now_ms, batch. Returns the owners
/// whose hold on this product expired and was given back.
const REAP: &str = r"
local owners = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local known = redis.call('EXISTS', KEYS[1]) == 1
for _, owner in ipairs(owners) do
  local held = tonumber(redis.call('HGET', KEYS[2], owner) or '0')
  if held > 0 and known then redis.call('INCRBY', KEYS[1], held) end
  redis.call('HDEL', KEYS[2], owner)
  redis.call('ZREM', KEYS[3], owner)
end
return owners
";

/// Move one product's old stock key to its new name. KEYS: old, new. Returns 1 when moved.
const MIGRATE_STOCK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return 1
end
return 0
";

/// Move one owner's old hold hash into the per-product layout (one server only: the keys are
/// built here, which a cluster would refuse). KEYS: old hold hash, old expiry zset, owner
/// index. ARGV: owner, now_ms, index grace (ms). A product the owner already holds in the new
/// layout keeps that hold (set since the upgrade, so newer) and the old units go back to free
/// stock. Returns the lines moved.
const MIGRATE_HOLD: &str = r"
local lines = redis.call('HGETALL', KEYS[1])
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1]) or ARGV[2]
local moved = 0
for i = 1, #lines, 2 do
  local product, quantity = lines[i], lines[i + 1]
  local holds = 'holds:{' .. product .. '}'
  if redis.call('HEXISTS', holds, ARGV[1]) == 1 then
    local stock = 'stock:{' .. product .. '}'
    if redis.call('EXISTS', stock) == 1 then redis.call('INCRBY', stock, quantity) end
  else
    redis.call('HSET', holds, ARGV[1], quantity)
    redis.call('ZADD', 'holdexp:{' .. product .. '}', expiry, ARGV[1])
    redis.call('SADD', KEYS[3], product)
    moved = moved + 1
  end
end
if moved > 0 then redis.call('PEXPIREAT', KEYS[3], tonumber(expiry) + tonumber(ARGV[3])) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return moved
";

/// Stock shared through Redis (one server or a cluster): per product `stock:{p}` (free),
/// `holds:{p}` (hash owner → quantity), `holdexp:{p}` (sorted set owner → expiry ms) and the
/// order markers `commit:{p}:<order>` / `restock:{p}:<order>`; per owner `owner:{owner}` (the
/// set of products the owner may hold).
pub struct RedisInventory {
    redis: Redis,
    set_hold: redis::Script,
    release: redis::Script,
    commit_step: redis::Script,
    undo_commit_step: redis::Script,
    release_lease: redis::Script,
    restock_step: redis::Script,
    reap: redis::Script,
    migrate_stock: redis::Script,
    migrate_hold: redis::Script,
    /// The one-time move from the old layout has run in this process (one server only).
    migrated: AtomicBool,
}

/// How one product's commit step ended.
enum Step {
    Done,
    Short(i64),
    Unknown,
}

impl RedisInventory {
    pub fn new(redis: Redis) -> Self {
        Self {
            // A cluster never held the old layout: nothing to move.
            migrated: AtomicBool::new(redis.is_cluster()),
            redis,
            set_hold: redis::Script::new(SET_HOLD),
            release: redis::Script::new(RELEASE),
            commit_step: redis::Script::new(COMMIT_STEP),
            undo_commit_step: redis::Script::new(UNDO_COMMIT_STEP),
            release_lease: redis::Script::new(RELEASE_LEASE),
            restock_step: redis::Script::new(RESTOCK_STEP),
            reap: redis::Script::new(REAP),
            migrate_stock: redis::Script::new(MIGRATE_STOCK),
            migrate_hold: redis::Script::new(MIGRATE_HOLD),
        }
    }

    /// The one-time move from the layout before hash tags, on one server: each product's
    /// `stock:<p>` renamed to `stock:{p}` when the new key is absent, then every owner in
    /// `holds:expiry` moved line by line into the per-product holds (keeping its expiry). Each
    /// move is one script that deletes what it moved, so a second catalog starting at the same
    /// time, or a rerun after a crash, finds nothing left to move.
    pub async fn migrate(&self, product_ids: &[String]) -> Result<(), InventoryError> {
        let mut renamed = 0_u64;
        for product_id in product_ids {
            let moved: u64 = self
                .redis
                .run("EVALSHA", "inventory.migrate", |mut connection| async move {
                    self.migrate_stock
                        .key(legacy::stock_key(product_id))
                        .key(stock_key(product_id))
                        .invoke_async(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)?;
            renamed += moved;
        }
        let mut owners_moved = 0_usize;
        for _ in 0..MIGRATION_ROUNDS {
            let owners: Vec<String> = self
                .redis
                .run("ZRANGE", "inventory.migrate", |mut connection| async move {
                    redis::cmd("ZRANGE")
                        .arg(legacy::EXPIRY_KEY)
                        .arg(0)
                        .arg(MIGRATION_BATCH - 1)
                        .query_async(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)?;
            if owners.is_empty() {
                break;
            }
            for owner in &owners {
                self.redis
                    .run("EVALSHA", "inventory.migrate", |mut connection| async move {
                        self.migrate_hold
                            .key(legacy::hold_key(owner))
                            .key(legacy::EXPIRY_KEY)
                            .key(owner_key(owner))
                            .arg(owner)
                            .arg(now_ms())
                            .arg(OWNER_INDEX_GRACE.as_millis() as u64)
                            .invoke_async::<u64>(&mut connection)
                            .await
                    })
                    .await
                    .map_err(unavailable)?;
            }
            owners_moved += owners.len();
        }
        if renamed > 0 || owners_moved > 0 {
            tracing::info!(
                stock_keys = renamed,
                owners = owners_moved,
                "inventory moved to the hash-tagged layout"
            );
        }
        Ok(())
    }

    /// Whether an order id was committed (or restocked) under the old layout's marker.
    async fn legacy_marker(&self, key: String) -> Result<bool, InventoryError> {
        if self.redis.is_cluster() {
            return Ok(false);
        }
        self.redis
            .run("EXISTS", "inventory.legacy_marker", |mut connection| async move {
                redis::cmd("EXISTS").arg(&key).query_async(&mut connection).await
            })
            .await
            .map_err(unavailable)
    }

    async fn commit_step(&self, order_id: &str, owner: &str, item: &Line) -> Result<Step, InventoryError> {
        let answer: Vec<i64> = self
            .redis
            .run("EVALSHA", "inventory.commit", |mut connection| async move {
                self.commit_step
                    .key(stock_key(&item.product_id))
                    .key(holds_key(&item.product_id))
                    .key(expiry_key(&item.product_id))
                    .key(commit_key(&item.product_id, order_id))
                    .arg(owner)
                    .arg(item.quantity)
                    .arg(ORDER_MARKER_TTL.as_secs())
                    .invoke_async(&mut connection)
                    .await
            })
            .await
            .map_err(unavailable)?;
        Ok(match answer.as_slice() {
            [-1, available] => Step::Short(*available),
            [-2, ..] => Step::Unknown,
            _ => Step::Done,
        })
    }

    async fn undo_commit_step(
        &self,
        order_id: &str,
        owner: &str,
        product_id: &str,
    ) -> Result<(), InventoryError> {
        self.redis
            .run("EVALSHA", "inventory.commit_undo", |mut connection| async move {
                self.undo_commit_step
                    .key(stock_key(product_id))
                    .key(holds_key(product_id))
                    .key(expiry_key(product_id))
                    .key(commit_key(product_id, order_id))
                    .arg(owner)
                    .arg(now_ms())
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await
            .map_err(unavailable)
            .map(drop)
    }

    async fn release_one(&self, owner: &str, product_id: &str) -> Result<u32, InventoryError> {
        self.redis
            .run("EVALSHA", "inventory.release", |mut connection| async move {
                self.release
                    .key(stock_key(product_id))
                    .key(holds_key(product_id))
                    .key(expiry_key(product_id))
                    .arg(owner)
                    .invoke_async(&mut connection)
                    .await
            })
            .await
            .map_err(unavailable)
    }

    async fn owner_products(&self, owner: &str) -> Result<Vec<String>, InventoryError> {
        self.redis
            .run("SMEMBERS", "inventory.holds", |mut connection| async move {
                redis::cmd("SMEMBERS")
                    .arg(owner_key(owner))
                    .query_async(&mut connection)
                    .await
            })
            .await
            .map_err(unavailable)
    }
}

fn unavailable(error: shopstack_redis::redis::RedisUnavailable) -> InventoryError {
    InventoryError::Unavailable(error.0)
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
            if !self.migrated.load(Ordering::SeqCst) {
                let products: Vec<String> = initial.iter().map(|(id, _)| id.clone()).collect();
                self.migrate(&products).await?;
                self.migrated.store(true, Ordering::SeqCst);
            }
            let initialised: bool = self
                .redis
                .run("EXISTS", "inventory.seed", |mut connection| async move {
                    redis::cmd("EXISTS")
                        .arg(INITIALISED_KEY)
                        .query_async(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)?;
            let ids: Vec<String> = initial.iter().map(|(id, _)| id.clone()).collect();
            let figures = self.stock_figures(&ids).await?;
            let missing: Vec<&(String, i64)> = initial
                .iter()
                .zip(&figures)
                .filter(|(_, figure)| figure.is_none())
                .map(|(product, _)| product)
                .collect();
            if initialised {
                // Products new to the catalogue get their initial stock; `NX` keeps a figure
                // another replica set meanwhile.
                self.set_missing(&missing).await?;
                return Ok(SeedOutcome::Ready);
            }
            if missing.is_empty() {
                self.set_marker(false).await?;
                return Ok(SeedOutcome::Restored);
            }
            if may_initialise && missing.len() == initial.len() {
                // The marker first: a crash before the figures are all written leaves an
                // initialised store whose missing products the next seed gives their stock,
                // never a half-seeded store taken for one that lost its data.
                self.set_marker(true).await?;
                self.set_missing(&missing).await?;
                return Ok(SeedOutcome::Seeded);
            }
            Ok(SeedOutcome::Lost(
                missing.into_iter().map(|(id, _)| id.clone()).collect(),
            ))
        })
    }

    fn stock<'a>(&'a self, product_ids: &'a [String]) -> BoxFuture<'a, Result<Vec<i64>, InventoryError>> {
        Box::pin(async move {
            Ok(self
                .stock_figures(product_ids)
                .await?
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect())
        })
    }

    fn set_stock<'a>(&'a self, product_id: &'a str, stock: i64) -> BoxFuture<'a, Result<(), InventoryError>> {
        Box::pin(async move {
            self.redis
                .run("SET", "inventory.set_stock", |mut connection| async move {
                    redis::cmd("SET")
                        .arg(stock_key(product_id))
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
            // The owner's index first (idempotent): a hold is never set that the index would
            // not find. A product left in it after its hold is gone is skipped by readers.
            let index = owner_key(owner);
            let products: Vec<String> = self
                .redis
                .run("BATCH", "inventory.set_hold", |mut connection| async move {
                    let mut pipe = redis::pipe();
                    if quantity > 0 {
                        pipe.cmd("SADD").arg(&index).arg(product_id).ignore();
                        pipe.cmd("PEXPIREAT")
                            .arg(&index)
                            .arg(expires_at + OWNER_INDEX_GRACE.as_millis() as u64)
                            .ignore();
                    }
                    pipe.cmd("SMEMBERS").arg(&index);
                    let (products,): (Vec<String>,) = pipe.query_async(&mut connection).await?;
                    Ok(products)
                })
                .await
                .map_err(unavailable)?;
            let (hold, stock): (i64, i64) = self
                .redis
                .run("EVALSHA", "inventory.set_hold", |mut connection| async move {
                    self.set_hold
                        .key(stock_key(product_id))
                        .key(holds_key(product_id))
                        .key(expiry_key(product_id))
                        .arg(owner)
                        .arg(quantity)
                        .arg(expires_at)
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
            // Every hold of an owner expires together, `ttl` after the owner's last change:
            // the owner's other holds get the new expiry too (`XX`: only where one is held).
            let refreshes = products
                .iter()
                .filter(|other| other.as_str() != product_id)
                .map(|other| {
                    self.redis
                        .run("ZADD", "inventory.set_hold", move |mut connection| async move {
                            redis::cmd("ZADD")
                                .arg(expiry_key(other))
                                .arg("XX")
                                .arg(expires_at)
                                .arg(owner)
                                .query_async::<i64>(&mut connection)
                                .await
                        })
                });
            if let Err(error) = futures::future::try_join_all(refreshes).await {
                // The hold is set; an older expiry on another line only gives that line back
                // sooner, as the reaper would for an owner idle that long.
                tracing::debug!(%error, owner, "expiry of the owner's other holds not refreshed");
            }
            Ok(HoldOutcome { quantity, stock })
        })
    }

    fn holds<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Line>, InventoryError>> {
        Box::pin(async move {
            let products = self.owner_products(owner).await?;
            let reads = products.iter().map(|product_id| async move {
                let held: Option<u32> = self
                    .redis
                    .run("HGET", "inventory.holds", |mut connection| async move {
                        redis::cmd("HGET")
                            .arg(holds_key(product_id))
                            .arg(owner)
                            .query_async(&mut connection)
                            .await
                    })
                    .await
                    .map_err(unavailable)?;
                Ok::<_, InventoryError>(held.filter(|&quantity| quantity > 0).map(|quantity| Line {
                    product_id: product_id.clone(),
                    quantity,
                }))
            });
            let lines: Vec<Line> = futures::future::try_join_all(reads)
                .await?
                .into_iter()
                .flatten()
                .collect();
            Ok(merge_lines(&lines))
        })
    }

    fn release_owner<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<Vec<Line>, InventoryError>> {
        Box::pin(async move {
            let products = self.owner_products(owner).await?;
            let releases = products.iter().map(|product_id| async move {
                let quantity = self.release_one(owner, product_id).await?;
                Ok::<_, InventoryError>(Line {
                    product_id: product_id.clone(),
                    quantity,
                })
            });
            let released = futures::future::try_join_all(releases).await?;
            if !products.is_empty() {
                // Only what was released leaves the index; a product added meanwhile stays.
                self.redis
                    .run("SREM", "inventory.release", |mut connection| async move {
                        redis::cmd("SREM")
                            .arg(owner_key(owner))
                            .arg(&products)
                            .query_async::<i64>(&mut connection)
                            .await
                    })
                    .await
                    .map_err(unavailable)?;
            }
            let released: Vec<Line> = released.into_iter().filter(|line| line.quantity > 0).collect();
            Ok(merge_lines(&released))
        })
    }

    fn commit<'a>(
        &'a self,
        order_id: &'a str,
        owner: &'a str,
        items: &'a [Line],
    ) -> BoxFuture<'a, Result<(), InventoryError>> {
        Box::pin(async move {
            if self.legacy_marker(legacy::committed_key(order_id)).await? {
                return Ok(());
            }
            let items = merge_lines(items);
            // One attempt of an order at a time: a refused attempt's undo must never take back a
            // step a concurrent attempt of the same order counted as done.
            let lease = self.take_commit_lease(order_id, items.len()).await?;
            let outcome = self.commit_saga(order_id, owner, &items).await;
            self.give_back_commit_lease(order_id, &lease).await;
            outcome
        })
    }

    fn restock<'a>(
        &'a self,
        order_id: &'a str,
        items: &'a [Line],
    ) -> BoxFuture<'a, Result<bool, InventoryError>> {
        Box::pin(async move {
            if self.legacy_marker(legacy::restocked_key(order_id)).await? {
                return Ok(false);
            }
            let items = merge_lines(items);
            // A product without a stock figure refuses the whole restock before any step, as
            // one script did; each step is idempotent per (order, product), so a restock cut
            // short by an outage is completed by its retry.
            let ids: Vec<String> = items.iter().map(|item| item.product_id.clone()).collect();
            let figures = self.stock_figures(&ids).await?;
            if let Some((item, _)) = items.iter().zip(&figures).find(|(_, figure)| figure.is_none()) {
                return Err(InventoryError::StockUnknown {
                    product_id: item.product_id.clone(),
                });
            }
            let mut applied = false;
            for item in &items {
                let outcome: i64 = self
                    .redis
                    .run("EVALSHA", "inventory.restock", |mut connection| async move {
                        self.restock_step
                            .key(stock_key(&item.product_id))
                            .key(restock_key(&item.product_id, order_id))
                            .arg(item.quantity)
                            .arg(ORDER_MARKER_TTL.as_secs())
                            .invoke_async(&mut connection)
                            .await
                    })
                    .await
                    .map_err(unavailable)?;
                match outcome {
                    -2 => {
                        return Err(InventoryError::StockUnknown {
                            product_id: item.product_id.clone(),
                        });
                    }
                    1 => applied = true,
                    _ => {}
                }
            }
            Ok(applied)
        })
    }

    fn reap_expired<'a>(
        &'a self,
        product_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Reaped>, InventoryError>> {
        Box::pin(async move {
            let now = now_ms();
            let rounds = product_ids.iter().map(|product_id| {
                self.redis
                    .run("EVALSHA", "inventory.reap", move |mut connection| async move {
                        self.reap
                            .key(stock_key(product_id))
                            .key(holds_key(product_id))
                            .key(expiry_key(product_id))
                            .arg(now)
                            .arg(REAP_BATCH)
                            .invoke_async::<Vec<String>>(&mut connection)
                            .await
                    })
            });
            let reaped = futures::future::try_join_all(rounds).await.map_err(unavailable)?;
            // Lines per owner, across products, in a stable order.
            let mut lines: BTreeMap<String, usize> = BTreeMap::new();
            for owner in reaped.into_iter().flatten() {
                *lines.entry(owner).or_default() += 1;
            }
            Ok(lines
                .into_iter()
                .map(|(owner, lines)| Reaped { owner, lines })
                .collect())
        })
    }
}

impl RedisInventory {
    /// The per-product steps of a commit (docs/design/inventory.md, "Commit across products").
    async fn commit_saga(&self, order_id: &str, owner: &str, items: &[Line]) -> Result<(), InventoryError> {
        // Per-product steps, each idempotent per order (its marker); a product short or
        // unknown undoes the order's other steps, so the answer means "nothing changed" as a
        // single script's would. A failure to reach Redis leaves the steps as they are: a
        // retry of the order completes them or undoes them.
        for (index, item) in items.iter().enumerate() {
            let refusal = match self.commit_step(order_id, owner, item).await? {
                Step::Done => continue,
                Step::Short(available) => InventoryError::Insufficient {
                    product_id: item.product_id.clone(),
                    available,
                },
                Step::Unknown => InventoryError::StockUnknown {
                    product_id: item.product_id.clone(),
                },
            };
            // Every other product, not only those before: an earlier attempt of this order
            // cut short may have done any of them; without a marker the undo does nothing.
            for (other, done) in items.iter().enumerate().rev() {
                if other != index {
                    self.undo_commit_step(order_id, owner, &done.product_id).await?;
                }
            }
            return Err(refusal);
        }
        Ok(())
    }

    /// Take the order's commit lease, or answer "unavailable" while another attempt holds it.
    /// It lapses by itself after the longest an attempt can take (every step and undo bounded
    /// by the command timeout), so a catalog killed mid-commit blocks no retry for long.
    async fn take_commit_lease(&self, order_id: &str, steps: usize) -> Result<String, InventoryError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let lease = COMMAND_TIMEOUT * (2 * steps as u32 + 2) + COMMIT_LEASE_MARGIN;
        let value = token.as_str();
        let taken: Option<String> = self
            .redis
            .run("SET", "inventory.commit", |mut connection| async move {
                redis::cmd("SET")
                    .arg(commit_lease_key(order_id))
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(lease.as_millis() as u64)
                    .query_async(&mut connection)
                    .await
            })
            .await
            .map_err(unavailable)?;
        match taken {
            Some(_) => Ok(token),
            None => Err(InventoryError::Unavailable(format!(
                "another commit of order {order_id} is in progress"
            ))),
        }
    }

    async fn give_back_commit_lease(&self, order_id: &str, token: &str) {
        let given = self
            .redis
            .run("EVALSHA", "inventory.commit", |mut connection| async move {
                self.release_lease
                    .key(commit_lease_key(order_id))
                    .arg(token)
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await;
        if let Err(error) = given {
            tracing::debug!(%error, order_id, "commit lease left to lapse");
        }
    }
}

impl RedisInventory {
    /// Each product's stock figure, `None` where the store has none (MGET: split by slot on a
    /// cluster).
    async fn stock_figures(&self, product_ids: &[String]) -> Result<Vec<Option<i64>>, InventoryError> {
        if product_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = product_ids.iter().map(|id| stock_key(id)).collect();
        self.redis
            .run("MGET", "inventory.stock", |mut connection| async move {
                redis::cmd("MGET").arg(&keys).query_async(&mut connection).await
            })
            .await
            .map_err(unavailable)
    }

    async fn set_missing(&self, missing: &[&(String, i64)]) -> Result<(), InventoryError> {
        let writes = missing.iter().map(|(product_id, stock)| {
            self.redis
                .run("SET", "inventory.seed", move |mut connection| async move {
                    redis::cmd("SET")
                        .arg(stock_key(product_id))
                        .arg(stock)
                        .arg("NX")
                        .query_async::<Option<String>>(&mut connection)
                        .await
                })
        });
        futures::future::try_join_all(writes).await.map_err(unavailable)?;
        Ok(())
    }

    async fn set_marker(&self, only_if_absent: bool) -> Result<(), InventoryError> {
        self.redis
            .run("SET", "inventory.seed", |mut connection| async move {
                let mut command = redis::cmd("SET");
                command.arg(INITIALISED_KEY).arg(now_ms());
                if only_if_absent {
                    command.arg("NX");
                }
                command.query_async::<Option<String>>(&mut connection).await
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
