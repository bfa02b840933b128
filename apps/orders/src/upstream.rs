//! The two services the orders service calls: the catalog (prices, stock commits and restocks)
//! and the cart (read it, clear it). Calls go through the platform's traced client,
//! round-robin over the configured replicas, each bounded by `UPSTREAM_TIMEOUT`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shopstack_common::client::HttpClient;
use shopstack_common::money::Money;

/// A call that did not get an answer, or got one it could not use.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("{service} did not answer within {timeout:?}")]
    Timeout {
        service: &'static str,
        timeout: Duration,
    },
    #[error("{service} is unavailable: {cause}")]
    Unavailable { service: &'static str, cause: String },
    #[error("{service} answered {status}: {body}")]
    Unexpected {
        service: &'static str,
        status: u16,
        body: String,
    },
}

impl UpstreamError {
    pub fn service(&self) -> &'static str {
        match self {
            UpstreamError::Timeout { service, .. }
            | UpstreamError::Unavailable { service, .. }
            | UpstreamError::Unexpected { service, .. } => service,
        }
    }
}

#[derive(Clone)]
struct Upstream {
    service: &'static str,
    client: HttpClient,
    replicas: Arc<[Url]>,
    next: Arc<AtomicUsize>,
    timeout: Duration,
}

impl Upstream {
    fn new(service: &'static str, client: HttpClient, replicas: Vec<Url>, timeout: Duration) -> Self {
        Self {
            service,
            client,
            replicas: replicas.into(),
            next: Arc::new(AtomicUsize::new(0)),
            timeout,
        }
    }

    /// Send `method path` (with an optional JSON body and headers); `route` names the callee's
    /// route template for the client span.
    async fn call(
        &self,
        method: Method,
        path: &str,
        route: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, Value), UpstreamError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.replicas.len().max(1);
        let base = self
            .replicas
            .get(index)
            .ok_or_else(|| UpstreamError::Unavailable {
                service: self.service,
                cause: "no replica configured".into(),
            })?;
        let url = base.join(path).map_err(|error| UpstreamError::Unavailable {
            service: self.service,
            cause: format!("bad URL: {error}"),
        })?;
        let mut builder = self.client.inner().request(method, url).timeout(self.timeout);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let request = builder.build().map_err(|error| UpstreamError::Unavailable {
            service: self.service,
            cause: error.to_string(),
        })?;
        let response = self
            .client
            .send(self.service, route, request)
            .await
            .map_err(|error| self.transport_error(&error))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.transport_error(&error))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, body))
    }

    fn transport_error(&self, error: &reqwest::Error) -> UpstreamError {
        if error.is_timeout() {
            UpstreamError::Timeout {
                service: self.service,
                timeout: self.timeout,
            }
        } else {
            UpstreamError::Unavailable {
                service: self.service,
                cause: error.to_string(),
            }
        }
    }

    fn unexpected(&self, status: StatusCode, body: &Value) -> UpstreamError {
        let mut text = body.to_string();
        text.truncate(300);
        UpstreamError::Unexpected {
            service: self.service,
            status: status.as_u16(),
            body: text,
        }
    }
}

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
            StatusCode::OK => serde_json::from_value(body.clone()).map(Some).map_err(|error| {
                self.0.unexpected(
                    status,
                    &serde_json::json!({"error": error.to_string(), "body": body}),
                )
            }),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(self.0.unexpected(status, &body)),
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
        self.0
            .call(Method::GET, "livez", "/livez", None, &[])
            .await
            .is_ok_and(|(status, _)| status.is_success())
    }
}

/// A cart as the cart service returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct Cart {
    pub user_id: String,
    pub items: Vec<StockLine>,
    pub version: i64,
}

/// What clearing a cart did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearOutcome {
    Cleared,
    /// 412: the cart is no longer at the version we read; left as it is.
    Changed,
}

#[derive(Clone)]
pub struct CartClient(Upstream);

impl CartClient {
    pub fn new(client: HttpClient, replicas: Vec<Url>, timeout: Duration) -> Self {
        Self(Upstream::new("cart", client, replicas, timeout))
    }

    pub async fn get(&self, user_id: &str) -> Result<Cart, UpstreamError> {
        let (status, body) = self
            .0
            .call(
                Method::GET,
                &format!("v1/cart/{user_id}"),
                "/v1/cart/{user_id}",
                None,
                &[],
            )
            .await?;
        if status != StatusCode::OK {
            return Err(self.0.unexpected(status, &body));
        }
        serde_json::from_value(body.clone()).map_err(|error| {
            self.0.unexpected(
                status,
                &serde_json::json!({"error": error.to_string(), "body": body}),
            )
        })
    }

    /// Clear the cart only if it is still at `version` (`If-Match: "v{version}"`).
    pub async fn clear(&self, user_id: &str, version: i64) -> Result<ClearOutcome, UpstreamError> {
        let (status, body) = self
            .0
            .call(
                Method::DELETE,
                &format!("v1/cart/{user_id}"),
                "/v1/cart/{user_id}",
                None,
                &[("if-match", format!("\"v{version}\""))],
            )
            .await?;
        match status {
            status if status.is_success() => Ok(ClearOutcome::Cleared),
            StatusCode::PRECONDITION_FAILED => Ok(ClearOutcome::Changed),
            status => Err(self.0.unexpected(status, &body)),
        }
    }

    pub async fn live(&self) -> bool {
        self.0
            .call(Method::GET, "livez", "/livez", None, &[])
            .await
            .is_ok_and(|(status, _)| status.is_success())
    }
}
