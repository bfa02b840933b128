//! The catalog calls: a product's price, a cart's holds, an order's stock commit and restock,
//! and liveness.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shopstack_base::money::Money;
use shopstack_platform::client::HttpClient;

use crate::upstream::{Upstream, UpstreamError};

/// The catalog fields an order needs.
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogProduct {
    pub id: String,
    pub price: Money,
    #[serde(default = "default_currency")]
    pub currency: String,
}

fn default_currency() -> String {
    "USD".into()
}

/// One line of a stock commit or restock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    pub product_id: String,
    pub quantity: i64,
}

/// The catalog's answer to a reservation.
#[derive(Debug, Clone, Deserialize)]
pub struct HoldResponse {
    pub quantity: u32,
    /// Free stock left.
    pub stock: i64,
}

/// Why the catalog refused a reservation; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldRefused {
    /// 404: the product is unknown.
    UnknownProduct(String),
    /// 409: not enough free stock (`available`: what is, 0 when the catalog does not say).
    InsufficientStock { available: i64 },
    /// 503 `stock-unknown`: the catalog's store lost this product's stock figure; nothing is
    /// sold until operators set it again.
    StockUnknown(String),
}

/// Why the catalog refused a stock commit; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitRefused {
    /// 409: not enough stock (the catalog's message, and `available` when it says).
    InsufficientStock {
        message: String,
        available: Option<i64>,
        product_id: Option<String>,
    },
    /// 404: a product is unknown.
    UnknownProduct(String),
    /// 503 `stock-unknown`: the catalog's store lost this product's stock figure.
    StockUnknown(String),
}

#[derive(Debug, Deserialize)]
struct ProblemBody {
    available: Option<i64>,
}

/// The product a 503 names when it is the catalog's `stock-unknown` problem (a definite
/// refusal: nothing changed), rather than the catalog or its store being down.
fn stock_unknown(answer: &Value) -> Option<String> {
    let kind = answer.get("type").and_then(Value::as_str)?;
    if !kind.ends_with("/stock-unknown") {
        return None;
    }
    answer
        .get("product_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[derive(Clone)]
pub struct CatalogClient(Upstream);

impl CatalogClient {
    pub fn new(client: HttpClient, replicas: Vec<Url>, timeout: Duration) -> Self {
        Self(Upstream::new("catalog", client, replicas, timeout))
    }

    /// A product's price, or `None` when the catalog does not know it.
    pub async fn product(&self, product_id: &str) -> Result<Option<CatalogProduct>, UpstreamError> {
        let (status, body) = self
            .0
            .call(
                Method::GET,
                &format!("catalog/{product_id}"),
                "/catalog/{id}",
                None,
                &[],
            )
            .await?;
        match status {
            StatusCode::OK => self.0.decode(status, body).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(self.0.unexpected(status, &body)),
        }
    }

    /// Set `owner`'s reservation of `product_id` to exactly `quantity` units (0 releases).
    /// `Ok(Err(_))`: refused, nothing changed.
    pub async fn set_hold(
        &self,
        owner: &str,
        product_id: &str,
        quantity: u32,
        ttl: Duration,
    ) -> Result<Result<HoldResponse, HoldRefused>, UpstreamError> {
        let body = serde_json::json!({"quantity": quantity, "ttl_secs": ttl.as_secs().max(1)});
        // Ids are validated to a URL-safe alphabet before they get here.
        let response = self
            .0
            .send(
                Method::PUT,
                &format!("inventory/holds/{owner}/{product_id}"),
                "/inventory/holds/{owner}/{product_id}",
                Some(&body),
                &[],
            )
            .await?;
        match response.status() {
            StatusCode::OK => response
                .json::<HoldResponse>()
                .await
                .map(Ok)
                .map_err(|error| self.0.unavailable(format!("unreadable reservation: {error}"))),
            StatusCode::NOT_FOUND => Ok(Err(HoldRefused::UnknownProduct(product_id.to_owned()))),
            StatusCode::CONFLICT => {
                let body: ProblemBody = response
                    .json()
                    .await
                    .map_err(|error| self.0.unavailable(format!("unreadable conflict: {error}")))?;
                Ok(Err(HoldRefused::InsufficientStock {
                    available: body.available.unwrap_or(0),
                }))
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                let answer: Value = response.json().await.unwrap_or_default();
                match stock_unknown(&answer) {
                    Some(product_id) => Ok(Err(HoldRefused::StockUnknown(product_id))),
                    None => Err(self.answered(StatusCode::SERVICE_UNAVAILABLE)),
                }
            }
            status => Err(self.answered(status)),
        }
    }

    /// Give all of `owner`'s reservations back.
    pub async fn release_owner(&self, owner: &str) -> Result<(), UpstreamError> {
        let response = self
            .0
            .send(
                Method::DELETE,
                &format!("inventory/holds/{owner}"),
                "/inventory/holds/{owner}",
                None,
                &[],
            )
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(self.answered(response.status()))
        }
    }

    /// Turn `owner`'s holds on `items` into sold units for `order_id` (any shortfall from free
    /// stock). Idempotent per `order_id`. `Ok(Err(_))`: refused, nothing changed.
    pub async fn commit(
        &self,
        order_id: &str,
        owner: &str,
        items: &[StockLine],
    ) -> Result<Result<(), CommitRefused>, UpstreamError> {
        let body = serde_json::json!({"order_id": order_id, "owner": owner, "items": items});
        let (status, answer) = self
            .0
            .call(
                Method::POST,
                "inventory/commit",
                "/inventory/commit",
                Some(&body),
                &[],
            )
            .await?;
        match status {
            status if status.is_success() => Ok(Ok(())),
            StatusCode::CONFLICT => {
                let message = answer
                    .get("message")
                    .or_else(|| answer.get("detail"))
                    .and_then(Value::as_str)
                    .unwrap_or("Insufficient stock.")
                    .to_owned();
                Ok(Err(CommitRefused::InsufficientStock {
                    message,
                    available: answer.get("available").and_then(Value::as_i64),
                    product_id: answer
                        .get("product_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                }))
            }
            StatusCode::NOT_FOUND => match answer.get("product_id").and_then(Value::as_str) {
                Some(product_id) => Ok(Err(CommitRefused::UnknownProduct(product_id.to_owned()))),
                // A 404 naming no product: the route itself is missing (an older catalog).
                None => Err(self.0.unexpected(status, &answer)),
            },
            StatusCode::SERVICE_UNAVAILABLE => match stock_unknown(&answer) {
                Some(product_id) => Ok(Err(CommitRefused::StockUnknown(product_id))),
                None => Err(self.0.unexpected(status, &answer)),
            },
            status => Err(self.0.unexpected(status, &answer)),
        }
    }

    /// Return `items` to stock for `order_id` (idempotent per `order_id`).
    pub async fn restock(&self, order_id: &str, items: &[StockLine]) -> Result<(), UpstreamError> {
        let body = serde_json::json!({"order_id": order_id, "items": items});
        let (status, answer) = self
            .0
            .call(
                Method::POST,
                "inventory/restock",
                "/inventory/restock",
                Some(&body),
                &[],
            )
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.0.unexpected(status, &answer))
        }
    }

    /// True when the catalog answers `/livez`.
    pub async fn live(&self) -> bool {
        self.0.live().await
    }

    /// A reservation call's refusal by status alone: the holds' callers need no error body,
    /// so it is left unread.
    fn answered(&self, status: StatusCode) -> UpstreamError {
        UpstreamError::Unexpected {
            service: self.0.service(),
            status: status.as_u16(),
            body: String::new(),
        }
    }
}
