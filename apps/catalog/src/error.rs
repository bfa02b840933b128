use axum::response::{IntoResponse, Response};
use shopstack_common::Problem;

/// What can go wrong in the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// 404: no product with this id.
    #[error("Product {0} not found")]
    ProductNotFound(String),
    /// 400: a parameter is out of range.
    #[error("{0}")]
    BadRequest(String),
}

impl IntoResponse for CatalogError {
    fn into_response(self) -> Response {
        let detail = self.to_string();
        let problem = match self {
            CatalogError::ProductNotFound(id) => Problem::not_found(detail).with("product_id", id),
            CatalogError::BadRequest(_) => Problem::bad_request(detail),
        };
        problem.into_response()
    }
}
