//! `cart` (weight 3): a cart user, over both cart APIs. Each iteration adds one to
//! three random products (`POST /v1/cart/{user_id}/items` or the simple cart API's `POST /cart/add`), views
//! the cart, changes a line's quantity (`PATCH`), removes a line (`DELETE …/items/{product_id}`)
//! and clears the cart. A user that stops with a cart still holding stock clears it on the way
//! out, so repeated runs don't leave reservations behind.

use std::sync::Arc;

use goose::prelude::*;
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::json;

use super::{Context, send, step, verdict};

const NAME: &str = "cart";

/// One cart user's state between transactions.
#[derive(Debug, Clone, Default)]
struct CartSession {
    user_id: String,
    /// Products this user has added and not removed.
    lines: Vec<String>,
    /// The cart may hold stock (an add was tried since the last successful clear).
    dirty: bool,
}

pub fn scenario(ctx: &Arc<Context>) -> Result<Scenario, GooseError> {
    let scenario = scenario!(NAME)
        .set_weight(3)?
        .set_wait_time(ctx.think_time.0, ctx.think_time.1)?
        .register_transaction(step!(ctx, "cart: add items", add_items).set_sequence(1))
        .register_transaction(step!(ctx, "cart: view", view).set_sequence(2))
        .register_transaction(step!(ctx, "cart: change quantity", change_quantity).set_sequence(3))
        .register_transaction(step!(ctx, "cart: remove item", remove_item).set_sequence(4))
        .register_transaction(step!(ctx, "cart: clear", clear).set_sequence(5))
        .register_transaction(step!(ctx, "cart: clear on stop", clear_on_stop).set_on_stop());
    Ok(scenario)
}

fn session(user: &mut GooseUser, ctx: &Context) -> CartSession {
    if let Some(session) = user.get_session_data::<CartSession>() {
        return session.clone();
    }
    let session = CartSession {
        user_id: ctx.user_id("c", user),
        ..CartSession::default()
    };
    user.set_session_data(session.clone());
    session
}

async fn add_items(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let mut state = session(user, &ctx);
    let count = rand::rng().random_range(1..=3usize);
    let mut failed = None;
    for _ in 0..count {
        let Some(product_id) = ctx.random_product() else {
            break;
        };
        if state.lines.contains(&product_id) {
            continue;
        }
        let quantity = ctx.random_quantity();
        state.dirty = true;
        let outcome = if rand::rng().random_bool(0.5) {
            let path = format!("/v1/cart/{}/items", state.user_id);
            let body = json!({"product_id": product_id, "quantity": quantity});
            send(
                user,
                &ctx,
                NAME,
                GooseMethod::Post,
                &path,
                "/v1/cart/{user_id}/items",
                Some(&body),
            )
            .await?
        } else {
            let body = json!({"user_id": state.user_id, "product_id": product_id, "quantity": quantity});
            send(
                user,
                &ctx,
                NAME,
                GooseMethod::Post,
                "/cart/add",
                "/cart/add",
                Some(&body),
            )
            .await?
        };
        if outcome.ok {
            state.lines.push(product_id);
        } else {
            failed = Some(outcome.metric);
        }
    }
    user.set_session_data(state);
    verdict(failed)
}

async fn view(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let state = session(user, &ctx);
    let outcome = if rand::rng().random_bool(0.5) {
        let path = format!("/v1/cart/{}", state.user_id);
        send(
            user,
            &ctx,
            NAME,
            GooseMethod::Get,
            &path,
            "/v1/cart/{user_id}",
            None,
        )
        .await?
    } else {
        let path = format!("/cart/{}", state.user_id);
        send(user, &ctx, NAME, GooseMethod::Get, &path, "/cart/{user_id}", None).await?
    };
    verdict((!outcome.ok).then_some(outcome.metric))
}

async fn change_quantity(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let state = session(user, &ctx);
    let Some(product_id) = state.lines.choose(&mut rand::rng()).cloned() else {
        return Ok(());
    };
    let path = format!("/v1/cart/{}/items/{product_id}", state.user_id);
    let body = json!({"quantity": ctx.random_quantity()});
    let outcome = send(
        user,
        &ctx,
        NAME,
        GooseMethod::Patch,
        &path,
        "/v1/cart/{user_id}/items/{product_id}",
        Some(&body),
    )
    .await?;
    verdict((!outcome.ok).then_some(outcome.metric))
}

async fn remove_item(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let mut state = session(user, &ctx);
    if state.lines.is_empty() {
        return Ok(());
    }
    let index = rand::rng().random_range(0..state.lines.len());
    let product_id = state.lines[index].clone();
    let path = format!("/v1/cart/{}/items/{product_id}", state.user_id);
    let outcome = send(
        user,
        &ctx,
        NAME,
        GooseMethod::Delete,
        &path,
        "/v1/cart/{user_id}/items/{product_id}",
        None,
    )
    .await?;
    if outcome.ok {
        state.lines.remove(index);
        user.set_session_data(state);
    }
    verdict((!outcome.ok).then_some(outcome.metric))
}

async fn clear(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let mut state = session(user, &ctx);
    let outcome = if rand::rng().random_bool(0.5) {
        let path = format!("/v1/cart/{}", state.user_id);
        send(
            user,
            &ctx,
            NAME,
            GooseMethod::Delete,
            &path,
            "/v1/cart/{user_id}",
            None,
        )
        .await?
    } else {
        let path = format!("/cart/{}", state.user_id);
        send(
            user,
            &ctx,
            NAME,
            GooseMethod::Delete,
            &path,
            "/cart/{user_id}",
            None,
        )
        .await?
    };
    if outcome.ok {
        state.lines.clear();
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
