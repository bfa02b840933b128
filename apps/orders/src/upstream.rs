//! The two services the orders service calls: the catalog (prices, stock commits and restocks:
//! [`shopstack_catalog_client`]) and the cart (read it, clear it). Both round-robin over their
//! configured replicas, each call bounded by `UPSTREAM_TIMEOUT`.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use shopstack_catalog_client::Upstream;
use shopstack_platform::client::HttpClient;

pub use shopstack_catalog_client::{CatalogClient, CatalogProduct, CommitRefused, StockLine, UpstreamError};

/// A cart as the cart service returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct Cart {
    pub user_id: String,
    pub items: Vec<StockLine>,
    pub version: i64,
}

/// What clearing a cart did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearOutcome {
    Cleared,
    /// 412: the cart is no longer at the version we read; left as it is.
    Changed,
}

#[derive(Clone)]
pub struct CartClient(Upstream);

impl CartClient {
    pub fn new(client: HttpClient, replicas: Vec<Url>, timeout: Duration) -> Self {
        Self(Upstream::new("cart", client, replicas, timeout))
    }

    pub async fn get(&self, user_id: &str) -> Result<Cart, UpstreamError> {
        let (status, body) = self
            .0
            .call(
                Method::GET,
                &format!("v1/cart/{user_id}"),
                "/v1/cart/{user_id}",
                None,
                &[],
            )
            .await?;
        if status != StatusCode::OK {
            return Err(self.0.unexpected(status, &body));
        }
        self.0.decode(status, body)
    }

    /// Clear the cart only if it is still at `version` (`If-Match: "v{version}"`).
    pub async fn clear(&self, user_id: &str, version: i64) -> Result<ClearOutcome, UpstreamError> {
        let (status, body) = self
            .0
            .call(
                Method::DELETE,
                &format!("v1/cart/{user_id}"),
                "/v1/cart/{user_id}",
                None,
                &[("if-match", format!("\"v{version}\""))],
            )
            .await?;
        match status {
            status if status.is_success() => Ok(ClearOutcome::Cleared),
            StatusCode::PRECONDITION_FAILED => Ok(ClearOutcome::Changed),
            status => Err(self.0.unexpected(status, &body)),
        }
    }

    pub async fn live(&self) -> bool {
        self.0.live().await
    }
}
