//! The orders service's business metrics (the HTTP ones and `events_published_total` come from
//! `common`).

use shopstack_redis::idempotency::Outcomes;
use shopstack_telemetry::metrics::{Histogram, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use crate::model::OrderStatus;

/// Order values (dollars) worth telling apart on a dashboard.
const VALUE_BUCKETS: &[f64] = &[
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

#[derive(Clone)]
pub struct OrdersMetrics {
    /// `orders_created_total{source}`: orders placed (direct or checkout).
    pub created: IntCounterVec<1>,
    /// `order_value_dollars`: the total of each order placed.
    pub value: Histogram,
    /// `order_status_transitions_total{from,to}`.
    pub transitions: IntCounterVec<2>,
    /// `orders_by_status{status}`: orders in the database per status (refreshed every few seconds).
    pub by_status: IntGaugeVec<1>,
    /// `checkouts_total{result}`: checkout requests by outcome.
    pub checkouts: IntCounterVec<1>,
    /// `order_saga_recoveries_total{outcome}`: interrupted order placements finished or undone.
    pub recoveries: IntCounterVec<1>,
    /// `outbox_backlog`: events written but not yet published.
    pub outbox_backlog: IntGauge,
    /// `order_cache_requests_total{result}`: order reads by cache result (hit, miss, error);
    /// series appear only when the cache is on.
    pub cache_requests: IntCounterVec<1>,
    /// `idempotency_requests_total{outcome}`: keyed placements, in the series every service
    /// that honours Idempotency-Key counts into.
    pub idempotency: Outcomes,
}

impl OrdersMetrics {
    pub fn new(registry: &Registry) -> shopstack_telemetry::metrics::Result<Self> {
        let by_status = registry.gauge_vec(
            "orders_by_status",
            "Orders in the database, by status.",
            ["status"],
        )?;
        for status in OrderStatus::ALL {
            by_status.with_label_values(&[status.as_str()]).set(0);
        }
        Ok(Self {
            created: registry.counter_vec(
                "orders_created_total",
                "Orders placed, by source (direct, checkout).",
                ["source"],
            )?,
            value: registry.histogram(
                "order_value_dollars",
                "Total amount of each order placed, in dollars.",
                VALUE_BUCKETS,
            )?,
            transitions: registry.counter_vec(
                "order_status_transitions_total",
                "Order status changes, by from and to.",
                ["from", "to"],
            )?,
            by_status,
            checkouts: registry.counter_vec(
                "checkouts_total",
                "Checkout requests, by result.",
                ["result"],
            )?,
            recoveries: {
                let recoveries = registry.counter_vec(
                    "order_saga_recoveries_total",
                    "Interrupted order placements resolved by the recovery task, by outcome (finished, undone).",
                    ["outcome"],
                )?;
                // Both outcomes start at 0: "no interrupted checkout" is a value, not missing data.
                for outcome in ["finished", "undone"] {
                    recoveries.with_label_values(&[outcome]).inc_by(0);
                }
                recoveries
            },
            outbox_backlog: registry.gauge(
                "outbox_backlog",
                "Order events written to the outbox but not yet published.",
            )?,
            cache_requests: registry.counter_vec(
                "order_cache_requests_total",
                "Order reads by Redis cache result (hit, miss, error: Redis failed and the database answered).",
                ["result"],
            )?,
            idempotency: Outcomes::register(registry)?,
        })
    }
}
