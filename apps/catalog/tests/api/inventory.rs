//! Stock and reservations: the store contract on both backends, and the HTTP routes.

use std::sync::Arc;
use std::time::Duration;

use catalog::inventory::{
    InventoryError, InventoryStore, Line, MemoryInventory, RedisInventory, SeedOutcome,
};
use reqwest::StatusCode;
use serde_json::json;
use shopstack_testkit::redis::RedisServer;

use crate::routes::{ADMIN, client, json_of, spawn, spawn_with};

fn line(product_id: &str, quantity: u32) -> Line {
    Line {
        product_id: product_id.to_owned(),
        quantity,
    }
}

const TTL: Duration = Duration::from_secs(60);

/// What every inventory backend must do.
async fn inventory_contract(store: Arc<dyn InventoryStore>) {
    let products = ["p-a".to_owned(), "p-b".to_owned()];
    store
        .seed(&[(products[0].clone(), 10), (products[1].clone(), 3)], true)
        .await
        .unwrap();
    // Seeding again never overwrites (replicas and restarts keep the live figure).
    assert_eq!(
        store.seed(&[(products[0].clone(), 999)], false).await.unwrap(),
        SeedOutcome::Ready
    );
    assert_eq!(store.stock(&products).await.unwrap(), vec![10, 3]);

    // Holds are absolute: setting the same hold twice reserves once.
    let first = store.set_hold("alice", "p-a", 4, TTL).await.unwrap();
    assert_eq!((first.quantity, first.stock), (4, 6));
    let again = store.set_hold("alice", "p-a", 4, TTL).await.unwrap();
    assert_eq!(again.stock, 6);
    let lower = store.set_hold("alice", "p-a", 1, TTL).await.unwrap();
    assert_eq!(lower.stock, 9);
    assert_eq!(
        store.set_hold("bob", "p-a", 10, TTL).await,
        Err(InventoryError::Insufficient {
            product_id: "p-a".into(),
            available: 9
        })
    );
    assert_eq!(
        store.stock(&products).await.unwrap(),
        vec![9, 3],
        "a refused hold changes nothing"
    );

    store.set_hold("bob", "p-b", 3, TTL).await.unwrap();
    assert_eq!(store.holds("bob").await.unwrap(), vec![line("p-b", 3)]);
    assert_eq!(store.release_owner("bob").await.unwrap(), vec![line("p-b", 3)]);
    assert_eq!(
        store.release_owner("bob").await.unwrap(),
        vec![],
        "releasing twice is harmless"
    );
    assert_eq!(store.stock(&products).await.unwrap(), vec![9, 3]);

    // Commit: held units become sold, a shortfall comes from free stock, all or nothing.
    store.set_hold("carol", "p-a", 2, TTL).await.unwrap(); // p-a free: 7
    assert_eq!(
        store
            .commit("order-1", "carol", &[line("p-a", 2), line("p-b", 4)])
            .await,
        Err(InventoryError::Insufficient {
            product_id: "p-b".into(),
            available: 3
        })
    );
    assert_eq!(
        store.stock(&products).await.unwrap(),
        vec![7, 3],
        "a refused commit changes nothing"
    );
    assert_eq!(store.holds("carol").await.unwrap(), vec![line("p-a", 2)]);
    store
        .commit("order-1", "carol", &[line("p-a", 2), line("p-b", 1)])
        .await
        .unwrap();
    assert_eq!(store.stock(&products).await.unwrap(), vec![7, 2]);
    assert_eq!(store.holds("carol").await.unwrap(), vec![]);
    store
        .commit("order-1", "carol", &[line("p-a", 2), line("p-b", 1)])
        .await
        .unwrap();
    assert_eq!(
        store.stock(&products).await.unwrap(),
        vec![7, 2],
        "a repeated commit does nothing"
    );

    // Restock once per order.
    assert!(
        store
            .restock("order-1", &[line("p-a", 2), line("p-b", 1)])
            .await
            .unwrap()
    );
    assert!(
        !store
            .restock("order-1", &[line("p-a", 2), line("p-b", 1)])
            .await
            .unwrap()
    );
    assert_eq!(store.stock(&products).await.unwrap(), vec![9, 3]);

    // Expiry: holds with a short TTL are given back by the reaper.
    store
        .set_hold("dave", "p-a", 5, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(store.stock(&products).await.unwrap(), vec![4, 3]);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let reaped = store.reap_expired().await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].owner, "dave");
    assert_eq!(store.stock(&products).await.unwrap(), vec![9, 3]);
    assert!(store.reap_expired().await.unwrap().is_empty());

    // Many concurrent holds on the last units: never below zero.
    store.set_stock("p-b", 5).await.unwrap();
    let racers = (0..40).map(|i| {
        let store = store.clone();
        async move { store.set_hold(&format!("racer-{i}"), "p-b", 1, TTL).await.is_ok() }
    });
    let won = futures::future::join_all(racers)
        .await
        .into_iter()
        .filter(|won| *won)
        .count();
    assert_eq!(won, 5);
    assert_eq!(store.stock(&products).await.unwrap()[1], 0);
}

#[tokio::test]
async fn memory_inventory_meets_the_contract() {
    inventory_contract(Arc::new(MemoryInventory::default())).await;
}

#[tokio::test]
async fn redis_inventory_meets_the_contract() {
    let redis = RedisServer::start().unwrap();
    let connection = shopstack_redis::redis::Redis::connect(&redis.url())
        .await
        .unwrap();
    inventory_contract(Arc::new(RedisInventory::new(connection))).await;
}

/// A Redis that lost its data is never seeded again: the lost products are refused (never
/// "out of stock", never made up) until operators set each one; the last one set ends it. A
/// process that never saw the store (`may_initialise`) seeds only a store holding no stock at
/// all, so a partly restored store is not topped up from the product file either.
#[tokio::test]
async fn a_redis_that_lost_its_data_is_not_seeded_again() {
    let mut redis = RedisServer::start().unwrap();
    let connection = shopstack_redis::redis::Redis::connect(&redis.url())
        .await
        .unwrap();
    let store = RedisInventory::new(connection);
    let initial = [("p-a".to_owned(), 10), ("p-b".to_owned(), 3)];
    let products = ["p-a".to_owned(), "p-b".to_owned()];
    assert_eq!(store.seed(&initial, true).await.unwrap(), SeedOutcome::Seeded);
    assert_eq!(store.seed(&initial, false).await.unwrap(), SeedOutcome::Ready);
    store.set_hold("alice", "p-a", 2, TTL).await.unwrap();

    redis.restart_empty().unwrap();
    let mut outcome = Err(InventoryError::Unavailable(String::new()));
    for _ in 0..100 {
        outcome = store.seed(&initial, false).await;
        if outcome.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(outcome.unwrap(), SeedOutcome::Lost(products.to_vec()));
    assert_eq!(
        store.stock(&products).await.unwrap(),
        vec![0, 0],
        "nothing was written"
    );
    let unknown = |product: &str| InventoryError::StockUnknown {
        product_id: product.to_owned(),
    };
    assert_eq!(
        store.set_hold("bob", "p-a", 1, TTL).await.unwrap_err(),
        unknown("p-a")
    );
    assert_eq!(
        store
            .commit("order-1", "bob", &[line("p-b", 1)])
            .await
            .unwrap_err(),
        unknown("p-b")
    );
    assert_eq!(
        store.restock("order-2", &[line("p-a", 1)]).await.unwrap_err(),
        unknown("p-a")
    );
    assert_eq!(
        store.stock(&products).await.unwrap(),
        vec![0, 0],
        "refusals changed nothing"
    );

    store.set_stock("p-a", 5).await.unwrap();
    assert_eq!(
        store.seed(&initial, false).await.unwrap(),
        SeedOutcome::Lost(vec!["p-b".to_owned()])
    );
    assert_eq!(store.set_hold("bob", "p-a", 1, TTL).await.unwrap().stock, 4);
    // A catalog starting now has never seen this store: still not seeded, some stock is there.
    assert_eq!(
        store.seed(&initial, true).await.unwrap(),
        SeedOutcome::Lost(vec!["p-b".to_owned()])
    );
    store.set_stock("p-b", 1).await.unwrap();
    assert_eq!(store.seed(&initial, false).await.unwrap(), SeedOutcome::Restored);
    assert_eq!(store.seed(&initial, false).await.unwrap(), SeedOutcome::Ready);
    assert_eq!(store.stock(&products).await.unwrap(), vec![4, 1]);
}

#[tokio::test]
async fn admin_stock_needs_the_token_and_validates() {
    let server = spawn().await;
    let url = server.url("/admin/stock/prod-123");
    let anonymous = client()
        .put(&url)
        .json(&json!({"stock": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = client()
        .put(&url)
        .header("authorization", "Bearer wrong-token-x")
        .json(&json!({"stock": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    for bad in [
        json!({"stock": -1}),
        // Far beyond any shop: refused, so later reservations cannot overflow it.
        json!({"stock": i64::MAX}),
        json!({"stock": "many"}),
        json!({}),
        json!({"stock": 1, "price": 0}),
    ] {
        let response = client()
            .put(&url)
            .header("authorization", ADMIN)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let unknown = client()
        .put(server.url("/admin/stock/prod-nope"))
        .header("authorization", ADMIN)
        .json(&json!({"stock": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let set = client()
        .put(&url)
        .header("authorization", ADMIN)
        .json(&json!({"stock": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    let product = json_of(
        client()
            .get(server.url("/catalog/prod-123"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(product["stock"], 7);
}

#[tokio::test]
async fn reservation_routes_over_http() {
    let server = spawn().await;
    client()
        .put(server.url("/admin/stock/prod-456"))
        .header("authorization", ADMIN)
        .json(&json!({"stock": 5}))
        .send()
        .await
        .unwrap();
    let hold = client()
        .put(server.url("/inventory/holds/u-1/prod-456"))
        .json(&json!({"quantity": 3, "ttl_secs": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(hold.status(), StatusCode::OK);
    assert_eq!(
        json_of(hold).await,
        json!({"owner": "u-1", "product_id": "prod-456", "quantity": 3, "stock": 2})
    );

    let short = client()
        .put(server.url("/inventory/holds/u-2/prod-456"))
        .json(&json!({"quantity": 3, "ttl_secs": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), StatusCode::CONFLICT);
    let problem = json_of(short).await;
    assert_eq!(problem["message"], "Insufficient stock. Only 2 available.");
    assert_eq!(problem["available"], 2);

    let unknown = client()
        .put(server.url("/inventory/holds/u-1/prod-nope"))
        .json(&json!({"quantity": 1, "ttl_secs": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let bad_ttl = client()
        .put(server.url("/inventory/holds/u-1/prod-456"))
        .json(&json!({"quantity": 1, "ttl_secs": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_ttl.status(), StatusCode::BAD_REQUEST);

    let commit = client()
        .post(server.url("/inventory/commit"))
        .json(
            &json!({"order_id": "o-1", "owner": "u-1", "items": [{"product_id": "prod-456", "quantity": 3}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(commit.status(), StatusCode::OK);
    let holds = json_of(
        client()
            .get(server.url("/inventory/holds/u-1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(holds["holds"], json!([]));
    let product = json_of(
        client()
            .get(server.url("/catalog/prod-456"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(product["stock"], 2, "committed units stay sold");

    let empty = client()
        .post(server.url("/inventory/commit"))
        .json(&json!({"order_id": "o-2", "owner": "u-1", "items": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
    for dots in [".", "..", "..."] {
        let dotted = client()
            .post(server.url("/inventory/commit"))
            .json(&json!({"order_id": "o-3", "owner": dots, "items": [{"product_id": "prod-456", "quantity": 1}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(dotted.status(), StatusCode::BAD_REQUEST, "owner {dots:?}");
    }

    let restock = client()
        .post(server.url("/inventory/restock"))
        .json(&json!({"order_id": "o-1", "items": [{"product_id": "prod-456", "quantity": 3}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(restock).await["applied"], true);
    let product = json_of(
        client()
            .get(server.url("/catalog/prod-456"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(product["stock"], 5);

    client()
        .put(server.url("/inventory/holds/u-3/prod-456"))
        .json(&json!({"quantity": 2, "ttl_secs": 60}))
        .send()
        .await
        .unwrap();
    let released = json_of(
        client()
            .delete(server.url("/inventory/holds/u-3"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        released["released"],
        json!([{"product_id": "prod-456", "quantity": 2}])
    );
}

#[tokio::test]
async fn catalog_without_redis_answers_503_and_recovers() {
    let mut redis = RedisServer::start_persistent().unwrap();
    let server = spawn_with(|settings| settings.redis_url = Some(redis.url())).await;
    assert_eq!(
        client()
            .get(server.url("/catalog/prod-123"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    redis.kill();
    let down = client()
        .get(server.url("/catalog/prod-123"))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(down).await["dependency"], "redis");
    let health = json_of(client().get(server.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(health["redis"], "unhealthy");
    redis.restart().unwrap();
    let mut recovered = false;
    for _ in 0..100 {
        // The restarted Redis kept its data: the catalog reconnects by itself.
        let response = client()
            .get(server.url("/catalog/prod-123"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK && json_of(response).await["stock"].as_i64().unwrap_or(0) > 0 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered);
}
