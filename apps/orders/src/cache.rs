//! The optional Redis cache for order reads, on when `REDIS_URL` is set.
//!
//! `GET /api/orders/{id}` looks in Redis first and fills it on a miss; a status change writes the
//! new order through. Each entry carries the order's `version` and a write only lands if it is
//! newer than what is there (one Lua script, atomic in Redis), so a reader that fetched the order
//! just before a change can never put the old one back over the new. The database stays the
//! truth: the cache never fails a request — while Redis is down (or a command fails) reads go to
//! the database — and entries expire after `ORDER_CACHE_TTL`, which bounds how stale an entry
//! can be in the one case the version check cannot cover (a change whose write-through was lost
//! to a Redis outage, followed by a fill from a read that started before the change).

use std::time::Duration;

use shopstack_redis::redis::Redis;
use shopstack_telemetry::metrics::IntCounterVec;
use uuid::Uuid;

use crate::model::Order;

/// Write `ARGV[2]` (the order as JSON) at version `ARGV[1]` unless the entry already holds that
/// version or a newer one; expire it after `ARGV[3]` ms. Returns 1 when written.
const STORE_IF_NEWER: &str = r"
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'order', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// `order:{id}`: a hash with the order's `version` and the `order` as JSON.
fn key(id: Uuid) -> String {
    format!("order:{id}")
}

#[derive(Clone)]
pub struct OrderCache {
    redis: Option<Redis>,
    ttl: Duration,
    store: redis::Script,
    /// `order_cache_requests_total{result}`: hit, miss, error (Redis failed; read the database).
    requests: IntCounterVec<1>,
}

impl OrderCache {
    /// `redis: None` is the embedded default: no cache, every read goes to the database.
    pub fn new(redis: Option<Redis>, ttl: Duration, requests: IntCounterVec<1>) -> Self {
        if redis.is_some() {
            for result in ["hit", "miss", "error"] {
                requests.with_label_values(&[result]).inc_by(0);
            }
        }
        Self {
            redis,
            ttl,
            store: redis::Script::new(STORE_IF_NEWER),
            requests,
        }
    }

    fn count(&self, result: &str) {
        self.requests.with_label_values(&[result]).inc();
    }

    /// The cached order, if Redis is on, up and holds it.
    pub async fn get(&self, id: Uuid) -> Option<Order> {
        let redis = self.redis.as_ref()?;
        let cached: Result<Option<String>, _> = redis
            .run("HGET", "order_cache.get", |mut connection| async move {
                redis::cmd("HGET")
                    .arg(key(id))
                    .arg("order")
                    .query_async(&mut connection)
                    .await
            })
            .await;
        match cached {
            Ok(Some(json)) => match serde_json::from_str(&json) {
                Ok(order) => {
                    self.count("hit");
                    Some(order)
                }
                Err(error) => {
                    // An entry from an older shape of `Order`: read the database, overwrite later.
                    tracing::warn!(order_id = %id, %error, "unreadable order cache entry");
                    self.count("error");
                    None
                }
            },
            Ok(None) => {
                self.count("miss");
                None
            }
            Err(error) => {
                tracing::debug!(order_id = %id, %error, "order cache unavailable; reading the database");
                self.count("error");
                None
            }
        }
    }

    /// Put `order` in the cache unless it already holds this version or a newer one. Failures are
    /// logged, never returned: the database already has the order.
    pub async fn put(&self, order: &Order) {
        let Some(redis) = self.redis.as_ref() else {
            return;
        };
        let Ok(id) = order.id.parse::<Uuid>() else {
            return;
        };
        let json = match serde_json::to_string(order) {
            Ok(json) => json,
            Err(error) => {
                tracing::error!(order_id = %id, %error, "order could not be serialised for the cache");
                return;
            }
        };
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let version = order.version;
        let written: Result<i64, _> = redis
            .run("EVALSHA", "order_cache.put", |mut connection| async move {
                self.store
                    .key(key(id))
                    .arg(version)
                    .arg(json)
                    .arg(ttl_ms)
                    .invoke_async(&mut connection)
                    .await
            })
            .await;
        if let Err(error) = written {
            tracing::warn!(order_id = %id, version, %error, "order cache not updated");
        }
    }
}
