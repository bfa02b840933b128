use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shopstack_base::Problem;
use shopstack_redis::idempotency;

use crate::model::OrderStatus;
use crate::upstream::UpstreamError;

/// The detail of every "no such order" answer. It is the gateway's text for a resource that
/// belongs to someone else (`GatewayError::NotYours`), and the body carries no `order_id`: with
/// edge auth on, a missing order and another user's order must answer the same bytes, or the
/// 404 would tell a caller which order ids exist (the gateway's security tests compare them).
pub const ORDER_NOT_FOUND_DETAIL: &str = "Not found.";

/// What can go wrong in the orders service; each variant documents its status.
#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    /// 400: malformed id, body or parameter; empty order.
    #[error("{0}")]
    BadRequest(String),
    /// 409: checkout of an empty cart (well formed, but the cart's state does not allow it).
    #[error("The cart of user {0} is empty; there is nothing to check out.")]
    EmptyCart(String),
    /// 422: well formed, every line within bounds, but the order as a whole is not (lines of
    /// one product that add up past the per-product maximum).
    #[error("{0}")]
    Unprocessable(String),
    /// 404: no order with this id. Its body is [`ORDER_NOT_FOUND_DETAIL`] and nothing more, the
    /// same one the gateway answers for another user's order, so the two can't be told apart.
    #[error("Order {0} not found")]
    OrderNotFound(String),
    /// 404: the catalog does not know this product.
    #[error("Product {0} not found")]
    ProductNotFound(String),
    /// 409: the status machine does not allow this move.
    #[error("Cannot change the status of order {id} from {from} to {to}")]
    InvalidTransition {
        id: String,
        from: OrderStatus,
        to: OrderStatus,
    },
    /// 409: the catalog cannot cover the order; nothing changed.
    #[error("{message}")]
    InsufficientStock {
        message: String,
        available: Option<i64>,
        product_id: Option<String>,
    },
    /// 409: the same request (Idempotency-Key) or another checkout of this user is in progress.
    #[error("{0}")]
    InFlight(String),
    /// 409: the order kept changing under us.
    #[error("Order {0} is being modified concurrently; retry the request.")]
    Busy(String),
    /// 422: this Idempotency-Key was used with a different request (the answer every service
    /// gives: `shopstack_redis::idempotency::problems`).
    #[error("Idempotency-Key {0:?} was already used with a different request.")]
    IdempotencyMismatch(String),
    /// 409: the first request with this Idempotency-Key is still running.
    #[error("A request with Idempotency-Key {0:?} is still in progress.")]
    IdempotencyInFlight(String),
    /// 502/503/504: the catalog or the cart failed us.
    #[error("{0}")]
    Upstream(UpstreamError),
    /// 503: the catalog lost this product's stock figure with its store's data; it is not sold
    /// until an operator sets it again. Nothing changed.
    #[error(
        "The stock of {0} is not known (the catalog's stock store lost its data); it is not sold until an operator sets it again."
    )]
    StockUnknown(String),
    /// 503: the database is unreachable.
    #[error("The orders database is unavailable; retry shortly.")]
    DatabaseUnavailable(String),
    /// 500: anything else (logged, never sent).
    #[error("internal error: {0}")]
    Internal(String),
}

impl OrdersError {
    /// Bounded `result` label for metrics.
    pub fn result_label(&self) -> &'static str {
        match self {
            OrdersError::BadRequest(_) => "bad_request",
            OrdersError::EmptyCart(_) => "empty_cart",
            OrdersError::Unprocessable(_) => "unprocessable",
            OrdersError::OrderNotFound(_) | OrdersError::ProductNotFound(_) => "not_found",
            OrdersError::InvalidTransition { .. } => "invalid_transition",
            OrdersError::InsufficientStock { .. } => "insufficient_stock",
            OrdersError::InFlight(_) => "in_flight",
            OrdersError::Busy(_) => "conflict",
            OrdersError::IdempotencyMismatch(_) => "idempotency_mismatch",
            OrdersError::IdempotencyInFlight(_) => "in_flight",
            OrdersError::Upstream(_) | OrdersError::StockUnknown(_) => "upstream_error",
            OrdersError::DatabaseUnavailable(_) => "database_unavailable",
            OrdersError::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for OrdersError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => OrdersError::DatabaseUnavailable(error.to_string()),
            sqlx::Error::Database(ref db)
                if db.message().contains("locked") || db.message().contains("busy") =>
            {
                OrdersError::DatabaseUnavailable(error.to_string())
            }
            other => OrdersError::Internal(other.to_string()),
        }
    }
}

impl From<UpstreamError> for OrdersError {
    fn from(error: UpstreamError) -> Self {
        OrdersError::Upstream(error)
    }
}

impl IntoResponse for OrdersError {
    fn into_response(self) -> Response {
        let detail = self.to_string();
        let problem = match &self {
            OrdersError::BadRequest(_) => Problem::bad_request(detail),
            OrdersError::EmptyCart(user) => {
                Problem::new(StatusCode::CONFLICT, "empty-cart", detail).with("user_id", user.as_str())
            }
            OrdersError::Unprocessable(_) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "order-too-large", detail)
            }
            OrdersError::OrderNotFound(_) => Problem::not_found(ORDER_NOT_FOUND_DETAIL),
            OrdersError::ProductNotFound(id) => Problem::not_found(detail).with("product_id", id.as_str()),
            OrdersError::InvalidTransition { from, to, .. } => {
                Problem::new(StatusCode::CONFLICT, "invalid-status-transition", detail)
                    .with("current_status", from.as_str())
                    .with("requested_status", to.as_str())
                    .with(
                        "allowed",
                        from.next().iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                    )
            }
            OrdersError::InsufficientStock {
                available,
                product_id,
                ..
            } => {
                let mut problem = Problem::new(StatusCode::CONFLICT, "insufficient-stock", detail);
                if let Some(available) = available {
                    problem = problem.with("available", *available);
                }
                if let Some(product_id) = product_id {
                    problem = problem.with("product_id", product_id.as_str());
                }
                problem
            }
            OrdersError::InFlight(_) => {
                Problem::new(StatusCode::CONFLICT, "in-progress", detail).retry_after(1)
            }
            OrdersError::Busy(_) => Problem::conflict(detail).retry_after(1),
            OrdersError::IdempotencyMismatch(_) => idempotency::problems::mismatch(),
            OrdersError::IdempotencyInFlight(_) => idempotency::problems::in_flight(),
            OrdersError::Upstream(error) => {
                let service = error.service();
                match error {
                    UpstreamError::Timeout { .. } => {
                        Problem::new(StatusCode::GATEWAY_TIMEOUT, "upstream-timeout", detail)
                    }
                    UpstreamError::Unavailable { .. } => Problem::unavailable(
                        format!("The {service} service is unavailable; retry shortly."),
                        1,
                    ),
                    UpstreamError::Unexpected { status, .. } if *status >= 500 => Problem::unavailable(
                        format!("The {service} service is failing ({status}); retry shortly."),
                        1,
                    ),
                    UpstreamError::Unexpected { .. } => Problem::new(
                        StatusCode::BAD_GATEWAY,
                        "bad-upstream",
                        format!("The {service} service gave an unusable answer."),
                    ),
                }
                .with("upstream", service)
            }
            OrdersError::DatabaseUnavailable(_) => {
                Problem::unavailable(detail, 1).with("dependency", "database")
            }
            OrdersError::StockUnknown(product_id) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "stock-unknown", detail)
                    .retry_after(30)
                    .with("product_id", product_id.as_str())
            }
            OrdersError::Internal(_) => Problem::internal(),
        };
        if matches!(
            self,
            OrdersError::Internal(_) | OrdersError::DatabaseUnavailable(_) | OrdersError::Upstream(_)
        ) {
            tracing::error!(error = %self, "request failed");
        }
        problem.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_order_names_nothing_but_not_found() {
        let response =
            OrdersError::OrderNotFound("0190a0b0-0000-7000-8000-000000000000".into()).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let expected = serde_json::to_vec(&Problem::not_found("Not found.")).unwrap_or_default();
        let body =
            futures::executor::block_on(axum::body::to_bytes(response.into_body(), 4096)).unwrap_or_default();
        assert_eq!(String::from_utf8_lossy(&body), String::from_utf8_lossy(&expected));
    }
}
