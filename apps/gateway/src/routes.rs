//! The gateway's routing table: every public route of the services behind it, where it goes and
//! who may call it. Adding a backend route to the gateway is one line here.

use axum::http::Method;

/// A service behind the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Catalog,
    Cart,
    Orders,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Catalog, Backend::Cart, Backend::Orders];

    /// The `upstream` label and the name in errors, `/healthz` and `UPSTREAM_TIMEOUT`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Catalog => "catalog",
            Backend::Cart => "cart",
            Backend::Orders => "orders",
        }
    }
}

/// Who may call a route once edge auth is on (`JWT_SECRET` or `JWT_PUBLIC_KEY[_FILE]` set).
/// With auth off every route but [`Access::Admin`] is open, as clients written without tokens
/// expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone. A valid bearer token only names the client for rate limiting.
    Public,
    /// The user named by this path parameter: a bearer token whose `sub` equals it is
    /// required; another user's answers 404.
    OwnerInPath(&'static str),
    /// The user named by this top-level member of the JSON body (`POST /cart/add`).
    OwnerInBody(&'static str),
    /// A resource owned by a user, found by id: the gateway first reads the resource at
    /// `lookup` (this route's path parameters filled in) on the same backend, and the user at
    /// the JSON pointer `owner` must be the token's subject (another user's answers 404).
    OwnerOfResource {
        lookup: &'static str,
        owner: &'static str,
    },
    /// Operators' routes (all orders, status changes): open while edge auth is off, as clients
    /// written without tokens expect; the admin token once it is on.
    Staff,
    /// `Authorization: Bearer $ADMIN_TOKEN`, checked here and forwarded for the backend's own
    /// check; auth on or off.
    Admin,
}

impl Access {
    /// Whether a bearer token is required once edge auth is on.
    pub fn needs_user(self) -> bool {
        matches!(
            self,
            Access::OwnerInPath(_) | Access::OwnerInBody(_) | Access::OwnerOfResource { .. }
        )
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
    pub access: Access,
    /// The backend honours `Idempotency-Key` on this route: a repeat with the same key is
    /// answered from its key store instead of running again. Only then may the gateway retry a
    /// keyed POST or PATCH ([`crate::retry`]); elsewhere a key makes no write safe to repeat.
    pub honours_idempotency_key: bool,
    /// Sent to every replica of the backend, one after the other (a runtime switch that must
    /// reach them all); answered with the first replica's answer when every one agreed.
    pub every_replica: bool,
}

impl RouteSpec {
    /// The user named by path parameter `param` owns what this route touches.
    fn owned_by(mut self, param: &'static str) -> Self {
        self.access = Access::OwnerInPath(param);
        self
    }

    /// The user named by body member `member` owns what this route touches.
    fn owned_by_body(mut self, member: &'static str) -> Self {
        self.access = Access::OwnerInBody(member);
        self
    }

    /// Owned by the user at JSON pointer `owner` of the resource at `lookup`.
    fn owned_via(mut self, lookup: &'static str, owner: &'static str) -> Self {
        self.access = Access::OwnerOfResource { lookup, owner };
        self
    }

    /// The backend keeps `Idempotency-Key`s on this route.
    fn keyed(mut self) -> Self {
        self.honours_idempotency_key = true;
        self
    }

    /// Admin token required once edge auth is on.
    fn staff(mut self) -> Self {
        self.access = Access::Staff;
        self
    }

    /// Sent to every replica (see [`RouteSpec::every_replica`]).
    fn on_every_replica(mut self) -> Self {
        self.every_replica = true;
        self
    }

    /// Admin token required.
    fn admin(mut self) -> Self {
        self.access = Access::Admin;
        self
    }
}

fn to(method: Method, path: &'static str, backend: Backend) -> RouteSpec {
    RouteSpec {
        method,
        path,
        backend,
        backend_path: None,
        access: Access::Public,
        honours_idempotency_key: false,
        every_replica: false,
    }
}

fn rewrite(method: Method, path: &'static str, backend: Backend, backend_path: &'static str) -> RouteSpec {
    RouteSpec {
        backend_path: Some(backend_path),
        ..to(method, path, backend)
    }
}

/// Where an order's owner is read: the orders API's envelope around the order.
const ORDER: &str = "/api/orders/{id}";
const ORDER_OWNER: &str = "/data/user_id";

/// Every route the gateway proxies.
pub fn table() -> Vec<RouteSpec> {
    use Backend::{Cart, Catalog, Orders};
    vec![
        // Catalog
        to(Method::GET, "/catalog", Catalog),
        to(Method::GET, "/catalog/{id}", Catalog),
        // The simple cart API (the cart keeps `Idempotency-Key`s on every write)
        to(Method::POST, "/cart/add", Cart)
            .owned_by_body("user_id")
            .keyed(),
        to(Method::GET, "/cart/{user_id}", Cart).owned_by("user_id"),
        to(Method::DELETE, "/cart/{user_id}", Cart)
            .owned_by("user_id")
            .keyed(),
        // The v1 cart API
        to(Method::POST, "/v1/cart/{user_id}", Cart)
            .owned_by("user_id")
            .keyed(),
        to(Method::GET, "/v1/cart/{user_id}", Cart).owned_by("user_id"),
        to(Method::DELETE, "/v1/cart/{user_id}", Cart)
            .owned_by("user_id")
            .keyed(),
        to(Method::POST, "/v1/cart/{user_id}/items", Cart)
            .owned_by("user_id")
            .keyed(),
        to(Method::PATCH, "/v1/cart/{user_id}/items/{product_id}", Cart)
            .owned_by("user_id")
            .keyed(),
        to(Method::DELETE, "/v1/cart/{user_id}/items/{product_id}", Cart)
            .owned_by("user_id")
            .keyed(),
        // Operators set stock (admin token checked here and by the catalog).
        to(Method::PUT, "/admin/stock/{product_id}", Catalog).admin(),
        // The orders API and checkout (orders keeps `Idempotency-Key`s on placing an order
        // only; cancelling and status changes ignore them)
        to(Method::POST, "/api/orders", Orders)
            .owned_by_body("user_id")
            .keyed(),
        to(Method::GET, "/api/orders", Orders).staff(),
        to(Method::POST, "/api/orders/checkout", Orders)
            .owned_by_body("user_id")
            .keyed(),
        to(Method::GET, "/api/orders/{id}", Orders).owned_via(ORDER, ORDER_OWNER),
        to(Method::PATCH, "/api/orders/{id}/status", Orders).staff(),
        to(Method::POST, "/api/orders/{id}/cancel", Orders).owned_via(ORDER, ORDER_OWNER),
        to(Method::GET, "/api/users/{user_id}/orders", Orders).owned_by("user_id"),
        // Each backend's simulation, reachable through :8000 for load tests.
        rewrite(
            Method::GET,
            "/admin/catalog/simulation",
            Catalog,
            "/admin/simulation",
        )
        .admin(),
        rewrite(
            Method::PUT,
            "/admin/catalog/simulation",
            Catalog,
            "/admin/simulation",
        )
        .admin()
        .on_every_replica(),
        rewrite(Method::GET, "/admin/cart/simulation", Cart, "/admin/simulation").admin(),
        rewrite(Method::PUT, "/admin/cart/simulation", Cart, "/admin/simulation")
            .admin()
            .on_every_replica(),
        rewrite(
            Method::GET,
            "/admin/orders/simulation",
            Orders,
            "/admin/simulation",
        )
        .admin(),
        rewrite(
            Method::PUT,
            "/admin/orders/simulation",
            Orders,
            "/admin/simulation",
        )
        .admin()
        .on_every_replica(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_path_is_admin_only_and_every_user_path_is_owned() {
        for spec in table() {
            if spec.path.starts_with("/admin/") {
                assert_eq!(spec.access, Access::Admin, "{}", spec.path);
            }
            if spec.path.contains("{user_id}") {
                assert_eq!(spec.access, Access::OwnerInPath("user_id"), "{}", spec.path);
            }
            if let Access::OwnerInPath(param) = spec.access {
                assert!(spec.path.contains(&format!("{{{param}}}")), "{}", spec.path);
            }
            if let Access::OwnerOfResource { lookup, .. } = spec.access {
                for param in lookup.split('/').filter(|s| s.starts_with('{')) {
                    assert!(
                        spec.path.contains(param),
                        "{} has no {param} for {lookup}",
                        spec.path
                    );
                }
            }
            if spec.backend == Backend::Orders && spec.method != Method::GET {
                assert_ne!(spec.access, Access::Public, "{} {}", spec.method, spec.path);
            }
        }
    }
}
