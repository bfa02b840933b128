//! A private Redis Cluster for a test: 3 masters and 3 replicas (`redis-server
//! --cluster-enabled yes`, joined by `redis-cli --cluster create`) on free loopback ports,
//! every node stopped by PID.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// One node of a [`RedisCluster`].
pub struct ClusterNode {
    pub port: u16,
    child: Option<Child>,
}

impl ClusterNode {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Six `redis-server`s forming one cluster (3 masters, each with a replica), data kept in an
/// append-only file fsynced on every write so a node that restarts keeps what it acknowledged.
/// Stopped by PID and their directory removed when dropped.
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    dir: PathBuf,
}

/// How long a replica waits before it takes over a master that stopped answering; short, so a
/// test sees the failover within seconds.
const NODE_TIMEOUT_MS: u64 = 1_000;

impl RedisCluster {
    /// Start six nodes and join them; waits (up to 30 s) until every node reports the cluster
    /// `ok` with all 16,384 slots served.
    pub fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "shopstack-redis-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for index in 0..6 {
            // A port checked free can be taken before the node binds it (by another test's
            // server); such a node exits at once, and its slot gets another port.
            let mut attempts = 0;
            loop {
                let port = cluster_port()?;
                if cluster.nodes.len() == index {
                    cluster.nodes.push(ClusterNode { port, child: None });
                } else {
                    cluster.nodes[index].port = port;
                }
                match cluster.start_node(index) {
                    Ok(()) => break,
                    Err(error) if attempts < 4 && error.is::<PortTaken>() => attempts += 1,
                    Err(error) => return Err(error),
                }
            }
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .context("redis-cli is needed for this test (Debian's redis-tools)")?;
        anyhow::ensure!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        cluster.wait_until_ok(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// The comma-separated node list a service takes in `REDIS_URL`.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_node(&mut self, index: usize) -> anyhow::Result<()> {
        let port = self.nodes[index].port;
        let node_dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir)?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &NODE_TIMEOUT_MS.to_string(),
                // Slots whose master and replica are both gone fail alone; the rest serve.
                "--cluster-require-full-coverage",
                "no",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&node_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("Failed to start redis-server (is it installed?)")?;
        self.nodes[index].child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = self.nodes[index]
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.nodes[index].child = None;
                return Err(anyhow::Error::new(PortTaken { port, status }));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `redis-cli -p <port> <args…>`'s output, or `None` when the node does not answer.
    fn ask(port: u16, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Wait until every running node reports `cluster_state:ok` and all slots assigned, and
    /// every replica has its master's data (`master_link_status:up`): a replica that has not
    /// finished its first sync refuses to take over when its master dies.
    pub fn wait_until_ok(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().filter(|node| node.is_running()).all(|node| {
                let cluster_ok = Self::ask(node.port, &["cluster", "info"]).is_some_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                });
                let in_sync = Self::ask(node.port, &["info", "replication"]).is_some_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                });
                cluster_ok && in_sync
            });
            if ok {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the Redis Cluster did not become ok within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The indexes of the nodes that are masters now (as the first running node sees it).
    pub fn masters(&self) -> Vec<usize> {
        let Some(view) = self
            .nodes
            .iter()
            .filter(|node| node.is_running())
            .find_map(|node| Self::ask(node.port, &["cluster", "nodes"]))
        else {
            return Vec::new();
        };
        view.lines()
            .filter(|line| {
                let flags = line.split(' ').nth(2).unwrap_or_default();
                flags.contains("master") && !flags.contains("fail")
            })
            .filter_map(|line| {
                let address = line.split(' ').nth(1)?;
                let port: u16 = address.split(['@', ':']).nth(1)?.parse().ok()?;
                self.nodes.iter().position(|node| node.port == port)
            })
            .collect()
    }

    /// The index of the replica of master `master` (as the first running node sees it).
    pub fn replica_of(&self, master: usize) -> Option<usize> {
        let view = self
            .nodes
            .iter()
            .filter(|node| node.is_running())
            .find_map(|node| Self::ask(node.port, &["cluster", "nodes"]))?;
        let master_port = self.nodes[master].port;
        let master_id = view.lines().find_map(|line| {
            let mut fields = line.split(' ');
            let id = fields.next()?;
            let port: u16 = fields.next()?.split(['@', ':']).nth(1)?.parse().ok()?;
            (port == master_port).then(|| id.to_owned())
        })?;
        view.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.get(3) != Some(&master_id.as_str()) {
                return None;
            }
            let port: u16 = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            self.nodes.iter().position(|node| node.port == port)
        })
    }

    /// The index of the master serving `key`'s slot now (`CLUSTER KEYSLOT`, `CLUSTER NODES`).
    pub fn master_of(&self, key: &str) -> Option<usize> {
        let node = self.nodes.iter().find(|node| node.is_running())?;
        let slot: u16 = Self::ask(node.port, &["cluster", "keyslot", key])?
            .trim()
            .parse()
            .ok()?;
        let view = Self::ask(node.port, &["cluster", "nodes"])?;
        view.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let serves = fields.iter().skip(8).any(|range| {
                let mut bounds = range.split('-').filter_map(|bound| bound.parse::<u16>().ok());
                match (bounds.next(), bounds.next()) {
                    (Some(start), Some(end)) => (start..=end).contains(&slot),
                    (Some(only), None) => only == slot,
                    _ => false,
                }
            });
            if !serves {
                return None;
            }
            let port: u16 = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            self.nodes.iter().position(|node| node.port == port)
        })
    }

    /// SIGKILL node `index` (a crash, not a shutdown) and wait for it to be gone.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start node `index` again on its port and directory (it rejoins with its `nodes.conf`).
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.kill(index);
        self.start_node(index)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port whose cluster bus port (the port + 10,000) is free too.
/// A node that exited while starting: its port (or its bus port, 10,000 higher) was taken.
#[derive(Debug)]
struct PortTaken {
    port: u16,
    status: std::process::ExitStatus,
}

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "redis-server on port {} exited while starting ({}): the port or its bus port is taken",
            self.port, self.status
        )
    }
}

impl std::error::Error for PortTaken {}

/// A port whose bus port (10,000 higher) is free too, both below Linux's ephemeral range
/// (32,768 and up), where the client side of every other connection on the machine takes
/// its local port and could take a node's port between the check and the bind.
fn cluster_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let candidate: u16 = 10_000 + (rand_u16() % 12_700);
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(candidate) && free(candidate + 10_000) {
            return Ok(candidate);
        }
    }
    anyhow::bail!("no free port pair (port, port + 10000) for a Redis Cluster node")
}

fn rand_u16() -> u16 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([bytes[0], bytes[1]])
}
