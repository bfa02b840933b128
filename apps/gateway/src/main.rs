use std::process::ExitCode;

use clap::Parser;
use gateway::{DEFAULTS, GatewayConfig, GatewayState, app};
use shopstack_common::server;

#[tokio::main]
async fn main() -> ExitCode {
    if let Some(code) = shopstack_common::probe::healthcheck_from_args(DEFAULTS.port) {
        return code;
    }
    let config = GatewayConfig::parse();
    server::run(config.common.clone(), DEFAULTS, |platform| async move {
        Ok(app(GatewayState::new(&config, platform)?))
    })
    .await
}
