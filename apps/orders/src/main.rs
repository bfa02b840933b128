use std::process::ExitCode;

use clap::Parser;
use orders::{AppState, DEFAULTS, OrdersConfig, app};
use shopstack_common::server;

#[tokio::main]
async fn main() -> ExitCode {
    let config = OrdersConfig::parse();
    server::run(config.common.clone(), DEFAULTS, |platform| async move {
        Ok(app(AppState::new(&config, platform).await?))
    })
    .await
}
