//! All four services in-process, wired to each other as in production: `Stack::start().await`.

use crate::db::TestDb;
use crate::server::TestServer;
use crate::services::{self, Cart, Catalog, Gateway, Orders, Service};

/// Catalog, cart, orders and gateway, each on port 0, the orders service on a database of its
/// own (a fresh SQLite file unless [`StackBuilder::database`] names one). Stopped when dropped.
pub struct Stack {
    pub catalog: TestServer,
    pub cart: TestServer,
    pub cart_state: cart::AppState,
    pub orders: TestServer,
    pub orders_state: orders::AppState,
    pub gateway: TestServer,
    /// The orders database the stack made for itself, removed after the services stop.
    _database: Option<TestDb>,
}

impl Stack {
    /// Every service as [`services`] starts it.
    pub async fn start() -> Stack {
        Stack::builder().start().await
    }

    /// A stack whose services are tweaked before they start.
    pub fn builder<'a>() -> StackBuilder<'a> {
        StackBuilder {
            database_url: None,
            catalog: Box::new(|catalog| catalog),
            cart: Box::new(|cart| cart),
            orders: Box::new(|orders| orders),
            gateway: Box::new(|gateway| gateway),
        }
    }

    /// A URL on the gateway.
    pub fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    /// Shut every service down gracefully, from the gateway inwards, waiting for each; then
    /// remove the stack's own database.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.gateway.stop().await?;
        self.orders.stop().await?;
        self.cart.stop().await?;
        self.catalog.stop().await?;
        Ok(())
    }
}

type Tweak<'a, K> = Box<dyn FnOnce(Service<K>) -> Service<K> + Send + 'a>;

/// How each service of a [`Stack`] is started: each tweak gets the service already wired to the
/// others, and adds flags or settings.
#[must_use = "a stack starts only when `start` is awaited"]
pub struct StackBuilder<'a> {
    database_url: Option<String>,
    catalog: Tweak<'a, Catalog>,
    cart: Tweak<'a, Cart>,
    orders: Tweak<'a, Orders>,
    gateway: Tweak<'a, Gateway>,
}

impl<'a> StackBuilder<'a> {
    /// Run the orders service on `database_url` (the caller keeps the database).
    pub fn database(mut self, database_url: &str) -> Self {
        self.database_url = Some(database_url.to_owned());
        self
    }

    pub fn catalog(mut self, tweak: impl FnOnce(Service<Catalog>) -> Service<Catalog> + Send + 'a) -> Self {
        self.catalog = Box::new(tweak);
        self
    }

    pub fn cart(mut self, tweak: impl FnOnce(Service<Cart>) -> Service<Cart> + Send + 'a) -> Self {
        self.cart = Box::new(tweak);
        self
    }

    pub fn orders(mut self, tweak: impl FnOnce(Service<Orders>) -> Service<Orders> + Send + 'a) -> Self {
        self.orders = Box::new(tweak);
        self
    }

    pub fn gateway(mut self, tweak: impl FnOnce(Service<Gateway>) -> Service<Gateway> + Send + 'a) -> Self {
        self.gateway = Box::new(tweak);
        self
    }

    /// Start catalog, cart, orders and gateway, in that order; panics when one cannot start.
    pub async fn start(self) -> Stack {
        let (database_url, database) = match self.database_url {
            Some(url) => (url, None),
            None => {
                let database = TestDb::sqlite();
                (database.url.clone(), Some(database))
            }
        };
        let catalog = (self.catalog)(services::catalog()).start().await;
        let (cart, cart_state) = (self.cart)(services::cart(&catalog.url("")))
            .start_with_state()
            .await;
        let (orders, orders_state) =
            (self.orders)(services::orders(&database_url, &catalog.url(""), &cart.url("")))
                .start_with_state()
                .await;
        let gateway =
            (self.gateway)(services::gateway(&catalog.url(""), &cart.url("")).orders(&orders.url("")))
                .start()
                .await;
        Stack {
            catalog,
            cart,
            cart_state,
            orders,
            orders_state,
            gateway,
            _database: database,
        }
    }
}
