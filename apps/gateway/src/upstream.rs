//! The instances behind each backend, used in turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::Url;

use crate::routes::Backend;

/// One backend's replicas.
#[derive(Debug)]
pub struct Upstream {
    pub backend: Backend,
    pub replicas: Vec<Url>,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(backend: Backend, replicas: Vec<Url>) -> Self {
        Self {
            backend,
            replicas,
            next: AtomicUsize::new(0),
        }
    }

    /// The next replica, round-robin.
    pub fn pick(&self) -> &Url {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.replicas.len().max(1);
        &self.replicas[index]
    }
}

/// All backends.
#[derive(Debug, Clone)]
pub struct Upstreams {
    catalog: Arc<Upstream>,
    cart: Arc<Upstream>,
    orders: Arc<Upstream>,
}

impl Upstreams {
    pub fn new(catalog: Vec<Url>, cart: Vec<Url>, orders: Vec<Url>) -> Self {
        Self {
            catalog: Arc::new(Upstream::new(Backend::Catalog, catalog)),
            cart: Arc::new(Upstream::new(Backend::Cart, cart)),
            orders: Arc::new(Upstream::new(Backend::Orders, orders)),
        }
    }

    pub fn get(&self, backend: Backend) -> &Arc<Upstream> {
        match backend {
            Backend::Catalog => &self.catalog,
            Backend::Cart => &self.cart,
            Backend::Orders => &self.orders,
        }
    }
}
