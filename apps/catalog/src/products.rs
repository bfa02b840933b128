//! The product catalogue: loaded once from a JSON file shipped in the repository (or the file
//! named by `PRODUCTS_FILE`), validated, then served read-only.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use shopstack_base::money::Money;
use utoipa::ToSchema;

/// The catalogue shipped with the service (`apps/catalog/data/products.json`).
pub const EMBEDDED_PRODUCTS: &str = include_str!("../data/products.json");

/// A product as stored in the data file. `stock` there is the initial stock; responses carry
/// the live figure from the inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// Stable identifier, e.g. `prod-123`.
    #[schema(example = "prod-123")]
    pub id: String,
    pub name: String,
    pub description: String,
    /// Unit price, exact to the cent (two decimals on the wire).
    #[schema(value_type = f64, example = 29.99)]
    pub price: Money,
    /// ISO 4217 currency code.
    #[schema(example = "USD")]
    pub currency: String,
    pub categories: Vec<String>,
    /// Units still available to reserve.
    pub stock: i64,
}

/// The loaded, validated catalogue in file order, with an index by id.
#[derive(Debug, Clone)]
pub struct Catalog {
    products: Vec<Product>,
    by_id: HashMap<String, usize>,
}

impl Catalog {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("Failed to read PRODUCTS_FILE {}", path.display()))?,
            None => EMBEDDED_PRODUCTS.to_owned(),
        };
        Self::from_json(&text)
    }

    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let products: Vec<Product> =
            serde_json::from_str(text).context("The products file is not a valid product list")?;
        let mut seen = HashSet::new();
        for product in &products {
            if product.id.trim().is_empty() || product.name.trim().is_empty() {
                bail!("every product needs a non-empty id and name");
            }
            if !seen.insert(product.id.as_str()) {
                bail!("product id {} appears twice", product.id);
            }
            if product.price < Money::ZERO {
                bail!("product {} has a negative price", product.id);
            }
            if product.stock < 0 {
                bail!("product {} has negative stock", product.id);
            }
            if product.currency.len() != 3 || !product.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                bail!(
                    "product {} has currency {:?}; expected an ISO 4217 code",
                    product.id,
                    product.currency
                );
            }
        }
        if products.is_empty() {
            bail!("the products file is empty");
        }
        let by_id = products
            .iter()
            .enumerate()
            .map(|(index, product)| (product.id.clone(), index))
            .collect();
        Ok(Self { products, by_id })
    }

    pub fn get(&self, id: &str) -> Option<&Product> {
        self.by_id.get(id).map(|&index| &self.products[index])
    }

    /// [`Catalog::get`], also accepting a bare number for `prod-{number}` (clients of the simple
    /// cart API try `GET /catalog/123`). Read-only lookups use it; stock operations take exact ids.
    pub fn lookup(&self, id: &str) -> Option<&Product> {
        self.get(id).or_else(|| {
            (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
                .then(|| self.get(&format!("prod-{id}")))
                .flatten()
        })
    }

    pub fn all(&self) -> &[Product] {
        &self.products
    }

    /// Products whose name, description or categories contain every word of `query`
    /// (case-insensitive), optionally only those in `category`.
    pub fn search<'a>(
        &'a self,
        query: Option<&str>,
        category: Option<&str>,
    ) -> impl Iterator<Item = &'a Product> + 'a {
        let terms: Vec<String> = query
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
        let category = category.map(str::to_lowercase);
        self.products.iter().filter(move |product| {
            let in_category = category
                .as_ref()
                .is_none_or(|wanted| product.categories.iter().any(|c| c.eq_ignore_ascii_case(wanted)));
            in_category && {
                let haystack = format!(
                    "{} {} {}",
                    product.name,
                    product.description,
                    product.categories.join(" ")
                )
                .to_lowercase();
                terms.iter().all(|term| haystack.contains(term.as_str()))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_catalogue_is_valid_and_large_enough() {
        let catalog = Catalog::from_json(EMBEDDED_PRODUCTS).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(catalog.all().len() >= 50);
        // The ids the API examples use exist.
        for id in ["prod-123", "prod-456", "prod-789"] {
            assert!(catalog.get(id).is_some(), "{id} missing");
        }
    }

    #[test]
    fn bare_numbers_find_their_product() {
        let catalog = Catalog::from_json(EMBEDDED_PRODUCTS).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(catalog.lookup("123").map(|p| p.id.as_str()), Some("prod-123"));
        assert_eq!(
            catalog.lookup("prod-123").map(|p| p.id.as_str()),
            Some("prod-123")
        );
        assert!(catalog.lookup("999999").is_none());
        assert!(catalog.get("123").is_none(), "exact lookups stay exact");
    }

    #[test]
    fn search_matches_all_terms_case_insensitively() {
        let catalog = Catalog::from_json(EMBEDDED_PRODUCTS).unwrap_or_else(|e| panic!("{e:#}"));
        let hits: Vec<_> = catalog.search(Some("WIRELESS headphones"), None).collect();
        assert!(!hits.is_empty());
        assert!(hits.iter().all(|p| p.name.to_lowercase().contains("headphones")
            || p.description.to_lowercase().contains("headphones")));
        assert_eq!(catalog.search(Some("no-such-thing-anywhere"), None).count(), 0);
        assert!(
            catalog
                .search(None, Some("kitchen"))
                .all(|p| p.categories.iter().any(|c| c == "kitchen"))
        );
    }

    #[test]
    fn rejects_duplicates_and_bad_values() {
        let one = r#"{"id":"a","name":"A","description":"","price":1.00,"currency":"USD","categories":[],"stock":1}"#;
        assert!(Catalog::from_json(&format!("[{one},{one}]")).is_err());
        assert!(Catalog::from_json("[]").is_err());
        assert!(Catalog::from_json(&format!("[{}]", one.replace("1.00", "-1.00"))).is_err());
    }
}
