//! The cart's events: `cart.item.added`, `cart.item.updated`, `cart.item.removed` and
//! `cart.cleared` go out on the shared [`EventBus`] (NATS JetStream when `NATS_URL` is set,
//! logged otherwise); and `order.created` comes in, through a durable consumer, to clean up a
//! checked-out cart the orders service could not clear itself.
//!
//! Cart events are published from a bounded in-memory queue by one background task, in order,
//! retrying while NATS is down; a cart change never waits for NATS. If the queue overflows (a
//! long outage under load) the newest events are dropped and counted as
//! `events_published_total{result="dropped"}`: unlike order events, which go through the orders
//! database's outbox, cart events are a best-effort feed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shopstack_events::events::{Event, EventBus, Handled, RetryLater};
use tokio::sync::mpsc;

use crate::error::CartError;
use crate::service::{CartService, CartView};

/// Events waiting to be published, at most.
const QUEUE_CAPACITY: usize = 10_000;
/// The durable consumer of order events.
pub const ORDER_CONSUMER: &str = "cart-order-cleanup";

/// Publishes the cart's events; cheap to clone.
#[derive(Clone)]
pub struct CartEvents {
    bus: EventBus,
    queue: mpsc::Sender<Event>,
}

impl CartEvents {
    /// Start the publisher task for `bus`.
    pub fn start(bus: EventBus) -> Self {
        let (queue, mut pending) = mpsc::channel::<Event>(QUEUE_CAPACITY);
        let publisher = bus.clone();
        tokio::spawn(async move {
            while let Some(event) = pending.recv().await {
                let mut backoff = Duration::from_millis(100);
                while publisher.publish(&event).await.is_err() {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        });
        Self { bus, queue }
    }

    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    fn emit(&self, event_type: &str, view: &CartView, mut data: Value) {
        if let Some(object) = data.as_object_mut() {
            object.insert("user_id".into(), json!(view.user_id));
            object.insert("cart_version".into(), json!(view.version));
            object.insert("total_items".into(), json!(view.total_items));
        }
        let event = self.bus.event(event_type, Some(view.user_id.clone()), data);
        if let Err(error) = self.queue.try_send(event) {
            self.bus
                .metrics()
                .published
                .with_label_values(&[event_type, "dropped"])
                .inc();
            tracing::warn!(event_type, %error, "cart event dropped: the publish queue is full");
        }
    }

    fn quantity_of(view: &CartView, product_id: &str) -> u32 {
        view.items
            .iter()
            .find(|item| item.product_id == product_id)
            .map_or(0, |item| item.quantity)
    }

    /// `quantity` units of `product_id` were added.
    pub fn item_added(&self, view: &CartView, product_id: &str, quantity: i64) {
        self.emit(
            "cart.item.added",
            view,
            json!({
                "product_id": product_id,
                "quantity_added": quantity,
                "quantity": Self::quantity_of(view, product_id),
            }),
        );
    }

    /// The line of `product_id` now holds `quantity` units.
    pub fn item_updated(&self, view: &CartView, product_id: &str) {
        self.emit(
            "cart.item.updated",
            view,
            json!({"product_id": product_id, "quantity": Self::quantity_of(view, product_id)}),
        );
    }

    pub fn item_removed(&self, view: &CartView, product_id: &str) {
        self.emit("cart.item.removed", view, json!({"product_id": product_id}));
    }

    /// The cart was emptied; `lines` is how many lines it had.
    pub fn cleared(&self, view: &CartView, lines: usize) {
        self.emit("cart.cleared", view, json!({"lines_cleared": lines}));
    }
}

/// Consume `order.created`: a cart that was checked out and is still exactly as it was then
/// (same version, same lines) is cleared, which also releases its remaining reservations.
/// Anything else is left alone, so a redelivered event, or one for a cart the user changed
/// since, does nothing.
pub fn consume_order_events(bus: &EventBus, carts: CartService) -> tokio::task::JoinHandle<()> {
    let carts = Arc::new(carts);
    bus.consume(
        ORDER_CONSUMER,
        "order.created",
        Arc::new(move |event: Event| {
            let carts = carts.clone();
            Box::pin(async move { clean_up_after_order(&carts, &event.data).await })
        }),
    )
}

/// What [`consume_order_events`] does with one `order.created` (public for tests).
pub async fn clean_up_after_order(carts: &CartService, data: &Value) -> Result<Handled, RetryLater> {
    let (Some("checkout"), Some(user_id), Some(version)) = (
        data["source"].as_str(),
        data["user_id"].as_str(),
        data["cart_version"].as_u64(),
    ) else {
        return Ok(Handled::Ignored);
    };
    let ordered: BTreeMap<String, u64> = data["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    Some((
                        item["product_id"].as_str()?.to_owned(),
                        item["quantity"].as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let cart = match carts.get(user_id).await {
        Ok(cart) => cart,
        Err(CartError::BadRequest(_)) => return Ok(Handled::Ignored),
        Err(error) => return Err(RetryLater(error.to_string())),
    };
    let current: BTreeMap<String, u64> = cart
        .items
        .iter()
        .map(|item| (item.product_id.clone(), u64::from(item.quantity)))
        .collect();
    if cart.version != version || current.is_empty() || current != ordered {
        return Ok(Handled::Ignored);
    }
    match carts.clear(user_id, Some(version)).await {
        Ok(_) => {
            tracing::info!(
                user_id,
                cart_version = version,
                "checked-out cart cleared after order.created"
            );
            Ok(Handled::Done)
        }
        Err(CartError::PreconditionFailed { .. }) => Ok(Handled::Ignored),
        Err(error) => Err(RetryLater(error.to_string())),
    }
}
