//! Each service started in-process on port 0 one way: `services::catalog().start().await`, its flags and settings tweaked on the way.
//!
//! ```no_run
//! # async fn example() {
//! use shopstack_testkit::services;
//!
//! let catalog = services::catalog().start().await;
//! let cart = services::cart(&catalog.url("")).flags(&["--cart-ttl", "1s"]).start().await;
//! let (gateway, state) = services::gateway(&catalog.url(""), &cart.url(""))
//!     .settings(|settings| settings.max_body_bytes = 1024)
//!     .start_with_state()
//!     .await;
//! # }
//! ```
//!
//! Every start installs the test telemetry first ([`crate::init_telemetry`]), so the log lines
//! of every service in a test binary are captured in one place.

use std::marker::PhantomData;

use clap::Parser as _;
use serde_json::json;
use shopstack_base::config::Settings;
use shopstack_platform::Platform;
use shopstack_platform::server::Front;

use crate::http::{client, json_of};
use crate::server::TestServer;
use crate::settings::ADMIN_TOKEN;

/// What the kit needs to start one kind of service: its name, its state from its command line
/// and platform, and the front serving that state.
pub trait Kind {
    /// The binary's name, `argv[0]` of its command line and the name in its settings.
    const NAME: &'static str;
    /// The state its handlers share (the router is built from a clone of it).
    type State: Clone + Send + 'static;
    type App: Front;

    /// Parse `args` (with `argv[0]`) as the service's flags and build its state.
    fn state(
        args: Vec<String>,
        platform: Platform,
    ) -> impl Future<Output = anyhow::Result<Self::State>> + Send;

    fn app(state: Self::State) -> Self::App;
}

/// The catalog: products and stock.
pub enum Catalog {}
/// The cart: carts in memory or on Redis, stock reserved at the catalog.
pub enum Cart {}
/// The orders service: orders on SQLite or PostgreSQL, checkout from the cart.
pub enum Orders {}
/// The gateway: the edge in front of the other three.
pub enum Gateway {}

impl Kind for Catalog {
    const NAME: &'static str = "catalog";
    type State = catalog::AppState;
    type App = axum::Router;

    async fn state(args: Vec<String>, platform: Platform) -> anyhow::Result<Self::State> {
        let config = catalog::CatalogConfig::try_parse_from(args)?;
        catalog::AppState::new(&config, platform).await
    }

    fn app(state: Self::State) -> Self::App {
        catalog::app(state)
    }
}

impl Kind for Cart {
    const NAME: &'static str = "cart";
    type State = cart::AppState;
    type App = axum::Router;

    async fn state(args: Vec<String>, platform: Platform) -> anyhow::Result<Self::State> {
        let config = cart::CartConfig::try_parse_from(args)?;
        cart::AppState::new(&config, platform).await
    }

    fn app(state: Self::State) -> Self::App {
        cart::app(state)
    }
}

impl Kind for Orders {
    const NAME: &'static str = "orders";
    type State = orders::AppState;
    type App = axum::Router;

    async fn state(args: Vec<String>, platform: Platform) -> anyhow::Result<Self::State> {
        let config = orders::OrdersConfig::try_parse_from(args)?;
        orders::AppState::new(&config, platform).await
    }

    fn app(state: Self::State) -> Self::App {
        orders::app(state)
    }
}

impl Kind for Gateway {
    const NAME: &'static str = "gateway";
    type State = gateway::GatewayState;
    type App = gateway::edge::Edge;

    async fn state(args: Vec<String>, platform: Platform) -> anyhow::Result<Self::State> {
        let config = gateway::GatewayConfig::try_parse_from(args)?;
        gateway::GatewayState::new(&config, platform)
    }

    fn app(state: Self::State) -> Self::App {
        gateway::app(state)
    }
}

/// One service to start: its flags (as on its command line) and its settings
/// ([`crate::settings()`] unless tweaked).
#[must_use = "a service starts only when `start` is awaited"]
pub struct Service<K: Kind> {
    flags: Vec<String>,
    /// Flags added at start unless `flags` already has them.
    defaults: Vec<(&'static str, String)>,
    settings: Settings,
    kind: PhantomData<fn() -> K>,
}

/// The catalog with its built-in products, stock in memory.
pub fn catalog() -> Service<Catalog> {
    Service::new(&[])
}

/// A cart that reserves stock at the catalog on `catalog_url`.
pub fn cart(catalog_url: &str) -> Service<Cart> {
    Service::new(&["--catalog-service-url", catalog_url])
}

/// The orders service on `database_url` (see [`crate::db::TestDb`]), in front of the catalog
/// and the cart.
pub fn orders(database_url: &str, catalog_url: &str, cart_url: &str) -> Service<Orders> {
    Service::new(&[
        "--database-url",
        database_url,
        "--catalog-service-url",
        catalog_url,
        "--cart-service-url",
        cart_url,
    ])
}

/// A gateway in front of the catalog and the cart. Its orders upstream is the cart's URL unless
/// [`Service::orders`] (or an `--orders-service-url` flag) names one: no orders service unless
/// the test brings one, and never the default port of a real one.
pub fn gateway(catalog_url: &str, cart_url: &str) -> Service<Gateway> {
    let mut gateway = Service::new(&[
        "--catalog-service-url",
        catalog_url,
        "--cart-service-url",
        cart_url,
    ]);
    gateway
        .defaults
        .push(("--orders-service-url", cart_url.to_owned()));
    gateway
}

impl<K: Kind> Service<K> {
    fn new(flags: &[&str]) -> Self {
        Self {
            flags: flags.iter().map(|flag| (*flag).to_owned()).collect(),
            defaults: Vec::new(),
            settings: crate::settings(K::NAME),
            kind: PhantomData,
        }
    }

    /// Add `--name value` to the command line.
    pub fn flag(self, name: &str, value: &str) -> Self {
        self.flags(&[name, value])
    }

    /// Add command-line flags as written (`["--cart-ttl", "1s"]`).
    pub fn flags(mut self, flags: &[&str]) -> Self {
        self.flags.extend(flags.iter().map(|flag| (*flag).to_owned()));
        self
    }

    /// Change the settings the service starts with.
    pub fn settings(mut self, tweak: impl FnOnce(&mut Settings)) -> Self {
        tweak(&mut self.settings);
        self
    }

    /// Keep the service's shared state on the Redis at `redis_url` (in memory when `None`).
    pub fn redis(self, redis_url: Option<&str>) -> Self {
        let redis_url = redis_url.map(str::to_owned);
        self.settings(|settings| settings.redis_url = redis_url)
    }

    /// Start the service; panics (failing the test) when it cannot start.
    pub async fn start(self) -> TestServer {
        self.start_with_state().await.0
    }

    /// [`Service::start`], and the state its handlers share.
    pub async fn start_with_state(self) -> (TestServer, K::State) {
        match self.try_start().await {
            Ok(started) => started,
            Err(error) => panic!("the {} service did not start: {error:#}", K::NAME),
        }
    }

    async fn try_start(self) -> anyhow::Result<(TestServer, K::State)> {
        crate::init_telemetry();
        let Self {
            mut flags,
            defaults,
            settings,
            ..
        } = self;
        for (flag, value) in defaults {
            let given = flags.iter().any(|given| {
                given == flag || given.strip_prefix(flag).is_some_and(|rest| rest.starts_with('='))
            });
            if !given {
                flags.extend([flag.to_owned(), value]);
            }
        }
        let mut args = vec![K::NAME.to_owned()];
        args.extend(flags);
        let platform = Platform::new(settings)?;
        let state = K::state(args, platform.clone()).await?;
        let server = TestServer::start(platform, K::app(state.clone())).await?;
        Ok((server, state))
    }
}

impl Service<Cart> {
    /// Publish cart events to the NATS at `nats_url` (none when `None`).
    pub fn nats(self, nats_url: Option<&str>) -> Self {
        match nats_url {
            Some(url) => self.flag("--nats-url", url),
            None => self,
        }
    }
}

impl Service<Orders> {
    /// Publish order events to (and consume cart events from) the NATS at `nats_url` (none when
    /// `None`).
    pub fn nats(self, nats_url: Option<&str>) -> Self {
        match nats_url {
            Some(url) => self.flag("--nats-url", url),
            None => self,
        }
    }
}

impl Service<Gateway> {
    /// Route the orders API to `orders_url`.
    pub fn orders(self, orders_url: &str) -> Self {
        self.flag("--orders-service-url", orders_url)
    }
}

/// A product's free stock as the catalog at `catalog` reports it.
pub async fn stock_of(catalog: &TestServer, product_id: &str) -> i64 {
    let response = client()
        .get(catalog.url(&format!("/catalog/{product_id}")))
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET /catalog/{product_id}: {error}"));
    let product = json_of(response).await;
    product["stock"]
        .as_i64()
        .unwrap_or_else(|| panic!("/catalog/{product_id} has no stock: {product}"))
}

/// Set a product's stock through the catalog's admin API; panics unless it answers 200.
pub async fn set_stock(catalog: &TestServer, product_id: &str, stock: i64) {
    let response = client()
        .put(catalog.url(&format!("/admin/stock/{product_id}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"stock": stock}))
        .send()
        .await
        .unwrap_or_else(|error| panic!("PUT /admin/stock/{product_id}: {error}"));
    assert_eq!(response.status(), reqwest::StatusCode::OK);
}
