//! A published event carries its producer span's trace context in the NATS message headers, and
//! a consumer's span continues it: the consumer's work joins the trace of the operation that
//! caused the event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use opentelemetry::trace::{SpanId, SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
use shopstack_base::health::Health;
use shopstack_events::events::{EventBus, EventsConfig, Handled, Handler};
use shopstack_testkit::logs::LogCapture;
use tracing::Instrument as _;

/// Keeps the spans it is handed.
#[derive(Clone, Default, Debug)]
struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl opentelemetry_sdk::trace::SpanProcessor for Collected {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}
    fn on_end(&self, span: SpanData) {
        self.0.lock().unwrap().push(span);
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_consumer_span_continues_the_producer_span_carried_in_the_message_headers() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let collected = Collected::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(collected.clone())
        .build();
    let identity = shopstack_testkit::settings("events").identity;
    let subscriber = shopstack_telemetry::telemetry::build_subscriber(
        &identity,
        "info",
        LogCapture::default(),
        Some(provider.tracer("shopstack")),
    )
    .unwrap();
    // The runtime has one thread: the subscriber is the default wherever the test's tasks run.
    let _default = tracing::subscriber::set_default(subscriber);

    let nats = shopstack_testkit::nats::NatsServer::start().await.unwrap();
    let registry = shopstack_telemetry::metrics::Registry::with_constant_label("service", "events-test");
    let config = EventsConfig {
        nats_url: Some(nats.url()),
        nats_creds: None,
        events_stream_replicas: 1,
    };
    let bus = EventBus::from_config(&config, "events-test", &registry, &Health::default())
        .await
        .unwrap();
    bus.ensure_stream().await.unwrap();

    let consumed = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&consumed);
    let handler: Handler = Arc::new(move |event| {
        seen.lock().unwrap().push(event);
        async { Ok(Handled::Done) }.boxed()
    });
    let consumer = bus.consume("trace-test", "order.>", handler);

    let operation = tracing::info_span!("checkout", otel.kind = "server");
    let operation_context = shopstack_telemetry::telemetry::span_context(&operation);
    async {
        let event = bus.event(
            "order.created",
            Some("order-1".into()),
            serde_json::json!({"order_id": "order-1"}),
        );
        bus.publish(&event).await.unwrap();
    }
    .instrument(operation.clone())
    .await;
    drop(operation);

    let deadline = Instant::now() + Duration::from_secs(20);
    while consumed.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(consumed.lock().unwrap().len(), 1, "the event was consumed");
    // The consumer span ends just after the handler returns.
    let deadline = Instant::now() + Duration::from_secs(5);
    let find = |kind: SpanKind| {
        collected
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|span| span.span_kind == kind)
            .cloned()
    };
    while find(SpanKind::Consumer).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    consumer.abort();

    let producer = find(SpanKind::Producer).expect("a producer span");
    let consumer = find(SpanKind::Consumer).expect("a consumer span");
    assert_eq!(producer.name, "publish order.created");
    assert_eq!(producer.span_context.trace_id(), operation_context.trace_id());
    assert_eq!(
        producer.parent_span_id,
        operation_context.span_id(),
        "the publish is part of the operation"
    );
    assert_eq!(
        consumer.span_context.trace_id(),
        operation_context.trace_id(),
        "one trace"
    );
    assert_eq!(
        consumer.parent_span_id,
        producer.span_context.span_id(),
        "the consumer continues the producer span, whose context the headers carried"
    );
    assert_ne!(consumer.parent_span_id, SpanId::INVALID);
    let attribute = |span: &SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|attribute| attribute.key.as_str() == key)
            .map(|attribute| attribute.value.to_string())
    };
    assert_eq!(attribute(&producer, "messaging.system").as_deref(), Some("nats"));
    assert_eq!(
        attribute(&producer, "messaging.destination.name").as_deref(),
        Some("order.created")
    );
    assert_eq!(
        attribute(&producer, "messaging.operation.type").as_deref(),
        Some("send")
    );
}
