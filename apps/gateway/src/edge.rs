//! The gateway's front: a request whose path is a proxied route template is taken here — matched
//! against the routing table, observed ([`RouteObserver`]: metrics, ids, one log line, spans when
//! exported), passed through the simulation and forwarded by [`proxy`] — without going through
//! axum's router and middleware stack. Everything else (the gateway's own routes: `/`, probes,
//! `/metrics`, `/admin/simulation`, `/openapi.json`, `/docs`, and 404s) goes to the axum router
//! built by [`crate::app`], observed by the common middleware as in every service.
//!
//! Why a separate path: the proxied routes are the gateway's traffic, and on them axum's
//! per-request machinery (boxed services and futures per layer, a `tracing` span per request
//! and per upstream call) cost several times the proxying itself; what a request gets is the
//! same (docs/performance.md).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use shopstack_base::Problem;
use shopstack_platform::observe::{ObservedRequest, RouteObserver};
use shopstack_platform::server::Front;
use shopstack_platform::service::panic_to_problem;
use shopstack_telemetry::metrics::{CounterByLastLabel, Histogram};

use crate::GatewayState;
use crate::proxy::{self, Peer};
use crate::routes::{Access, RouteSpec};

/// One proxied route (a method on a path template) and what observing it needs, resolved once.
pub struct ProxiedRoute {
    pub spec: RouteSpec,
    observer: RouteObserver,
    /// `gateway_upstream_requests_total` of this route, by status or outcome.
    pub upstream_requests: CounterByLastLabel<4>,
    pub upstream_duration: Histogram,
    /// Business routes go through the simulation; `/admin/*` never does (ARCHITECTURE.md).
    simulated: bool,
}

/// The routes sharing one path template.
struct PathRoutes {
    template: &'static str,
    routes: Vec<Arc<ProxiedRoute>>,
    /// The `Allow` header of a 405 on this path.
    allow: HeaderValue,
}

struct RouteIndex {
    paths: matchit::Router<usize>,
    by_path: Vec<PathRoutes>,
}

/// The gateway's service: proxied routes here, the rest to `rest`. Served as a [`Front`], so
/// each connection's copy knows its peer (`X-Forwarded-For`, per-IP rate limits) without a
/// per-request extension.
#[derive(Clone)]
pub struct Edge {
    state: Arc<GatewayState>,
    index: Arc<RouteIndex>,
    rest: Router,
    peer: Option<Peer>,
}

impl Front for Edge {
    type Service = Edge;

    fn for_connection(&self, peer: SocketAddr) -> Edge {
        Edge {
            peer: Some(Peer::new(peer.ip())),
            ..self.clone()
        }
    }
}

impl Edge {
    /// The front for `state`'s routing table, with `rest` behind it. A table entry that can't
    /// be routed (a template matchit refuses; the table's test rules that out) is logged and
    /// left to `rest`, which answers 404.
    pub fn new(state: GatewayState, rest: Router) -> Self {
        let platform = &state.platform;
        let mut templates: HashMap<&'static str, usize> = HashMap::new();
        let mut by_path: Vec<PathRoutes> = Vec::new();
        let mut paths = matchit::Router::new();
        for spec in state.routes.iter() {
            let index = match templates.get(spec.path) {
                Some(&index) => index,
                None => {
                    if let Err(error) = paths.insert(spec.path, by_path.len()) {
                        tracing::error!(path = spec.path, %error, "route table entry skipped");
                        continue;
                    }
                    templates.insert(spec.path, by_path.len());
                    by_path.push(PathRoutes {
                        template: spec.path,
                        routes: Vec::new(),
                        allow: HeaderValue::from_static(""),
                    });
                    by_path.len() - 1
                }
            };
            let upstream = spec.backend.name();
            let method = spec.method.as_str();
            by_path[index].routes.push(Arc::new(ProxiedRoute {
                observer: RouteObserver::with_attributes(
                    platform,
                    spec.method.clone(),
                    spec.path,
                    vec![KeyValue::new("peer.service", upstream)],
                ),
                upstream_requests: CounterByLastLabel::new(
                    &state.metrics.upstream_requests,
                    &[upstream, spec.path, method],
                ),
                upstream_duration: state
                    .metrics
                    .upstream_duration
                    .with_label_values(&[upstream, spec.path]),
                simulated: !spec.path.starts_with("/admin/"),
                spec: spec.clone(),
            }));
        }
        for path in &mut by_path {
            let mut methods: Vec<&str> = path
                .routes
                .iter()
                .map(|route| route.spec.method.as_str())
                .collect();
            if methods.contains(&"GET") {
                methods.push("HEAD");
            }
            path.allow =
                HeaderValue::from_str(&methods.join(",")).unwrap_or_else(|_| HeaderValue::from_static(""));
        }
        Self {
            state: Arc::new(state),
            index: Arc::new(RouteIndex { paths, by_path }),
            rest,
            peer: None,
        }
    }
}

impl tower::Service<Request> for Edge {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Ok(matched) = self.index.paths.at(request.uri().path()) else {
            return Box::pin(self.rest.call(request));
        };
        let path = &self.index.by_path[*matched.value];
        let method = request.method();
        let route = path
            .routes
            .iter()
            .find(|route| route.spec.method == method)
            // As axum does, a GET route answers HEAD.
            .or_else(|| {
                (method == Method::HEAD)
                    .then(|| path.routes.iter().find(|route| route.spec.method == Method::GET))
                    .flatten()
            })
            .cloned();
        let Some(route) = route else {
            let response = method_not_allowed(&self.state, path, request);
            return Box::pin(std::future::ready(Ok(response)));
        };
        // Only an auth check reads the owner named in the path.
        let path_owner = match route.spec.access {
            Access::OwnerInPath(param) if self.state.auth.is_some() => {
                matched.params.get(param).map(str::to_owned)
            }
            _ => None,
        };
        // The heap slot first, then the future written into it: built the other way round
        // (`Box::pin(serve(..))`), all of its 4 KB are copied from the stack.
        let slot = Box::new_uninit();
        let serving = Box::write(
            slot,
            serve(self.state.clone(), route, request, self.peer.clone(), path_owner),
        );
        Box::into_pin(serving)
    }
}

/// One proxied request, observed from start to end.
async fn serve(
    state: Arc<GatewayState>,
    route: Arc<ProxiedRoute>,
    request: Request,
    peer: Option<Peer>,
    path_owner: Option<String>,
) -> Result<Response, Infallible> {
    let (parts, body) = request.into_parts();
    let uri = parts.uri.clone();
    let observed = route.observer.start(&parts.headers, uri.path());
    let answered = AssertUnwindSafe(answer(
        &state,
        &route,
        parts,
        body,
        &observed,
        peer.as_ref(),
        path_owner.as_deref(),
    ))
    .catch_unwind()
    .await;
    let mut response = answered.unwrap_or_else(panic_to_problem);
    route.observer.finish(observed, uri.path(), &mut response);
    Ok(response)
}

async fn answer(
    state: &GatewayState,
    route: &ProxiedRoute,
    parts: Parts,
    body: Body,
    observed: &ObservedRequest,
    peer: Option<&Peer>,
    path_owner: Option<&str>,
) -> Response {
    if route.simulated
        && let Some(injected) = state
            .platform
            .simulation()
            .apply(route.spec.path, &parts.method, &parts.headers)
            .await
    {
        return injected;
    }
    proxy::forward(state, route, parts, body, observed, peer, path_owner)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// A known path with a method it doesn't take: 405 with `Allow`, observed as any request.
fn method_not_allowed(state: &GatewayState, path: &PathRoutes, request: Request) -> Response {
    let observer = RouteObserver::new(&state.platform, request.method().clone(), path.template);
    let observed = observer.start(request.headers(), request.uri().path());
    let mut response = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
    .with_header(header::ALLOW, path.allow.clone())
    .into_response();
    observer.finish(observed, request.uri().path(), &mut response);
    response
}

#[cfg(test)]
mod tests {
    /// Every template of the table is routable, and a path made from it finds it, not another.
    #[test]
    fn every_table_template_routes_to_itself() {
        let mut paths = matchit::Router::new();
        let mut templates: Vec<&'static str> = crate::routes::table().iter().map(|spec| spec.path).collect();
        templates.sort_unstable();
        templates.dedup();
        for (index, template) in templates.iter().enumerate() {
            if let Err(error) = paths.insert(*template, index) {
                panic!("{template}: {error}");
            }
        }
        for (index, template) in templates.iter().enumerate() {
            let path = template
                .replace("{user_id}", "u-1")
                .replace("{id}", "o-1")
                .replace("{product_id}", "p-1");
            let found = paths.at(&path).map(|matched| *matched.value);
            assert_eq!(found.ok(), Some(index), "{path} should route to {template}");
        }
    }
}
