//! `journey` (weight 1): a user journey on the v1 cart API: add an item
//! (`POST /v1/cart/{user_id}`), get the cart, `POST /stress` with small parameters (only when
//! the probe before the run found stress enabled on the target), then clear the cart.

use std::sync::Arc;

use goose::prelude::*;
use serde_json::json;

use super::{Context, send, step, verdict};

const NAME: &str = "journey";

#[derive(Debug, Clone, Default)]
struct JourneySession {
    user_id: String,
    dirty: bool,
}

pub fn scenario(ctx: &Arc<Context>) -> Result<Scenario, GooseError> {
    let mut scenario = scenario!(NAME)
        .set_weight(1)?
        .set_wait_time(ctx.think_time.0, ctx.think_time.1)?
        .register_transaction(step!(ctx, "journey: add item", add_item).set_sequence(1))
        .register_transaction(step!(ctx, "journey: get cart", get_cart).set_sequence(2));
    if ctx.stress.is_some() {
        scenario = scenario.register_transaction(step!(ctx, "journey: stress", stress).set_sequence(3));
    }
    let scenario = scenario
        .register_transaction(step!(ctx, "journey: clear cart", clear_cart).set_sequence(4))
        .register_transaction(step!(ctx, "journey: clear on stop", clear_on_stop).set_on_stop());
    Ok(scenario)
}

fn session(user: &mut GooseUser, ctx: &Context) -> JourneySession {
    if let Some(session) = user.get_session_data::<JourneySession>() {
        return session.clone();
    }
    let session = JourneySession {
        user_id: ctx.user_id("j", user),
        dirty: false,
    };
    user.set_session_data(session.clone());
    session
}

async fn add_item(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let mut state = session(user, &ctx);
    let Some(product_id) = ctx.random_product() else {
        return Ok(());
    };
    state.dirty = true;
    let path = format!("/v1/cart/{}", state.user_id);
    let body = json!({"product_id": product_id, "quantity": ctx.random_quantity()});
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

async fn get_cart(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let state = session(user, &ctx);
    let path = format!("/v1/cart/{}", state.user_id);
    let outcome = send(
        user,
        &ctx,
        NAME,
        GooseMethod::Get,
        &path,
        "/v1/cart/{user_id}",
        None,
    )
    .await?;
    verdict((!outcome.ok).then_some(outcome.metric))
}

async fn stress(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let Some(params) = ctx.stress else {
        return Ok(());
    };
    let path = format!(
        "/stress?cpu_iterations={}&memory_mb={}",
        params.cpu_iterations, params.memory_mb
    );
    let _turn = ctx.stress_turn.lock().await;
    let outcome = send(user, &ctx, NAME, GooseMethod::Post, &path, "/stress", None).await?;
    verdict((!outcome.ok).then_some(outcome.metric))
}

async fn clear_cart(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let mut state = session(user, &ctx);
    let path = format!("/v1/cart/{}", state.user_id);
    let outcome = send(
        user,
        &ctx,
        NAME,
        GooseMethod::Delete,
        &path,
        "/v1/cart/{user_id}",
        None,
    )
    .await?;
    if outcome.ok {
        state.dirty = false;
        user.set_session_data(state);
    }
    verdict((!outcome.ok).then_some(outcome.metric))
}

async fn clear_on_stop(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let state = session(user, &ctx);
    if !state.dirty {
        return Ok(());
    }
    super::clear_cart(user, &ctx, NAME, &state.user_id).await
}
