//! Dependency health and the lifecycle flag behind the probes.
//!
//! Services register one check per dependency (Redis, an upstream, the database). `/healthz`
//! reports each of them in the health response shape with one field per dependency; `/readyz` fails while draining or while a
//! dependency marked *required for readiness* is down; `/livez` only says the process runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::metrics::IntGaugeVec;
use futures::future::{BoxFuture, join_all};

/// How long one dependency check may take before it counts as down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

#[derive(Clone)]
struct Dependency {
    name: String,
    required_for_readiness: bool,
    check: CheckFn,
}

/// The result of checking one dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyStatus {
    pub name: String,
    pub healthy: bool,
    pub required_for_readiness: bool,
}

#[derive(Clone, Default)]
pub struct Health {
    dependencies: Arc<RwLock<Vec<Dependency>>>,
    draining: Arc<AtomicBool>,
}

impl Health {
    /// Register a dependency check. `required_for_readiness`: while it fails, `/readyz` fails
    /// (a cart without Redis should get no traffic; a gateway with one backend down still should).
    pub fn register<F>(&self, name: &str, required_for_readiness: bool, check: F)
    where
        F: Fn() -> BoxFuture<'static, bool> + Send + Sync + 'static,
    {
        let dependency = Dependency {
            name: name.to_owned(),
            required_for_readiness,
            check: Arc::new(check),
        };
        match self.dependencies.write() {
            Ok(mut guard) => guard.push(dependency),
            Err(poisoned) => poisoned.into_inner().push(dependency),
        }
    }

    /// Check every dependency concurrently, each bounded by [`CHECK_TIMEOUT`].
    pub async fn check_all(&self) -> Vec<DependencyStatus> {
        let dependencies = match self.dependencies.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        join_all(dependencies.into_iter().map(|dependency| async move {
            let healthy = tokio::time::timeout(CHECK_TIMEOUT, (dependency.check)())
                .await
                .unwrap_or(false);
            DependencyStatus {
                name: dependency.name,
                healthy,
                required_for_readiness: dependency.required_for_readiness,
            }
        }))
        .await
    }

    /// Shutdown has begun: readiness fails from now on.
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Re-check dependencies every `interval` so `dependency_up` stays fresh between probes.
    pub fn spawn_monitor(&self, gauge: IntGaugeVec<1>, interval: Duration) {
        let health = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                for status in health.check_all().await {
                    gauge
                        .with_label_values(&[&status.name])
                        .set(i64::from(status.healthy));
                }
            }
        });
    }
}
