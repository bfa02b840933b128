//! `ping` (benchmarks only): `GET /catalog/{id}` back to back, no pause, the same work as the
//! Locust file `make bench` compares Goose with (requests per CPU-second of the generator).
//! Never part of the mix: it is registered only when `--scenarios` names it.

use std::sync::Arc;

use goose::prelude::*;

use super::{Context, send, step, verdict};

pub const NAME: &str = "ping";

pub fn scenario(ctx: &Arc<Context>) -> Result<Scenario, GooseError> {
    let scenario = scenario!(NAME).register_transaction(step!(ctx, "ping: view product", ping));
    Ok(scenario)
}

async fn ping(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let Some(id) = ctx.random_product() else {
        return Ok(());
    };
    let path = format!("/catalog/{id}");
    let outcome = send(user, &ctx, NAME, GooseMethod::Get, &path, "/catalog/{id}", None).await?;
    verdict((!outcome.ok).then_some(outcome.metric))
}
