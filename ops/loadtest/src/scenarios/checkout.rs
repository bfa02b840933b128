//! `checkout` (weight 1): a shopper who buys. Each iteration adds a product to the cart
//! (`POST /v1/cart/{user_id}`), checks the cart out (`POST /api/orders/checkout`, with an
//! `Idempotency-Key` as a real client would send), reads the order (`GET /api/orders/{id}`),
//! lists their orders (`GET /api/users/{user_id}/orders`), and cancels the order
//! (`POST /api/orders/{id}/cancel`) so its stock goes back and a long run never sells the
//! catalogue out. A user that stops with a cart still holding stock clears it on the way out.

use std::sync::Arc;

use goose::goose::GooseResponse;
use goose::prelude::*;
use rand::Rng;
use serde_json::{Value, json};

use super::{Context, send, step, verdict};

pub const NAME: &str = "checkout";

#[derive(Debug, Clone, Default)]
struct CheckoutSession {
    user_id: String,
    /// The order placed in this iteration, once checked out.
    order_id: Option<String>,
    /// Checkouts tried, for unique idempotency keys.
    attempts: u64,
    /// The cart may hold stock.
    dirty: bool,
}

pub fn scenario(ctx: &Arc<Context>) -> Result<Scenario, GooseError> {
    let scenario = scenario!(NAME)
        .set_weight(1)?
        .set_wait_time(ctx.think_time.0, ctx.think_time.1)?
        .register_transaction(step!(ctx, "checkout: add item", add_item).set_sequence(1))
        .register_transaction(step!(ctx, "checkout: place order", place_order).set_sequence(2))
        .register_transaction(step!(ctx, "checkout: view order", view_order).set_sequence(3))
        .register_transaction(step!(ctx, "checkout: my orders", my_orders).set_sequence(4))
        .register_transaction(step!(ctx, "checkout: cancel order", cancel_order).set_sequence(5))
        .register_transaction(step!(ctx, "checkout: clear on stop", clear_on_stop).set_on_stop());
    Ok(scenario)
}

fn session(user: &mut GooseUser, ctx: &Context) -> CheckoutSession {
    if let Some(session) = user.get_session_data::<CheckoutSession>() {
        return session.clone();
    }
    let session = CheckoutSession {
        user_id: ctx.user_id("o", user),
        ..CheckoutSession::default()
    };
    user.set_session_data(session.clone());
    session
}

async fn add_item(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let mut state = session(user, &ctx);
    state.order_id = None;
    let Some(product_id) = ctx.random_product() else {
        user.set_session_data(state);
        return Ok(());
    };
    state.dirty = true;
    let quantity = rand::rng().random_range(1..=ctx.max_quantity.clamp(1, 3));
    let path = format!("/v1/cart/{}", state.user_id);
    let body = json!({"product_id": product_id, "quantity": quantity});
    let outcome = send(
        user,
        &ctx,
        NAME,
        GooseMethod::Post,
        &path,
        "/v1/cart/{user_id}",
        Some(&body),
    )
    .await?;
    user.set_session_data(state);
    verdict((!outcome.ok).then_some(outcome.metric))
}

async fn place_order(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let mut state = session(user, &ctx);
    state.attempts += 1;
    let key = format!("{}-{}-{}", ctx.run_id, state.user_id, state.attempts);
    let body = json!({"user_id": state.user_id, "shipping_address": "1 Load Test Lane"});
    let builder = user
        .get_request_builder(&GooseMethod::Post, "/api/orders/checkout")?
        .header("idempotency-key", key)
        .json(&body);
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("/api/orders/checkout")
        .name("/api/orders/checkout")
        .set_request_builder(builder)
        .build();
    let GooseResponse { request, response } = user.request(request).await?;
    let order: Option<Value> = match response {
        Ok(response) => response
            .bytes()
            .await
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()),
        Err(_) => None,
    };
    ctx.live.record(NAME, request.success);
    if request.success {
        // The checkout cleared the cart (and released what it still held).
        state.dirty = false;
        state.order_id = order
            .as_ref()
            .and_then(|order| order["data"]["id"].as_str())
            .map(str::to_owned);
    }
    user.set_session_data(state);
    verdict((!request.success).then_some(request))
}

async fn view_order(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let state = session(user, &ctx);
    let Some(order_id) = &state.order_id else {
        return Ok(());
    };
    let path = format!("/api/orders/{order_id}");
    let outcome = send(
        user,
        &ctx,
        NAME,
        GooseMethod::Get,
        &path,
        "/api/orders/{id}",
        None,
    )
    .await?;
    verdict((!outcome.ok).then_some(outcome.metric))
}

async fn my_orders(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let state = session(user, &ctx);
    let path = format!("/api/users/{}/orders?page=1&page_size=10", state.user_id);
    let outcome = send(
        user,
        &ctx,
        NAME,
        GooseMethod::Get,
        &path,
        "/api/users/{user_id}/orders",
        None,
    )
    .await?;
    verdict((!outcome.ok).then_some(outcome.metric))
}

async fn cancel_order(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let mut state = session(user, &ctx);
    let Some(order_id) = state.order_id.take() else {
        return Ok(());
    };
    let path = format!("/api/orders/{order_id}/cancel");
    let outcome = send(
        user,
        &ctx,
        NAME,
        GooseMethod::Post,
        &path,
        "/api/orders/{id}/cancel",
        None,
    )
    .await?;
    user.set_session_data(state);
    verdict((!outcome.ok).then_some(outcome.metric))
}

async fn clear_on_stop(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let state = session(user, &ctx);
    if !state.dirty {
        return Ok(());
    }
    super::clear_cart(user, &ctx, NAME, &state.user_id).await
}
