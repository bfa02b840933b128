//! Carts on Redis, in the data model existing Redis tooling expects: hash `cart:{user_id}`,
//! field product_id → quantity (`redis-cli HGETALL cart:user-123` shows the cart). The version
//! lives beside it in `cartmeta:{cart:<user_id>}` (a separate prefix, so no user id can collide
//! with it, and the cart's own key as its hash tag, so a Redis Cluster keeps both in one slot).
//! Every write is one Lua script — check version, change, bump version, refresh both keys'
//! `EXPIRE` — so replicas sharing one Redis never lose each other's writes.
//!
//! Carts written before the hash tag kept their version in `cartmeta:<user_id>`; on a single
//! server each script first moves such a key to its new name (RENAME keeps its TTL), so an
//! existing cart keeps its version across the upgrade. A cluster never held the old layout.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use shopstack_redis::redis::Redis;

use crate::store::{CartStore, StoreError, StoredCart};

/// Every script starts with this. KEYS[3]: the meta key's name before the hash tag (the same
/// name as KEYS[2] on a cluster, where there is nothing to move).
const MIGRATE_META: &str = r"
if KEYS[3] ~= KEYS[2] and redis.call('EXISTS', KEYS[3]) == 1 then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('RENAME', KEYS[3], KEYS[2])
  else
    redis.call('DEL', KEYS[3])
  end
end
";

/// KEYS: cart, meta, legacy meta. Returns {version, {product, quantity, …}}.
const LOAD: &str = r"
local version = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
return {version, redis.call('HGETALL', KEYS[1])}
";

/// KEYS: cart, meta, legacy meta. ARGV: product, quantity, expected version, ttl seconds.
/// Returns {-1, current version, {}} on a version mismatch, else {0, version, lines}.
const WRITE_LINE: &str = r"
local version = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
if version ~= tonumber(ARGV[3]) then return {-1, version, {}} end
if tonumber(ARGV[2]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
version = redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {0, version, redis.call('HGETALL', KEYS[1])}
";

/// KEYS: cart, meta, legacy meta. ARGV: expected version, ttl seconds.
const CLEAR: &str = r"
local version = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
if version ~= tonumber(ARGV[1]) then return {-1, version, {}} end
redis.call('DEL', KEYS[1])
version = redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {0, version, {}}
";

#[derive(Clone)]
pub struct RedisStore {
    redis: Redis,
    ttl: Duration,
    load: redis::Script,
    write_line: redis::Script,
    clear: redis::Script,
}

impl RedisStore {
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self {
            redis,
            ttl,
            load: redis::Script::new(&format!("{MIGRATE_META}{LOAD}")),
            write_line: redis::Script::new(&format!("{MIGRATE_META}{WRITE_LINE}")),
            clear: redis::Script::new(&format!("{MIGRATE_META}{CLEAR}")),
        }
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs().max(1)
    }

    /// The cart's hash, its version and the version's name before the hash tag (see the module
    /// documentation).
    fn keys(&self, user_id: &str) -> [String; 3] {
        let cart = format!("cart:{user_id}");
        let meta = format!("cartmeta:{{{cart}}}");
        let legacy = if self.redis.is_cluster() {
            meta.clone()
        } else {
            format!("cartmeta:{user_id}")
        };
        [cart, meta, legacy]
    }
}

fn cart_of(version: u64, pairs: Vec<String>) -> StoredCart {
    let lines: BTreeMap<String, u32> = pairs
        .chunks(2)
        .filter_map(|pair| match pair {
            [product_id, quantity] => Some((product_id.clone(), quantity.parse().ok()?)),
            _ => None,
        })
        .collect();
    StoredCart { lines, version }
}

/// Turn a script's `{status, version, lines}` into a cart or a conflict.
fn outcome((status, version, pairs): (i64, u64, Vec<String>)) -> Result<StoredCart, StoreError> {
    if status < 0 {
        Err(StoreError::VersionConflict { current: version })
    } else {
        Ok(cart_of(version, pairs))
    }
}

fn unavailable(error: shopstack_redis::redis::RedisUnavailable) -> StoreError {
    StoreError::Unavailable(error.0)
}

impl CartStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn load<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<StoredCart, StoreError>> {
        Box::pin(async move {
            let [cart, meta, legacy] = self.keys(user_id);
            let (version, pairs): (u64, Vec<String>) = self
                .redis
                .run("EVALSHA", "cart.load", |mut connection| async move {
                    self.load
                        .key(cart)
                        .key(meta)
                        .key(legacy)
                        .invoke_async(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)?;
            Ok(cart_of(version, pairs))
        })
    }

    fn write_line<'a>(
        &'a self,
        user_id: &'a str,
        product_id: &'a str,
        quantity: u32,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<StoredCart, StoreError>> {
        Box::pin(async move {
            let [cart, meta, legacy] = self.keys(user_id);
            let ttl = self.ttl_secs();
            let result = self
                .redis
                .run("EVALSHA", "cart.write_line", |mut connection| async move {
                    self.write_line
                        .key(cart)
                        .key(meta)
                        .key(legacy)
                        .arg(product_id)
                        .arg(quantity)
                        .arg(expected_version)
                        .arg(ttl)
                        .invoke_async(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)?;
            outcome(result)
        })
    }

    fn clear<'a>(
        &'a self,
        user_id: &'a str,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<StoredCart, StoreError>> {
        Box::pin(async move {
            let [cart, meta, legacy] = self.keys(user_id);
            let ttl = self.ttl_secs();
            let result = self
                .redis
                .run("EVALSHA", "cart.clear", |mut connection| async move {
                    self.clear
                        .key(cart)
                        .key(meta)
                        .key(legacy)
                        .arg(expected_version)
                        .arg(ttl)
                        .invoke_async(&mut connection)
                        .await
                })
                .await
                .map_err(unavailable)?;
            outcome(result)
        })
    }

    fn ping(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.redis.ping().await })
    }
}
