//! ShopStack's load test, on Goose.
//!
//! A run: check the target is up → read the catalog's real product ids → probe `/stress` →
//! read the simulation profiles the fault steps will touch → scrape the gateway's
//! `http_requests_total` → run Goose (firing the fault steps on their timers) → scrape again and
//! compare ([`truth`]) → put the simulation back → write the reports and give the verdict.
//!
//! - [`cli`]: the command line (Goose's flags and ShopStack's);
//! - [`scenarios`]: browse, cart, journey, checkout, poller, storefront;
//! - [`faults`]: `--fault-at` steps and the admin API;
//! - [`truth`]: the comparison with the gateway's metrics;
//! - [`target`]: the tool's own requests before and after the run;
//! - [`report`]: summary JSON, CSV, the HTML section and the console verdict;
//! - [`live`]: counters that let each fault step mark where the run was.

pub mod cli;
pub mod faults;
pub mod live;
pub mod report;
mod run;
pub mod scenarios;
pub mod target;
pub mod truth;

pub use run::{ExitStatus, run, run_reporting_start};
