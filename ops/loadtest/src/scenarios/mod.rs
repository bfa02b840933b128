//! The scenarios, each selectable with `--scenarios NAME[,NAME…]`:
//!
//! | name | weight | what a user does |
//! |---|---|---|
//! | `browse` | 7 | a shopper browsing: list pages of the catalog, view products (real ids), search |
//! | `cart` | 3 | a cart user: add products, view, change a quantity, remove one, clear |
//! | `journey` | 1 | a user journey on the v1 cart API: add → get → stress (when the target allows it) → clear |
//! | `checkout` | 1 | a buyer: add to cart → check out (`Idempotency-Key`) → view the order → list orders → cancel (stock goes back) |
//! | `poller` | 1 | a low-rate poller of `/healthz` and `/metrics` |
//! | `storefront` | 1 | a shopper opening the shop page: `GET /` as a browser asks for it, then every file it loads |
//! | `ping` | – | benchmarks only (`make bench`): `GET /catalog/{id}` back to back; runs only when named |
//!
//! Weights decide how many users run each scenario (browse:cart is 70:30: most shoppers only browse).
//! A new scenario is one module here with a `scenario(ctx)` builder, registered in [`all`].
//!
//! Every request is named by its route template (`GET /catalog/{id}`, never the raw URL), so
//! Goose's report groups requests the way the gateway's `http_requests_total{route}` does and
//! the truth check can compare them route by route. A search is named `/catalog?q={q}`: the
//! part before `?` is the route.

pub mod browse;
pub mod cart;
pub mod checkout;
pub mod journey;
pub mod ping;
pub mod poller;
pub mod storefront;

use std::sync::Arc;
use std::time::Duration;

use goose::goose::GooseResponse;
use goose::metrics::GooseRequestMetric;
use goose::prelude::*;
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::Value;

use crate::live::LiveCounters;

/// What the scenarios share: the target's real products, the stress setting found by the probe,
/// the live counters.
pub struct Context {
    /// Product ids read from `GET /catalog` before the run.
    pub products: Vec<String>,
    /// Words from product names and categories, for searches that find something.
    pub search_terms: Vec<String>,
    /// `POST /stress` parameters when the target has stress enabled; `None` skips the step.
    pub stress: Option<StressParams>,
    /// Our own journeys take turns on `/stress` (the target runs one at a time and answers 409
    /// to a second), so the scenario measures the stress, not our own collisions.
    pub stress_turn: tokio::sync::Mutex<()>,
    pub live: LiveCounters,
    /// Distinguishes this run's cart users from any other run's.
    pub run_id: String,
    pub max_quantity: u32,
    /// Pause between a user's transactions.
    pub think_time: (Duration, Duration),
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StressParams {
    pub cpu_iterations: u32,
    pub memory_mb: u32,
}

/// Catalog page size the browse scenario asks for.
pub const PAGE_SIZE: usize = 20;

impl Context {
    pub fn random_product(&self) -> Option<String> {
        self.products.choose(&mut rand::rng()).cloned()
    }

    pub fn random_quantity(&self) -> u32 {
        rand::rng().random_range(1..=self.max_quantity)
    }

    pub fn user_id(&self, kind: &str, user: &GooseUser) -> String {
        format!("lt-{}-{kind}{}", self.run_id, user.weighted_users_index)
    }
}

/// The mix's scenario names, in the order they are registered.
pub const NAMES: &[&str] = &["browse", "cart", "journey", "checkout", "poller", "storefront"];

/// Every scenario of the mix, with its weight, and `ping` when asked for by name.
pub fn all(ctx: &Arc<Context>, with_ping: bool) -> Result<Vec<Scenario>, GooseError> {
    let mut scenarios = vec![
        browse::scenario(ctx)?,
        cart::scenario(ctx)?,
        journey::scenario(ctx)?,
        checkout::scenario(ctx)?,
        poller::scenario(ctx)?,
        storefront::scenario(ctx)?,
    ];
    if with_ping {
        scenarios.push(ping::scenario(ctx)?);
    }
    Ok(scenarios)
}

/// The result of one request: whether it got a 2xx, and Goose's record of it.
pub struct Outcome {
    pub ok: bool,
    pub status: u16,
    pub metric: GooseRequestMetric,
}

/// Make one request named `name` (a route template), read its body so the connection is
/// reused, and count it.
pub async fn send(
    user: &mut GooseUser,
    ctx: &Context,
    scenario: &'static str,
    method: GooseMethod,
    path: &str,
    name: &str,
    body: Option<&Value>,
) -> Result<Outcome, Box<TransactionError>> {
    let mut builder = user.get_request_builder(&method, path)?;
    if let Some(body) = body {
        builder = builder.json(body);
    }
    let request = GooseRequest::builder()
        .method(method)
        .path(path)
        .name(name)
        .set_request_builder(builder)
        .build();
    let GooseResponse { request, response } = user.request(request).await?;
    if let Ok(response) = response {
        // Drain the body: an unread body closes the connection instead of reusing it.
        let _ = response.bytes().await;
    }
    ctx.live.record(scenario, request.success);
    Ok(Outcome {
        ok: request.success,
        status: request.status_code,
        metric: request,
    })
}

/// A transaction's result: failed (naming the request) when any of its requests failed.
/// `DELETE /v1/cart/{user_id}`: how every scenario that leaves reserved stock in a cart gives it
/// back when its user stops.
pub async fn clear_cart(
    user: &mut GooseUser,
    ctx: &Context,
    scenario: &'static str,
    user_id: &str,
) -> TransactionResult {
    let path = format!("/v1/cart/{user_id}");
    let outcome = send(
        user,
        ctx,
        scenario,
        GooseMethod::Delete,
        &path,
        "/v1/cart/{user_id}",
        None,
    )
    .await?;
    verdict((!outcome.ok).then_some(outcome.metric))
}

pub fn verdict(failed: Option<GooseRequestMetric>) -> TransactionResult {
    match failed {
        None => Ok(()),
        Some(metric) => Err(Box::new(TransactionError::RequestFailed {
            raw_request: Box::new(metric),
        })),
    }
}

/// Wrap `async fn(&mut GooseUser, Arc<Context>) -> TransactionResult` as a named transaction.
macro_rules! step {
    ($ctx:expr, $name:expr, $function:path) => {{
        let ctx = ::std::sync::Arc::clone($ctx);
        let function: ::goose::prelude::TransactionFunction = ::std::sync::Arc::new(move |user| {
            let ctx = ::std::sync::Arc::clone(&ctx);
            Box::pin(async move { $function(user, ctx).await })
        });
        ::goose::prelude::Transaction::new(function).set_name($name)
    }};
}
pub(crate) use step;
