//! Counters the scenarios bump as responses arrive, so a fault step can note how far the run
//! had got when it fired, and the report can give the error rate of each phase between steps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

#[derive(Clone, Default)]
pub struct LiveCounters(Arc<Inner>);

#[derive(Default)]
struct Inner {
    requests: AtomicU64,
    errors: AtomicU64,
    by_scenario: Mutex<BTreeMap<&'static str, ScenarioCount>>,
}

/// Requests one scenario made, and how many failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScenarioCount {
    pub requests: u64,
    pub errors: u64,
}

impl LiveCounters {
    /// One request finished (`ok`: a 2xx answer).
    pub fn record(&self, scenario: &'static str, ok: bool) {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.0.errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut map = match self.0.by_scenario.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let entry = map.entry(scenario).or_default();
        entry.requests += 1;
        if !ok {
            entry.errors += 1;
        }
    }

    /// (requests, errors) so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.0.requests.load(Ordering::Relaxed),
            self.0.errors.load(Ordering::Relaxed),
        )
    }

    pub fn by_scenario(&self) -> BTreeMap<String, ScenarioCount> {
        let map = match self.0.by_scenario.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.iter()
            .map(|(name, count)| ((*name).to_owned(), *count))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_scenario_and_in_total() {
        let live = LiveCounters::default();
        live.record("browse", true);
        live.record("browse", false);
        live.record("cart", true);
        assert_eq!(live.totals(), (3, 1));
        let by = live.by_scenario();
        assert_eq!(
            by["browse"],
            ScenarioCount {
                requests: 2,
                errors: 1
            }
        );
        assert_eq!(
            by["cart"],
            ScenarioCount {
                requests: 1,
                errors: 0
            }
        );
    }
}
