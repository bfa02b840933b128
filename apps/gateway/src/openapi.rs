//! The gateway's OpenAPI document: its own routes, plus every proxied route described by the
//! backend that serves it (fetched from the backend's `/openapi.json` and cached), with the
//! errors the gateway itself may answer. A backend that can't be reached is described
//! generically until it can.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::GatewayState;
use crate::retry::IDEMPOTENCY_KEY;
use crate::routes::{Access, Backend, RouteSpec};

const FETCH_TIMEOUT: Duration = Duration::from_secs(1);

/// Backend documents fetched so far.
#[derive(Clone, Default)]
pub struct BackendDocs(Arc<RwLock<HashMap<Backend, Value>>>);

impl BackendDocs {
    fn cached(&self, backend: Backend) -> Option<Value> {
        match self.0.read() {
            Ok(docs) => docs.get(&backend).cloned(),
            Err(poisoned) => poisoned.into_inner().get(&backend).cloned(),
        }
    }

    fn store(&self, backend: Backend, doc: Value) {
        match self.0.write() {
            Ok(mut docs) => docs.insert(backend, doc),
            Err(poisoned) => poisoned.into_inner().insert(backend, doc),
        };
    }
}

async fn backend_doc(state: &GatewayState, backend: Backend) -> Option<Value> {
    if let Some(doc) = state.docs.cached(backend) {
        return Some(doc);
    }
    let upstream = state.upstreams.get(backend);
    let (index, _in_flight) = upstream.pick(crate::upstream::Placement::Any);
    let mut url = upstream.replicas.get(index)?.url.clone();
    url.set_path(&format!("{}/openapi.json", url.path().trim_end_matches('/')));
    let client = state.platform.client();
    let request = client.inner().get(url).timeout(FETCH_TIMEOUT).build().ok()?;
    let response = client.send(backend.name(), "/openapi.json", request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let doc: Value = response.json().await.ok()?;
    state.docs.store(backend, doc.clone());
    Some(doc)
}

/// `{user_id}` segments of a route template, as OpenAPI path parameters.
fn path_parameters(template: &str) -> Vec<Value> {
    template
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

fn problem_response_with_header(description: &str, header: &str, header_description: &str) -> Value {
    let mut response = problem_response(description);
    response["headers"] = json!({header: {"description": header_description, "schema": {"type": "string"}}});
    response
}

const RETRY_AFTER_DESCRIPTION: &str = "Seconds to wait before trying again";

/// What the edge policies in front of a route may answer, given how the gateway is configured.
#[derive(Debug, Clone, Copy)]
pub struct EdgeDoc {
    pub auth: bool,
    pub rate_limited: bool,
}

fn operation_for(spec: &RouteSpec, backend_doc: Option<&Value>, edge: EdgeDoc) -> Value {
    let backend_template = spec.backend_path.unwrap_or(spec.path);
    let method = spec.method.as_str().to_ascii_lowercase();
    let mut operation = backend_doc
        .and_then(|doc| doc.pointer(&format!("/paths/{}/{method}", backend_template.replace('~', "~0").replace('/', "~1"))))
        .cloned()
        .unwrap_or_else(|| {
            json!({
                "summary": format!("Proxied to the {} service", spec.backend.name()),
                "parameters": path_parameters(spec.path),
                "responses": {"default": {"description": format!("The {} service's response", spec.backend.name())}},
            })
        });
    let Some(object) = operation.as_object_mut() else {
        return operation;
    };
    object.remove("operationId");
    let tags = object.entry("tags").or_insert_with(|| json!([]));
    if let Some(tags) = tags.as_array_mut()
        && tags.is_empty()
    {
        tags.push(json!(spec.backend.name()));
    }
    if !spec.method.is_idempotent() {
        let parameters = object.entry("parameters").or_insert_with(|| json!([]));
        if let Some(parameters) = parameters.as_array_mut()
            && !parameters.iter().any(|p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(IDEMPOTENCY_KEY))
            })
        {
            parameters.push(json!({
                "name": "Idempotency-Key",
                "in": "header",
                "required": false,
                "description": "Makes the request safe for the gateway to retry on a transient backend failure.",
                "schema": {"type": "string"}
            }));
        }
    }
    let needs_user = edge.auth && spec.access.needs_user();
    let needs_admin = spec.access == Access::Admin || (edge.auth && spec.access == Access::Staff);
    if needs_admin {
        object.insert("security".into(), json!([{"admin_token": []}]));
    } else if needs_user {
        object.insert("security".into(), json!([{"bearer_jwt": []}]));
    }
    let responses = object.entry("responses").or_insert_with(|| json!({}));
    if let Some(responses) = responses.as_object_mut() {
        if needs_admin || needs_user {
            responses.insert(
                "401".into(),
                problem_response_with_header(
                    if needs_user {
                        "No valid bearer token (missing, malformed, badly signed, expired, or for another issuer or audience)"
                    } else {
                        "Missing or wrong admin token"
                    },
                    "WWW-Authenticate",
                    "The bearer challenge (RFC 6750)",
                ),
            );
        }
        if needs_user
            && matches!(
                spec.access,
                Access::OwnerInPath(_) | Access::OwnerInBody(_) | Access::OwnerOfResource { .. }
            )
        {
            responses.entry("404").or_insert_with(|| {
                problem_response("Another user's resource (answered as if it did not exist)")
            });
        }
        responses
            .entry("413")
            .or_insert_with(|| problem_response("Request body too large"));
        if edge.rate_limited {
            responses.insert(
                "429".into(),
                problem_response_with_header(
                    "This client is over its rate limit",
                    "Retry-After",
                    RETRY_AFTER_DESCRIPTION,
                ),
            );
        }
        responses.insert(
            "502".into(),
            problem_response("The backend returned an invalid response"),
        );
        responses.insert(
            "503".into(),
            problem_response_with_header(
                "The backend is unavailable, its circuit breaker is open, or it is at capacity (load shedding)",
                "Retry-After",
                RETRY_AFTER_DESCRIPTION,
            ),
        );
        responses.insert(
            "504".into(),
            problem_response("The backend did not answer within the attempt timeout or the request deadline"),
        );
    }
    operation
}

/// The gateway's document: `own` plus every proxied route.
pub async fn document(state: &GatewayState, own: &Value) -> Value {
    let edge = EdgeDoc {
        auth: state.auth.is_some(),
        rate_limited: state.rate_limiter.is_some(),
    };
    let mut doc = own.clone();
    let mut backend_docs = HashMap::new();
    for backend in Backend::ALL {
        if let Some(backend_doc) = backend_doc(state, backend).await {
            backend_docs.insert(backend, backend_doc);
        }
    }
    let mut paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for spec in state.routes.iter() {
        let operation = operation_for(spec, backend_docs.get(&spec.backend), edge);
        let item = paths.entry(spec.path.to_owned()).or_insert_with(|| json!({}));
        if let Some(item) = item.as_object_mut() {
            item.insert(spec.method.as_str().to_ascii_lowercase(), operation);
        }
    }
    let mut schemas: Map<String, Value> = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for backend_doc in backend_docs.values() {
        if let Some(backend_schemas) = backend_doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            for (name, schema) in backend_schemas {
                schemas.entry(name.clone()).or_insert_with(|| schema.clone());
            }
        }
    }
    if let Some(object) = doc.as_object_mut() {
        object.insert("paths".into(), Value::Object(paths));
        let components = object.entry("components").or_insert_with(|| json!({}));
        if let Some(components) = components.as_object_mut() {
            components.insert("schemas".into(), Value::Object(schemas));
            if edge.auth {
                let schemes = components.entry("securitySchemes").or_insert_with(|| json!({}));
                if let Some(schemes) = schemes.as_object_mut() {
                    schemes.insert(
                        "bearer_jwt".into(),
                        json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}),
                    );
                }
            }
        }
    }
    doc
}
