//! The gateway's routing table: every public route of the services behind it, and where it goes.
//! Adding a backend route to the gateway is one line here.

use axum::http::Method;

/// A service behind the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Catalog,
    Cart,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Catalog, Backend::Cart];

    /// The `upstream` label and the name in errors and `/healthz`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Catalog => "catalog",
            Backend::Cart => "cart",
        }
    }
}

/// One proxied route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: Method,
    /// The route template on the gateway (axum syntax), also the `route` metric label.
    pub path: &'static str,
    pub backend: Backend,
    /// A fixed path on the backend when it differs from the gateway's; otherwise the request
    /// path is forwarded as is.
    pub backend_path: Option<&'static str>,
}

const fn to(method: Method, path: &'static str, backend: Backend) -> RouteSpec {
    RouteSpec {
        method,
        path,
        backend,
        backend_path: None,
    }
}

const fn rewrite(
    method: Method,
    path: &'static str,
    backend: Backend,
    backend_path: &'static str,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        backend,
        backend_path: Some(backend_path),
    }
}

/// Every route the gateway proxies.
pub fn table() -> Vec<RouteSpec> {
    use Backend::{Cart, Catalog};
    vec![
        // Catalog (seed 003)
        to(Method::GET, "/catalog", Catalog),
        to(Method::GET, "/catalog/{id}", Catalog),
        // Cart, simple form (seed 003)
        to(Method::POST, "/cart/add", Cart),
        to(Method::GET, "/cart/{user_id}", Cart),
        to(Method::DELETE, "/cart/{user_id}", Cart),
        // Cart, v1 form (seeds 000 and 001)
        to(Method::POST, "/v1/cart/{user_id}", Cart),
        to(Method::GET, "/v1/cart/{user_id}", Cart),
        to(Method::DELETE, "/v1/cart/{user_id}", Cart),
        to(Method::POST, "/v1/cart/{user_id}/items", Cart),
        to(Method::PATCH, "/v1/cart/{user_id}/items/{product_id}", Cart),
        to(Method::DELETE, "/v1/cart/{user_id}/items/{product_id}", Cart),
        // Operators set stock (admin token checked by the catalog).
        to(Method::PUT, "/admin/stock/{product_id}", Catalog),
        // Each backend's simulation, reachable through :8000 for load tests.
        rewrite(
            Method::GET,
            "/admin/catalog/simulation",
            Catalog,
            "/admin/simulation",
        ),
        rewrite(
            Method::PUT,
            "/admin/catalog/simulation",
            Catalog,
            "/admin/simulation",
        ),
        rewrite(Method::GET, "/admin/cart/simulation", Cart, "/admin/simulation"),
        rewrite(Method::PUT, "/admin/cart/simulation", Cart, "/admin/simulation"),
    ]
}
