//! [`Platform`]: the shared plumbing one service instance owns — settings, metrics, health,
//! simulation, the outbound client. The routes and layers every service wears around it are
//! assembled in [`crate::service`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::client::HttpClient;
use crate::service_auth::ServiceAuth;
use shopstack_base::config::{ServiceIdentity, Settings};
use shopstack_base::health::Health;
use shopstack_base::simulation::Simulation;
use shopstack_redis::redis::Redis;
use shopstack_telemetry::metrics::Metrics;

/// How often dependency checks refresh `dependency_up` between probes.
const HEALTH_MONITOR_INTERVAL: Duration = Duration::from_secs(5);

/// Cheap to clone; one per service instance (tests run several in one process).
#[derive(Clone)]
pub struct Platform(Arc<Inner>);

struct Inner {
    settings: Settings,
    metrics: Metrics,
    health: Health,
    simulation: Simulation,
    client: HttpClient,
    /// `SERVICE_AUTH_SECRET` set: this service's credentials.
    service_auth: Option<Arc<ServiceAuth>>,
    /// `/stress` allocates up to 1 GB: one run at a time.
    stress_slot: Arc<Semaphore>,
}

impl Platform {
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Metrics::new(&settings.identity)?;
        let simulation = Simulation::new(settings.simulation.clone(), metrics.registry())?;
        let service_auth = settings
            .service_auth_secret
            .as_deref()
            .map(|secret| Arc::new(ServiceAuth::new(secret, &settings.identity.name)));
        Ok(Self(Arc::new(Inner {
            client: HttpClient::new()?.with_service_auth(service_auth.clone()),
            service_auth,
            health: Health::default(),
            stress_slot: Arc::new(Semaphore::new(1)),
            settings,
            metrics,
            simulation,
        })))
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    pub fn identity(&self) -> &ServiceIdentity {
        &self.0.settings.identity
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn health(&self) -> &Health {
        &self.0.health
    }

    pub fn simulation(&self) -> &Simulation {
        &self.0.simulation
    }

    pub fn client(&self) -> &HttpClient {
        &self.0.client
    }

    /// Signs and checks credentials between services, when `SERVICE_AUTH_SECRET` is set.
    pub fn service_auth(&self) -> Option<&Arc<ServiceAuth>> {
        self.0.service_auth.as_ref()
    }

    /// The service's Redis when `REDIS_URL`/`REDIS_ADDR` is set (connected without waiting for
    /// it: see [`Redis::connect`]), its `redis` check registered in `/healthz`;
    /// `required_for_readiness`: whether `/readyz` fails while it is down.
    pub async fn redis(&self, required_for_readiness: bool) -> anyhow::Result<Option<Redis>> {
        let Some(url) = &self.settings().redis_url else {
            return Ok(None);
        };
        let redis = Redis::connect(url).await?;
        let probe = redis.clone();
        self.health().register("redis", required_for_readiness, move || {
            let redis = probe.clone();
            Box::pin(async move { redis.ping().await })
        });
        Ok(Some(redis))
    }

    pub(crate) fn stress_slot(&self) -> Arc<Semaphore> {
        self.0.stress_slot.clone()
    }

    /// Start background work shared by all services (the dependency monitor).
    pub fn start_background_tasks(&self) {
        self.health()
            .spawn_monitor(self.metrics().dependency_up.clone(), HEALTH_MONITOR_INTERVAL);
    }
}
