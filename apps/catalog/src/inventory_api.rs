//! Reservation routes the cart and orders services call (not proxied by the gateway), and the
//! operators' stock override (proxied, admin token required).

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use shopstack_base::Problem;
use shopstack_base::admin;
use shopstack_base::extract::{Json, Path};
use shopstack_base::ids;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::CatalogError;
use crate::inventory::{Line, MAX_LINE_QUANTITY};

const TAG: &str = "inventory";
const PROBLEM: &str = "application/problem+json";
/// Longest reservation time-to-live accepted (a cart's TTL is 30 days by default); the
/// OpenAPI schema of `ttl_secs` spells the same bound out.
const MAX_TTL_SECS: u64 = 365 * 24 * 3600;
/// Most free stock an operator may set: far above any shop, far below where the arithmetic of
/// reservations and restocks could overflow.
const MAX_STOCK: i64 = 1_000_000_000;

pub fn router(state: AppState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(set_hold))
        .routes(routes!(get_holds, release_holds))
        .routes(routes!(commit))
        .routes(routes!(restock))
        .routes(routes!(set_stock))
        .with_state(state)
}

fn validate_id(what: &str, value: &str) -> Result<(), CatalogError> {
    ids::check_id(what, value).map_err(CatalogError::BadRequest)
}

fn validate_lines(items: &[Line]) -> Result<(), CatalogError> {
    if items.is_empty() {
        return Err(CatalogError::BadRequest("items must not be empty".into()));
    }
    for item in items {
        validate_id("product_id", &item.product_id)?;
        if item.quantity == 0 {
            return Err(CatalogError::BadRequest(
                "every quantity must be at least 1".into(),
            ));
        }
    }
    // Lines naming one product are merged; the total must fit one line too.
    if crate::inventory::merge_lines(items)
        .iter()
        .any(|line| line.quantity > MAX_LINE_QUANTITY)
    {
        // Every line is well formed; together they ask for more than one line can carry.
        return Err(CatalogError::Rejected(Problem::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "line-total-too-large",
            format!("A product's lines add up to more than {MAX_LINE_QUANTITY} units."),
        )));
    }
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// The owner's hold on this product becomes exactly this many units (0 releases it).
    #[schema(maximum = 1_000_000)]
    #[serde(deserialize_with = "shopstack_base::extract::whole_number")]
    pub quantity: u32,
    /// Seconds until the owner's holds expire unless changed again (the cart's TTL).
    #[schema(example = 2_592_000, minimum = 1, maximum = 31_536_000)]
    #[serde(deserialize_with = "shopstack_base::extract::whole_number")]
    pub ttl_secs: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HoldResponse {
    pub owner: String,
    pub product_id: String,
    pub quantity: u32,
    /// Free stock left after the change.
    pub stock: i64,
}

/// Reserve (or release) units for an owner — absolute, so a retry is harmless.
#[utoipa::path(put, path = "/inventory/holds/{owner}/{product_id}", tag = TAG, request_body = HoldRequest,
    params(("owner" = String, Path, description = "Who holds the units (the cart's user id)", pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128), ("product_id" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128)),
    responses(
        (status = 200, body = HoldResponse),
        (status = 400, description = "Malformed request", body = Problem, content_type = PROBLEM),
        (status = 404, description = "Unknown product", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Insufficient stock; nothing changed", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Stock store down", body = Problem, content_type = PROBLEM),
    ))]
async fn set_hold(
    State(state): State<AppState>,
    Path((owner, product_id)): Path<(String, String)>,
    Json(body): Json<HoldRequest>,
) -> Result<Json<HoldResponse>, CatalogError> {
    validate_id("owner", &owner)?;
    validate_id("product_id", &product_id)?;
    if body.quantity > MAX_LINE_QUANTITY {
        return Err(CatalogError::BadRequest(format!(
            "quantity must be at most {MAX_LINE_QUANTITY}"
        )));
    }
    if body.ttl_secs == 0 || body.ttl_secs > MAX_TTL_SECS {
        return Err(CatalogError::BadRequest(format!(
            "ttl_secs must be between 1 and {MAX_TTL_SECS}"
        )));
    }
    let outcome = state
        .inventory
        .set_hold(
            &owner,
            &product_id,
            body.quantity,
            Duration::from_secs(body.ttl_secs),
        )
        .await?;
    Ok(Json(HoldResponse {
        owner,
        product_id,
        quantity: outcome.quantity,
        stock: outcome.stock,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OwnerHolds {
    pub owner: String,
    pub holds: Vec<Line>,
}

/// What an owner holds.
#[utoipa::path(get, path = "/inventory/holds/{owner}", tag = TAG, params(("owner" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128)),
    responses(
        (status = 200, body = OwnerHolds),
        (status = 400, description = "Malformed owner", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Stock store down", body = Problem, content_type = PROBLEM),
    ))]
async fn get_holds(
    State(state): State<AppState>,
    Path(owner): Path<String>,
) -> Result<Json<OwnerHolds>, CatalogError> {
    validate_id("owner", &owner)?;
    let holds = state.inventory.holds(&owner).await?;
    Ok(Json(OwnerHolds { owner, holds }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Released {
    pub owner: String,
    pub released: Vec<Line>,
}

/// Give all of an owner's holds back (cart cleared or expired).
#[utoipa::path(delete, path = "/inventory/holds/{owner}", tag = TAG, params(("owner" = String, Path, pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$", min_length = 1, max_length = 128)),
    responses(
        (status = 200, body = Released),
        (status = 400, description = "Malformed owner", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Stock store down", body = Problem, content_type = PROBLEM),
    ))]
async fn release_holds(
    State(state): State<AppState>,
    Path(owner): Path<String>,
) -> Result<Json<Released>, CatalogError> {
    validate_id("owner", &owner)?;
    let released = state.inventory.release_owner(&owner).await?;
    Ok(Json(Released { owner, released }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    #[schema(
        pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$",
        min_length = 1,
        max_length = 128
    )]
    pub order_id: String,
    #[schema(
        pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$",
        min_length = 1,
        max_length = 128
    )]
    pub owner: String,
    #[schema(min_items = 1)]
    pub items: Vec<Line>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Committed {
    pub order_id: String,
    pub committed: Vec<Line>,
}

/// Checkout: the owner's holds on these items become sold units (any shortfall from free stock).
/// All or nothing; idempotent per `order_id`.
#[utoipa::path(post, path = "/inventory/commit", tag = TAG, request_body = CommitRequest,
    responses(
        (status = 200, body = Committed),
        (status = 400, description = "Malformed request", body = Problem, content_type = PROBLEM),
        (status = 422, description = "A product's lines add up to more than one line can carry", body = Problem, content_type = PROBLEM),
        (status = 404, description = "Unknown product", body = Problem, content_type = PROBLEM),
        (status = 409, description = "Insufficient stock; nothing changed", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Stock store down", body = Problem, content_type = PROBLEM),
    ))]
async fn commit(
    State(state): State<AppState>,
    Json(body): Json<CommitRequest>,
) -> Result<Json<Committed>, CatalogError> {
    validate_id("order_id", &body.order_id)?;
    validate_id("owner", &body.owner)?;
    validate_lines(&body.items)?;
    state
        .inventory
        .commit(&body.order_id, &body.owner, &body.items)
        .await?;
    Ok(Json(Committed {
        order_id: body.order_id,
        committed: crate::inventory::merge_lines(&body.items),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockRequest {
    #[schema(
        pattern = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$",
        min_length = 1,
        max_length = 128
    )]
    pub order_id: String,
    #[schema(min_items = 1)]
    pub items: Vec<Line>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Restocked {
    pub order_id: String,
    /// False when this order id was already restocked (nothing changed this time).
    pub applied: bool,
}

/// A cancelled order's units go back to free stock; idempotent per `order_id`.
#[utoipa::path(post, path = "/inventory/restock", tag = TAG, request_body = RestockRequest,
    responses(
        (status = 200, body = Restocked),
        (status = 400, description = "Malformed request", body = Problem, content_type = PROBLEM),
        (status = 422, description = "A product's lines add up to more than one line can carry", body = Problem, content_type = PROBLEM),
        (status = 404, description = "Unknown product", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Stock store down", body = Problem, content_type = PROBLEM),
    ))]
async fn restock(
    State(state): State<AppState>,
    Json(body): Json<RestockRequest>,
) -> Result<Json<Restocked>, CatalogError> {
    validate_id("order_id", &body.order_id)?;
    validate_lines(&body.items)?;
    let applied = state.inventory.restock(&body.order_id, &body.items).await?;
    Ok(Json(Restocked {
        order_id: body.order_id,
        applied,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockRequest {
    /// Units free to reserve from now on.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "shopstack_base::extract::whole_number")]
    pub stock: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StockLevel {
    pub product_id: String,
    pub stock: i64,
}

/// Operators set a product's free stock.
#[utoipa::path(put, path = "/admin/stock/{product_id}", tag = TAG, request_body = StockRequest,
    params(("product_id" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = StockLevel),
        (status = 400, description = "Malformed request, or stock below 0 or above 1000000000", body = Problem, content_type = PROBLEM),
        (status = 401, description = "Missing or wrong admin token", body = Problem, content_type = PROBLEM,
            headers(("WWW-Authenticate" = String))),
        (status = 404, description = "Unknown product", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Stock store down", body = Problem, content_type = PROBLEM),
    ))]
async fn set_stock(
    State(state): State<AppState>,
    Path(product_id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<StockRequest>, Problem>,
) -> Result<Json<StockLevel>, CatalogError> {
    admin::authorize(state.platform.settings().admin_token.as_deref(), &headers)?;
    let Json(body) = body?;
    if !(0..=MAX_STOCK).contains(&body.stock) {
        return Err(CatalogError::BadRequest(format!(
            "stock must be between 0 and {MAX_STOCK}"
        )));
    }
    state.inventory.set_stock(&product_id, body.stock).await?;
    tracing::warn!(product_id = %product_id, stock = body.stock, "stock set by an operator");
    Ok(Json(StockLevel {
        product_id,
        stock: body.stock,
    }))
}
