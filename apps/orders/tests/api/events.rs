//! Order events on NATS JetStream, through the transactional outbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::on_both_engines;

on_both_engines!(every_order_event_arrives_exactly_once_across_a_nats_outage);

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_receives_the_events_of_a_checkout() {
    let nats = NatsServer::start().await.unwrap();
    let db = TestDb::sqlite();
    let stack = spawn_stack(&db, Some(&nats.url()), &[]).await;
    let subscriber = async_nats::connect(nats.url()).await.unwrap();
    let mut events = subscriber.subscribe("order.>").await.unwrap();
    subscriber.flush().await.unwrap();

    add_to_cart(&stack, "listener", "prod-111", 2).await;
    let response = client()
        .post(stack.url("/api/orders/checkout"))
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&json!({"user_id": "listener", "shipping_address": "1 Test Street"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let order = json_of(response).await["data"].clone();
    let id = order["id"].as_str().unwrap().to_owned();
    for status in ["confirmed"] {
        let response = client()
            .patch(stack.url(&format!("/api/orders/{id}/status")))
            .json(&json!({"status": status}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = cancel_order(&stack, &id).await;
    assert_eq!(response.status(), StatusCode::OK);

    let mut received = Vec::new();
    while received.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("three order events within 10 s")
            .unwrap();
        let headers = message.headers.clone().unwrap();
        let event: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(
            headers.get("Nats-Msg-Id").map(ToString::to_string),
            event["id"].as_str().map(str::to_owned),
            "the message id is the event id"
        );
        assert_eq!(message.subject.as_str(), event["type"].as_str().unwrap());
        received.push(event);
    }
    let types: Vec<&str> = received.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        vec!["order.created", "order.status_changed", "order.cancelled"]
    );

    let created = &received[0];
    assert_eq!(created["specversion"], "1.0");
    assert_eq!(created["source"], "/shopstack/orders");
    assert_eq!(created["subject"], id);
    assert!(created["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    let data = &created["data"];
    assert_eq!(data["order_id"], id);
    assert_eq!(data["user_id"], "listener");
    assert_eq!(data["total_amount"], 258.0);
    assert_eq!(data["total_amount_cents"], 25800);
    assert_eq!(data["currency"], "USD");
    assert_eq!(data["source"], "checkout");
    assert_eq!(data["items"][0]["product_id"], "prod-111");
    assert_eq!(data["items"][0]["quantity"], 2);
    assert!(data["cart_version"].as_i64().is_some());
    // The W3C trace context of the checkout request travels with the event.
    let traceparent = created["traceparent"].as_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{TRACE_ID}-")),
        "{traceparent}"
    );

    let changed = &received[1]["data"];
    assert_eq!(
        (changed["from"].as_str(), changed["to"].as_str()),
        (Some("pending"), Some("confirmed"))
    );
    let cancelled = &received[2]["data"];
    assert_eq!(
        (cancelled["from"].as_str(), cancelled["to"].as_str()),
        (Some("confirmed"), Some("cancelled"))
    );
    assert_eq!(cancelled["total_amount"], 258.0);

    let metrics = stack.orders.url("/metrics");
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(
                &metrics,
                "events_published_total",
                &["type=\"order.created\"", "result=\"ok\""],
            )
            .await
                == Some(1.0)
                && metric(&metrics, "outbox_backlog", &[]).await == Some(0.0)
        })
        .await
    );
}

async fn every_order_event_arrives_exactly_once_across_a_nats_outage(engine: Engine) {
    let mut nats = NatsServer::start().await.unwrap();
    let db = TestDb::of(engine).await;
    let stack = Arc::new(spawn_stack(&db, Some(&nats.url()), &[]).await);
    const ORDERS: usize = 24;
    let placed = Arc::new(AtomicUsize::new(0));

    // Checkouts, one after another, while NATS goes down after the 8th and comes back after
    // the 16th. Every checkout succeeds: the events wait in the outbox.
    let shopper = {
        let stack = stack.clone();
        let placed = placed.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..ORDERS {
                let user = format!("outage-{n}");
                add_to_cart(&stack, &user, "prod-115", 1).await;
                let response = checkout(&stack, &user, None).await;
                assert_eq!(response.status(), StatusCode::CREATED, "checkout {n}");
                ids.push(json_of(response).await["data"]["id"].as_str().unwrap().to_owned());
                placed.fetch_add(1, Ordering::SeqCst);
            }
            ids
        })
    };
    let reached = |count: usize| {
        let placed = placed.clone();
        async move {
            eventually(Duration::from_secs(60), || {
                let placed = placed.clone();
                async move { placed.load(Ordering::SeqCst) >= count }
            })
            .await
        }
    };
    assert!(reached(8).await);
    nats.kill();
    assert!(reached(16).await);
    let metrics = stack.orders.url("/metrics");
    // The outage is seen: events wait in the outbox.
    assert!(
        eventually(Duration::from_secs(20), || async {
            metric(&metrics, "outbox_backlog", &[])
                .await
                .is_some_and(|backlog| backlog > 0.0)
        })
        .await
    );
    // Stay down until publishing has really failed (the relay waits up to 3 s for an
    // acknowledgement), so the retry path is exercised, not just the client's buffer.
    assert!(
        eventually(Duration::from_secs(30), || async {
            metric(
                &metrics,
                "events_published_total",
                &["type=\"order.created\"", "result=\"failed\""],
            )
            .await
            .is_some_and(|failed| failed > 0.0)
        })
        .await
    );
    nats.restart().await.unwrap();
    let ids = tokio::time::timeout(Duration::from_secs(120), shopper)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids.len(), ORDERS);

    // Everything is relayed once NATS is back...
    assert!(
        eventually(Duration::from_secs(60), || async {
            metric(&metrics, "outbox_backlog", &[]).await == Some(0.0)
                && stream_events(&nats.url(), "order.created").await.len() >= ORDERS
        })
        .await,
        "the outbox drains after NATS returns"
    );
    // ...and each order's event is in the stream exactly once.
    let events = stream_events(&nats.url(), "order.created").await;
    let mut per_order: HashMap<String, usize> = HashMap::new();
    for event in &events {
        *per_order
            .entry(event["data"]["order_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for id in &ids {
        assert_eq!(per_order.get(id), Some(&1), "order {id}: {per_order:?}");
    }
    assert_eq!(events.len(), ORDERS, "no event of another order, none twice");
    let event_ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(event_ids.len(), ORDERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_publishes_its_changes() {
    let nats = NatsServer::start().await.unwrap();
    let db = TestDb::sqlite();
    let stack = spawn_stack(&db, Some(&nats.url()), &[]).await;
    let subscriber = async_nats::connect(nats.url()).await.unwrap();
    let mut events = subscriber.subscribe("cart.>").await.unwrap();
    subscriber.flush().await.unwrap();
    let http = client();

    add_to_cart(&stack, "watched", "prod-110", 2).await;
    let response = http
        .patch(stack.url("/v1/cart/watched/items/prod-110"))
        .json(&json!({"quantity": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    add_to_cart(&stack, "watched", "prod-111", 1).await;
    let response = http
        .delete(stack.url("/v1/cart/watched/items/prod-111"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = http.delete(stack.url("/v1/cart/watched")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let mut received = Vec::new();
    while received.len() < 5 {
        let message = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("five cart events within 10 s")
            .unwrap();
        received.push(serde_json::from_slice::<Value>(&message.payload).unwrap());
    }
    let summary: Vec<(String, Value, Value)> = received
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap().to_owned(),
                event["data"]["product_id"].clone(),
                event["data"]["quantity"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("cart.item.added".into(), json!("prod-110"), json!(2)),
            ("cart.item.updated".into(), json!("prod-110"), json!(5)),
            ("cart.item.added".into(), json!("prod-111"), json!(1)),
            ("cart.item.removed".into(), json!("prod-111"), Value::Null),
            ("cart.cleared".into(), Value::Null, Value::Null),
        ]
    );
    let versions: Vec<u64> = received
        .iter()
        .map(|event| event["data"]["cart_version"].as_u64().unwrap())
        .collect();
    assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "{versions:?}");
    for event in &received {
        assert_eq!(event["data"]["user_id"], "watched");
        assert_eq!(event["source"], "/shopstack/cart");
        assert!(
            event["traceparent"]
                .as_str()
                .is_some_and(|tp| tp.starts_with("00-"))
        );
    }
    assert_eq!(received[4]["data"]["lines_cleared"], 1);
}

/// The cart cleans up after an order only while the cart is exactly as it was checked out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_consumes_order_created_idempotently() {
    let nats = NatsServer::start().await.unwrap();
    let db = TestDb::sqlite();
    let stack = spawn_stack(&db, Some(&nats.url()), &[]).await;
    add_to_cart(&stack, "leftover", "prod-112", 2).await;
    let cart = get_cart(&stack, "leftover").await;
    let order_created = |version: &Value, quantity: i64| {
        shopstack_events::events::Event::new(
            "order.created",
            "orders",
            None,
            json!({
                "order_id": uuid::Uuid::now_v7().to_string(),
                "user_id": "leftover",
                "source": "checkout",
                "cart_version": version,
                "items": [{"product_id": "prod-112", "quantity": quantity}],
            }),
        )
    };
    let publisher = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let publish = |event: shopstack_events::events::Event| {
        let publisher = publisher.clone();
        async move {
            // The cart's consumer created the stream when it started.
            let ok = eventually(Duration::from_secs(10), || {
                let publisher = publisher.clone();
                let event = event.clone();
                async move {
                    match publisher
                        .publish(
                            event.event_type.clone(),
                            serde_json::to_vec(&event).unwrap().into(),
                        )
                        .await
                    {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    }
                }
            })
            .await;
            assert!(ok, "published");
        }
    };
    let consumed = |result: &'static str| {
        let url = stack.cart.url("/metrics");
        async move {
            metric(
                &url,
                "events_consumed_total",
                &["type=\"order.created\"", &format!("result=\"{result}\"")],
            )
            .await
            .unwrap_or(0.0)
        }
    };

    // An order for other quantities than the cart holds: left alone.
    publish(order_created(&cart["version"], 1)).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            consumed("ignored").await >= 1.0
        })
        .await
    );
    assert_eq!(get_cart(&stack, "leftover").await, cart);

    // The order of exactly this cart: cleared, and its reservation released.
    let stock_before = stock_of(&stack, "prod-112").await;
    let event = order_created(&cart["version"], 2);
    publish(event.clone()).await;
    assert!(eventually(Duration::from_secs(10), || async { consumed("ok").await >= 1.0 }).await);
    assert_eq!(get_cart(&stack, "leftover").await["items"], json!([]));
    assert_eq!(stock_of(&stack, "prod-112").await, stock_before + 2);

    // The same event again (a redelivery), after the user started a new cart: nothing happens.
    add_to_cart(&stack, "leftover", "prod-112", 2).await;
    let new_cart = get_cart(&stack, "leftover").await;
    publish(event).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            consumed("ignored").await >= 2.0
        })
        .await
    );
    assert_eq!(get_cart(&stack, "leftover").await, new_cart);
    assert_eq!(consumed("ok").await, 1.0);
}
