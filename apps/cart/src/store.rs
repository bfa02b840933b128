//! Cart storage behind one trait: [`MemoryStore`] (the embedded default) and, with `REDIS_URL`,
//! the Redis store (hash `cart:{user_id}`, product_id → quantity).
//!
//! Every write is a compare-and-set on the cart's `version`, so concurrent writers (several
//! cart replicas on one Redis) never lose each other's changes: the loser gets
//! [`StoreError::VersionConflict`] and re-reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

/// A cart as stored: lines by product id, and a version bumped by every write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredCart {
    pub lines: BTreeMap<String, u32>,
    /// 0 for a cart never written (or expired).
    pub version: u64,
}

impl StoredCart {
    pub fn quantity_of(&self, product_id: &str) -> u32 {
        self.lines.get(product_id).copied().unwrap_or(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else wrote the cart since it was read; nothing was changed.
    #[error("the cart changed concurrently (now at version {current})")]
    VersionConflict { current: u64 },
    /// The backing store cannot be reached; nothing is known to have changed.
    #[error("cart store unavailable: {0}")]
    Unavailable(String),
}

pub trait CartStore: Send + Sync + 'static {
    /// Which backend this is, for logs and `/healthz` (`memory`, `redis`).
    fn backend(&self) -> &'static str;

    /// The user's cart (empty, version 0, when there is none).
    fn load<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<StoredCart, StoreError>>;

    /// Set one line (`quantity` 0 removes it) if the cart is still at `expected_version`;
    /// bumps the version and restarts the cart's time-to-live.
    fn write_line<'a>(
        &'a self,
        user_id: &'a str,
        product_id: &'a str,
        quantity: u32,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<StoredCart, StoreError>>;

    /// Empty the cart if it is still at `expected_version`; returns the emptied cart (with its
    /// new version). The version survives the clear so old `If-Match` values stay stale.
    fn clear<'a>(
        &'a self,
        user_id: &'a str,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<StoredCart, StoreError>>;

    /// Whether the store answers, for health checks.
    fn ping(&self) -> BoxFuture<'_, bool>;
}

struct MemoryCart {
    cart: StoredCart,
    expires_at: Instant,
}

/// In-process carts: nothing to install, lost on restart.
pub struct MemoryStore {
    carts: Mutex<HashMap<String, MemoryCart>>,
    ttl: Duration,
}

impl MemoryStore {
    pub fn new(ttl: Duration) -> Self {
        Self {
            carts: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn with_carts<T>(&self, f: impl FnOnce(&mut HashMap<String, MemoryCart>) -> T) -> T {
        let mut guard = match self.carts.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Drop carts idle longer than the TTL; returns their user ids.
    pub fn sweep_expired(&self) -> Vec<String> {
        let now = Instant::now();
        self.with_carts(|carts| {
            let expired: Vec<String> = carts
                .iter()
                .filter(|(_, entry)| entry.expires_at <= now)
                .map(|(user, _)| user.clone())
                .collect();
            for user in &expired {
                carts.remove(user);
            }
            expired
        })
    }

    fn current(carts: &HashMap<String, MemoryCart>, user_id: &str) -> StoredCart {
        carts
            .get(user_id)
            .filter(|entry| entry.expires_at > Instant::now())
            .map(|entry| entry.cart.clone())
            .unwrap_or_default()
    }
}

impl CartStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn load<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<StoredCart, StoreError>> {
        Box::pin(async move { Ok(self.with_carts(|carts| Self::current(carts, user_id))) })
    }

    fn write_line<'a>(
        &'a self,
        user_id: &'a str,
        product_id: &'a str,
        quantity: u32,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<StoredCart, StoreError>> {
        Box::pin(async move {
            self.with_carts(|carts| {
                let mut cart = Self::current(carts, user_id);
                if cart.version != expected_version {
                    return Err(StoreError::VersionConflict {
                        current: cart.version,
                    });
                }
                if quantity == 0 {
                    cart.lines.remove(product_id);
                } else {
                    cart.lines.insert(product_id.to_owned(), quantity);
                }
                cart.version += 1;
                carts.insert(
                    user_id.to_owned(),
                    MemoryCart {
                        cart: cart.clone(),
                        expires_at: Instant::now() + self.ttl,
                    },
                );
                Ok(cart)
            })
        })
    }

    fn clear<'a>(
        &'a self,
        user_id: &'a str,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<StoredCart, StoreError>> {
        Box::pin(async move {
            self.with_carts(|carts| {
                let mut cart = Self::current(carts, user_id);
                if cart.version != expected_version {
                    return Err(StoreError::VersionConflict {
                        current: cart.version,
                    });
                }
                cart.lines.clear();
                cart.version += 1;
                carts.insert(
                    user_id.to_owned(),
                    MemoryCart {
                        cart: cart.clone(),
                        expires_at: Instant::now() + self.ttl,
                    },
                );
                Ok(cart)
            })
        })
    }

    fn ping(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}
