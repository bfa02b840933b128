//! Every order exactly once on the stream: the orders the orders service holds, and how many
//! times each order id is on the `SHOPSTACK` stream as `order.created`, to check one against
//! the other.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use serde_json::Value;

/// Every order the orders service at `orders` has (its database), by id.
pub async fn orders_in_database(orders: &str) -> anyhow::Result<BTreeSet<String>> {
    let client = crate::http::client();
    let mut ids = BTreeSet::new();
    // Bounded: far more pages than a run places orders.
    for page in 1..=1000 {
        let url = format!("{orders}/api/orders?page={page}&page_size=100");
        let response = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let listed: Value = response
            .json()
            .await
            .with_context(|| format!("GET {url}: not JSON"))?;
        anyhow::ensure!(status.is_success(), "GET {url}: {status} {listed}");
        for order in listed["data"].as_array().into_iter().flatten() {
            let id = order["id"]
                .as_str()
                .with_context(|| format!("an order without an id: {order}"))?;
            ids.insert(id.to_owned());
        }
        if page >= listed["pagination"]["total_pages"].as_i64().unwrap_or(0) {
            break;
        }
    }
    Ok(ids)
}

/// How many times each order id is on the stream as `order.created`, read through `server`.
pub async fn created_on_stream(server: &str) -> anyhow::Result<HashMap<String, usize>> {
    let reader = async_nats::connect(server)
        .await
        .with_context(|| format!("connecting to NATS at {server}"))?;
    let jetstream = async_nats::jetstream::new(reader);
    let stream = jetstream
        .get_stream("SHOPSTACK")
        .await
        .with_context(|| format!("the SHOPSTACK stream through {server}"))?;
    // A reader of its own, on one server in memory: it needs no quorum of its own, and a
    // cluster that has just lost a server may take a few seconds to answer (bounded retries).
    let config = async_nats::jetstream::consumer::pull::Config {
        filter_subject: "order.created".to_owned(),
        ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
        num_replicas: 1,
        memory_storage: true,
        inactive_threshold: Duration::from_secs(30),
        ..Default::default()
    };
    let mut attempts = 0;
    let consumer = loop {
        attempts += 1;
        match stream.create_consumer(config.clone()).await {
            Ok(consumer) => break consumer,
            Err(error) if attempts < 10 => {
                eprintln!("creating the stream reader: {error}; again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => anyhow::bail!("no reader on the stream through {server}: {error}"),
        }
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    // Bounded: far more batches than a run publishes.
    for _ in 0..200 {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|error| anyhow::anyhow!("reading the stream through {server}: {error}"))?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message =
                message.map_err(|error| anyhow::anyhow!("reading the stream through {server}: {error}"))?;
            got += 1;
            let event: Value =
                serde_json::from_slice(&message.payload).context("an event that is not JSON")?;
            let id = event["data"]["order_id"]
                .as_str()
                .with_context(|| format!("order.created without an order id: {event}"))?;
            *seen.entry(id.to_owned()).or_default() += 1;
        }
        if got == 0 {
            break;
        }
    }
    Ok(seen)
}
