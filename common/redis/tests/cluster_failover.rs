//! A Redis Cluster losing a master under traffic: reads of one key and reads across slots
//! (MGET) keep coming while the replica takes over, and afterwards the connection serves every
//! key again and reports the cluster healthy — without a restart of the service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shopstack_redis::redis::Redis;
use shopstack_testkit::redis_cluster::RedisCluster;

const KEYS: usize = 30;

fn key(n: usize) -> String {
    format!("failover-{n}")
}

/// Every key read one by one and all at once; `None` when all answered with their values.
async fn read_everything(redis: &Redis) -> Option<String> {
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let all = redis
        .run("MGET", "test.read_all", |mut connection| {
            let keys = keys.clone();
            async move {
                redis::cmd("MGET")
                    .arg(&keys)
                    .query_async::<Vec<Option<String>>>(&mut connection)
                    .await
            }
        })
        .await;
    match all {
        Ok(values)
            if values
                .iter()
                .enumerate()
                .all(|(n, value)| value.as_deref() == Some(&*n.to_string())) => {}
        Ok(values) => return Some(format!("MGET answered {values:?}")),
        Err(error) => return Some(format!("MGET failed: {error}")),
    }
    for n in 0..KEYS {
        let value = redis
            .run("GET", "test.read_one", |mut connection| async move {
                redis::cmd("GET")
                    .arg(key(n))
                    .query_async::<Option<String>>(&mut connection)
                    .await
            })
            .await;
        match value {
            Ok(Some(value)) if value == n.to_string() => {}
            other => return Some(format!("GET {} answered {other:?}", key(n))),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_master_dies_under_traffic_every_key_is_served_again() {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
        .unwrap();
    let redis = Redis::connect(&cluster.url()).await.unwrap();
    for n in 0..KEYS {
        redis
            .run("SET", "test.write", |mut connection| async move {
                redis::cmd("SET")
                    .arg(key(n))
                    .arg(n.to_string())
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await
            .unwrap();
    }
    assert_eq!(read_everything(&redis).await, None);

    // Readers keep reading through the failover, as a catalog's shoppers do.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (redis, stop) = (redis.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let _ = read_everything(&redis).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let master = cluster.master_of(&key(0)).unwrap();
    let replica = cluster.replica_of(master).unwrap();
    cluster.kill(master);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_problem = None;
    while Instant::now() < deadline {
        let promoted = cluster.masters().contains(&replica);
        last_problem = if !promoted {
            Some("the replica has not taken over yet".to_owned())
        } else if !redis.is_healthy() {
            Some("the connection reports the cluster down".to_owned())
        } else {
            read_everything(&redis).await
        };
        if last_problem.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    if last_problem.is_some() {
        for node in cluster.nodes.iter().filter(|node| node.is_running()) {
            let view = std::process::Command::new("redis-cli")
                .args(["-p", &node.port.to_string(), "cluster", "nodes"])
                .output()
                .unwrap();
            eprintln!("{} sees:\n{}", node.port, String::from_utf8_lossy(&view.stdout));
        }
        eprintln!(
            "master {master} ({}), replica {replica} ({})",
            cluster.nodes[master].port, cluster.nodes[replica].port
        );
    }
    assert_eq!(last_problem, None, "20 s after the master died");
}
