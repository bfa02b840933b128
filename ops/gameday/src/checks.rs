//! The invariants a game day must keep, each passed or failed with what was seen.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use shopstack_testkit::stock::Ledger;

/// One invariant's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// One line: what was seen.
    pub detail: String,
    /// Per item (product, order), what broke, or for the stock every product's terms.
    pub items: Vec<CheckItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckItem {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

pub const STOCK: &str = "stock: free + held + sold == initial for every product";
pub const STREAM: &str = "every order on the stream exactly once as order.created";
pub const DEADLINES: &str = "no client waited past its deadline";
pub const REDIS: &str = "the Redis Cluster serves every slot after the run";

/// The stock invariant per product, from each product's terms (the catalog's free stock, the
/// shoppers' holds, the units of orders not cancelled) and its stock before the load.
pub fn stock(initial: &BTreeMap<String, i64>, ledger: &BTreeMap<String, Ledger>) -> Check {
    let products: BTreeSet<&String> = initial.keys().chain(ledger.keys()).collect();
    let items: Vec<CheckItem> = products
        .into_iter()
        .map(|product| {
            let terms = ledger.get(product).copied().unwrap_or_default();
            let before = initial.get(product).copied().unwrap_or(0);
            CheckItem {
                name: product.clone(),
                passed: terms.total() == before && terms.free >= 0,
                detail: format!(
                    "free {} + held {} + sold {} = {} (initial {before})",
                    terms.free,
                    terms.held,
                    terms.sold,
                    terms.total()
                ),
            }
        })
        .collect();
    let broken = items.iter().filter(|item| !item.passed).count();
    let sold: i64 = ledger.values().map(|terms| terms.sold).sum();
    Check {
        name: STOCK.to_owned(),
        passed: broken == 0,
        detail: format!("{} products, {broken} broken, {sold} units sold", items.len()),
        items,
    }
}

/// Every order in the database on the stream exactly once as `order.created`, and nothing on
/// the stream for an order the database does not have.
pub fn stream(in_database: &BTreeSet<String>, on_stream: &HashMap<String, usize>) -> Check {
    let mut items = Vec::new();
    for id in in_database {
        match on_stream.get(id).copied().unwrap_or(0) {
            1 => {}
            0 => items.push(CheckItem {
                name: id.clone(),
                passed: false,
                detail: "in the database, never on the stream".to_owned(),
            }),
            times => items.push(CheckItem {
                name: id.clone(),
                passed: false,
                detail: format!("on the stream {times} times"),
            }),
        }
    }
    let mut unknown: Vec<&String> = on_stream.keys().filter(|id| !in_database.contains(*id)).collect();
    unknown.sort();
    for id in unknown {
        items.push(CheckItem {
            name: id.clone(),
            passed: false,
            detail: "on the stream, not in the database".to_owned(),
        });
    }
    Check {
        name: STREAM.to_owned(),
        passed: items.is_empty(),
        detail: format!(
            "{} orders in the database, {} order.created events, {} problems",
            in_database.len(),
            on_stream.values().sum::<usize>(),
            items.len()
        ),
        items,
    }
}

/// A check that could not be made counts as failed, with the reason.
pub fn not_made(name: &str, error: &anyhow::Error) -> Check {
    Check {
        name: name.to_owned(),
        passed: false,
        detail: format!("could not be checked: {error:#}"),
        items: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(terms: &[(&str, i64, i64, i64)]) -> BTreeMap<String, Ledger> {
        terms
            .iter()
            .map(|(id, free, held, sold)| {
                (
                    (*id).to_owned(),
                    Ledger {
                        free: *free,
                        held: *held,
                        sold: *sold,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn stock_that_adds_up_passes_and_a_lost_unit_fails_its_product() {
        let initial: BTreeMap<String, i64> = [("a".to_owned(), 10), ("b".to_owned(), 5)].into();
        let good = stock(&initial, &ledger(&[("a", 7, 1, 2), ("b", 5, 0, 0)]));
        assert!(good.passed, "{good:?}");
        assert!(good.items.iter().all(|item| item.passed));

        let broken = stock(&initial, &ledger(&[("a", 7, 0, 2), ("b", 5, 0, 0)]));
        assert!(!broken.passed);
        let failed: Vec<&str> = broken
            .items
            .iter()
            .filter(|item| !item.passed)
            .map(|item| item.name.as_str())
            .collect();
        assert_eq!(failed, ["a"]);
        assert!(broken.detail.contains("1 broken"), "{}", broken.detail);

        let oversold = stock(&initial, &ledger(&[("a", -1, 0, 11), ("b", 5, 0, 0)]));
        assert!(!oversold.passed, "negative free stock is an oversell");
    }

    #[test]
    fn the_stream_must_have_each_order_once() {
        let database: BTreeSet<String> = ["o1", "o2", "o3"].map(str::to_owned).into();
        let good: HashMap<String, usize> = [("o1", 1), ("o2", 1), ("o3", 1)]
            .map(|(id, count)| (id.to_owned(), count))
            .into();
        assert!(stream(&database, &good).passed);

        let bad: HashMap<String, usize> = [("o1", 2), ("o3", 1), ("o9", 1)]
            .map(|(id, count)| (id.to_owned(), count))
            .into();
        let check = stream(&database, &bad);
        assert!(!check.passed);
        let problems: Vec<(&str, &str)> = check
            .items
            .iter()
            .map(|item| (item.name.as_str(), item.detail.as_str()))
            .collect();
        assert_eq!(
            problems,
            [
                ("o1", "on the stream 2 times"),
                ("o2", "in the database, never on the stream"),
                ("o9", "on the stream, not in the database")
            ]
        );
    }
}
