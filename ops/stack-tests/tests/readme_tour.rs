//! The README's tour works when pasted: the block between `<!-- tour:start -->` and
//! `<!-- tour:end -->` runs in order, in one bash with `set -eo pipefail`, against the four
//! service binaries started the way `make run-all` starts them (embedded stores, the default
//! simulation profile, the local admin token), each on a free loopback port. Every command in
//! the block uses `curl -fsS` and `jq -e`, so a 4xx/5xx, an empty answer or a missing field
//! fails the test and the README cannot rot.
//!
//! The one difference from `make run-all`: injected cart-write failures are off
//! (`SIM_FAILURE_RATE=0` on the cart), since the default profile fails 1 % of them at random.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use shopstack_testkit::db::TestDb;
use shopstack_testkit::process::{ServiceProcess, workspace_binary};
use stack_tests::repo_root;

/// The make-run-all admin token (the Makefile exports it for `make run-all`).
const ADMIN_TOKEN: &str = "shopstack-local-admin";

/// The shell block of the README's tour.
fn tour_block() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let (_, rest) = readme
        .split_once("<!-- tour:start -->")
        .expect("README.md has a <!-- tour:start --> marker");
    let (tour, _) = rest
        .split_once("<!-- tour:end -->")
        .expect("README.md has a <!-- tour:end --> marker");
    let (_, fenced) = tour.split_once("```bash\n").expect("the tour is a ```bash block");
    let (block, _) = fenced.split_once("```").expect("the tour's block is closed");
    block.to_owned()
}

#[test]
fn the_tour_block_uses_checked_commands_only() {
    let block = tour_block();
    let commands: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert!(!commands.is_empty(), "the tour is empty");
    for line in &commands {
        if line.contains("curl ") {
            assert!(
                line.contains("curl -fsS"),
                "tour line without `curl -fsS`: {line}"
            );
        }
        if line.contains("| jq ") || line.contains("| jq -") {
            assert!(line.contains("jq -e"), "tour line without `jq -e`: {line}");
        }
    }
    assert!(
        block.is_ascii(),
        "the tour must be plain ASCII, so it pastes anywhere"
    );
}

#[test]
fn the_readme_tour_runs_in_order_against_the_stack() {
    let database = TestDb::sqlite();
    let common = [("ADMIN_TOKEN", ADMIN_TOKEN), ("STRESS_ENABLED", "true")];

    let catalog = ServiceProcess::spawn(&workspace_binary("catalog"), &common).unwrap();
    let catalog_url = catalog.url("");
    let mut cart_env = common.to_vec();
    cart_env.extend([
        ("CATALOG_SERVICE_URL", catalog_url.as_str()),
        ("SIM_FAILURE_RATE", "0"),
    ]);
    let cart = ServiceProcess::spawn(&workspace_binary("cart"), &cart_env).unwrap();
    let cart_url = cart.url("");
    let mut orders_env = common.to_vec();
    orders_env.extend([
        ("CATALOG_SERVICE_URL", catalog_url.as_str()),
        ("CART_SERVICE_URL", cart_url.as_str()),
        ("DATABASE_URL", database.url.as_str()),
    ]);
    let orders = ServiceProcess::spawn(&workspace_binary("orders"), &orders_env).unwrap();
    let orders_url = orders.url("");
    let mut gateway_env = common.to_vec();
    gateway_env.extend([
        ("CATALOG_SERVICE_URL", catalog_url.as_str()),
        ("CART_SERVICE_URL", cart_url.as_str()),
        ("ORDERS_SERVICE_URL", orders_url.as_str()),
    ]);
    let gateway = ServiceProcess::spawn(&workspace_binary("gateway"), &gateway_env).unwrap();
    let shop = gateway.url("");

    let script = format!("set -eo pipefail\n{}", tour_block());
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("SHOP", shop.trim_end_matches('/'))
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "the README's tour failed ({}):\n--- stdout\n{}\n--- stderr\n{}\n--- gateway log (last lines)\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        gateway
            .output()
            .iter()
            .rev()
            .take(20)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
    );
    drop((gateway, orders, cart, catalog));
}
