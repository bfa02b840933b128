//! `poller` (weight 1): what a monitoring system does, at a low rate: `GET /healthz` and
//! `GET /metrics` every `--poll-interval`. These routes are left out of the truth check, since
//! Prometheus and probes hit them too.

use std::sync::Arc;

use goose::prelude::*;

use super::{Context, send, step, verdict};

const NAME: &str = "poller";

pub fn scenario(ctx: &Arc<Context>) -> Result<Scenario, GooseError> {
    let scenario = scenario!(NAME)
        .set_weight(1)?
        .set_wait_time(ctx.poll_interval, ctx.poll_interval)?
        .register_transaction(step!(ctx, "poller: healthz and metrics", poll));
    Ok(scenario)
}

async fn poll(user: &mut GooseUser, ctx: Arc<Context>) -> TransactionResult {
    let health = send(user, &ctx, NAME, GooseMethod::Get, "/healthz", "/healthz", None).await?;
    let metrics = send(user, &ctx, NAME, GooseMethod::Get, "/metrics", "/metrics", None).await?;
    let failed = [health, metrics]
        .into_iter()
        .find(|outcome| !outcome.ok)
        .map(|outcome| outcome.metric);
    verdict(failed)
}
