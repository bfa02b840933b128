//! `browse` (weight 7): a shopper browsing the catalog. Lists a random page of the catalog, views
//! products by real ids (three times as often), and searches for words the catalog contains.

use std::sync::Arc;

use goose::prelude::*;
use rand::Rng;
use rand::seq::IndexedRandom;

use super::{Context, PAGE_SIZE, send, step, verdict};

const NAME: &str = "browse";

pub fn scenario(ctx: &Arc<Context>) -> Result<Scenario, GooseError> {
    let scenario = scenario!(NAME)
        .set_weight(7)?
        .set_wait_time(ctx.think_time.0, ctx.think_time.1)?
        .register_transaction(step!(ctx, "browse: list catalog", list_catalog).set_weight(1)?)
        .register_transaction(step!(ctx, "browse: view product", view_product).set_weight(3)?)
        .register_transaction(step!(ctx, "browse: search", search).set_weight(1)?);
    Ok(scenario)
}

async fn list_catalog(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let pages = ctx.products.len().div_ceil(PAGE_SIZE).max(1);
    let page = rand::rng().random_range(1..=pages);
    let path = format!("/catalog?page={page}&page_size={PAGE_SIZE}");
    let outcome = send(user, &ctx, NAME, GooseMethod::Get, &path, "/catalog", None).await?;
    verdict((!outcome.ok).then_some(outcome.metric))
}

async fn view_product(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let Some(id) = ctx.random_product() else {
        return Ok(());
    };
    let path = format!("/catalog/{id}");
    let outcome = send(user, &ctx, NAME, GooseMethod::Get, &path, "/catalog/{id}", None).await?;
    verdict((!outcome.ok).then_some(outcome.metric))
}

async fn search(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let Some(term) = ctx.search_terms.choose(&mut rand::rng()).cloned() else {
        return Ok(());
    };
    let path = format!("/catalog?q={term}");
    let outcome = send(user, &ctx, NAME, GooseMethod::Get, &path, "/catalog?q={q}", None).await?;
    verdict((!outcome.ok).then_some(outcome.metric))
}
