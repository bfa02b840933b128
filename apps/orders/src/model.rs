//! Orders on the wire (the orders API's shapes) and the status machine.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shopstack_base::money::Money;
use utoipa::ToSchema;

/// The orders API's statuses. pending → confirmed → shipped → delivered; cancelled only from pending
/// or confirmed; every other move (including to the same status) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Confirmed,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the status machine allows moving from `self` to `to`.
    pub fn can_become(self, to: OrderStatus) -> bool {
        use OrderStatus::{Cancelled, Confirmed, Delivered, Pending, Shipped};
        matches!(
            (self, to),
            (Pending, Confirmed)
                | (Confirmed, Shipped)
                | (Shipped, Delivered)
                | (Pending, Cancelled)
                | (Confirmed, Cancelled)
        )
    }

    /// The statuses reachable from `self` in one move.
    pub fn next(self) -> Vec<OrderStatus> {
        Self::ALL.into_iter().filter(|&to| self.can_become(to)).collect()
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The orders API's spelling exactly (lowercase): what the document's enum promises, no more.
impl FromStr for OrderStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "{text:?} is not an order status; expected one of pending, confirmed, shipped, delivered, cancelled"
                )
            })
    }
}

/// How an order came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderSource {
    /// `POST /api/orders` with the items in the body.
    Direct,
    /// `POST /api/orders/checkout`: the user's cart.
    Checkout,
}

impl OrderSource {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderSource::Direct => "direct",
            OrderSource::Checkout => "checkout",
        }
    }

    pub fn parse(text: &str) -> Self {
        if text == "checkout" {
            OrderSource::Checkout
        } else {
            OrderSource::Direct
        }
    }
}

/// One line of an order (an entry of `order_items`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderItem {
    #[schema(example = "789e0123-e89b-12d3-a456-426614174000")]
    pub id: String,
    #[schema(example = "prod-123")]
    pub product_id: String,
    #[schema(example = 2)]
    pub quantity: i32,
    /// The catalog's price when the order was placed.
    #[schema(value_type = f64, example = 29.99)]
    pub unit_price: Money,
    /// `unit_price × quantity`, exact.
    #[schema(value_type = f64, example = 59.98)]
    pub subtotal: Money,
}

/// An order (the `data` of the orders API's envelope).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    #[schema(example = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d")]
    pub id: String,
    #[schema(example = "user123")]
    pub user_id: String,
    pub status: OrderStatus,
    /// Sum of the subtotals, exact to the cent.
    #[schema(value_type = f64, example = 59.98)]
    pub total_amount: Money,
    #[schema(example = "USD")]
    pub currency: String,
    pub shipping_address: String,
    pub billing_address: Option<String>,
    pub notes: Option<String>,
    pub order_items: Vec<OrderItem>,
    /// `direct` (POST /api/orders) or `checkout` (from the cart).
    pub source: OrderSource,
    /// Bumped by every status change (optimistic concurrency).
    pub version: i64,
    #[schema(value_type = String, format = DateTime, example = "2024-01-15T10:30:00Z")]
    pub created_at: DateTime<Utc>,
    #[schema(value_type = String, format = DateTime, example = "2024-01-15T10:30:00Z")]
    pub updated_at: DateTime<Utc>,
}

/// A priced line before it becomes an [`OrderItem`]; kept in the saga record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    pub product_id: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
    pub currency: String,
}

impl PricedLine {
    pub fn subtotal(&self) -> Money {
        Money::from_cents(self.unit_price_cents) * i64::from(self.quantity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_machine() {
        use OrderStatus::*;
        let allowed = [
            (Pending, Confirmed),
            (Confirmed, Shipped),
            (Shipped, Delivered),
            (Pending, Cancelled),
            (Confirmed, Cancelled),
        ];
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} → {to}"
                );
            }
        }
        assert!(Delivered.next().is_empty());
        assert!(Cancelled.next().is_empty());
    }

    #[test]
    fn statuses_parse_exactly_as_the_orders_api_spells_them() {
        assert_eq!("shipped".parse::<OrderStatus>(), Ok(OrderStatus::Shipped));
        for other in ["Shipped", " shipped", "returned", ""] {
            assert!(other.parse::<OrderStatus>().is_err(), "{other:?}");
        }
        assert_eq!(
            serde_json::to_string(&OrderStatus::Cancelled).unwrap_or_default(),
            "\"cancelled\""
        );
    }
}
