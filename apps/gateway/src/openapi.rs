//! The gateway's OpenAPI document: its own routes, plus every proxied route described by the
//! backend that serves it (fetched from the backend's `/openapi.json` and cached), with the
//! errors the gateway itself may answer. A backend that can't be reached is described
//! generically until it can.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::GatewayState;
use crate::routes::{Backend, RouteSpec};

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
    let mut url = state.upstreams.get(backend).pick().clone();
    url.set_path("/openapi.json");
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

fn operation_for(spec: &RouteSpec, backend_doc: Option<&Value>) -> Value {
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
    if let Some(object) = operation.as_object_mut() {
        object.remove("operationId");
        let tags = object.entry("tags").or_insert_with(|| json!([]));
        if let Some(tags) = tags.as_array_mut()
            && tags.is_empty()
        {
            tags.push(json!(spec.backend.name()));
        }
        let responses = object.entry("responses").or_insert_with(|| json!({}));
        if let Some(responses) = responses.as_object_mut() {
            responses
                .entry("413")
                .or_insert_with(|| problem_response("Request body too large"));
            responses.insert(
                "502".into(),
                problem_response("The backend returned an invalid response"),
            );
            responses
                .entry("503")
                .or_insert_with(|| problem_response("The backend is unavailable"));
            responses.insert(
                "504".into(),
                problem_response("The backend did not answer in time"),
            );
        }
    }
    operation
}

/// The gateway's document: `own` plus every proxied route.
pub async fn document(state: &GatewayState, own: &Value) -> Value {
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
        let operation = operation_for(spec, backend_docs.get(&spec.backend));
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
        }
    }
    doc
}
