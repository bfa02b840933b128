use reqwest::StatusCode;
use serde_json::{Value, json};

pub use shopstack_testkit::db::{Engine, TestDb};
pub use shopstack_testkit::http::{client, json_of};
pub use shopstack_testkit::nats::NatsServer;
pub use shopstack_testkit::stack::Stack;
pub use shopstack_testkit::wait::eventually;

/// Run `$scenario(engine)` as two tests, one per database engine.
#[macro_export]
macro_rules! on_both_engines {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$scenario($crate::helpers::Engine::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$scenario($crate::helpers::Engine::Postgres).await;
                }
            }
        )*
    };
}

pub async fn spawn_stack(db: &TestDb, nats_url: Option<&str>, flags: &[&str]) -> Stack {
    spawn_stack_on(db, nats_url, None, flags).await
}

/// Catalog, cart, orders (on `db`, its maintenance every 200 ms, with extra `--flags`, its
/// Redis read cache on `redis_url`) and gateway, all real, on port 0; cart and orders on the
/// NATS at `nats_url`.
pub async fn spawn_stack_on(
    db: &TestDb,
    nats_url: Option<&str>,
    redis_url: Option<&str>,
    flags: &[&str],
) -> Stack {
    Stack::builder()
        .database(&db.url)
        .cart(|cart| cart.nats(nats_url))
        .orders(|orders| {
            orders
                .flags(&["--maintenance-interval", "200ms"])
                .nats(nats_url)
                .redis(redis_url)
                .flags(flags)
        })
        .start()
        .await
}

/// Free stock of a product as the catalog reports it.
pub async fn stock_of(stack: &Stack, product_id: &str) -> i64 {
    shopstack_testkit::services::stock_of(&stack.catalog, product_id).await
}

pub async fn set_stock(stack: &Stack, product_id: &str, stock: i64) {
    shopstack_testkit::services::set_stock(&stack.catalog, product_id, stock).await;
}

/// Add to `user`'s cart through the gateway (reserves the units).
pub async fn add_to_cart(stack: &Stack, user: &str, product_id: &str, quantity: i64) -> Value {
    let response = client()
        .post(stack.url(&format!("/v1/cart/{user}")))
        .json(&json!({"product_id": product_id, "quantity": quantity}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "add to cart");
    json_of(response).await
}

pub async fn get_cart(stack: &Stack, user: &str) -> Value {
    json_of(
        client()
            .get(stack.url(&format!("/v1/cart/{user}")))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// POST a checkout through the gateway.
pub async fn checkout(stack: &Stack, user: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = client()
        .post(stack.url("/api/orders/checkout"))
        .json(&json!({"user_id": user, "shipping_address": "1 Test Street"}));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

/// Cancel order `id` through the gateway.
pub async fn cancel_order(stack: &Stack, id: &str) -> reqwest::Response {
    client()
        .post(stack.url(&format!("/api/orders/{id}/cancel")))
        .send()
        .await
        .unwrap()
}

/// POST a direct order through the gateway.
pub async fn create_order(stack: &Stack, user: &str, items: &[(&str, i64)]) -> reqwest::Response {
    let items: Vec<Value> = items
        .iter()
        .map(|(product_id, quantity)| json!({"product_id": product_id, "quantity": quantity}))
        .collect();
    client()
        .post(stack.url("/api/orders"))
        .json(&json!({"user_id": user, "shipping_address": "1 Test Street", "order_items": items}))
        .send()
        .await
        .unwrap()
}

/// The value of the first series of `name` whose labels contain all of `labels`.
pub async fn metric(url: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let text = client().get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split([' ', '{']).next().is_some_and(|series| series == name))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Every event in the SHOPSTACK stream on `subject_prefix`, in stream order, as JSON.
pub async fn stream_events(nats_url: &str, subject_prefix: &str) -> Vec<Value> {
    let client = async_nats::connect(nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = match jetstream.get_stream("SHOPSTACK").await {
        Ok(stream) => stream,
        Err(_) => return Vec::new(),
    };
    let state = stream.info().await.unwrap().state.clone();
    let mut events = Vec::new();
    if state.messages == 0 {
        return events;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(sequence).await
            && message.subject.starts_with(subject_prefix)
        {
            events.push(serde_json::from_slice(&message.payload).unwrap());
        }
    }
    events
}
