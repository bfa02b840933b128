use std::process::ExitCode;

use cart::{AppState, CartConfig, DEFAULTS, app};
use clap::Parser;
use shopstack_common::server;

#[tokio::main]
async fn main() -> ExitCode {
    let config = CartConfig::parse();
    server::run(config.common.clone(), DEFAULTS, |platform| async move {
        Ok(app(AppState::new(&config, platform).await?))
    })
    .await
}
