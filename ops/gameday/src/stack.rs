//! The clustered stack on this machine, as the chaos test runs it: a 6-node Redis Cluster, a
//! 3-node NATS JetStream cluster (the stream with 3 replicas), a private PostgreSQL, two
//! replicas each of catalog, cart and orders, and one gateway in front of them; and the kills
//! and restarts a timeline asks for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use shopstack_testkit::nats_cluster::NatsCluster;
use shopstack_testkit::postgres::PostgresServer;
use shopstack_testkit::process::ServiceProcess;
use shopstack_testkit::redis_cluster::RedisCluster;

use crate::timeline::Target;

/// The gateway's deadline for one request (`REQUEST_DEADLINE`); each shopper's own timeout is
/// [`CLIENT_TIMEOUT`], above it, so a shopper always hears back.
pub const GATEWAY_DEADLINE: Duration = Duration::from_secs(4);
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(6);
/// A cart line's hold lives this long: short, so the stock settles soon after the load.
pub const HOLD_TTL: &str = "10s";

/// One replica of a service: its process while it runs, and what starts it again on its port
/// (the gateway's backend list names the port).
pub struct Replica {
    pub process: Option<ServiceProcess>,
    /// What the processes of this replica killed before printed (JSON log lines).
    earlier_output: Vec<String>,
    port: u16,
    binary: PathBuf,
    env: Vec<(String, String)>,
}

impl Replica {
    fn start(binary: PathBuf, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let pairs: Vec<(&str, &str)> = env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let process = ServiceProcess::spawn(&binary, &pairs)?;
        Ok(Self {
            port: process.addr.port(),
            process: Some(process),
            earlier_output: Vec::new(),
            binary,
            env,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let pairs: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .chain([("PORT", port.as_str())])
            .collect();
        self.process = Some(ServiceProcess::spawn(&self.binary, &pairs)?);
        Ok(())
    }
}

pub struct ClusteredStack {
    pub redis: RedisCluster,
    pub nats: NatsCluster,
    _postgres: PostgresServer,
    pub catalogs: Vec<Replica>,
    pub carts: Vec<Replica>,
    pub orders: Vec<Replica>,
    pub gateway: ServiceProcess,
    pub admin_token: String,
    /// Per kind, the node or replica the latest kill took down, for its restart.
    killed: std::collections::BTreeMap<Target, usize>,
}

fn urls(replicas: &[Replica]) -> String {
    replicas.iter().map(Replica::url).collect::<Vec<_>>().join(",")
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

impl ClusteredStack {
    /// Start everything; the service binaries are taken from `bin_dir`.
    pub async fn start(bin_dir: &Path) -> anyhow::Result<Self> {
        for service in ["catalog", "cart", "orders", "gateway"] {
            let binary = bin_dir.join(service);
            anyhow::ensure!(
                binary.is_file(),
                "{} is missing: build the workspace first (`make gameday` does)",
                binary.display()
            );
        }
        let binary = |name: &str| bin_dir.join(name);
        eprintln!("[gameday] starting a 6-node Redis Cluster, a 3-node NATS cluster and PostgreSQL");
        let redis = tokio::task::spawn_blocking(RedisCluster::start)
            .await?
            .context("the Redis Cluster did not start")?;
        let nats = NatsCluster::start()
            .await
            .context("the NATS cluster did not start")?;
        let postgres = tokio::task::spawn_blocking(PostgresServer::start)
            .await?
            .context("PostgreSQL did not start")?;
        // A token of this run only: the load test switches the simulation with it.
        let admin_token = uuid::Uuid::new_v4().simple().to_string();
        let stores = owned(&[
            ("REDIS_URL", &redis.url()),
            ("NATS_URL", &nats.url()),
            ("EVENTS_STREAM_REPLICAS", "3"),
            ("SIMULATION", "off"),
            ("ADMIN_TOKEN", &admin_token),
        ]);
        let with = |extra: &[(&str, &str)]| {
            let mut env = stores.clone();
            env.extend(owned(extra));
            env
        };

        eprintln!("[gameday] starting two replicas each of catalog, cart and orders, and the gateway");
        let catalog_env = with(&[("RESERVATION_REAP_INTERVAL", "200ms")]);
        let catalogs = vec![
            Replica::start(binary("catalog"), catalog_env.clone())?,
            Replica::start(binary("catalog"), catalog_env)?,
        ];
        let catalog_urls = urls(&catalogs);
        let cart_env = with(&[("CATALOG_SERVICE_URL", &catalog_urls), ("CART_TTL", HOLD_TTL)]);
        let carts = vec![
            Replica::start(binary("cart"), cart_env.clone())?,
            Replica::start(binary("cart"), cart_env)?,
        ];
        let cart_urls = urls(&carts);
        let orders_env = with(&[
            ("DATABASE_URL", &postgres.url()),
            ("CATALOG_SERVICE_URL", &catalog_urls),
            ("CART_SERVICE_URL", &cart_urls),
            ("SAGA_RECOVERY_AFTER", "2s"),
            ("MAINTENANCE_INTERVAL", "200ms"),
        ]);
        let orders = vec![
            Replica::start(binary("orders"), orders_env.clone())?,
            Replica::start(binary("orders"), orders_env)?,
        ];
        let orders_urls = urls(&orders);
        let deadline = format!("{}ms", GATEWAY_DEADLINE.as_millis());
        let gateway = ServiceProcess::spawn(
            &binary("gateway"),
            &[
                ("CATALOG_SERVICE_URL", &catalog_urls),
                ("CART_SERVICE_URL", &cart_urls),
                ("ORDERS_SERVICE_URL", &orders_urls),
                ("REQUEST_DEADLINE", &deadline),
                ("SIMULATION", "off"),
                ("ADMIN_TOKEN", &admin_token),
            ],
        )?;
        Ok(Self {
            redis,
            nats,
            _postgres: postgres,
            catalogs,
            carts,
            orders,
            gateway,
            admin_token,
            killed: std::collections::BTreeMap::new(),
        })
    }

    fn replicas(&mut self, target: Target) -> Option<&mut Vec<Replica>> {
        match target {
            Target::CatalogReplica => Some(&mut self.catalogs),
            Target::CartReplica => Some(&mut self.carts),
            Target::OrdersReplica => Some(&mut self.orders),
            Target::RedisMaster | Target::RedisReplica | Target::NatsNode => None,
        }
    }

    /// SIGKILL one process of `target`'s kind; what was killed.
    pub fn kill(&mut self, target: Target) -> anyhow::Result<String> {
        let (index, what) = match target {
            Target::RedisMaster | Target::RedisReplica => {
                let masters = self.redis.masters();
                let index = self
                    .redis
                    .nodes
                    .iter()
                    .enumerate()
                    .position(|(index, node)| {
                        node.is_running() && masters.contains(&index) == (target == Target::RedisMaster)
                    })
                    .with_context(|| format!("no running {target} to kill"))?;
                self.redis.kill(index);
                (index, format!("Redis node {}", self.redis.nodes[index].url()))
            }
            Target::NatsNode => {
                let index = self
                    .nats
                    .nodes
                    .iter()
                    .position(|node| node.is_running())
                    .context("no running NATS server to kill")?;
                self.nats.kill(index);
                (index, format!("NATS server {}", self.nats.nodes[index].url()))
            }
            replicated => {
                let replicas = self.replicas(replicated).context("a replicated service")?;
                let index = replicas
                    .iter()
                    .position(|replica| replica.process.is_some())
                    .with_context(|| format!("no running {replicated} to kill"))?;
                let replica = &mut replicas[index];
                if let Some(mut process) = replica.process.take() {
                    process.kill()?;
                    replica.earlier_output.extend(process.output());
                }
                (index, format!("{} at {}", replicated, replica.url()))
            }
        };
        self.killed.insert(target, index);
        Ok(format!("SIGKILL {what}"))
    }

    /// Start again the process the latest kill of `target`'s kind took down.
    pub async fn restart(&mut self, target: Target) -> anyhow::Result<String> {
        let index = self
            .killed
            .remove(&target)
            .with_context(|| format!("no {target} was killed"))?;
        match target {
            Target::RedisMaster | Target::RedisReplica => {
                tokio::task::block_in_place(|| self.redis.restart(index))?;
                Ok(format!("restarted Redis node {}", self.redis.nodes[index].url()))
            }
            Target::NatsNode => {
                self.nats.restart(index).await?;
                Ok(format!("restarted NATS server {}", self.nats.nodes[index].url()))
            }
            replicated => {
                let replicas = self.replicas(replicated).context("a replicated service")?;
                let replica = &mut replicas[index];
                tokio::task::block_in_place(|| replica.restart())?;
                Ok(format!("restarted {replicated} at {}", replica.url()))
            }
        }
    }

    /// Write what every service process printed (JSON log lines) to `dir/<service>-<n>.log`.
    pub fn write_logs(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let groups = [
            ("catalog", &self.catalogs),
            ("cart", &self.carts),
            ("orders", &self.orders),
        ];
        for (service, replicas) in groups {
            for (index, replica) in replicas.iter().enumerate() {
                let mut lines = replica.earlier_output.clone();
                lines.extend(replica.process.iter().flat_map(ServiceProcess::output));
                let path = dir.join(format!("{service}-{index}.log"));
                std::fs::write(&path, lines.join("\n"))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        let path = dir.join("gateway.log");
        std::fs::write(&path, self.gateway.output().join("\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Where everything listens, for the console.
    pub fn describe(&self) -> String {
        format!(
            "Redis Cluster {}; NATS {}; catalog {}; cart {}; orders {}",
            self.redis.url(),
            self.nats.url(),
            urls(&self.catalogs),
            urls(&self.carts),
            urls(&self.orders)
        )
    }

    fn running(replicas: &[Replica]) -> anyhow::Result<String> {
        replicas
            .iter()
            .find(|replica| replica.process.is_some())
            .map(Replica::url)
            .context("no replica is running")
    }

    /// A catalog replica that runs, for the checks.
    pub fn catalog_url(&self) -> anyhow::Result<String> {
        Self::running(&self.catalogs)
    }

    /// An orders replica that runs, for the checks.
    pub fn orders_url(&self) -> anyhow::Result<String> {
        Self::running(&self.orders)
    }

    /// A NATS server that runs, for reading the stream.
    pub fn nats_url(&self) -> anyhow::Result<String> {
        self.nats
            .nodes
            .iter()
            .find(|node| node.is_running())
            .map(|node| node.url())
            .context("no NATS server is running")
    }
}
