use std::process::ExitCode;

use clap::Parser;
use orders::{AppState, DEFAULTS, OrdersConfig, app};
use shopstack_platform::server;

fn main() -> ExitCode {
    if let Some(code) = shopstack_platform::probe::healthcheck_from_args(DEFAULTS.port) {
        return code;
    }
    let config = OrdersConfig::parse();
    server::block_on(server::run(
        config.common.clone(),
        DEFAULTS,
        |platform| async move { Ok(app(AppState::new(&config, platform).await?)) },
    ))
}
