//! Orders HTTP handlers: the orders API (envelope `{"status","message","data"}`, pagination
//! `{"page","page_size","total","total_pages"}`) and checkout.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shopstack_base::Problem;
use shopstack_base::extract::{Json, Path, Query};
use shopstack_base::pagination::{PageParams, Pagination};
use shopstack_platform::ApiInfo;
use shopstack_platform::observe::REQUEST_ID;
use shopstack_platform::service::set_schema_keywords;
use shopstack_redis::idempotency::{self, Keyed};
use shopstack_redis::idempotency::{KeyStore, announce_key_store};
use tracing::Instrument as _;
use utoipa::openapi::OpenApi;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::OrdersError;
use crate::model::{Order, OrderStatus};
use crate::repo::OrderFilter;
use crate::service::{
    Checkout, Limits, PlaceOrder, Placed, optional_text, required_id, required_text, validate_id,
};
use crate::upstream::StockLine;

pub const INFO: ApiInfo = ApiInfo {
    title: "ShopStack orders",
    description: "The orders API: create, list, read, change status, cancel, per-user history; and checkout, which turns a user's cart into an order priced by the catalog.",
};

const TAG: &str = "orders";
const PROBLEM: &str = "application/problem+json";
/// Set on a response that repeats an earlier request's result (same Idempotency-Key).
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

pub fn router(state: AppState) -> OpenApiRouter {
    // The placements honour `Idempotency-Key`: the key's scope and fingerprint are worked out
    // as in every service, and the saga table keeps them (reads pass through untouched).
    let keyed = OpenApiRouter::new()
        .routes(routes!(create_order, list_orders))
        .routes(routes!(checkout))
        .layer(axum::middleware::from_fn_with_state(
            state.platform.settings().max_body_bytes,
            idempotency::identify,
        ))
        .layer(axum::middleware::from_fn_with_state(
            if state.orders.db().engine() == "postgres" {
                KeyStore::Shared
            } else {
                KeyStore::Local
            },
            announce_key_store,
        ));
    OpenApiRouter::new()
        .merge(keyed)
        .routes(routes!(get_order))
        .routes(routes!(update_status))
        .routes(routes!(cancel_order))
        .routes(routes!(user_orders))
        .with_state(state)
}

/// One requested line.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OrderItemRequest {
    #[schema(value_type = String, required = true, example = "prod-123",
        pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128)]
    pub product_id: Option<String>,
    /// At least 1, at most MAX_ITEM_QUANTITY (the document states the configured value).
    #[schema(value_type = i64, required = true, example = 2, minimum = 1)]
    #[serde(default, deserialize_with = "shopstack_base::extract::optional_whole_number")]
    pub quantity: Option<i64>,
}

// The members are `Option`s so that a missing one gets a message naming it; the document says
// which are required. Required free text (`shipping_address`) has a pattern: no NUL (PostgreSQL
// `text` cannot hold one) and at least one character outside Unicode's White_Space (what
// `str::trim` removes), spelled out so that the document and the server agree on every
// character. Unknown members are ignored (clients of the orders API may send a `unit_price`): nothing a
// client sends can set a price, a status or a total.

/// The create-order body. Prices are not accepted: they come from the catalog.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateOrderRequest {
    #[schema(value_type = String, required = true, example = "user123",
        pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128)]
    pub user_id: Option<String>,
    /// Required: at least one character that is not white space (the value is trimmed); no NUL.
    #[schema(value_type = String, required = true, example = "123 Main St, New York, NY 10001",
        pattern = "^[^\\u0000]*[^\\u0000\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000]*$", min_length = 1, max_length = 2000)]
    pub shipping_address: Option<String>,
    /// Optional; blank is the same as absent.
    #[schema(
        example = "123 Main St, New York, NY 10001",
        pattern = "^[^\\u0000]*$",
        max_length = 2000
    )]
    pub billing_address: Option<String>,
    /// Optional; blank is the same as absent.
    #[schema(
        example = "Please ring doorbell",
        pattern = "^[^\\u0000]*$",
        max_length = 2000
    )]
    pub notes: Option<String>,
    /// At least one line, at most MAX_ORDER_LINES (the document states the configured value); a
    /// product listed twice is one line with the quantities added (422 if that passes
    /// MAX_ITEM_QUANTITY).
    #[schema(value_type = Vec<OrderItemRequest>, required = true, min_items = 1)]
    #[serde(default)]
    pub order_items: Option<Vec<OrderItemRequest>>,
}

/// Checkout body: the items come from the user's cart.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CheckoutRequest {
    #[schema(value_type = String, required = true, example = "user123",
        pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128)]
    pub user_id: Option<String>,
    /// Required: at least one character that is not white space (the value is trimmed); no NUL.
    #[schema(value_type = String, required = true, example = "123 Main St, New York, NY 10001",
        pattern = "^[^\\u0000]*[^\\u0000\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000]*$", min_length = 1, max_length = 2000)]
    pub shipping_address: Option<String>,
    /// Optional; blank is the same as absent.
    #[schema(pattern = "^[^\\u0000]*$", max_length = 2000)]
    pub billing_address: Option<String>,
    /// Optional; blank is the same as absent.
    #[schema(pattern = "^[^\\u0000]*$", max_length = 2000)]
    pub notes: Option<String>,
}

/// The status-change body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateStatusRequest {
    #[schema(value_type = OrderStatus, required = true, example = "confirmed")]
    pub status: Option<String>,
}

/// The orders API's envelope around one order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderResponse {
    /// `success`.
    #[schema(example = "success")]
    pub status: String,
    #[schema(example = "Order created successfully")]
    pub message: String,
    pub data: Order,
}

/// The orders API's envelope around a page of orders.
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
    #[param(value_type = Option<OrderStatus>)]
    status: Option<String>,
    /// Only this user's orders.
    #[param(
        pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$",
        min_length = 1,
        max_length = 128
    )]
    user_id: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatusFilter {
    /// Only orders in this status.
    #[param(value_type = Option<OrderStatus>)]
    status: Option<String>,
}

/// State the configured limits (`MAX_ITEM_QUANTITY`, `MAX_ORDER_LINES`) in the document, so it
/// tells clients the truth.
pub fn document_limits(openapi: OpenApi, limits: Limits) -> OpenApi {
    let edits = [
        (
            "/components/schemas/OrderItemRequest/properties/quantity".to_owned(),
            "maximum",
            serde_json::json!(limits.max_quantity),
        ),
        (
            "/components/schemas/CreateOrderRequest/properties/order_items".to_owned(),
            "maxItems",
            serde_json::json!(limits.max_lines),
        ),
    ];
    set_schema_keywords(openapi, &edits)
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

/// Create an order. Unit prices come from the catalog; the stock is committed.
#[utoipa::path(post, path = "/api/orders", tag = TAG, request_body = CreateOrderRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the same order (422 if the body differs)", pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255)),
    responses(
        (status = 201, description = "Order created (or, with `Idempotent-Replayed: true`, found again)", body = OrderResponse),
        (status = 400, description = "Malformed body, missing field, no items, quantity out of range", body = Problem, content_type = PROBLEM),
        (status = 404, description = "Unknown product", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Insufficient stock, or the same request is in progress", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Idempotency-Key reused with another body, or lines of one product that add up past MAX_ITEM_QUANTITY", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Catalog or database unavailable", body = Problem, content_type = PROBLEM, headers(("Retry-After" = u32))),
        (status = 504, description = "Catalog timed out", body = Problem, content_type = PROBLEM),
    ))]
async fn create_order(
    State(state): State<AppState>,
    keyed: Option<Extension<Keyed>>,
    Json(body): Json<CreateOrderRequest>,
) -> Result<Response, OrdersError> {
    let key = keyed.map(|Extension(keyed)| keyed);
    let user_id = required_id("user_id", body.user_id)?;
    let shipping_address = required_text("shipping_address", body.shipping_address.as_deref())?;
    let billing_address = optional_text("billing_address", body.billing_address.as_deref())?;
    let notes = optional_text("notes", body.notes.as_deref())?;
    let requested = body
        .order_items
        .ok_or_else(|| OrdersError::BadRequest("order_items is required".into()))?;
    if requested.is_empty() {
        return Err(OrdersError::BadRequest(
            "order_items must contain at least one item".into(),
        ));
    }
    let limits = state.orders.limits();
    if requested.len() > limits.max_lines {
        return Err(OrdersError::BadRequest(format!(
            "an order may have at most {} lines",
            limits.max_lines
        )));
    }
    let mut items: Vec<StockLine> = Vec::new();
    for (index, item) in requested.into_iter().enumerate() {
        let product_id = required_id(&format!("order_items[{index}].product_id"), item.product_id)?;
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
                    return Err(OrdersError::Unprocessable(format!(
                        "the lines of {product_id} add up to {}; one product may have at most {}",
                        line.quantity, limits.max_quantity
                    )));
                }
            }
            None => items.push(StockLine { product_id, quantity }),
        }
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
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the same order (422 if the body differs)", pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255)),
    responses(
        (status = 201, description = "Order placed from the cart (or, with `Idempotent-Replayed: true`, found again)", body = OrderResponse),
        (status = 400, description = "Malformed body or missing field", body = Problem, content_type = PROBLEM),
        (status = 404, description = "A product in the cart is no longer in the catalog", body = Problem, content_type = PROBLEM),
        (status = 409, description = "The cart is empty, insufficient stock (cart and stock unchanged), or a checkout of this user is in progress", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Idempotency-Key reused with another body", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Catalog, cart or database unavailable", body = Problem, content_type = PROBLEM, headers(("Retry-After" = u32))),
        (status = 504, description = "Catalog or cart timed out", body = Problem, content_type = PROBLEM),
    ))]
async fn checkout(
    State(state): State<AppState>,
    keyed: Option<Extension<Keyed>>,
    Json(body): Json<CheckoutRequest>,
) -> Result<Response, OrdersError> {
    let key = keyed.map(|Extension(keyed)| keyed);
    let user_id = required_id("user_id", body.user_id)?;
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

/// All orders, newest first, a page at a time.
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
    let user_id = filter.user_id;
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

/// One user's orders, newest first, a page at a time.
#[utoipa::path(get, path = "/api/users/{user_id}/orders", tag = TAG,
    params(("user_id" = String, Path, description = "The user", pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128), PageParams, StatusFilter),
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

/// One order.
#[utoipa::path(get, path = "/api/orders/{id}", tag = TAG,
    params(("id" = String, Path, format = "uuid", description = "Order id (UUID)")),
    responses(
        (status = 200, body = OrderResponse),
        (status = 400, description = "Not a UUID", body = Problem, content_type = PROBLEM),
        (status = 404, description = "Unknown order", body = Problem, content_type = PROBLEM),
    ))]
async fn get_order(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, OrdersError> {
    let order = state.orders.get(&id).await?;
    Ok(success(StatusCode::OK, "Order retrieved successfully", order))
}

/// Change an order's status. pending → confirmed → shipped → delivered; cancelled
/// from pending or confirmed (its stock goes back to the catalog); any other move is 409.
#[utoipa::path(patch, path = "/api/orders/{id}/status", tag = TAG, request_body = UpdateStatusRequest,
    params(("id" = String, Path, format = "uuid", description = "Order id (UUID)")),
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

/// Cancel an order: allowed while pending or confirmed; its stock goes back.
#[utoipa::path(post, path = "/api/orders/{id}/cancel", tag = TAG,
    params(("id" = String, Path, format = "uuid", description = "Order id (UUID)")),
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
