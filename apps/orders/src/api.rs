//! Orders HTTP handlers: seed 004's API (envelope `{"status","message","data"}`, pagination
//! `{"page","page_size","total","total_pages"}`) and checkout.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shopstack_common::extract::{Json, Path, Query};
use shopstack_common::observe::REQUEST_ID;
use shopstack_common::pagination::{PageParams, Pagination};
use shopstack_common::{ApiInfo, Problem};
use tracing::Instrument as _;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::OrdersError;
use crate::model::{Order, OrderStatus};
use crate::repo::OrderFilter;
use crate::service::{
    Checkout, PlaceOrder, Placed, optional_text, required_text, validate_id, validate_idempotency_key,
};
use crate::upstream::StockLine;

pub const INFO: ApiInfo = ApiInfo {
    title: "ShopStack orders",
    description: "Orders (seed 004): create, list, read, change status, cancel, per-user history; and checkout, which turns a user's cart into an order priced by the catalog.",
};

const TAG: &str = "orders";
const PROBLEM: &str = "application/problem+json";
/// Set on a response that repeats an earlier request's result (same Idempotency-Key).
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

pub fn router(state: AppState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(create_order, list_orders))
        .routes(routes!(checkout))
        .routes(routes!(get_order))
        .routes(routes!(update_status))
        .routes(routes!(cancel_order))
        .routes(routes!(user_orders))
        .with_state(state)
}

/// One requested line (seed 004).
#[derive(Debug, Deserialize, ToSchema)]
pub struct OrderItemRequest {
    #[schema(example = "prod-123")]
    pub product_id: Option<String>,
    #[schema(example = 2)]
    pub quantity: Option<i64>,
}

/// Seed 004's create-order body. Prices are not accepted: they come from the catalog.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateOrderRequest {
    #[schema(example = "user123")]
    pub user_id: Option<String>,
    #[schema(example = "123 Main St, New York, NY 10001")]
    pub shipping_address: Option<String>,
    #[schema(example = "123 Main St, New York, NY 10001")]
    pub billing_address: Option<String>,
    #[schema(example = "Please ring doorbell")]
    pub notes: Option<String>,
    /// At least one line; a product listed twice is one line with the quantities added.
    #[serde(default)]
    pub order_items: Option<Vec<OrderItemRequest>>,
}

/// Checkout body: the items come from the user's cart.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CheckoutRequest {
    #[schema(example = "user123")]
    pub user_id: Option<String>,
    #[schema(example = "123 Main St, New York, NY 10001")]
    pub shipping_address: Option<String>,
    pub billing_address: Option<String>,
    pub notes: Option<String>,
}

/// Seed 004's status-change body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateStatusRequest {
    /// pending, confirmed, shipped, delivered or cancelled.
    #[schema(example = "confirmed")]
    pub status: Option<String>,
}

/// Seed 004's envelope around one order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderResponse {
    /// `success`.
    #[schema(example = "success")]
    pub status: String,
    #[schema(example = "Order created successfully")]
    pub message: String,
    pub data: Order,
}

/// Seed 004's envelope around a page of orders.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderListResponse {
    #[schema(example = "success")]
    pub status: String,
    #[schema(example = "Orders retrieved successfully")]
    pub message: String,
    pub data: Vec<Order>,
    pub pagination: Pagination,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListFilter {
    /// Only orders in this status.
    status: Option<String>,
    /// Only this user's orders.
    user_id: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatusFilter {
    /// Only orders in this status.
    status: Option<String>,
}

fn success(code: StatusCode, message: &str, order: Order) -> Response {
    (
        code,
        Json(OrderResponse {
            status: "success".into(),
            message: message.into(),
            data: order,
        }),
    )
        .into_response()
}

fn placed(message: &str, placed: Placed) -> Response {
    let replayed = placed.replayed;
    let location = HeaderValue::from_str(&format!("/api/orders/{}", placed.order.id)).ok();
    let mut response = success(StatusCode::CREATED, message, placed.order);
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// Run an order placement on a task of its own, in the request's span and with its request id,
/// so it completes even if the client (or the gateway's timeout) abandons the request: a
/// placement is never cut between two steps by a disconnect.
async fn run_to_completion<F>(placement: F) -> Result<Placed, OrdersError>
where
    F: Future<Output = Result<Placed, OrdersError>> + Send + 'static,
{
    let placement = placement.instrument(tracing::Span::current());
    let task = match REQUEST_ID.try_with(Clone::clone) {
        Ok(request_id) => tokio::spawn(REQUEST_ID.scope(request_id, placement)),
        Err(_) => tokio::spawn(placement),
    };
    task.await
        .map_err(|error| OrdersError::Internal(format!("order placement task failed: {error}")))?
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, OrdersError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => validate_idempotency_key(value.to_str().unwrap_or("\u{0}")).map(Some),
    }
}

fn parse_status(text: &str) -> Result<OrderStatus, OrdersError> {
    text.parse().map_err(OrdersError::BadRequest)
}

fn list_response(orders: Vec<Order>, pagination: Pagination) -> Json<OrderListResponse> {
    Json(OrderListResponse {
        status: "success".into(),
        message: "Orders retrieved successfully".into(),
        data: orders,
        pagination,
    })
}

/// Create an order (seed 004). Unit prices come from the catalog; the stock is committed.
#[utoipa::path(post, path = "/api/orders", tag = TAG, request_body = CreateOrderRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the same order (422 if the body differs)")),
    responses(
        (status = 201, description = "Order created (or, with `Idempotent-Replayed: true`, found again)", body = OrderResponse),
        (status = 400, description = "Malformed body, missing field, no items, quantity out of range", body = Problem, content_type = PROBLEM),
        (status = 404, description = "Unknown product", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Insufficient stock, or the same request is in progress", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Idempotency-Key reused with another body", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Catalog or database unavailable", body = Problem, content_type = PROBLEM, headers(("Retry-After" = u32))),
        (status = 504, description = "Catalog timed out", body = Problem, content_type = PROBLEM),
    ))]
async fn create_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<CreateOrderRequest>,
) -> Result<Response, OrdersError> {
    let key = idempotency_key(&headers)?;
    let user_id = body.user_id.unwrap_or_default().trim().to_owned();
    validate_id("user_id", &user_id)?;
    let shipping_address = required_text("shipping_address", body.shipping_address.as_deref())?;
    let billing_address = optional_text("billing_address", body.billing_address.as_deref())?;
    let notes = optional_text("notes", body.notes.as_deref())?;
    let requested = body.order_items.unwrap_or_default();
    if requested.is_empty() {
        return Err(OrdersError::BadRequest(
            "order_items must contain at least one item".into(),
        ));
    }
    let limits = state.orders.limits();
    let mut items: Vec<StockLine> = Vec::new();
    for (index, item) in requested.into_iter().enumerate() {
        let product_id = item.product_id.unwrap_or_default().trim().to_owned();
        validate_id(&format!("order_items[{index}].product_id"), &product_id)?;
        let quantity = item
            .quantity
            .ok_or_else(|| OrdersError::BadRequest(format!("order_items[{index}].quantity is required")))?;
        if quantity < 1 || quantity > limits.max_quantity {
            return Err(OrdersError::BadRequest(format!(
                "order_items[{index}].quantity must be between 1 and {} (got {quantity})",
                limits.max_quantity
            )));
        }
        match items.iter_mut().find(|line| line.product_id == product_id) {
            Some(line) => {
                line.quantity += quantity;
                if line.quantity > limits.max_quantity {
                    return Err(OrdersError::BadRequest(format!(
                        "the total quantity of {product_id} must be at most {}",
                        limits.max_quantity
                    )));
                }
            }
            None => items.push(StockLine { product_id, quantity }),
        }
    }
    if items.len() > limits.max_lines {
        return Err(OrdersError::BadRequest(format!(
            "an order may have at most {} lines",
            limits.max_lines
        )));
    }
    let request = PlaceOrder {
        user_id,
        shipping_address,
        billing_address,
        notes,
        items,
    };
    let orders = state.orders.clone();
    let result = run_to_completion(async move { orders.place(request, key).await }).await?;
    Ok(placed("Order created successfully", result))
}

/// Check out a user's cart: price it from the catalog, commit its reserved stock, write the
/// order, clear the cart.
#[utoipa::path(post, path = "/api/orders/checkout", tag = TAG, request_body = CheckoutRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the same order (422 if the body differs)")),
    responses(
        (status = 201, description = "Order placed from the cart (or, with `Idempotent-Replayed: true`, found again)", body = OrderResponse),
        (status = 400, description = "Malformed body, missing field, or the cart is empty", body = Problem, content_type = PROBLEM),
        (status = 404, description = "A product in the cart is no longer in the catalog", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Insufficient stock (cart and stock unchanged), or a checkout of this user is in progress", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Idempotency-Key reused with another body", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Catalog, cart or database unavailable", body = Problem, content_type = PROBLEM, headers(("Retry-After" = u32))),
        (status = 504, description = "Catalog or cart timed out", body = Problem, content_type = PROBLEM),
    ))]
async fn checkout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<CheckoutRequest>,
) -> Result<Response, OrdersError> {
    let key = idempotency_key(&headers)?;
    let user_id = body.user_id.unwrap_or_default().trim().to_owned();
    validate_id("user_id", &user_id)?;
    let request = Checkout {
        user_id,
        shipping_address: required_text("shipping_address", body.shipping_address.as_deref())?,
        billing_address: optional_text("billing_address", body.billing_address.as_deref())?,
        notes: optional_text("notes", body.notes.as_deref())?,
    };
    let orders = state.orders.clone();
    let result = run_to_completion(async move { orders.checkout(request, key).await }).await?;
    Ok(placed("Order placed from cart successfully", result))
}

/// All orders, newest first, a page at a time (seed 004).
#[utoipa::path(get, path = "/api/orders", tag = TAG, params(PageParams, ListFilter), responses(
    (status = 200, body = OrderListResponse),
    (status = 400, description = "Bad page, page_size or status", body = Problem, content_type = PROBLEM),
    (status = 503, description = "Database unavailable", body = Problem, content_type = PROBLEM),
))]
async fn list_orders(
    State(state): State<AppState>,
    Query(paging): Query<PageParams>,
    Query(filter): Query<ListFilter>,
) -> Result<Json<OrderListResponse>, OrdersError> {
    let page = paging
        .resolve()
        .map_err(|problem| OrdersError::BadRequest(problem.detail))?;
    let user_id = filter
        .user_id
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty());
    if let Some(user_id) = &user_id {
        validate_id("user_id", user_id)?;
    }
    let filter = OrderFilter {
        user_id,
        status: filter.status.as_deref().map(parse_status).transpose()?,
    };
    let (orders, pagination) = state.orders.list(&filter, page).await?;
    Ok(list_response(orders, pagination))
}

/// One user's orders, newest first, a page at a time (seed 004).
#[utoipa::path(get, path = "/api/users/{user_id}/orders", tag = TAG,
    params(("user_id" = String, Path, description = "The user"), PageParams, StatusFilter),
    responses(
        (status = 200, description = "The user's orders (an empty page for a user with none)", body = OrderListResponse),
        (status = 400, description = "Bad user id, page, page_size or status", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Database unavailable", body = Problem, content_type = PROBLEM),
    ))]
async fn user_orders(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    Query(paging): Query<PageParams>,
    Query(filter): Query<StatusFilter>,
) -> Result<Json<OrderListResponse>, OrdersError> {
    validate_id("user_id", &user_id)?;
    let page = paging
        .resolve()
        .map_err(|problem| OrdersError::BadRequest(problem.detail))?;
    let filter = OrderFilter {
        user_id: Some(user_id),
        status: filter.status.as_deref().map(parse_status).transpose()?,
    };
    let (orders, pagination) = state.orders.list(&filter, page).await?;
    Ok(list_response(orders, pagination))
}

/// One order (seed 004).
#[utoipa::path(get, path = "/api/orders/{id}", tag = TAG,
    params(("id" = String, Path, description = "Order id (UUID)")),
    responses(
        (status = 200, body = OrderResponse),
        (status = 400, description = "Not a UUID", body = Problem, content_type = PROBLEM),
        (status = 404, description = "Unknown order", body = Problem, content_type = PROBLEM),
    ))]
async fn get_order(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, OrdersError> {
    let order = state.orders.get(&id).await?;
    Ok(success(StatusCode::OK, "Order retrieved successfully", order))
}

/// Change an order's status (seed 004). pending → confirmed → shipped → delivered; cancelled
/// from pending or confirmed (its stock goes back to the catalog); any other move is 409.
#[utoipa::path(patch, path = "/api/orders/{id}/status", tag = TAG, request_body = UpdateStatusRequest,
    params(("id" = String, Path, description = "Order id (UUID)")),
    responses(
        (status = 200, description = "Status changed; `data` is the order after the change", body = OrderResponse),
        (status = 400, description = "Not a UUID, or not a status", body = Problem, content_type = PROBLEM),
        (status = 404, description = "Unknown order", body = Problem, content_type = PROBLEM),
        (status = 409, description = "The status machine does not allow this move", body = Problem, content_type = PROBLEM),
    ))]
async fn update_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<UpdateStatusRequest>,
) -> Result<Response, OrdersError> {
    let status = body
        .status
        .ok_or_else(|| OrdersError::BadRequest("status is required".into()))?;
    let to = parse_status(&status)?;
    let order = state.orders.change_status(&id, to).await?;
    Ok(success(
        StatusCode::OK,
        "Order status updated successfully",
        order,
    ))
}

/// Cancel an order (seed 004): allowed while pending or confirmed; its stock goes back.
#[utoipa::path(post, path = "/api/orders/{id}/cancel", tag = TAG,
    params(("id" = String, Path, description = "Order id (UUID)")),
    responses(
        (status = 200, description = "Cancelled; `data` is the cancelled order", body = OrderResponse),
        (status = 400, description = "Not a UUID", body = Problem, content_type = PROBLEM),
        (status = 404, description = "Unknown order", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Already shipped, delivered or cancelled", body = Problem, content_type = PROBLEM),
    ))]
async fn cancel_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, OrdersError> {
    let order = state.orders.change_status(&id, OrderStatus::Cancelled).await?;
    Ok(success(StatusCode::OK, "Order cancelled successfully", order))
}
