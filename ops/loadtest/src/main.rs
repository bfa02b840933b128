//! `loadtest`: ShopStack's Goose load test. `loadtest --help` lists every option.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    ExitCode::from(loadtest::run(std::env::args_os()).await as u8)
}
