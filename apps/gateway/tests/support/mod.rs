//! Helpers shared by the gateway's integration tests: tiny axum backends that can be killed and
//! restarted on the same port, a gateway on port 0, and metric readers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::routing::get;
use gateway::GatewayState;
use shopstack_base::config::Settings;
use shopstack_testkit::metrics::{metric_sum, parse_metrics};
use shopstack_testkit::server::TestServer;
use shopstack_testkit::services;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A throwaway backend that counts the requests it receives (probes excluded).
pub struct Tiny {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    router: Router,
    task: JoinHandle<()>,
}

impl Tiny {
    /// Serve `router` (plus `/livez`) on a free port.
    pub async fn start(router: Router) -> Tiny {
        Self::serve(([127, 0, 0, 1], 0).into(), router, Arc::new(AtomicUsize::new(0))).await
    }

    async fn serve(addr: SocketAddr, router: Router, hits: Arc<AtomicUsize>) -> Tiny {
        let counter = hits.clone();
        let served = router
            .clone()
            .layer(axum::middleware::from_fn(move |request: Request, next: Next| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    next.run(request).await
                }
            }))
            .route("/livez", get(|| async { "alive" }));
        let listener = TcpListener::bind(addr).await.expect("bind tiny backend");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, served).await;
        });
        Tiny {
            addr,
            hits,
            router,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Crash: the port closes and idle connections are dropped.
    pub fn kill(self) -> Dead {
        self.task.abort();
        Dead {
            addr: self.addr,
            router: self.router,
            hits: self.hits,
        }
    }
}

/// A killed backend, ready to come back on the same port.
pub struct Dead {
    pub addr: SocketAddr,
    router: Router,
    hits: Arc<AtomicUsize>,
}

impl Dead {
    pub async fn restart(self) -> Tiny {
        // The old listener's task may still be winding down: retry the bind briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(probe) = std::net::TcpListener::bind(self.addr) {
                drop(probe);
                return Tiny::serve(self.addr, self.router, self.hits).await;
            }
            assert!(Instant::now() < deadline, "port {} did not free up", self.addr);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub use shopstack_testkit::http::client;
pub use shopstack_testkit::settings::ADMIN_TOKEN;

/// A gateway on port 0 in front of `catalog` and `cart`, with extra flags.
pub async fn gateway(catalog: &str, cart: &str, extra: &[&str]) -> (TestServer, GatewayState) {
    gateway_with(catalog, cart, extra, |_| {}).await
}

/// [`gateway`] with `tweak`ed settings.
pub async fn gateway_with(
    catalog: &str,
    cart: &str,
    extra: &[&str],
    tweak: impl FnOnce(&mut Settings),
) -> (TestServer, GatewayState) {
    services::gateway(catalog, cart)
        .flags(extra)
        .settings(tweak)
        .start_with_state()
        .await
}

/// Sum of a metric's samples whose labels include every `(name, value)` in `labels`, read from
/// the Prometheus text the gateway serves.
pub fn metric(state: &GatewayState, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut text = String::new();
    state
        .platform
        .metrics()
        .registry()
        .encode_text(&mut text)
        .unwrap();
    let samples = parse_metrics(&text).unwrap();
    metric_sum(&samples, name, labels)
}

/// The `type` URI's last segment of a problem response, and its Retry-After.
pub async fn problem_kind(response: reqwest::Response) -> (u16, String, Option<String>) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let kind = body["type"]
        .as_str()
        .and_then(|uri| uri.rsplit('/').next())
        .unwrap_or_default()
        .to_owned();
    (status, kind, retry_after)
}
