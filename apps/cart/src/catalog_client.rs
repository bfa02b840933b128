//! What the cart asks the catalog: does this product exist. Calls go through the platform's
//! traced client, round-robin over the configured catalog replicas.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use shopstack_common::client::HttpClient;

/// The catalog's answer to a reservation.
#[derive(Debug, Clone, Deserialize)]
pub struct HoldResponse {
    pub quantity: u32,
    /// Free stock left.
    pub stock: i64,
}

#[derive(Debug, Deserialize)]
struct ProblemBody {
    available: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("product {0} not found")]
    NotFound(String),
    #[error("insufficient stock: {available} available")]
    Insufficient { available: i64 },
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
        // A base without a trailing slash would lose its last segment in `Url::join`.
        let replicas: Vec<Url> = replicas
            .into_iter()
            .map(|mut url| {
                if !url.path().ends_with('/') {
                    url.set_path(&format!("{}/", url.path()));
                }
                url
            })
            .collect();
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

    /// Set `owner`'s reservation of `product_id` to exactly `quantity` units (0 releases).
    pub async fn set_hold(
        &self,
        owner: &str,
        product_id: &str,
        quantity: u32,
        ttl: Duration,
    ) -> Result<HoldResponse, CatalogError> {
        // Ids are validated to a URL-safe alphabet before they get here.
        let url = self.url(&format!("inventory/holds/{owner}/{product_id}"))?;
        let request = self
            .client
            .inner()
            .put(url)
            .timeout(self.timeout)
            .json(&serde_json::json!({"quantity": quantity, "ttl_secs": ttl.as_secs().max(1)}))
            .build()
            .map_err(|error| CatalogError::Unavailable(error.to_string()))?;
        let response = self
            .client
            .send("catalog", "/inventory/holds/{owner}/{product_id}", request)
            .await
            .map_err(|error| self.transport_error(error))?;
        match response.status() {
            StatusCode::OK => response
                .json::<HoldResponse>()
                .await
                .map_err(|error| CatalogError::Unavailable(format!("unreadable reservation: {error}"))),
            StatusCode::NOT_FOUND => Err(CatalogError::NotFound(product_id.to_owned())),
            StatusCode::CONFLICT => {
                let body: ProblemBody = response
                    .json()
                    .await
                    .map_err(|error| CatalogError::Unavailable(format!("unreadable conflict: {error}")))?;
                Err(CatalogError::Insufficient {
                    available: body.available.unwrap_or(0),
                })
            }
            status => Err(CatalogError::Unavailable(format!("catalog answered {status}"))),
        }
    }

    /// Give all of `owner`'s reservations back.
    pub async fn release_owner(&self, owner: &str) -> Result<(), CatalogError> {
        let url = self.url(&format!("inventory/holds/{owner}"))?;
        let request = self
            .client
            .inner()
            .delete(url)
            .timeout(self.timeout)
            .build()
            .map_err(|error| CatalogError::Unavailable(error.to_string()))?;
        let response = self
            .client
            .send("catalog", "/inventory/holds/{owner}", request)
            .await
            .map_err(|error| self.transport_error(error))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(CatalogError::Unavailable(format!(
                "catalog answered {}",
                response.status()
            )))
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
