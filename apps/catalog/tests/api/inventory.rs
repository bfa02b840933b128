//! Stock and reservations: the store contract on both backends, and the HTTP routes.

use std::sync::Arc;
use std::time::Duration;

use catalog::inventory::{
    InventoryError, InventoryStore, Line, MemoryInventory, RedisInventory, SeedOutcome,
};
use reqwest::StatusCode;
use serde_json::json;
use shopstack_testkit::redis::RedisServer;
use shopstack_testkit::redis_cluster::RedisCluster;

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
    let reaped = store.reap_expired(&products).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].owner, "dave");
    assert_eq!(store.stock(&products).await.unwrap(), vec![9, 3]);
    assert!(store.reap_expired(&products).await.unwrap().is_empty());

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

/// A private cluster, and a store on it.
async fn cluster_store() -> (RedisCluster, Arc<RedisInventory>) {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
        .unwrap();
    let connection = shopstack_redis::redis::Redis::connect(&cluster.url())
        .await
        .unwrap();
    assert!(connection.is_cluster());
    (cluster, Arc::new(RedisInventory::new(connection)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_inventory_meets_the_contract() {
    let (_cluster, store) = cluster_store().await;
    inventory_contract(store).await;
}

/// What the per-product steps of a commit must keep on every Redis: a commit refused on its
/// second product leaves everything as before (holds, their expiry, free stock), a retry of
/// the order once stock is there commits once, and each product's step is idempotent.
async fn commit_saga_contract(store: Arc<dyn InventoryStore>) {
    let products = ["saga-a".to_owned(), "saga-b".to_owned(), "saga-c".to_owned()];
    store
        .seed(
            &[
                (products[0].clone(), 10),
                (products[1].clone(), 2),
                (products[2].clone(), 5),
            ],
            true,
        )
        .await
        .unwrap();
    store.set_hold("erin", "saga-a", 3, TTL).await.unwrap();
    store.set_hold("erin", "saga-c", 1, TTL).await.unwrap();
    let before = store.stock(&products).await.unwrap();
    assert_eq!(before, vec![7, 2, 4]);
    // saga-a is taken from the hold plus 2 from free stock, then saga-b is short.
    let order = [line("saga-a", 5), line("saga-b", 3), line("saga-c", 1)];
    assert_eq!(
        store.commit("saga-order", "erin", &order).await,
        Err(InventoryError::Insufficient {
            product_id: "saga-b".into(),
            available: 2
        })
    );
    assert_eq!(
        store.stock(&products).await.unwrap(),
        before,
        "free stock as before"
    );
    assert_eq!(
        store.holds("erin").await.unwrap(),
        vec![line("saga-a", 3), line("saga-c", 1)],
        "holds as before"
    );
    // The holds given back kept their expiry: the reaper still finds them when it is due.
    assert!(store.reap_expired(&products).await.unwrap().is_empty());

    // Stock arrives; the same order id now commits, once.
    store.set_stock("saga-b", 3).await.unwrap();
    store.commit("saga-order", "erin", &order).await.unwrap();
    assert_eq!(store.stock(&products).await.unwrap(), vec![5, 0, 4]);
    assert_eq!(store.holds("erin").await.unwrap(), vec![]);
    store.set_stock("saga-b", 3).await.unwrap();
    store.commit("saga-order", "erin", &order).await.unwrap();
    assert_eq!(
        store.stock(&products).await.unwrap(),
        vec![5, 3, 4],
        "a repeated commit does nothing"
    );

    // Restock is idempotent per (order, product): a second call applies nothing.
    assert!(store.restock("saga-order", &order).await.unwrap());
    assert!(!store.restock("saga-order", &order).await.unwrap());
    assert_eq!(store.stock(&products).await.unwrap(), vec![10, 6, 5]);

    // Refused on the last product: both steps before it are undone.
    store.set_hold("frank", "saga-a", 2, TTL).await.unwrap();
    let late = [line("saga-a", 2), line("saga-b", 1), line("saga-c", 99)];
    assert_eq!(
        store.commit("late-order", "frank", &late).await,
        Err(InventoryError::Insufficient {
            product_id: "saga-c".into(),
            available: 5
        })
    );
    assert_eq!(store.stock(&products).await.unwrap(), vec![8, 6, 5]);
    assert_eq!(store.holds("frank").await.unwrap(), vec![line("saga-a", 2)]);
    assert_eq!(
        store.release_owner("frank").await.unwrap(),
        vec![line("saga-a", 2)]
    );
    assert_eq!(store.stock(&products).await.unwrap(), vec![10, 6, 5]);
}

#[tokio::test]
async fn memory_inventory_meets_the_commit_saga_contract() {
    commit_saga_contract(Arc::new(MemoryInventory::default())).await;
}

#[tokio::test]
async fn redis_inventory_meets_the_commit_saga_contract() {
    let redis = RedisServer::start().unwrap();
    let connection = shopstack_redis::redis::Redis::connect(&redis.url())
        .await
        .unwrap();
    commit_saga_contract(Arc::new(RedisInventory::new(connection))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_inventory_meets_the_commit_saga_contract() {
    let (_cluster, store) = cluster_store().await;
    commit_saga_contract(store).await;
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
    // A commit whose second product is unknown undoes its first step.
    assert_eq!(
        store
            .commit("order-3", "bob", &[line("p-a", 2), line("p-b", 1)])
            .await
            .unwrap_err(),
        unknown("p-b")
    );
    assert_eq!(store.stock(&products[..1]).await.unwrap(), vec![4]);
    assert_eq!(store.holds("bob").await.unwrap(), vec![line("p-a", 1)]);
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// On a cluster too, a store that lost stock figures (here: the marker and one product's key
/// deleted, as a master lost without a replica would) sells nothing of what it lost, and a
/// commit refused on the lost product undoes its step on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_that_lost_stock_sells_none_of_it() {
    let (cluster, store) = cluster_store().await;
    let initial = [("lost-a".to_owned(), 10), ("lost-b".to_owned(), 3)];
    let products = ["lost-a".to_owned(), "lost-b".to_owned()];
    assert_eq!(store.seed(&initial, true).await.unwrap(), SeedOutcome::Seeded);
    store.set_hold("gina", "lost-a", 2, TTL).await.unwrap();

    let nodes: Vec<String> = cluster.nodes.iter().map(|node| node.url()).collect();
    let mut raw = redis::cluster::ClusterClient::new(nodes)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    for key in ["inventory:initialised", "stock:{lost-b}"] {
        redis::cmd("DEL").arg(key).exec_async(&mut raw).await.unwrap();
    }
    assert_eq!(
        store.seed(&initial, false).await.unwrap(),
        SeedOutcome::Lost(vec!["lost-b".to_owned()])
    );
    let unknown = InventoryError::StockUnknown {
        product_id: "lost-b".to_owned(),
    };
    assert_eq!(
        store.set_hold("gina", "lost-b", 1, TTL).await.unwrap_err(),
        unknown
    );
    assert_eq!(
        store
            .commit("lost-order", "gina", &[line("lost-a", 2), line("lost-b", 1)])
            .await
            .unwrap_err(),
        unknown
    );
    assert_eq!(store.stock(&products).await.unwrap(), vec![8, 0]);
    assert_eq!(store.holds("gina").await.unwrap(), vec![line("lost-a", 2)]);
    store.set_stock("lost-b", 3).await.unwrap();
    assert_eq!(store.seed(&initial, false).await.unwrap(), SeedOutcome::Restored);
    store
        .commit("lost-order", "gina", &[line("lost-a", 2), line("lost-b", 1)])
        .await
        .unwrap();
    assert_eq!(store.stock(&products).await.unwrap(), vec![8, 2]);
}

/// 50 shoppers at once on a cluster, each holding one unit of two products (on different
/// slots) that have 10 units between them, then each checking out both: never oversold, and
/// for each product free + held + sold == initial throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_holds_and_commits_on_a_cluster_never_oversell() {
    let (_cluster, store) = cluster_store().await;
    let initial = [("race-a".to_owned(), 4_i64), ("race-b".to_owned(), 6_i64)];
    let products = ["race-a".to_owned(), "race-b".to_owned()];
    store.seed(&initial, true).await.unwrap();
    let shoppers: Vec<String> = (0..50).map(|i| format!("shopper-{i}")).collect();

    let holds = shoppers.iter().map(|owner| {
        let store = store.clone();
        async move {
            let (a, b) = tokio::join!(
                store.set_hold(owner, "race-a", 1, TTL),
                store.set_hold(owner, "race-b", 1, TTL)
            );
            (a.is_ok(), b.is_ok())
        }
    });
    let won = futures::future::join_all(holds).await;
    let won_a = won.iter().filter(|(a, _)| *a).count() as i64;
    let won_b = won.iter().filter(|(_, b)| *b).count() as i64;
    assert_eq!((won_a, won_b), (4, 6), "every unit held once, none more");
    assert_eq!(store.stock(&products).await.unwrap(), vec![0, 0]);

    let commits = shoppers.iter().map(|owner| {
        let store = store.clone();
        async move {
            store
                .commit(
                    &format!("race-order-{owner}"),
                    owner,
                    &[line("race-a", 1), line("race-b", 1)],
                )
                .await
                .is_ok()
        }
    });
    let sold = futures::future::join_all(commits)
        .await
        .into_iter()
        .filter(|sold| *sold)
        .count() as i64;
    assert!(sold <= 4, "at most as many orders as units of race-a ({sold})");
    let free = store.stock(&products).await.unwrap();
    let mut held = [0_i64, 0_i64];
    for owner in &shoppers {
        for hold in store.holds(owner).await.unwrap() {
            let index = products.iter().position(|p| *p == hold.product_id).unwrap();
            held[index] += i64::from(hold.quantity);
        }
    }
    for (index, (_, initial)) in initial.iter().enumerate() {
        assert_eq!(
            free[index] + held[index] + sold,
            *initial,
            "{}: free {} + held {} + sold {sold}",
            products[index],
            free[index],
            held[index]
        );
        assert!(free[index] >= 0);
    }
}

/// The layout before hash tags, on one server, moves at start: stock renamed, holds moved line
/// by line with their expiry, an old order marker still recognised; two catalogs starting at
/// once move everything once.
#[tokio::test]
async fn the_old_layout_moves_once_at_start() {
    let redis = RedisServer::start().unwrap();
    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let now = now_ms();
    redis::pipe()
        .cmd("SET")
        .arg("inventory:initialised")
        .arg(now)
        .cmd("SET")
        .arg("stock:mig-a")
        .arg(7)
        .cmd("SET")
        .arg("stock:mig-b")
        .arg(3)
        .cmd("HSET")
        .arg("hold:old-user")
        .arg("mig-a")
        .arg(2)
        .arg("mig-b")
        .arg(1)
        .cmd("ZADD")
        .arg("holds:expiry")
        .arg(now + 60_000)
        .arg("old-user")
        .cmd("HSET")
        .arg("hold:gone-user")
        .arg("mig-a")
        .arg(1)
        .cmd("ZADD")
        .arg("holds:expiry")
        .arg(now - 1_000)
        .arg("gone-user")
        .cmd("SET")
        .arg("inventory:committed:old-order")
        .arg(1)
        .exec_async(&mut raw)
        .await
        .unwrap();

    let initial = [("mig-a".to_owned(), 10), ("mig-b".to_owned(), 5)];
    let products = ["mig-a".to_owned(), "mig-b".to_owned()];
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let connection = shopstack_redis::redis::Redis::connect(&redis.url())
            .await
            .unwrap();
        replicas.push(RedisInventory::new(connection));
    }
    let (first, second) = tokio::join!(replicas[0].seed(&initial, true), replicas[1].seed(&initial, true));
    assert_eq!(first.unwrap(), SeedOutcome::Ready);
    assert_eq!(second.unwrap(), SeedOutcome::Ready);
    let store = &replicas[0];
    assert_eq!(store.stock(&products).await.unwrap(), vec![7, 3], "figures kept");
    assert_eq!(
        store.holds("old-user").await.unwrap(),
        vec![line("mig-a", 2), line("mig-b", 1)]
    );
    let old_keys: i64 = redis::cmd("EXISTS")
        .arg("stock:mig-a")
        .arg("stock:mig-b")
        .arg("hold:old-user")
        .arg("hold:gone-user")
        .arg("holds:expiry")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(old_keys, 0, "nothing left in the old layout");

    // The expired owner's hold moved with its expiry: the reaper gives it back.
    let reaped = store.reap_expired(&products).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].owner, "gone-user");
    assert_eq!(store.stock(&products).await.unwrap(), vec![8, 3]);

    // An order committed under the old layout is not committed again.
    store
        .commit("old-order", "old-user", &[line("mig-a", 2)])
        .await
        .unwrap();
    assert_eq!(store.holds("old-user").await.unwrap().len(), 2);
    // The moved holds are committed like any other.
    store
        .commit("new-order", "old-user", &[line("mig-a", 2), line("mig-b", 1)])
        .await
        .unwrap();
    assert_eq!(store.stock(&products).await.unwrap(), vec![8, 3]);
    assert_eq!(store.holds("old-user").await.unwrap(), vec![]);
}

/// A commit cut short between its per-product steps (here: an attempt that got as far as its
/// first product, as a catalog killed mid-commit leaves it) is completed by a retry of the same
/// order, or wholly undone when the retry is refused: never a unit lost or made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_short_on_a_cluster_is_completed_or_undone_by_its_retry() {
    let (_cluster, store) = cluster_store().await;
    let products = ["cut-a".to_owned(), "cut-b".to_owned()];
    store
        .seed(&[(products[0].clone(), 5), (products[1].clone(), 5)], true)
        .await
        .unwrap();
    store.set_hold("hana", "cut-a", 2, TTL).await.unwrap();
    store.set_hold("hana", "cut-b", 1, TTL).await.unwrap();
    let order = [line("cut-a", 2), line("cut-b", 1)];

    // The first step alone, then the retry with every line: each product committed once.
    store.commit("cut-1", "hana", &order[..1]).await.unwrap();
    store.commit("cut-1", "hana", &order).await.unwrap();
    assert_eq!(store.stock(&products).await.unwrap(), vec![3, 4]);
    assert_eq!(store.holds("hana").await.unwrap(), vec![]);

    // The first step alone, then a retry refused on the second product: the first is undone.
    store.set_hold("ivan", "cut-a", 1, TTL).await.unwrap();
    store.commit("cut-2", "ivan", &[line("cut-a", 1)]).await.unwrap();
    assert_eq!(store.holds("ivan").await.unwrap(), vec![]);
    assert_eq!(
        store
            .commit("cut-2", "ivan", &[line("cut-a", 1), line("cut-b", 9)])
            .await,
        Err(InventoryError::Insufficient {
            product_id: "cut-b".into(),
            available: 4
        })
    );
    assert_eq!(store.holds("ivan").await.unwrap(), vec![line("cut-a", 1)]);
    assert_eq!(store.stock(&products).await.unwrap(), vec![2, 4]);
    assert_eq!(store.release_owner("ivan").await.unwrap(), vec![line("cut-a", 1)]);
    assert_eq!(store.stock(&products).await.unwrap(), vec![3, 4]);
}

/// Attempts of one order id at once on a cluster (a checkout and its recovery racing): each is
/// done or answered "unavailable" (another attempt holds the order), and the order's units are
/// taken once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_of_one_order_at_once_commit_it_once() {
    let (_cluster, store) = cluster_store().await;
    let products = ["once-a".to_owned(), "once-b".to_owned()];
    store
        .seed(&[(products[0].clone(), 10), (products[1].clone(), 10)], true)
        .await
        .unwrap();
    store.set_hold("jo", "once-a", 2, TTL).await.unwrap();
    let order = [line("once-a", 2), line("once-b", 3)];
    let attempts = (0..10).map(|_| {
        let store = store.clone();
        let order = &order;
        async move { store.commit("once-order", "jo", order).await }
    });
    let outcomes = futures::future::join_all(attempts).await;
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Ok(()) | Err(InventoryError::Unavailable(_))),
            "{outcome:?}"
        );
    }
    assert!(outcomes.iter().any(Result::is_ok));
    // Once every attempt has ended, the order commits again as a no-op.
    store.commit("once-order", "jo", &order).await.unwrap();
    assert_eq!(store.stock(&products).await.unwrap(), vec![8, 7]);
    assert_eq!(store.holds("jo").await.unwrap(), vec![]);
}
