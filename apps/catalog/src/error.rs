use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shopstack_base::Problem;

/// What can go wrong in the catalog; each variant documents its status.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// 404: no product with this id.
    #[error("Product {0} not found")]
    ProductNotFound(String),
    /// 400: a parameter or body is out of range.
    #[error("{0}")]
    BadRequest(String),
    /// 409: not enough free stock (the message clients that read `message` expect); nothing
    /// changed.
    #[error("Insufficient stock. Only {available} available.")]
    InsufficientStock { product_id: String, available: i64 },
    /// A problem raised by shared plumbing (401 admin auth, 400 body rejection), passed through.
    #[error("{}", .0.detail)]
    Rejected(Problem),
    /// 503: the stock store (Redis) cannot be reached.
    #[error("The inventory store is unavailable; retry shortly.")]
    InventoryUnavailable,
    /// 503: the stock store lost this product's stock figure with its data; nothing is sold
    /// until an operator sets it again.
    #[error(
        "The stock of {0} was lost with the stock store's data; it is not sold until an operator sets it again (PUT /admin/stock/{0})."
    )]
    StockUnknown(String),
}

impl IntoResponse for CatalogError {
    fn into_response(self) -> Response {
        let detail = self.to_string();
        let problem = match self {
            CatalogError::ProductNotFound(id) => Problem::not_found(detail).with("product_id", id),
            CatalogError::BadRequest(_) => Problem::bad_request(detail),
            CatalogError::InsufficientStock {
                product_id,
                available,
            } => Problem::new(StatusCode::CONFLICT, "insufficient-stock", detail)
                .with("product_id", product_id)
                .with("available", available.max(0)),
            CatalogError::InventoryUnavailable => Problem::unavailable(detail, 1).with("dependency", "redis"),
            CatalogError::StockUnknown(product_id) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "stock-unknown", detail)
                    .retry_after(30)
                    .with("product_id", product_id)
            }
            CatalogError::Rejected(problem) => problem,
        };
        problem.into_response()
    }
}

impl From<Problem> for CatalogError {
    fn from(problem: Problem) -> Self {
        CatalogError::Rejected(problem)
    }
}
