//! What the cart asks the catalog: does this product exist. Calls go through the platform's
//! traced client, round-robin over the configured catalog replicas.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use shopstack_common::client::HttpClient;

/// The fields of a catalog product the cart uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ProductSummary {
    pub id: String,
    pub stock: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("product {0} not found")]
    NotFound(String),
    #[error("the catalog did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the catalog is unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub struct CatalogClient {
    client: HttpClient,
    replicas: Arc<[Url]>,
    next: Arc<AtomicUsize>,
    timeout: Duration,
}

impl CatalogClient {
    pub fn new(client: HttpClient, replicas: Vec<Url>, timeout: Duration) -> Self {
        Self {
            client,
            replicas: replicas.into(),
            next: Arc::new(AtomicUsize::new(0)),
            timeout,
        }
    }

    fn base(&self) -> &Url {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.replicas.len().max(1);
        &self.replicas[index]
    }

    fn url(&self, path: &str) -> Result<Url, CatalogError> {
        self.base()
            .join(path)
            .map_err(|error| CatalogError::Unavailable(format!("bad catalog URL: {error}")))
    }

    pub async fn product(&self, product_id: &str) -> Result<ProductSummary, CatalogError> {
        // Ids are validated to a URL-safe alphabet before they get here.
        let url = self.url(&format!("catalog/{product_id}"))?;
        let request = self
            .client
            .inner()
            .get(url)
            .timeout(self.timeout)
            .build()
            .map_err(|error| CatalogError::Unavailable(error.to_string()))?;
        let response = self
            .client
            .send("catalog", "/catalog/{id}", request)
            .await
            .map_err(|error| self.transport_error(error))?;
        match response.status() {
            StatusCode::OK => response
                .json::<ProductSummary>()
                .await
                .map_err(|error| CatalogError::Unavailable(format!("unreadable product: {error}"))),
            StatusCode::NOT_FOUND => Err(CatalogError::NotFound(product_id.to_owned())),
            status => Err(CatalogError::Unavailable(format!("catalog answered {status}"))),
        }
    }

    pub fn transport_error(&self, error: reqwest::Error) -> CatalogError {
        if error.is_timeout() {
            CatalogError::Timeout(self.timeout)
        } else {
            CatalogError::Unavailable(error.to_string())
        }
    }
}
