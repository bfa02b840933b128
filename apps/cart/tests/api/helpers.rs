use shopstack_testkit::server::TestServer;
use shopstack_testkit::services::{self, Catalog, Service};

pub use shopstack_testkit::http::{client, json_of};
pub use shopstack_testkit::ports::{black_hole, closed_port};
pub use shopstack_testkit::services::{set_stock, stock_of};
pub use shopstack_testkit::wait::eventually;

pub struct Stack {
    /// Held so the catalog keeps running for the test's duration.
    pub catalog: TestServer,
    pub cart: TestServer,
}

/// The catalog, its expired reservations reaped every 100 ms.
pub fn catalog() -> Service<Catalog> {
    services::catalog().flags(&["--reservation-reap-interval", "100ms"])
}

pub async fn spawn_catalog() -> TestServer {
    catalog().start().await
}

/// A cart pointed at `catalog_url`, with extra `--flags`.
pub async fn spawn_cart(catalog_url: &str, flags: &[&str]) -> TestServer {
    services::cart(catalog_url).flags(flags).start().await
}

pub async fn spawn_stack() -> Stack {
    let catalog = spawn_catalog().await;
    let cart = spawn_cart(&catalog.url(""), &[]).await;
    Stack { catalog, cart }
}

/// Catalog and cart sharing the Redis at `redis_url`.
pub async fn spawn_redis_stack(redis_url: &str, cart_flags: &[&str]) -> Stack {
    let catalog = catalog().redis(Some(redis_url)).start().await;
    let cart = services::cart(&catalog.url(""))
        .redis(Some(redis_url))
        .flags(cart_flags)
        .start()
        .await;
    Stack { catalog, cart }
}
