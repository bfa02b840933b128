use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shopstack_base::Problem;

use crate::catalog_client::CatalogError;
use crate::store::StoreError;

/// What can go wrong in the cart; each variant documents its status.
#[derive(Debug, thiserror::Error)]
pub enum CartError {
    /// 400: malformed id, quantity ≤ 0 or above the maximum.
    #[error("{0}")]
    BadRequest(String),
    /// 404: the catalog does not know this product.
    #[error("Product {0} not found")]
    ProductNotFound(String),
    /// 404: the cart has no line for this product.
    #[error("Product {0} is not in the cart")]
    ItemNotInCart(String),
    /// 409: not enough stock left to reserve (the message clients that read `message` expect).
    #[error("Insufficient stock. Only {available} available.")]
    InsufficientStock { available: i64 },
    /// 409: the add is well formed, but the line already holds so much that it would pass the
    /// per-product maximum; nothing changed.
    #[error("The line would hold {would_hold} units; the maximum per product is {max}.")]
    LineFull { would_hold: u32, max: u32 },
    /// 409: the cart kept changing under us; retrying later will work.
    #[error("The cart is being modified concurrently; retry the request.")]
    Busy,
    /// 412: `If-Match` names a version the cart is no longer at; nothing changed.
    #[error("The cart is at version {current}, not the one in If-Match; reload it and retry.")]
    PreconditionFailed { current: u64 },
    /// 503: the catalog cannot be reached.
    #[error("The catalog service is unavailable; retry shortly.")]
    CatalogUnavailable(String),
    /// 504: the catalog did not answer in time.
    #[error("The catalog service did not answer in time.")]
    CatalogTimeout,
    /// 503: the cart store (Redis) cannot be reached.
    #[error("The cart store is unavailable; retry shortly.")]
    StoreUnavailable(String),
    /// 503: the catalog lost this product's stock figure with its store's data; it is not sold
    /// until an operator sets it again. Nothing changed.
    #[error(
        "The stock of {0} is not known (the catalog's stock store lost its data); it is not sold until an operator sets it again."
    )]
    StockUnknown(String),
}

impl CartError {
    /// The `result` label of `cart_operations_total`: a bounded set.
    pub fn result_label(&self) -> &'static str {
        match self {
            CartError::BadRequest(_) => "bad_request",
            CartError::ProductNotFound(_) | CartError::ItemNotInCart(_) => "not_found",
            CartError::InsufficientStock { .. } => "insufficient_stock",
            CartError::LineFull { .. } => "line_full",
            CartError::Busy => "conflict",
            CartError::PreconditionFailed { .. } => "precondition_failed",
            CartError::CatalogUnavailable(_) | CartError::CatalogTimeout | CartError::StockUnknown(_) => {
                "catalog_unavailable"
            }
            CartError::StoreUnavailable(_) => "store_unavailable",
        }
    }
}

impl From<StoreError> for CartError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::VersionConflict { .. } => CartError::Busy,
            StoreError::Unavailable(cause) => CartError::StoreUnavailable(cause),
        }
    }
}

impl From<CatalogError> for CartError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::NotFound(id) => CartError::ProductNotFound(id),
            CatalogError::Insufficient { available } => CartError::InsufficientStock { available },
            CatalogError::Timeout(_) => CartError::CatalogTimeout,
            CatalogError::Unavailable(cause) => CartError::CatalogUnavailable(cause),
            CatalogError::StockUnknown(product_id) => CartError::StockUnknown(product_id),
        }
    }
}

impl IntoResponse for CartError {
    fn into_response(self) -> Response {
        let detail = self.to_string();
        let problem = match &self {
            CartError::BadRequest(_) => Problem::bad_request(detail),
            CartError::ProductNotFound(id) => Problem::not_found(detail).with("product_id", id.as_str()),
            CartError::ItemNotInCart(id) => Problem::not_found(detail).with("product_id", id.as_str()),
            CartError::InsufficientStock { available } => {
                Problem::new(StatusCode::CONFLICT, "insufficient-stock", detail).with("available", *available)
            }
            CartError::LineFull { max, .. } => {
                Problem::new(StatusCode::CONFLICT, "line-full", detail).with("max_quantity", *max)
            }
            CartError::Busy => Problem::conflict(detail).retry_after(1),
            CartError::PreconditionFailed { current } => {
                Problem::new(StatusCode::PRECONDITION_FAILED, "stale-version", detail)
                    .with("version", *current)
            }
            CartError::CatalogUnavailable(_) => Problem::unavailable(detail, 1).with("upstream", "catalog"),
            CartError::CatalogTimeout => {
                Problem::new(StatusCode::GATEWAY_TIMEOUT, "upstream-timeout", detail)
                    .with("upstream", "catalog")
            }
            CartError::StoreUnavailable(_) => {
                Problem::unavailable(detail, 1).with("dependency", "cart-store")
            }
            CartError::StockUnknown(product_id) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "stock-unknown", detail)
                    .retry_after(30)
                    .with("product_id", product_id.as_str())
            }
        };
        problem.into_response()
    }
}
