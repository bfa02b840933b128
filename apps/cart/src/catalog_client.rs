//! What the cart asks the catalog: reserve a product's units for a cart, give a cart's
//! reservations back. The calls are [`shopstack_catalog_client`]'s; here their outcomes become
//! the cart's [`CatalogError`].

use std::time::Duration;

use reqwest::{StatusCode, Url};
use shopstack_catalog_client::{HoldRefused, UpstreamError};
use shopstack_platform::client::HttpClient;

pub use shopstack_catalog_client::HoldResponse;

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
    #[error("the stock of {0} is not known")]
    StockUnknown(String),
}

impl From<UpstreamError> for CatalogError {
    fn from(error: UpstreamError) -> Self {
        match error {
            UpstreamError::Timeout { timeout, .. } => CatalogError::Timeout(timeout),
            UpstreamError::Unavailable { cause, .. } => CatalogError::Unavailable(cause),
            UpstreamError::Unexpected { status, .. } => {
                let status =
                    StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string());
                CatalogError::Unavailable(format!("catalog answered {status}"))
            }
        }
    }
}

#[derive(Clone)]
pub struct CatalogClient(shopstack_catalog_client::CatalogClient);

impl CatalogClient {
    pub fn new(client: HttpClient, replicas: Vec<Url>, timeout: Duration) -> Self {
        Self(shopstack_catalog_client::CatalogClient::new(
            client, replicas, timeout,
        ))
    }

    /// Set `owner`'s reservation of `product_id` to exactly `quantity` units (0 releases).
    pub async fn set_hold(
        &self,
        owner: &str,
        product_id: &str,
        quantity: u32,
        ttl: Duration,
    ) -> Result<HoldResponse, CatalogError> {
        match self.0.set_hold(owner, product_id, quantity, ttl).await? {
            Ok(hold) => Ok(hold),
            Err(HoldRefused::UnknownProduct(product_id)) => Err(CatalogError::NotFound(product_id)),
            Err(HoldRefused::InsufficientStock { available }) => {
                Err(CatalogError::Insufficient { available })
            }
            Err(HoldRefused::StockUnknown(product_id)) => Err(CatalogError::StockUnknown(product_id)),
        }
    }

    /// Give all of `owner`'s reservations back.
    pub async fn release_owner(&self, owner: &str) -> Result<(), CatalogError> {
        Ok(self.0.release_owner(owner).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_answer_is_the_catalog_being_unavailable() {
        let error = CatalogError::from(UpstreamError::Unexpected {
            service: "catalog",
            status: 503,
            body: String::new(),
        });
        assert_eq!(
            error.to_string(),
            "the catalog is unavailable: catalog answered 503 Service Unavailable"
        );
    }
}
