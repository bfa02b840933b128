//! Events on a three-node NATS JetStream cluster (`NATS_URL` listing all three,
//! `EVENTS_STREAM_REPLICAS=3`): the stream is replicated, publishing goes on when one server is
//! killed, and every event is on the stream exactly once however often it was sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::json;
use shopstack_base::health::Health;
use shopstack_events::events::{EventBus, EventsConfig, STREAM_NAME};
use shopstack_telemetry::metrics::Registry;
use shopstack_testkit::nats_cluster::NatsCluster;

/// Publish `event` until JetStream acknowledges it, as the outbox relay does (bounded).
async fn publish_until_acknowledged(bus: &EventBus, event: &shopstack_events::events::Event) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match bus.publish(event).await {
            Ok(()) => return,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "event {} never acknowledged: {error}",
                    event.id
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_stream_takes_every_event_once_while_a_server_dies() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let config = EventsConfig {
        nats_url: Some(cluster.url()),
        nats_creds: None,
        events_stream_replicas: 3,
    };
    let registry = Registry::with_constant_label("service", "events-test");
    let bus = EventBus::from_config(&config, "events-test", &registry, &Health::default())
        .await
        .unwrap();
    bus.ensure_stream().await.unwrap();

    let events: Vec<_> = (0..40)
        .map(|n| bus.event("order.created", Some(format!("order-{n}")), json!({"n": n})))
        .collect();
    for event in &events[..20] {
        publish_until_acknowledged(&bus, event).await;
    }
    // The server the client most likely talks to, and a replica of the stream, dies.
    cluster.kill(0);
    for event in &events[20..] {
        publish_until_acknowledged(&bus, event).await;
    }
    // Sent again (a relay that crashed before recording the acknowledgement): deduplicated.
    for event in &events[10..30] {
        publish_until_acknowledged(&bus, event).await;
    }

    let reader = async_nats::connect(cluster.nodes[1].url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(reader);
    // The survivors may still be electing the stream's leader (slowly on a busy machine):
    // JetStream requests time out until one is elected.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (replicas, consumer) = loop {
        let attempt = async {
            let mut stream = jetstream.get_stream(STREAM_NAME).await?;
            let replicas = stream.info().await?.config.num_replicas;
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
                .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((replicas, consumer))
        };
        match attempt.await {
            Ok(found) => break found,
            Err(error) => {
                assert!(Instant::now() < deadline, "the stream never answered: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert_eq!(replicas, 3);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut messages = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("Nats-Msg-Id"))
            .map(|id| id.to_string())
            .unwrap();
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), events.len(), "every event is on the stream");
    for event in &events {
        assert_eq!(seen.get(&event.id), Some(&1), "event {} exactly once", event.id);
    }
}
