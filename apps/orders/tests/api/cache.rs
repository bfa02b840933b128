//! The Redis read cache for orders: filled on a miss, written through on a status
//! change, never overwritten by an older version, and never in the way when Redis is down.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use shopstack_testkit::redis::RedisServer;

use crate::helpers::*;
use crate::on_both_engines;

on_both_engines!(
    reads_come_from_the_cache_and_changes_write_through,
    reads_survive_redis_going_down_and_the_cache_comes_back,
);

async fn cache_results(stack: &Stack) -> (f64, f64, f64) {
    let url = stack.orders.url("/metrics");
    let count = |result: &'static str| {
        let url = url.clone();
        async move {
            metric(
                &url,
                "order_cache_requests_total",
                &[&format!("result=\"{result}\"")],
            )
            .await
            .unwrap_or(-1.0)
        }
    };
    (count("hit").await, count("miss").await, count("error").await)
}

async fn get_order(stack: &Stack, id: &str) -> Value {
    let response = client()
        .get(stack.url(&format!("/api/orders/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    json_of(response).await["data"].clone()
}

async fn cached_version(redis: &RedisServer, id: &str) -> Option<i64> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("HGET")
        .arg(format!("order:{id}"))
        .arg("version")
        .query_async(&mut connection)
        .await
        .unwrap()
}

async fn reads_come_from_the_cache_and_changes_write_through(engine: Engine) {
    let db = TestDb::of(engine).await;
    let redis = RedisServer::start().unwrap();
    let stack = spawn_stack_on(&db, None, Some(&redis.url()), &[]).await;
    assert_eq!(cache_results(&stack).await, (0.0, 0.0, 0.0), "series start at 0");

    let created = json_of(create_order(&stack, "cached-user", &[("prod-110", 1)]).await).await;
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let version = created["data"]["version"].as_i64().unwrap();
    // First read misses and fills; the second is a hit with the same order.
    let first = get_order(&stack, &id).await;
    assert_eq!(cached_version(&redis, &id).await, Some(version));
    let second = get_order(&stack, &id).await;
    assert_eq!(first, second);
    assert_eq!(first, created["data"]);
    assert_eq!(cache_results(&stack).await, (1.0, 1.0, 0.0));

    // A status change writes the new version through: the next read (a hit) is not stale.
    let response = client()
        .patch(stack.url(&format!("/api/orders/{id}/status")))
        .json(&json!({"status": "confirmed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(cached_version(&redis, &id).await, Some(version + 1));
    let confirmed = get_order(&stack, &id).await;
    assert_eq!(confirmed["status"], "confirmed");
    assert_eq!(cache_results(&stack).await.0, 2.0);

    // A reader that fetched the order before the change and fills the cache after it cannot
    // put the old version back.
    let stale: orders::model::Order = serde_json::from_value(first).unwrap();
    stack.orders_state.orders.cache().put(&stale).await;
    assert_eq!(cached_version(&redis, &id).await, Some(version + 1));
    assert_eq!(get_order(&stack, &id).await["status"], "confirmed");

    // Unknown orders are not cached (a miss each time) and stay 404.
    let unknown = uuid::Uuid::new_v4();
    for _ in 0..2 {
        let response = client()
            .get(stack.url(&format!("/api/orders/{unknown}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(cached_version(&redis, &unknown.to_string()).await, None);
}

async fn reads_survive_redis_going_down_and_the_cache_comes_back(engine: Engine) {
    let db = TestDb::of(engine).await;
    let mut redis = RedisServer::start().unwrap();
    let stack = spawn_stack_on(&db, None, Some(&redis.url()), &[]).await;
    let created = json_of(create_order(&stack, "outage-user", &[("prod-112", 1)]).await).await;
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    get_order(&stack, &id).await;

    redis.kill();
    // Reads answer from the database, fast; a change still lands; health says Redis is down
    // but the service stays ready (the cache is not needed to serve).
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(get_order(&stack, &id).await["id"], id.as_str());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    let response = cancel_order(&stack, &id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(get_order(&stack, &id).await["status"], "cancelled");
    assert!(cache_results(&stack).await.2 >= 1.0, "errors counted");
    let health = client().get(stack.orders.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(health).await["redis"], "unhealthy");
    let ready = client().get(stack.orders.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    // Redis returns (empty): the cache fills again by itself.
    redis.restart().unwrap();
    let back = eventually(Duration::from_secs(10), || async {
        let health = client().get(stack.orders.url("/healthz")).send().await.unwrap();
        health.status() == StatusCode::OK
    })
    .await;
    assert!(back, "the orders service saw Redis come back");
    let version = created["data"]["version"].as_i64().unwrap() + 1;
    let refilled = eventually(Duration::from_secs(10), || async {
        get_order(&stack, &id).await["status"] == "cancelled"
            && cached_version(&redis, &id).await == Some(version)
    })
    .await;
    assert!(refilled, "reads fill the cache again once Redis is back");
    let (hits_before, _, _) = cache_results(&stack).await;
    assert_eq!(get_order(&stack, &id).await["status"], "cancelled");
    assert_eq!(cache_results(&stack).await.0, hits_before + 1.0);
}
