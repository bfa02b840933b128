use std::process::ExitCode;

use catalog::{AppState, CatalogConfig, DEFAULTS, app};
use clap::Parser;
use shopstack_common::server;

#[tokio::main]
async fn main() -> ExitCode {
    let config = CatalogConfig::parse();
    server::run(config.common.clone(), DEFAULTS, |platform| async move {
        Ok(app(AppState::new(&config, platform).await?))
    })
    .await
}
