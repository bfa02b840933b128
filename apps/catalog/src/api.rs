//! Catalog HTTP handlers: products, search, pagination.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use shopstack_base::Problem;
use shopstack_base::extract::{Json, Path, Query};
use shopstack_base::pagination::{PageParams, Pagination};
use shopstack_platform::ApiInfo;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::CatalogError;
use crate::products::Product;

pub const INFO: ApiInfo = ApiInfo {
    title: "ShopStack catalog",
    description: "The product catalog: products, search and pagination, with the stock each product has left.",
};

const TAG: &str = "catalog";

pub fn router(state: AppState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_products))
        .routes(routes!(get_product))
        .with_state(state)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SearchParams {
    /// Words that must all appear in the name, description or categories (case-insensitive).
    q: Option<String>,
    /// Only products in this category.
    category: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductList {
    pub products: Vec<Product>,
    pub pagination: Pagination,
}

/// List products, optionally searched, a page at a time.
#[utoipa::path(get, path = "/catalog", tag = TAG, params(SearchParams, PageParams), responses(
    (status = 200, body = ProductList),
    (status = 400, description = "page or page_size below 1", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "Stock store down", body = Problem, content_type = "application/problem+json"),
))]
async fn list_products(
    State(state): State<AppState>,
    Query(search): Query<SearchParams>,
    Query(paging): Query<PageParams>,
) -> Result<Json<ProductList>, CatalogError> {
    let page = paging.resolve().map_err(CatalogError::Rejected)?;
    let matches: Vec<&Product> = state
        .catalog
        .search(search.q.as_deref(), search.category.as_deref())
        .collect();
    let total = matches.len() as u64;
    let mut products: Vec<Product> = matches
        .into_iter()
        .skip(usize::try_from(page.offset()).unwrap_or(usize::MAX))
        .take(page.page_size as usize)
        .cloned()
        .collect();
    with_live_stock(&state, &mut products).await?;
    Ok(Json(ProductList {
        products,
        pagination: page.describe(total),
    }))
}

/// One product by id.
#[utoipa::path(get, path = "/catalog/{id}", tag = TAG,
    params(("id" = String, Path, description = "Product id, e.g. prod-123 (a bare 123 means prod-123)")),
    responses(
        (status = 200, body = Product),
        (status = 404, description = "Unknown product", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Stock store down", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Product>, CatalogError> {
    let mut product = state
        .catalog
        .lookup(&id)
        .cloned()
        .ok_or(CatalogError::ProductNotFound(id))?;
    with_live_stock(&state, std::slice::from_mut(&mut product)).await?;
    Ok(Json(product))
}

/// Replace the file's initial stock with what is free to reserve now.
async fn with_live_stock(state: &AppState, products: &mut [Product]) -> Result<(), CatalogError> {
    let ids: Vec<String> = products.iter().map(|product| product.id.clone()).collect();
    let levels = state.inventory.stock_of(&ids).await?;
    for (product, level) in products.iter_mut().zip(levels) {
        product.stock = level;
    }
    Ok(())
}
