//! The stock invariant, checked from outside the services: for every product,
//! `free + held + sold == initial` (docs/design/inventory.md, "The invariant").
//!
//! Each term is read where it is observable: *free* is the catalog's `stock` of the product,
//! *held* the catalog's holds of the owners the test used (`GET /inventory/holds/{owner}`),
//! *sold* the units of the orders service's orders that are not cancelled (the database is the
//! truth: a cancelled order's units go back). Placements still being resolved (a saga between
//! commit and order) and cancelled orders not yet restocked make the sum differ for a moment;
//! [`StockInvariant::settles`] waits, within a bound, for it to hold.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

/// One product's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ledger {
    pub free: i64,
    pub held: i64,
    pub sold: i64,
}

impl Ledger {
    pub fn total(&self) -> i64 {
        self.free + self.held + self.sold
    }
}

/// The invariant over a catalog (and the orders service that sells from it).
#[derive(Debug, Clone)]
pub struct StockInvariant {
    catalog: String,
    orders: Option<String>,
    owners: Vec<String>,
    initial: BTreeMap<String, i64>,
    client: reqwest::Client,
}

impl StockInvariant {
    /// Products and their initial stock (the catalog's product file, or the stock an operator
    /// set since: a new baseline) on the catalog at `catalog_url`.
    pub fn new(catalog_url: &str, initial: BTreeMap<String, i64>) -> Self {
        Self {
            catalog: catalog_url.trim_end_matches('/').to_owned(),
            orders: None,
            owners: Vec::new(),
            initial,
            client: crate::http::client(),
        }
    }

    /// Count the orders of the orders service at `orders_url` as sold.
    pub fn orders(mut self, orders_url: &str) -> Self {
        self.orders = Some(orders_url.trim_end_matches('/').to_owned());
        self
    }

    /// Count the holds of these owners (the users whose carts the test filled).
    pub fn owners<I, S>(mut self, owners: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.owners.extend(owners.into_iter().map(Into::into));
        self
    }

    async fn get(&self, url: &str) -> anyhow::Result<Value> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("GET {url}: not JSON"))?;
        anyhow::ensure!(status.is_success(), "GET {url}: {status} {body}");
        Ok(body)
    }

    /// Every product's terms now.
    pub async fn ledger(&self) -> anyhow::Result<BTreeMap<String, Ledger>> {
        let mut ledger: BTreeMap<String, Ledger> = BTreeMap::new();
        for product_id in self.initial.keys() {
            let product = self
                .get(&format!("{}/catalog/{product_id}", self.catalog))
                .await?;
            let free = product["stock"]
                .as_i64()
                .with_context(|| format!("{product_id} has no stock: {product}"))?;
            ledger.entry(product_id.clone()).or_default().free = free;
        }
        for owner in &self.owners {
            let holds = self
                .get(&format!("{}/inventory/holds/{owner}", self.catalog))
                .await?;
            for line in holds["holds"].as_array().into_iter().flatten() {
                let (Some(product_id), Some(quantity)) =
                    (line["product_id"].as_str(), line["quantity"].as_i64())
                else {
                    anyhow::bail!("a hold of {owner} without product or quantity: {line}");
                };
                ledger.entry(product_id.to_owned()).or_default().held += quantity;
            }
        }
        if let Some(orders) = &self.orders {
            // Bounded: a test sells far fewer than this many pages of orders.
            for page in 1..=1000 {
                let listed = self
                    .get(&format!("{orders}/api/orders?page={page}&page_size=100"))
                    .await?;
                let data = listed["data"].as_array().cloned().unwrap_or_default();
                for order in data.iter().filter(|order| order["status"] != "cancelled") {
                    for item in order["order_items"].as_array().into_iter().flatten() {
                        let (Some(product_id), Some(quantity)) =
                            (item["product_id"].as_str(), item["quantity"].as_i64())
                        else {
                            anyhow::bail!("an order line without product or quantity: {item}");
                        };
                        ledger.entry(product_id.to_owned()).or_default().sold += quantity;
                    }
                }
                if i64::from(page) >= listed["pagination"]["total_pages"].as_i64().unwrap_or(0) {
                    break;
                }
            }
        }
        Ok(ledger)
    }

    /// `Ok` with the ledger when, for every product, `free + held + sold == initial`; else an
    /// error naming each product where it does not, with its terms.
    pub async fn check(&self) -> anyhow::Result<BTreeMap<String, Ledger>> {
        let ledger = self.ledger().await?;
        let broken: Vec<String> = ledger
            .iter()
            .filter_map(|(product_id, terms)| {
                let initial = self.initial.get(product_id).copied().unwrap_or(0);
                (terms.total() != initial || terms.free < 0).then(|| {
                    format!(
                        "{product_id}: free {} + held {} + sold {} = {} ≠ initial {initial}",
                        terms.free,
                        terms.held,
                        terms.sold,
                        terms.total()
                    )
                })
            })
            .collect();
        anyhow::ensure!(broken.is_empty(), "stock invariant broken: {}", broken.join("; "));
        Ok(ledger)
    }

    /// Wait, for at most `limit`, until the owners hold nothing (their holds expired or were
    /// released) and the invariant holds; the ledger then, or the last failure.
    pub async fn settles(&self, limit: Duration) -> anyhow::Result<BTreeMap<String, Ledger>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let outcome = match self.check().await {
                Ok(ledger) if ledger.values().all(|terms| terms.held == 0) => return Ok(ledger),
                Ok(ledger) => Err(anyhow::anyhow!("holds not given back yet: {ledger:?}")),
                Err(error) => Err(error),
            };
            if tokio::time::Instant::now() >= deadline {
                return outcome.context(format!("the stock did not settle within {limit:?}"));
            }
            tokio::time::sleep(crate::wait::POLL_INTERVAL).await;
        }
    }
}

/// A catalogue of a test's own, in a file the catalog reads (`PRODUCTS_FILE`): products with a
/// known stock each, which is the invariant's `initial`. The file is removed when dropped.
pub struct TestCatalogue {
    path: std::path::PathBuf,
    file: String,
    pub initial: BTreeMap<String, i64>,
}

impl TestCatalogue {
    /// Write products `id` with `units` each (price 5.00 USD, category `test`).
    pub fn write<Id: Into<String>>(stock: impl IntoIterator<Item = (Id, i64)>) -> anyhow::Result<Self> {
        let initial: BTreeMap<String, i64> =
            stock.into_iter().map(|(id, units)| (id.into(), units)).collect();
        let products: Vec<Value> = initial
            .iter()
            .map(|(id, units)| {
                serde_json::json!({"id": id, "name": format!("Product {id}"), "description": "",
                                   "price": 5.00, "currency": "USD", "categories": ["test"], "stock": units})
            })
            .collect();
        let path = std::env::temp_dir().join(format!(
            "shopstack-test-products-{}.json",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, serde_json::to_vec(&products)?)
            .with_context(|| format!("Failed to write {}", path.display()))?;
        Ok(Self {
            file: path.display().to_string(),
            path,
            initial,
        })
    }

    /// The file's path, for `PRODUCTS_FILE`.
    pub fn file(&self) -> &str {
        &self.file
    }
}

impl Drop for TestCatalogue {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
