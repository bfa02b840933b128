//! What the tool asks the target before (and after) the run, outside Goose's measurements:
//! is it up, which products exist, is `/stress` enabled, what do its metrics say.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::truth::{Counts, parse_requests_total};

/// Time allowed to each of the tool's own requests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the target can't be load tested.
#[derive(Debug)]
pub enum Unreachable {
    /// Nothing answered: the stack isn't running (or `--host` is wrong).
    Down(String),
    /// Something answered, but not as ShopStack would.
    Unusable(String),
}

pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")
}

/// `GET /healthz`: `Ok(None)` when healthy, `Ok(Some(body))` when it answered but not 200.
pub async fn preflight(client: &reqwest::Client, host: &str) -> Result<Option<String>, Unreachable> {
    let response = client
        .get(format!("{host}/healthz"))
        .send()
        .await
        .map_err(|error| Unreachable::Down(describe(&error)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(None);
    }
    let body = response.text().await.unwrap_or_default();
    if status == StatusCode::NOT_FOUND {
        return Err(Unreachable::Unusable(format!(
            "GET {host}/healthz answered 404: is --host a ShopStack gateway?"
        )));
    }
    Ok(Some(format!("{status}: {}", body.trim())))
}

/// A request error with its innermost cause, e.g. `Connection refused (os error 111)`.
pub fn describe(error: &reqwest::Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    if error.is_connect() {
        format!("could not connect: {innermost}")
    } else if error.is_timeout() {
        format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())
    } else {
        format!("{error}: {innermost}")
    }
}

#[derive(Deserialize)]
struct ProductList {
    products: Vec<Product>,
    pagination: Pagination,
}

#[derive(Deserialize)]
struct Product {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    categories: Vec<String>,
}

#[derive(Deserialize)]
struct Pagination {
    total_pages: u64,
}

/// Every product id, and words from names and categories to search for.
pub async fn catalog(client: &reqwest::Client, host: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    const MAX_PAGES: u64 = 100;
    let mut ids = Vec::new();
    let mut words = BTreeSet::new();
    let mut page = 1;
    loop {
        let url = format!("{host}/catalog?page={page}&page_size=100");
        let response = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {url} answered {status}");
        }
        let list: ProductList = response
            .json()
            .await
            .with_context(|| format!("GET {url}: not a ShopStack product list"))?;
        for product in list.products {
            for word in product
                .name
                .split(|c: char| !c.is_ascii_alphanumeric())
                .chain(product.categories.iter().map(String::as_str))
            {
                if word.len() >= 4 && word.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    words.insert(word.to_ascii_lowercase());
                }
            }
            ids.push(product.id);
        }
        if page >= list.pagination.total_pages || page >= MAX_PAGES {
            break;
        }
        page += 1;
    }
    if ids.is_empty() {
        bail!("GET {host}/catalog lists no products: nothing to browse or add to carts");
    }
    Ok((ids, words.into_iter().collect()))
}

/// Whether `POST /stress` is enabled: one tiny run (1 iteration, 0 MB). The answer, in words.
pub async fn stress_enabled(client: &reqwest::Client, host: &str) -> (bool, String) {
    match client
        .post(format!("{host}/stress?cpu_iterations=1&memory_mb=0"))
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status();
            let _ = response.bytes().await;
            match status {
                StatusCode::OK => (true, "enabled (probe answered 200)".to_owned()),
                StatusCode::FORBIDDEN => (
                    false,
                    "disabled on the target (probe answered 403; start it with STRESS_ENABLED=true)"
                        .to_owned(),
                ),
                other => (false, format!("not available (probe answered {other})")),
            }
        }
        Err(error) => (false, format!("not available (probe failed: {error})")),
    }
}

/// The target's `http_requests_total` for `service`.
pub async fn scrape(client: &reqwest::Client, host: &str, service: &str) -> anyhow::Result<Counts> {
    let url = format!("{host}/metrics");
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {url} answered {status}");
    }
    let text = response.text().await.with_context(|| format!("GET {url}"))?;
    Ok(parse_requests_total(&text, service))
}
