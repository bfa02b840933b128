use std::process::ExitCode;

use catalog::{AppState, CatalogConfig, DEFAULTS, app};
use clap::Parser;
use shopstack_platform::server;

fn main() -> ExitCode {
    if let Some(code) = shopstack_platform::probe::healthcheck_from_args(DEFAULTS.port) {
        return code;
    }
    let config = CatalogConfig::parse();
    server::block_on(server::run(
        config.common.clone(),
        DEFAULTS,
        |platform| async move { Ok(app(AppState::new(&config, platform).await?)) },
    ))
}
