//! The behaviour every `CartStore` must have; each backend runs this same suite.

use std::sync::Arc;
use std::time::Duration;

use cart::store::{CartStore, MemoryStore, StoreError};

pub async fn store_contract(store: Arc<dyn CartStore>, user: &str) {
    let empty = store.load(user).await.unwrap();
    assert!(empty.lines.is_empty());
    assert_eq!(empty.version, 0);

    let one = store.write_line(user, "prod-1", 2, 0).await.unwrap();
    assert_eq!(one.version, 1);
    assert_eq!(one.quantity_of("prod-1"), 2);

    // A writer holding an old version loses and changes nothing.
    let conflict = store.write_line(user, "prod-2", 1, 0).await;
    assert!(matches!(
        conflict,
        Err(StoreError::VersionConflict { current: 1 })
    ));
    assert_eq!(store.load(user).await.unwrap(), one);

    let two = store.write_line(user, "prod-2", 5, 1).await.unwrap();
    assert_eq!(two.version, 2);
    assert_eq!(two.lines.len(), 2);

    let removed = store.write_line(user, "prod-1", 0, 2).await.unwrap();
    assert_eq!(removed.quantity_of("prod-1"), 0);
    assert_eq!(removed.lines.len(), 1);

    let cleared = store.clear(user, 3).await.unwrap();
    assert!(cleared.lines.is_empty());
    assert_eq!(cleared.version, 4, "the version survives a clear");
    assert!(matches!(
        store.clear(user, 3).await,
        Err(StoreError::VersionConflict { .. })
    ));

    // Concurrent writers at the same version: exactly one wins.
    let attempts = (0..8).map(|i| {
        let store = store.clone();
        let user = user.to_owned();
        async move { store.write_line(&user, &format!("race-{i}"), 1, 4).await }
    });
    let results = futures::future::join_all(attempts).await;
    assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 1);
    assert_eq!(store.load(user).await.unwrap().lines.len(), 1);
    assert!(store.ping().await);
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    store_contract(
        Arc::new(MemoryStore::new(Duration::from_secs(60))),
        "contract-user",
    )
    .await;
}

#[tokio::test]
async fn memory_store_expires_idle_carts() {
    let store = MemoryStore::new(Duration::from_millis(50));
    store.write_line("idle", "prod-1", 1, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(store.load("idle").await.unwrap().lines.is_empty());
    assert_eq!(store.sweep_expired(), vec!["idle".to_owned()]);
}

#[tokio::test]
async fn redis_store_meets_the_contract() {
    let redis = shopstack_testkit::redis::RedisServer::start().unwrap();
    let connection = shopstack_redis::redis::Redis::connect(&redis.url())
        .await
        .unwrap();
    let store = cart::redis_store::RedisStore::new(connection, Duration::from_secs(60));
    store_contract(Arc::new(store), "contract-user").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_meets_the_contract() {
    let cluster = tokio::task::spawn_blocking(shopstack_testkit::redis_cluster::RedisCluster::start)
        .await
        .unwrap()
        .unwrap();
    let connection = shopstack_redis::redis::Redis::connect(&cluster.url())
        .await
        .unwrap();
    assert!(connection.is_cluster());
    let store = cart::redis_store::RedisStore::new(connection, Duration::from_secs(60));
    // Users whose carts land on different masters.
    for user in ["contract-user", "another-user", "user-123"] {
        store_contract(Arc::new(store.clone()), user).await;
    }
}

#[tokio::test]
async fn a_cart_written_before_the_hash_tag_keeps_its_version() {
    let redis = shopstack_testkit::redis::RedisServer::start().unwrap();
    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The layout before: the version in `cartmeta:<user>`.
    redis::pipe()
        .cmd("HSET")
        .arg("cart:old-user")
        .arg("prod-1")
        .arg(3)
        .cmd("HSET")
        .arg("cartmeta:old-user")
        .arg("version")
        .arg(7)
        .cmd("EXPIRE")
        .arg("cartmeta:old-user")
        .arg(600)
        .exec_async(&mut raw)
        .await
        .unwrap();
    let connection = shopstack_redis::redis::Redis::connect(&redis.url())
        .await
        .unwrap();
    let store = cart::redis_store::RedisStore::new(connection, Duration::from_secs(60));
    let cart = store.load("old-user").await.unwrap();
    assert_eq!((cart.version, cart.quantity_of("prod-1")), (7, 3));
    let moved: (bool, i64) = redis::pipe()
        .cmd("EXISTS")
        .arg("cartmeta:old-user")
        .cmd("TTL")
        .arg("cartmeta:{cart:old-user}")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!moved.0, "the old key is gone");
    assert!(moved.1 > 500, "the TTL moved with it ({})", moved.1);
    // A writer holding the old version still wins, and nothing else does.
    assert_eq!(
        store
            .write_line("old-user", "prod-2", 1, 7)
            .await
            .unwrap()
            .version,
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_list_with_an_unreachable_node_still_connects() {
    let cluster = tokio::task::spawn_blocking(shopstack_testkit::redis_cluster::RedisCluster::start)
        .await
        .unwrap()
        .unwrap();
    // The first node named is down (nothing listens there); the others lead to the cluster.
    let closed = shopstack_testkit::ports::closed_port()
        .await
        .replace("http://", "redis://");
    let connection = shopstack_redis::redis::Redis::connect(&format!("{closed},{}", cluster.url()))
        .await
        .unwrap();
    let ready = shopstack_testkit::wait::eventually(Duration::from_secs(10), || {
        let connection = connection.clone();
        async move { connection.ping().await }
    })
    .await;
    assert!(ready, "the cluster is reached through the nodes that answer");
    let store = cart::redis_store::RedisStore::new(connection, Duration::from_secs(60));
    store_contract(Arc::new(store), "seed-user").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_in_uncovered_slots_answer_unavailable_the_others_serve_and_all_recover() {
    let mut cluster = tokio::task::spawn_blocking(shopstack_testkit::redis_cluster::RedisCluster::start)
        .await
        .unwrap()
        .unwrap();
    let connection = shopstack_redis::redis::Redis::connect(&cluster.url())
        .await
        .unwrap();
    let store = cart::redis_store::RedisStore::new(connection, Duration::from_secs(60));
    // Two users whose carts live on different masters.
    let users: Vec<String> = (0..50).map(|n| format!("slot-user-{n}")).collect();
    let lost_master = cluster.master_of(&format!("cart:{}", users[0])).unwrap();
    let elsewhere = users
        .iter()
        .find(|user| cluster.master_of(&format!("cart:{user}")) != Some(lost_master))
        .unwrap()
        .clone();
    let lost = users[0].clone();
    store.write_line(&lost, "prod-1", 1, 0).await.unwrap();
    store.write_line(&elsewhere, "prod-1", 1, 0).await.unwrap();

    // The master and its replica both gone: their slots are uncovered.
    let replica = cluster.replica_of(lost_master).unwrap();
    cluster.kill(lost_master);
    cluster.kill(replica);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    assert!(matches!(store.load(&lost).await, Err(StoreError::Unavailable(_))));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fails within its bound, no hang"
    );
    let served = shopstack_testkit::wait::eventually(Duration::from_secs(10), || async {
        store
            .load(&elsewhere)
            .await
            .is_ok_and(|cart| cart.quantity_of("prod-1") == 1)
    })
    .await;
    assert!(served, "carts in covered slots are served meanwhile");

    // Back (with their append-only files): the slots are covered again and nothing was lost.
    cluster.restart(lost_master).unwrap();
    cluster.restart(replica).unwrap();
    let recovered = shopstack_testkit::wait::eventually(Duration::from_secs(20), || async {
        store
            .load(&lost)
            .await
            .is_ok_and(|cart| cart.quantity_of("prod-1") == 1)
    })
    .await;
    assert!(recovered, "the uncovered carts come back with their lines");
}
