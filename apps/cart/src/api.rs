//! Cart HTTP handlers: the simple cart API (`/cart/add`, `/cart/{user_id}`) and the v1 cart API
//! (`/v1/cart/{user_id}` and its items), one cart behind both.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shopstack_base::Problem;
use shopstack_base::extract::{Json, Path};
use shopstack_platform::ApiInfo;
use shopstack_platform::service::set_schema_keywords;
use shopstack_redis::idempotency::{KeyStore, announce_key_store};
use utoipa::ToSchema;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::CartError;
use crate::service::CartView;

pub const INFO: ApiInfo = ApiInfo {
    title: "ShopStack cart",
    description: "Shopping carts through the simple cart API and the v1 cart API: add, view, change and clear, with versions for optimistic concurrency.",
};

const TAG: &str = "cart";

pub fn router(state: AppState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(simple_add))
        .routes(routes!(simple_get, simple_clear))
        .routes(routes!(v1_add, v1_get, v1_clear))
        .routes(routes!(v1_add_item))
        .routes(routes!(v1_update_item, v1_remove_item))
        // `Idempotency-Key` on writes (reads pass through untouched).
        .layer(axum::middleware::from_fn_with_state(
            state.idempotency.clone(),
            shopstack_redis::idempotency::enforce,
        ))
        .layer(axum::middleware::from_fn_with_state(
            if state.idempotency.shares_keys() {
                KeyStore::Shared
            } else {
                KeyStore::Local
            },
            announce_key_store,
        ))
        .with_state(state)
}

/// The simple cart API's `POST /cart/add` body. Unknown members are refused (400), so a client cannot
/// slip in fields (a price, a version) it has no say over.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimpleAddRequest {
    #[schema(
        example = "user-123",
        pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$",
        min_length = 1,
        max_length = 128
    )]
    pub user_id: String,
    #[schema(
        example = "prod-123",
        pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$",
        min_length = 1,
        max_length = 128
    )]
    pub product_id: String,
    /// At least 1, at most MAX_ITEM_QUANTITY (the document states the configured value).
    #[schema(example = 2, minimum = 1)]
    #[serde(deserialize_with = "shopstack_base::extract::whole_number")]
    pub quantity: i64,
}

/// The v1 cart API's add-item body (unknown members refused).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItemRequest {
    #[schema(
        example = "prod-123",
        pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$",
        min_length = 1,
        max_length = 128
    )]
    pub product_id: String,
    /// At least 1, at most MAX_ITEM_QUANTITY (the document states the configured value).
    #[schema(example = 2, minimum = 1)]
    #[serde(deserialize_with = "shopstack_base::extract::whole_number")]
    pub quantity: i64,
}

/// The v1 cart API's update-quantity body (unknown members refused).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateItemRequest {
    /// At least 1, at most MAX_ITEM_QUANTITY (the document states the configured value).
    #[schema(example = 3, minimum = 1)]
    #[serde(deserialize_with = "shopstack_base::extract::whole_number")]
    pub quantity: i64,
}

/// The answer to clearing a cart.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClearedCart {
    #[schema(example = "Cart cleared successfully")]
    pub message: String,
    pub user_id: String,
}

/// `ETag: "v{version}"` on every cart response.
fn with_etag(version: u64, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("\"v{version}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn cart_response(view: CartView) -> Response {
    with_etag(view.version, Json(view))
}

/// `If-Match: "v3"` (also `W/"v3"`, `"3"`, `3`) → Some(3); `*` or absent → None. A value that
/// names no version can match nothing, so it fails the precondition.
fn if_match(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::IF_MATCH)?.to_str().unwrap_or("").trim();
    if value == "*" {
        return None;
    }
    let tag = value.trim_start_matches("W/").trim_matches('"');
    Some(tag.trim_start_matches('v').parse().unwrap_or(u64::MAX))
}

const PROBLEM: &str = "application/problem+json";

/// Write bodies whose `quantity` is capped by `MAX_ITEM_QUANTITY`.
const QUANTITY_SCHEMAS: [&str; 3] = ["SimpleAddRequest", "AddItemRequest", "UpdateItemRequest"];

/// State the configured quantity cap in the document, so it tells clients the truth.
pub fn document_quantity_cap(openapi: OpenApi, max_item_quantity: u32) -> OpenApi {
    let edits = QUANTITY_SCHEMAS.map(|schema| {
        (
            format!("/components/schemas/{schema}/properties/quantity"),
            "maximum",
            serde_json::json!(max_item_quantity),
        )
    });
    set_schema_keywords(openapi, &edits)
}

/// Add to a cart, simple cart API (user in the body).
#[utoipa::path(post, path = "/cart/add", tag = TAG, request_body = SimpleAddRequest,
    params(
        ("If-Match" = Option<String>, Header, description = "Apply only if the cart is at this version"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replay the first response of a repeated request", pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255),
    ),
    responses(
        (status = 200, description = "The cart after the change", body = CartView, headers(("ETag" = String))),
        (status = 400, description = "Malformed body or quantity out of range", body = Problem, content_type = PROBLEM),
        (status = 404, description = "Unknown product", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Insufficient stock, the line would pass the per-product maximum, concurrent changes, or the same Idempotency-Key still in flight", body = Problem, content_type = PROBLEM),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Idempotency-Key reused with a different request", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Catalog or cart store down", body = Problem, content_type = PROBLEM, headers(("Retry-After" = u32))),
        (status = 504, description = "Catalog timed out", body = Problem, content_type = PROBLEM),
    ))]
async fn simple_add(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<SimpleAddRequest>,
) -> Result<Response, CartError> {
    let view = state
        .carts
        .add(&body.user_id, &body.product_id, body.quantity, if_match(&headers))
        .await?;
    Ok(cart_response(view))
}

/// A user's cart, simple cart API (empty when the user has none).
#[utoipa::path(get, path = "/cart/{user_id}", tag = TAG,
    params(("user_id" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128)),
    responses(
        (status = 200, body = CartView, headers(("ETag" = String))),
        (status = 400, description = "Malformed user id", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Cart store down", body = Problem, content_type = PROBLEM),
    ))]
async fn simple_get(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Response, CartError> {
    Ok(cart_response(state.carts.get(&user_id).await?))
}

/// Clear a user's cart, simple cart API.
#[utoipa::path(delete, path = "/cart/{user_id}", tag = TAG,
    params(("user_id" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header, description = "Replay the first response of a repeated request", pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255)),
    responses(
        (status = 200, body = ClearedCart, headers(("ETag" = String))),
        (status = 400, description = "Malformed user id", body = Problem, content_type = PROBLEM),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Idempotency-Key reused with a different request", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Cart store down", body = Problem, content_type = PROBLEM),
    ))]
async fn simple_clear(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, CartError> {
    clear(state, user_id, &headers).await
}

async fn clear(state: AppState, user_id: String, headers: &HeaderMap) -> Result<Response, CartError> {
    let view = state.carts.clear(&user_id, if_match(headers)).await?;
    Ok(with_etag(
        view.version,
        Json(ClearedCart {
            message: "Cart cleared successfully".into(),
            user_id,
        }),
    ))
}

/// Add to a cart, v1 cart API: the quantity is added to any existing line.
#[utoipa::path(post, path = "/v1/cart/{user_id}", tag = TAG, request_body = AddItemRequest,
    params(("user_id" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header, description = "Replay the first response of a repeated request", pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255)),
    responses(
        (status = 200, description = "The cart after the change", body = CartView, headers(("ETag" = String))),
        (status = 400, description = "Malformed body or quantity out of range", body = Problem, content_type = PROBLEM),
        (status = 404, description = "Unknown product", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Insufficient stock, the line would pass the per-product maximum, concurrent changes, or the same Idempotency-Key still in flight", body = Problem, content_type = PROBLEM),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Idempotency-Key reused with a different request", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Catalog or cart store down", body = Problem, content_type = PROBLEM, headers(("Retry-After" = u32))),
        (status = 504, description = "Catalog timed out", body = Problem, content_type = PROBLEM),
    ))]
async fn v1_add(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<AddItemRequest>,
) -> Result<Response, CartError> {
    let view = state
        .carts
        .add(&user_id, &body.product_id, body.quantity, if_match(&headers))
        .await?;
    Ok(cart_response(view))
}

/// A user's cart, v1 cart API: an unknown user gets an empty cart, not a 404.
#[utoipa::path(get, path = "/v1/cart/{user_id}", tag = TAG,
    params(("user_id" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128)),
    responses(
        (status = 200, body = CartView, headers(("ETag" = String))),
        (status = 400, description = "Malformed user id", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Cart store down", body = Problem, content_type = PROBLEM),
    ))]
async fn v1_get(State(state): State<AppState>, Path(user_id): Path<String>) -> Result<Response, CartError> {
    Ok(cart_response(state.carts.get(&user_id).await?))
}

/// Clear a user's cart, v1 cart API, releasing its reservations.
#[utoipa::path(delete, path = "/v1/cart/{user_id}", tag = TAG,
    params(("user_id" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header, description = "Replay the first response of a repeated request", pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255)),
    responses(
        (status = 200, body = ClearedCart, headers(("ETag" = String))),
        (status = 400, description = "Malformed user id", body = Problem, content_type = PROBLEM),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Idempotency-Key reused with a different request", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Cart store down", body = Problem, content_type = PROBLEM),
    ))]
async fn v1_clear(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, CartError> {
    clear(state, user_id, &headers).await
}

/// Add an item, v1 cart API (item-level form): same as `POST /v1/cart/{user_id}`.
#[utoipa::path(post, path = "/v1/cart/{user_id}/items", tag = TAG, request_body = AddItemRequest,
    params(("user_id" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header, description = "Replay the first response of a repeated request", pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255)),
    responses(
        (status = 200, description = "The cart after the change", body = CartView, headers(("ETag" = String))),
        (status = 400, description = "Malformed body or quantity out of range", body = Problem, content_type = PROBLEM),
        (status = 404, description = "Unknown product", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Insufficient stock, the line would pass the per-product maximum, concurrent changes, or the same Idempotency-Key still in flight", body = Problem, content_type = PROBLEM),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Idempotency-Key reused with a different request", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Catalog or cart store down", body = Problem, content_type = PROBLEM, headers(("Retry-After" = u32))),
        (status = 504, description = "Catalog timed out", body = Problem, content_type = PROBLEM),
    ))]
async fn v1_add_item(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<AddItemRequest>,
) -> Result<Response, CartError> {
    let view = state
        .carts
        .add(&user_id, &body.product_id, body.quantity, if_match(&headers))
        .await?;
    Ok(cart_response(view))
}

/// Set the quantity of a line already in the cart, v1 cart API.
#[utoipa::path(patch, path = "/v1/cart/{user_id}/items/{product_id}", tag = TAG, request_body = UpdateItemRequest,
    params(("user_id" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128), ("product_id" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header, description = "Replay the first response of a repeated request", pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255)),
    responses(
        (status = 200, description = "The cart after the change", body = CartView, headers(("ETag" = String))),
        (status = 400, description = "Malformed body or quantity out of range", body = Problem, content_type = PROBLEM),
        (status = 404, description = "The product is not in the cart", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Insufficient stock, the line would pass the per-product maximum, concurrent changes, or the same Idempotency-Key still in flight", body = Problem, content_type = PROBLEM),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Idempotency-Key reused with a different request", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Catalog or cart store down", body = Problem, content_type = PROBLEM, headers(("Retry-After" = u32))),
    ))]
async fn v1_update_item(
    State(state): State<AppState>,
    Path((user_id, product_id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<UpdateItemRequest>,
) -> Result<Response, CartError> {
    let view = state
        .carts
        .set_quantity(&user_id, &product_id, body.quantity, if_match(&headers))
        .await?;
    Ok(cart_response(view))
}

/// Remove a line from the cart, v1 cart API, releasing its reservation.
#[utoipa::path(delete, path = "/v1/cart/{user_id}/items/{product_id}", tag = TAG,
    params(("user_id" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128), ("product_id" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header, description = "Replay the first response of a repeated request", pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255)),
    responses(
        (status = 200, description = "The cart after the change", body = CartView, headers(("ETag" = String))),
        (status = 400, description = "Malformed id", body = Problem, content_type = PROBLEM),
        (status = 404, description = "The product is not in the cart", body = Problem, content_type = PROBLEM),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Idempotency-Key reused with a different request", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Cart store down", body = Problem, content_type = PROBLEM),
    ))]
async fn v1_remove_item(
    State(state): State<AppState>,
    Path((user_id, product_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, CartError> {
    let view = state
        .carts
        .remove(&user_id, &product_id, if_match(&headers))
        .await?;
    Ok(cart_response(view))
}
