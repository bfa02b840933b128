use std::process::ExitCode;

use clap::Parser;
use gateway::config::Command;
use gateway::{DEFAULTS, GatewayConfig, GatewayState, app, auth};
use shopstack_platform::server;

/// mimalloc: on the proxy path a request makes a dozen short-lived allocations, and mimalloc's
/// thread-local free lists serve them in fewer instructions and with better locality than
/// glibc's malloc (docs/decisions/0002-mimalloc.md); the gateway's idle memory stays within its
/// goal.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    if let Some(code) = shopstack_platform::probe::healthcheck_from_args(DEFAULTS.port) {
        return code;
    }
    let config = GatewayConfig::parse();
    if let Some(Command::MintToken(args)) = &config.command {
        return match auth::mint_command(&config, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Err(error) = config
        .validate()
        .and_then(|()| auth::Auth::from_config(&config).map(drop))
    {
        eprintln!("error: invalid configuration: {error:#}");
        return ExitCode::from(2);
    }
    server::block_on(server::run(
        config.common_config(),
        DEFAULTS,
        |platform| async move { Ok(app(GatewayState::new(&config, platform)?)) },
    ))
}
