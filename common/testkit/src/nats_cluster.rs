//! A private three-node NATS JetStream cluster for a test (`nats-server --cluster … --routes …`)
//! on free loopback ports, every node stopped by PID.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::wait::eventually;

/// One server of a [`NatsCluster`].
pub struct NatsNode {
    pub port: u16,
    cluster_port: u16,
    child: Option<Child>,
}

impl NatsNode {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Three `nats-server`s with JetStream routed to each other as one cluster, each with its own
/// store; stopped by PID and their stores removed when dropped.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    dir: PathBuf,
}

impl NatsCluster {
    /// Start three servers; waits (up to 30 s) until JetStream answers through each of them
    /// (the cluster has elected its meta leader).
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "shopstack-nats-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..3 {
            cluster.nodes.push(NatsNode {
                port: crate::ports::free_port()?,
                cluster_port: crate::ports::free_port()?,
                child: None,
            });
        }
        for index in 0..cluster.nodes.len() {
            cluster.spawn(index)?;
        }
        for index in 0..cluster.nodes.len() {
            cluster.wait_for_jetstream(index, Duration::from_secs(30)).await?;
        }
        Ok(cluster)
    }

    /// The comma-separated server list a service takes in `NATS_URL`.
    pub fn url(&self) -> String {
        self.nodes.iter().map(NatsNode::url).collect::<Vec<_>>().join(",")
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let routes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, node)| format!("nats://127.0.0.1:{}", node.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let node = &self.nodes[index];
        let store = self.dir.join(format!("n{index}"));
        let candidates = match std::env::var("NATS_SERVER_BIN") {
            Ok(binary) => vec![binary],
            Err(_) => vec!["nats-server".into(), "/usr/sbin/nats-server".into()],
        };
        let child = candidates
            .iter()
            .find_map(|binary| {
                Command::new(binary)
                    .args(["-a", "127.0.0.1", "-p", &node.port.to_string(), "-js", "-sd"])
                    .arg(&store)
                    .args([
                        "--server_name",
                        &format!("n{index}"),
                        "--cluster_name",
                        "shopstack-test",
                        "--cluster",
                        &format!("nats://127.0.0.1:{}", node.cluster_port),
                        "--routes",
                        &routes,
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
            .with_context(|| format!("nats-server is needed for this test (tried {candidates:?})"))?;
        self.nodes[index].child = Some(child);
        Ok(())
    }

    async fn wait_for_jetstream(&self, index: usize, within: Duration) -> anyhow::Result<()> {
        let url = self.nodes[index].url();
        let up = eventually(within, || {
            let url = url.clone();
            async move {
                let Ok(client) = async_nats::connect(&url).await else {
                    return false;
                };
                async_nats::jetstream::new(client).query_account().await.is_ok()
            }
        })
        .await;
        anyhow::ensure!(up, "JetStream did not answer through {url} within {within:?}");
        Ok(())
    }

    /// SIGKILL server `index` and wait for it to be gone.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start server `index` again with its store; waits until JetStream answers through it.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.kill(index);
        self.spawn(index)?;
        self.wait_for_jetstream(index, Duration::from_secs(30)).await
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
