//! The Kubernetes manifests in `deploy/k8s/`, checked without a cluster: every overlay renders
//! with `kubectl kustomize`, every object validates strictly against the oldest Kubernetes
//! version ShopStack supports, checkov passes, every service pod is probed, sized and hardened,
//! prod autoscales and budgets disruptions per service, no secret is in the repository, and the
//! NetworkPolicies admit exactly the service graph the services' own configuration names.
//!
//! The tools come from `.ci/run` (through `make k8s-tools`): `kubectl` with kustomize v5, and
//! `kubernetes-validate`, `checkov` and PyYAML in the venv `target/k8s-venv`. A missing tool fails
//! the tests with a message saying so; nothing is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use clap::CommandFactory;
use serde_json::Value;
use stack_tests::repo_root;

/// The oldest Kubernetes version ShopStack supports: the first with the preStop `sleep` action
/// on by default (docs/deployment.md#kubernetes).
const OLDEST_KUBERNETES: &str = "1.30.0";

/// The longest the services' telemetry flush may take at shutdown, after the drain: the
/// OpenTelemetry SDK's tracer provider shutdown (`SdkTracerProvider::shutdown`, 5 s).
const TELEMETRY_FLUSH_SECONDS: u64 = 5;

const INSTALL_HINT: &str = "run `bash .ci/run` (or `make k8s-tools`) to install it";

/// Objects whose kinds come from CRDs: allowed only in the optional components.
const CRD_KINDS: [&str; 2] = ["ServiceMonitor", "HTTPRoute"];

// --- tools -------------------------------------------------------------------------------

fn venv() -> PathBuf {
    repo_root().join("target").join("k8s-venv")
}

fn venv_tool(name: &str) -> PathBuf {
    let path = venv().join("bin").join(name);
    assert!(path.exists(), "{} is missing: {INSTALL_HINT}", path.display());
    path
}

/// `kubectl` with kustomize v5 or later: the venv's when `make k8s-tools` put one there (the
/// machine had none, or an older one), else the one on PATH.
fn kubectl() -> &'static Path {
    static KUBECTL: OnceLock<PathBuf> = OnceLock::new();
    KUBECTL.get_or_init(|| {
        let in_venv = venv().join("bin").join("kubectl");
        let kubectl = if in_venv.exists() {
            in_venv
        } else {
            PathBuf::from("kubectl")
        };
        let output = Command::new(&kubectl)
            .args(["version", "--client"])
            .output()
            .unwrap_or_else(|error| panic!("kubectl is missing ({error}): {INSTALL_HINT}"));
        let text = String::from_utf8_lossy(&output.stdout);
        let major = text
            .lines()
            .find_map(|line| line.strip_prefix("Kustomize Version: v"))
            .and_then(|version| version.split('.').next())
            .and_then(|major| major.parse::<u32>().ok());
        assert!(
            major.is_some_and(|major| major >= 5),
            "{} has no kustomize v5 (components, `labels`):\n{text}\n{INSTALL_HINT}",
            kubectl.display()
        );
        kubectl
    })
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// --- rendering ---------------------------------------------------------------------------

fn k8s_dir() -> PathBuf {
    repo_root().join("deploy").join("k8s")
}

/// Where rendered manifests and the kustomizations that combine an overlay with components go.
fn work_dir() -> PathBuf {
    let dir = repo_root().join("target").join("k8s-checks");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A rendered kustomization: its name, the YAML `kubectl kustomize` printed, and its objects.
struct Rendered {
    name: String,
    file: PathBuf,
    objects: Vec<Value>,
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|object| object["kind"] == kind)
            .collect()
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.name))
    }
}

/// `kubectl kustomize` of `dir`, written to `target/k8s-checks/<name>.yaml` and parsed.
fn render_dir(name: &str, dir: &Path) -> Rendered {
    let output = run(Command::new(kubectl()).arg("kustomize").arg(dir));
    assert!(
        output.status.success(),
        "`kubectl kustomize {}` failed:\n{}",
        dir.display(),
        text(&output)
    );
    let file = work_dir().join(format!("{name}.yaml"));
    std::fs::write(&file, &output.stdout).unwrap();
    // YAML to JSON with the venv's PyYAML: the workspace has no YAML crate, and needs none.
    let python = venv_tool("python");
    let converted = run(Command::new(python)
        .arg("-c")
        .arg(
            "import json, sys, yaml\n\
         json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
        )
        .arg(&file));
    assert!(converted.status.success(), "{}", text(&converted));
    let objects: Vec<Value> = serde_json::from_slice(&converted.stdout).unwrap();
    assert!(!objects.is_empty(), "{name} renders no object");
    Rendered {
        name: name.to_owned(),
        file,
        objects,
    }
}

/// An overlay plus optional components, through a kustomization of our own under `target/`
/// (kustomize takes only relative paths to other kustomizations).
fn render_with_components(name: &str, overlay: &str, components: &[&str]) -> Rendered {
    let dir = work_dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    // target/k8s-checks/<name> → the repository root is three levels up.
    let up = "../../../deploy/k8s";
    let mut kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {up}/overlays/{overlay}\ncomponents:\n"
    );
    for component in components {
        kustomization.push_str(&format!("  - {up}/components/{component}\n"));
    }
    std::fs::write(dir.join("kustomization.yaml"), kustomization).unwrap();
    render_dir(name, &dir)
}

fn dev() -> &'static Rendered {
    static DEV: OnceLock<Rendered> = OnceLock::new();
    DEV.get_or_init(|| render_dir("dev", &k8s_dir().join("overlays").join("dev")))
}

fn prod() -> &'static Rendered {
    static PROD: OnceLock<Rendered> = OnceLock::new();
    PROD.get_or_init(|| render_dir("prod", &k8s_dir().join("overlays").join("prod")))
}

/// dev with the observability stack.
fn dev_observability() -> &'static Rendered {
    static RENDERED: OnceLock<Rendered> = OnceLock::new();
    RENDERED.get_or_init(|| render_with_components("dev-observability", "dev", &["observability"]))
}

/// prod with the components whose objects come from CRDs.
fn prod_crds() -> &'static Rendered {
    static RENDERED: OnceLock<Rendered> = OnceLock::new();
    RENDERED.get_or_init(|| render_with_components("prod-crds", "prod", &["service-monitor", "gateway-api"]))
}

fn every_rendering() -> [&'static Rendered; 4] {
    [dev(), prod(), dev_observability(), prod_crds()]
}

/// Every directory under deploy/k8s/overlays: each must render and validate.
fn overlay_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(k8s_dir().join("overlays"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// --- the services' own configuration -------------------------------------------------------

/// Each service binary and its clap definition: the source of truth for what it reads.
fn services() -> Vec<(&'static str, clap::Command)> {
    vec![
        ("gateway", gateway::GatewayConfig::command()),
        ("catalog", catalog::CatalogConfig::command()),
        ("cart", cart::CartConfig::command()),
        ("orders", orders::OrdersConfig::command()),
    ]
}

fn env_names(command: &clap::Command) -> Vec<String> {
    command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect()
}

/// service → the backends it calls: `CATALOG_SERVICE_URL` read means it calls the catalog.
fn backends_read() -> BTreeMap<String, Vec<(String, String)>> {
    services()
        .into_iter()
        .map(|(name, command)| {
            let backends = env_names(&command)
                .into_iter()
                .filter_map(|env| {
                    env.strip_suffix("_SERVICE_URL")
                        .map(|backend| (env.clone(), backend.to_lowercase()))
                })
                .collect();
            (name.to_owned(), backends)
        })
        .collect()
}

/// The variables naming a store a service keeps state in or publishes to: the other `*_URL`
/// settings, not a backend's and not the OTLP endpoint's.
fn store_variables() -> BTreeSet<String> {
    services()
        .iter()
        .flat_map(|(_, command)| env_names(command))
        .filter(|env| {
            env.ends_with("_URL")
                && !env.ends_with("_SERVICE_URL")
                && !env.starts_with("OTEL_")
                && !COLLECTOR_VARIABLES.contains(&env.as_str())
        })
        .collect()
}

/// The port a store listens on when its URL comes from a Secret (a URL in a ConfigMap names it).
fn store_port(variable: &str) -> u16 {
    match variable {
        "REDIS_URL" => 6379,
        "DATABASE_URL" => 5432,
        "NATS_URL" => 4222,
        other => panic!("a new store variable {other}: say which port it uses here"),
    }
}

/// The ports an external store may serve on: a managed Redis serves TLS on 6380 as often as on
/// 6379.
fn store_ports_outside(port: u16) -> Vec<u16> {
    if port == 6379 {
        vec![6379, 6380]
    } else {
        vec![port]
    }
}

/// Where the services' traces go: the OpenTelemetry Collector's namespace and OTLP/gRPC port.
const COLLECTOR: (&str, u16) = ("monitoring", 4317);
/// URLs of the collector other than the `OTEL_*` ones, with their default port: the gateway's
/// forwarder of the storefront's browser spans (OTLP/HTTP).
const COLLECTOR_VARIABLES: &[&str] = &["BROWSER_TRACES_URL"];

/// Variables whose values are secrets: clap hides their values from `--help`, and
/// `SERVICE_AUTH_SECRET` (a shared signing secret) and the JWT keys in any case.
fn secret_variables() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = services()
        .iter()
        .flat_map(|(_, command)| {
            command
                .get_arguments()
                .filter(|arg| arg.is_hide_env_values_set())
                .filter_map(|arg| arg.get_env())
                .map(|env| env.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for name in [
        "ADMIN_TOKEN",
        "SERVICE_AUTH_SECRET",
        "JWT_SECRET",
        "JWT_PUBLIC_KEY",
    ] {
        names.insert(name.to_owned());
    }
    names
}

// --- reading objects ---------------------------------------------------------------------

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(key, value)| (key.clone(), str_of(value).to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a label selector (`matchLabels`, `matchExpressions`) selects these labels.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let wanted = selector["matchLabels"].as_object();
    let by_labels = wanted.is_none_or(|wanted| {
        wanted
            .iter()
            .all(|(key, value)| labels.get(key).map(String::as_str) == value.as_str())
    });
    let by_expressions = selector["matchExpressions"].as_array().is_none_or(|expressions| {
        expressions.iter().all(|expression| {
            let value = labels.get(str_of(&expression["key"]));
            let values: Vec<&str> = expression["values"]
                .as_array()
                .map(|values| values.iter().map(str_of).collect())
                .unwrap_or_default();
            match str_of(&expression["operator"]) {
                "In" => value.is_some_and(|value| values.contains(&value.as_str())),
                "NotIn" => value.is_none_or(|value| !values.contains(&value.as_str())),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => panic!("unknown selector operator {other}"),
            }
        })
    });
    by_labels && by_expressions
}

/// A workload of the namespace: a Deployment or StatefulSet, its pod labels and pod spec.
struct Workload<'a> {
    name: String,
    pod_labels: BTreeMap<String, String>,
    pod: &'a Value,
}

fn workloads<'a>(rendered: &'a Rendered, namespace: &str) -> Vec<Workload<'a>> {
    rendered
        .objects
        .iter()
        .filter(|object| matches!(str_of(&object["kind"]), "Deployment" | "StatefulSet"))
        .filter(|object| object["metadata"]["namespace"] == namespace)
        .map(|object| Workload {
            name: str_of(&object["metadata"]["name"]).to_owned(),
            pod_labels: labels(&object["spec"]["template"]["metadata"]["labels"]),
            pod: &object["spec"]["template"]["spec"],
        })
        .collect()
}

/// Where a variable's value comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Value(String),
    Secret { name: String, key: String },
    Field(String),
    ConfigMapKey,
}

/// The environment of a workload's first container: `envFrom` ConfigMaps, then `env`.
fn environment(rendered: &Rendered, pod: &Value) -> BTreeMap<String, Source> {
    let container = &pod["containers"][0];
    let mut env = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let name = str_of(&from["configMapRef"]["name"]);
        assert!(!name.is_empty(), "envFrom other than a ConfigMap: {from}");
        let map = rendered.get("ConfigMap", name);
        for (key, value) in map["data"].as_object().into_iter().flatten() {
            env.insert(key.clone(), Source::Value(str_of(value).to_owned()));
        }
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        let name = str_of(&variable["name"]).to_owned();
        let from = &variable["valueFrom"];
        let source = if let Some(value) = variable["value"].as_str() {
            Source::Value(value.to_owned())
        } else if from["secretKeyRef"].is_object() {
            Source::Secret {
                name: str_of(&from["secretKeyRef"]["name"]).to_owned(),
                key: str_of(&from["secretKeyRef"]["key"]).to_owned(),
            }
        } else if from["fieldRef"].is_object() {
            Source::Field(str_of(&from["fieldRef"]["fieldPath"]).to_owned())
        } else {
            Source::ConfigMapKey
        };
        env.insert(name, source);
    }
    env
}

/// `scheme://[user@]host:port/…` → (host, port), the port defaulting to `default_port`.
fn host_and_port(url: &str, default_port: u16) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    match authority.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().unwrap()),
        None => (authority.to_owned(), default_port),
    }
}

/// A Service host as the pods write it (`catalog`, `catalog.shopstack`, `catalog.shopstack.svc…`)
/// → (Service name, namespace).
fn service_host(host: &str, namespace: &str) -> (String, String) {
    let mut parts = host.split('.');
    let name = parts.next().unwrap_or_default().to_owned();
    let in_namespace = parts.next().unwrap_or(namespace).to_owned();
    (name, in_namespace)
}

/// The workloads a Service at `host:port` in this namespace sends to, checking that it exists
/// and exposes the port.
fn service_targets(rendered: &Rendered, namespace: &str, host: &str, port: u16) -> Vec<String> {
    let (name, service_namespace) = service_host(host, namespace);
    assert_eq!(
        service_namespace, namespace,
        "{}: {host} is outside the namespace",
        rendered.name
    );
    let service = rendered.get("Service", &name);
    let ports: Vec<u64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|port| port["port"].as_u64())
        .collect();
    assert!(
        ports.contains(&u64::from(port)),
        "{}: Service {name} has no port {port} (ports {ports:?})",
        rendered.name
    );
    // A Service's selector is a plain label map, read here as `matchLabels`.
    let selector = serde_json::json!({ "matchLabels": service["spec"]["selector"] });
    let targets: Vec<String> = workloads(rendered, namespace)
        .into_iter()
        .filter(|workload| selects(&selector, &workload.pod_labels))
        .map(|workload| workload.name)
        .collect();
    assert!(
        !targets.is_empty(),
        "{}: Service {name} selects no workload",
        rendered.name
    );
    targets
}

// --- NetworkPolicies ---------------------------------------------------------------------

/// Who may talk to (ingress) or be reached by (egress) a pod, as a set of peers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    /// A workload of the same namespace.
    Workload(String),
    /// Any pod (or the pods a podSelector picks) of another namespace, by name.
    Namespace(String),
    /// An address range.
    Addresses(String),
    /// A rule without peers: anyone.
    Anyone,
}

/// The peers of one direction ("ingress"/"from" or "egress"/"to") of every policy that selects
/// the pod, each with the ports the rule opens (empty: all ports).
fn peers(
    rendered: &Rendered,
    namespace: &str,
    pod_labels: &BTreeMap<String, String>,
    direction: &str,
) -> Vec<(Peer, Vec<String>)> {
    let (policy_type, field) = match direction {
        "ingress" => ("Ingress", "from"),
        _ => ("Egress", "to"),
    };
    let all_workloads = workloads(rendered, namespace);
    let mut found = Vec::new();
    for policy in rendered.of_kind("NetworkPolicy") {
        if policy["metadata"]["namespace"] != namespace
            || !selects(&policy["spec"]["podSelector"], pod_labels)
        {
            continue;
        }
        let types: Vec<&str> = policy["spec"]["policyTypes"]
            .as_array()
            .map(|types| types.iter().map(str_of).collect())
            .unwrap_or_default();
        if !types.contains(&policy_type) {
            continue;
        }
        for rule in policy["spec"][direction].as_array().into_iter().flatten() {
            let ports: Vec<String> = rule["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|port| match &port["port"] {
                    Value::String(name) => name.clone(),
                    number => number.to_string(),
                })
                .collect();
            let rule_peers = rule[field].as_array().filter(|peers| !peers.is_empty());
            let Some(rule_peers) = rule_peers else {
                found.push((Peer::Anyone, ports));
                continue;
            };
            for peer in rule_peers {
                if let Some(block) = peer["ipBlock"].as_object() {
                    found.push((Peer::Addresses(str_of(&block["cidr"]).to_owned()), ports.clone()));
                } else if peer["namespaceSelector"].is_object() {
                    // Another namespace only by its name: a selector on other labels (or none)
                    // admits namespaces nobody here chose.
                    let names = labels(&peer["namespaceSelector"]["matchLabels"]);
                    let name = names
                        .get("kubernetes.io/metadata.name")
                        .cloned()
                        .unwrap_or_else(|| {
                            panic!(
                                "{}: policy {} selects namespaces by {names:?}, not by name",
                                rendered.name, policy["metadata"]["name"]
                            )
                        });
                    found.push((Peer::Namespace(name), ports.clone()));
                } else {
                    let selector = &peer["podSelector"];
                    let matched: Vec<&Workload> = all_workloads
                        .iter()
                        .filter(|workload| selects(selector, &workload.pod_labels))
                        .collect();
                    assert!(
                        !matched.is_empty(),
                        "{}: policy {} names pods no workload has: {selector}",
                        rendered.name,
                        policy["metadata"]["name"]
                    );
                    for workload in matched {
                        found.push((Peer::Workload(workload.name.clone()), ports.clone()));
                    }
                }
            }
        }
    }
    found
}

fn peer_set(found: &[(Peer, Vec<String>)]) -> BTreeSet<Peer> {
    found.iter().map(|(peer, _)| peer.clone()).collect()
}

/// The workloads of the namespace among `found`'s peers, by name.
fn workload_peers(found: &[(Peer, Vec<String>)]) -> BTreeSet<String> {
    peer_set(found)
        .into_iter()
        .filter_map(|peer| match peer {
            Peer::Workload(name) => Some(name),
            _ => None,
        })
        .collect()
}

/// Whether some rule lets `peer` through on `port` (a number, or the pod port's name).
fn allows(found: &[(Peer, Vec<String>)], peer: &Peer, ports: &[&str]) -> bool {
    found.iter().any(|(candidate, open)| {
        candidate == peer && (open.is_empty() || ports.iter().any(|port| open.iter().any(|o| o == port)))
    })
}

/// The service graph and the stores as the rendered configuration wires them, checked against
/// every NetworkPolicy of the namespace.
fn check_network_policies(rendered: &Rendered) {
    let namespace = "shopstack";
    let backends = backends_read();
    let store_vars = store_variables();
    let all = workloads(rendered, namespace);
    let service_names: BTreeSet<String> = backends.keys().cloned().collect();

    // Default deny, both ways, for every pod of the namespace.
    assert!(
        rendered.of_kind("NetworkPolicy").iter().any(|policy| {
            policy["metadata"]["namespace"] == namespace
                && policy["spec"]["podSelector"]
                    .as_object()
                    .is_some_and(serde_json::Map::is_empty)
                && policy["spec"]["ingress"].is_null()
                && policy["spec"]["egress"].is_null()
                && policy["spec"]["policyTypes"] == serde_json::json!(["Ingress", "Egress"])
        }),
        "{}: no default-deny policy (empty podSelector, Ingress and Egress, no rules)",
        rendered.name
    );

    // Who calls whom, from the configuration: expected ingress per workload, and expected
    // in-namespace egress per service.
    let mut callers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut reaches: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut external: BTreeMap<String, Vec<(Peer, u16)>> = BTreeMap::new();
    for workload in all.iter().filter(|w| service_names.contains(&w.name)) {
        let env = environment(rendered, workload.pod);
        let mut wanted =
            |variable: &str, default_port: u16, expected_backend: Option<&str>| match env.get(variable) {
                Some(Source::Value(urls)) => {
                    for url in urls.split(',') {
                        let (host, port) = host_and_port(url.trim(), default_port);
                        let (_, host_namespace) = service_host(&host, namespace);
                        if host_namespace != namespace {
                            external
                                .entry(workload.name.clone())
                                .or_default()
                                .push((Peer::Namespace(host_namespace), port));
                            continue;
                        }
                        let targets = service_targets(rendered, namespace, &host, port);
                        if let Some(backend) = expected_backend {
                            assert_eq!(
                                targets,
                                [backend],
                                "{}: {} {variable}={url} reaches {targets:?}",
                                rendered.name,
                                workload.name
                            );
                        }
                        for target in targets {
                            callers
                                .entry(target.clone())
                                .or_default()
                                .insert(workload.name.clone());
                            reaches.entry(workload.name.clone()).or_default().insert(target);
                        }
                    }
                }
                Some(Source::Secret { .. }) => external
                    .entry(workload.name.clone())
                    .or_default()
                    .push((Peer::Addresses(String::new()), default_port)),
                Some(other) => panic!("{}: {variable} from {other:?}", rendered.name),
                None => {
                    assert!(
                        expected_backend.is_none(),
                        "{}: {} reads {variable} but the manifests do not set it (it would \
                         call 127.0.0.1)",
                        rendered.name,
                        workload.name
                    );
                }
            };
        for (variable, backend) in &backends[&workload.name] {
            wanted(variable, 80, Some(backend));
        }
        for variable in &store_vars {
            wanted(variable, store_port(variable), None);
        }
        wanted("OTEL_EXPORTER_OTLP_ENDPOINT", 4317, None);
        wanted("BROWSER_TRACES_URL", 4318, None);
    }

    // The one service nobody in the namespace calls is the entry: only it admits traffic from
    // outside (the Ingress controller's or Gateway API implementation's namespace).
    let entries: Vec<&String> = service_names
        .iter()
        .filter(|name| !callers.contains_key(*name))
        .collect();
    assert_eq!(entries, ["gateway"], "{}: entry points", rendered.name);

    for workload in &all {
        let is_service = service_names.contains(&workload.name);
        let ingress = peers(rendered, namespace, &workload.pod_labels, "ingress");
        let egress = peers(rendered, namespace, &workload.pod_labels, "egress");
        let name = &workload.name;
        let context = format!("{}: {name}", rendered.name);
        let ports = container_ports(workload.pod);
        let port_refs: Vec<&str> = ports.iter().map(String::as_str).collect();

        // Ingress: exactly the callers the configuration names, plus outside namespaces only
        // for the entry (clients) and for scraping (monitoring).
        let in_namespace = workload_peers(&ingress);
        let expected = callers.get(name).cloned().unwrap_or_default();
        assert_eq!(
            in_namespace, expected,
            "{context} admits these workloads of the namespace; the configuration says these \
             call it"
        );
        for caller in &expected {
            assert!(
                allows(&ingress, &Peer::Workload(caller.clone()), &port_refs),
                "{context} admits {caller} on none of its ports {ports:?}"
            );
        }
        let outside: BTreeSet<Peer> = peer_set(&ingress)
            .into_iter()
            .filter(|peer| !matches!(peer, Peer::Workload(_)))
            .collect();
        assert!(
            !outside.contains(&Peer::Anyone)
                && !outside.iter().any(|peer| matches!(peer, Peer::Addresses(_))),
            "{context} admits anyone: {outside:?}"
        );
        if is_service {
            let monitoring = Peer::Namespace("monitoring".to_owned());
            assert!(
                allows(&ingress, &monitoring, &port_refs),
                "{context}: Prometheus in the namespace monitoring cannot scrape it"
            );
            let others: Vec<&Peer> = outside.iter().filter(|peer| **peer != monitoring).collect();
            if entries.contains(&name) {
                assert!(!others.is_empty(), "{context}: no client can reach the gateway");
            } else {
                assert!(others.is_empty(), "{context} admits {others:?} from outside");
            }
        } else {
            assert!(outside.is_empty(), "{context} admits {outside:?} from outside");
        }

        // Egress: exactly the backends and in-cluster stores it is configured with, DNS, and
        // the external stores and collector on their ports.
        let reached = workload_peers(&egress);
        let expected = reaches.get(name).cloned().unwrap_or_default();
        assert_eq!(
            reached, expected,
            "{context} may reach these workloads; its configuration names these"
        );
        assert!(
            !peer_set(&egress).contains(&Peer::Anyone),
            "{context} may reach anyone"
        );
        if !is_service {
            assert!(
                egress.is_empty(),
                "{context} (a store) may connect out: {egress:?}"
            );
            continue;
        }
        for target in &expected {
            let target_pod = all.iter().find(|w| &w.name == target).unwrap().pod;
            let target_ports = container_ports(target_pod);
            let refs: Vec<&str> = target_ports.iter().map(String::as_str).collect();
            assert!(
                allows(&egress, &Peer::Workload(target.clone()), &refs),
                "{context} may not reach {target} on its ports {target_ports:?}"
            );
        }
        let dns = Peer::Namespace("kube-system".to_owned());
        assert!(
            egress
                .iter()
                .any(|(peer, ports)| *peer == dns && ports.iter().any(|port| port == "53")),
            "{context} cannot resolve names (DNS in kube-system)"
        );
        for (peer, port) in external.get(name).into_iter().flatten() {
            let port = port.to_string();
            let allowed = egress.iter().any(|(candidate, open)| {
                let same = match (peer, candidate) {
                    (Peer::Addresses(_), Peer::Addresses(_)) => true,
                    _ => peer == candidate,
                };
                same && (open.is_empty() || open.contains(&port))
            });
            assert!(allowed, "{context} may not reach {peer:?} on port {port}");
        }

        // Nothing else leaves the namespace: DNS, the collector (whose place is opened even
        // where no endpoint is set), and the external stores on their ports.
        let expected_outside = external.get(name).cloned().unwrap_or_default();
        for (peer, open) in &egress {
            let only = |ports: &[String]| !open.is_empty() && open.iter().all(|port| ports.contains(port));
            let fine = match peer {
                Peer::Workload(_) => true,
                Peer::Namespace(namespace) if namespace == "kube-system" => only(&["53".to_owned()]),
                Peer::Namespace(namespace) if namespace == COLLECTOR.0 => only(&[COLLECTOR.1.to_string()]),
                Peer::Namespace(namespace) => expected_outside.iter().any(|(expected, port)| {
                    *expected == Peer::Namespace(namespace.clone()) && only(&[port.to_string()])
                }),
                Peer::Addresses(_) => {
                    let ports: Vec<String> = expected_outside
                        .iter()
                        .filter(|(expected, _)| matches!(expected, Peer::Addresses(_)))
                        .flat_map(|(_, port)| store_ports_outside(*port))
                        .map(|port| port.to_string())
                        .collect();
                    only(&ports)
                }
                Peer::Anyone => false,
            };
            assert!(
                fine,
                "{context} may reach {peer:?} on {open:?}, which its configuration does not use"
            );
        }
    }
}

/// A pod's container ports, by number and by name.
fn container_ports(pod: &Value) -> Vec<String> {
    pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|container| container["ports"].as_array().into_iter().flatten())
        .flat_map(|port| {
            [
                port["containerPort"].to_string(),
                str_of(&port["name"]).to_owned(),
            ]
        })
        .filter(|port| !port.is_empty())
        .collect()
}

// --- tests -------------------------------------------------------------------------------

#[test]
fn every_overlay_renders_and_validates_strictly_against_the_oldest_supported_kubernetes() {
    let overlays = overlay_names();
    for required in ["dev", "prod"] {
        assert!(
            overlays.iter().any(|name| name == required),
            "no overlay {required}"
        );
    }
    // Every overlay there is (a new one too), and the overlays with their components.
    let others: Vec<Rendered> = overlays
        .iter()
        .filter(|name| !matches!(name.as_str(), "dev" | "prod"))
        .map(|name| render_dir(name, &k8s_dir().join("overlays").join(name)))
        .collect();
    let validate = venv_tool("kubernetes-validate");
    for rendered in every_rendering().into_iter().chain(&others) {
        let output = run(Command::new(&validate)
            .args(["--strict", "--quiet", "--kubernetes-version", OLDEST_KUBERNETES])
            .arg(&rendered.file));
        let report = text(&output);
        assert!(
            output.status.success(),
            "{} does not validate against Kubernetes {OLDEST_KUBERNETES}:\n{report}",
            rendered.name
        );
        // kubernetes-validate only warns about kinds it has no schema for: CRDs. Those may
        // come only from the optional components.
        for line in report.lines().filter(|line| !line.trim().is_empty()) {
            let crd = CRD_KINDS
                .iter()
                .any(|kind| line.contains(&format!("Couldn't find schema for kind {kind} ")));
            assert!(crd && rendered.name.contains("crds"), "{}: {line}", rendered.name);
        }
    }
}

#[test]
fn crd_objects_live_only_in_the_optional_components() {
    let core_groups = [
        "v1",
        "apps/v1",
        "autoscaling/v2",
        "policy/v1",
        "networking.k8s.io/v1",
        "rbac.authorization.k8s.io/v1",
    ];
    for rendered in [dev(), prod(), dev_observability()] {
        for object in &rendered.objects {
            assert!(
                core_groups.contains(&str_of(&object["apiVersion"])),
                "{}: {} {} is not a built-in kind",
                rendered.name,
                object["apiVersion"],
                object["kind"]
            );
        }
    }
    // The components' CRD objects point at what the overlay renders.
    let rendered = prod_crds();
    let monitor = rendered.get("ServiceMonitor", "shopstack");
    let selected: BTreeSet<String> = rendered
        .of_kind("Service")
        .into_iter()
        .filter(|service| {
            selects(
                &monitor["spec"]["selector"],
                &labels(&service["metadata"]["labels"]),
            )
        })
        .map(|service| str_of(&service["metadata"]["name"]).to_owned())
        .collect();
    let services: BTreeSet<String> = backends_read().keys().cloned().collect();
    assert_eq!(selected, services, "the ServiceMonitor selects the four services");
    for endpoint in monitor["spec"]["endpoints"].as_array().unwrap() {
        assert_eq!(endpoint["path"], "/metrics");
        for service in &services {
            let ports = &rendered.get("Service", service)["spec"]["ports"];
            assert!(
                ports
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|port| port["name"] == endpoint["port"]),
                "Service {service} has no port named {}",
                endpoint["port"]
            );
        }
    }
    let route = rendered.get("HTTPRoute", "gateway");
    for backend in route["spec"]["rules"][0]["backendRefs"].as_array().unwrap() {
        let service = rendered.get("Service", str_of(&backend["name"]));
        assert_eq!(
            service["metadata"]["name"], "gateway",
            "the route leads to the gateway only"
        );
        assert_eq!(service["spec"]["ports"][0]["port"], backend["port"]);
    }
    assert!(
        rendered.of_kind("Ingress").is_empty(),
        "the HTTPRoute replaces the Ingress"
    );
}

#[test]
fn checkov_passes_on_every_rendering_and_every_skip_says_why() {
    let config = k8s_dir().join("checkov.yaml");
    // Each skipped check has its reason in the comment lines right above it.
    let text_of_config = std::fs::read_to_string(&config).unwrap();
    let lines: Vec<&str> = text_of_config.lines().collect();
    let mut skips = 0;
    for (index, line) in lines.iter().enumerate() {
        if let Some(check) = line.trim().strip_prefix("- CKV") {
            skips += 1;
            assert!(
                index > 0 && lines[index - 1].trim().starts_with('#'),
                "checkov.yaml skips CKV{check} without a reason above it"
            );
        }
    }
    assert!(skips > 0, "the skip list was not found in {}", config.display());
    // A skip on one object is an annotation `CHECK=reason`.
    for rendered in every_rendering() {
        for object in &rendered.objects {
            for (key, value) in object["metadata"]["annotations"]
                .as_object()
                .into_iter()
                .flatten()
            {
                if key.starts_with("checkov.io/skip") {
                    let reason = str_of(value).split_once('=').map(|(_, reason)| reason.trim());
                    assert!(
                        reason.is_some_and(|reason| reason.len() > 20),
                        "{}: {key}: {value} gives no reason",
                        rendered.name
                    );
                }
            }
        }
    }
    let checkov = venv_tool("checkov");
    let mut command = Command::new(checkov);
    command
        .arg("--config-file")
        .arg(&config)
        .args(["--compact", "--quiet"])
        // Offline: no version check, no download of guidelines.
        .env("CKV_SKIP_PACKAGE_UPDATE_CHECK", "true");
    for rendered in every_rendering() {
        command.arg("--file").arg(&rendered.file);
    }
    let output = run(&mut command);
    assert!(
        output.status.success(),
        "checkov fails on the rendered manifests:\n{}",
        text(&output)
    );
}

/// A probe's HTTP path on the container's `http` port.
fn probe_path<'a>(container: &'a Value, probe: &str) -> &'a str {
    let get = &container[probe]["httpGet"];
    assert_eq!(get["port"], "http", "{probe} on the http port");
    str_of(&get["path"])
}

/// `128Mi`, `1Gi`, `64M` → MiB.
fn mebibytes(quantity: &str) -> f64 {
    let (number, factor) = if let Some(number) = quantity.strip_suffix("Gi") {
        (number, 1024.0)
    } else if let Some(number) = quantity.strip_suffix("Mi") {
        (number, 1.0)
    } else if let Some(number) = quantity.strip_suffix('M') {
        (number, 1_000_000.0 / 1_048_576.0)
    } else {
        panic!("memory quantity {quantity}: write it in Mi or Gi");
    };
    number.parse::<f64>().unwrap() * factor
}

/// The measured RSS under load per service, from docs/performance.md's memory table.
fn loaded_rss() -> BTreeMap<String, f64> {
    let page = std::fs::read_to_string(repo_root().join("docs").join("performance.md")).unwrap();
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in page.lines() {
        if line.starts_with("| service | idle RSS (MiB) | RSS under load (MiB) |") {
            in_table = true;
            continue;
        }
        if in_table {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 4 {
                break;
            }
            if let Ok(rss) = cells[3].parse::<f64>() {
                rows.insert(cells[1].to_owned(), rss);
            }
        }
    }
    rows
}

fn seconds(milliseconds: &Source) -> u64 {
    match milliseconds {
        Source::Value(value) => value.parse::<u64>().unwrap().div_ceil(1000),
        other => panic!("a drain setting from {other:?}"),
    }
}

#[test]
fn every_service_pod_is_probed_sized_hardened_and_drained_within_its_grace_period() {
    let rss = loaded_rss();
    for rendered in [dev(), prod()] {
        for (service, _) in services() {
            let deployment = rendered.get("Deployment", service);
            let context = format!("{}: {service}", rendered.name);
            let pod = &deployment["spec"]["template"]["spec"];
            let container = &pod["containers"][0];

            assert_eq!(probe_path(container, "livenessProbe"), "/livez", "{context}");
            assert_eq!(probe_path(container, "readinessProbe"), "/readyz", "{context}");
            assert!(
                container["startupProbe"]["httpGet"].is_object(),
                "{context}: no startup probe"
            );

            let resources = &container["resources"];
            assert!(resources["requests"]["cpu"].is_string(), "{context}: CPU request");
            let request = mebibytes(str_of(&resources["requests"]["memory"]));
            let limit = mebibytes(str_of(&resources["limits"]["memory"]));
            let measured = rss[service];
            assert!(
                request >= measured && limit > request,
                "{context}: memory request {request} MiB and limit {limit} MiB against \
                 {measured} MiB measured under load (docs/performance.md)"
            );

            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{context}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{context}"
            );
            let security = &container["securityContext"];
            assert_eq!(security["readOnlyRootFilesystem"], true, "{context}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{context}");
            assert_eq!(
                security["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{context}"
            );

            // The drain fits the grace period: preStop sleep, then SIGTERM → SHUTDOWN_DRAIN_MS
            // serving with /readyz failing → SHUTDOWN_GRACE_MS for requests in flight → the
            // telemetry flush.
            let sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap_or_else(|| panic!("{context}: no preStop sleep action"));
            let env = environment(rendered, pod);
            let drain = seconds(&env["SHUTDOWN_DRAIN_MS"]);
            let grace = seconds(&env["SHUTDOWN_GRACE_MS"]);
            let period = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
            assert!(
                sleep + drain + grace + TELEMETRY_FLUSH_SECONDS <= period,
                "{context}: preStop {sleep} s + drain {drain} s + grace {grace} s + flush \
                 {TELEMETRY_FLUSH_SECONDS} s exceed terminationGracePeriodSeconds {period}"
            );

            assert_eq!(
                env["POD_NAME"],
                Source::Field("metadata.name".into()),
                "{context}"
            );
            assert_eq!(
                env["NODE_NAME"],
                Source::Field("spec.nodeName".into()),
                "{context}"
            );
            let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
            assert_eq!(annotations["prometheus.io/scrape"], "true", "{context}");
            assert_eq!(annotations["prometheus.io/path"], "/metrics", "{context}");
            assert_eq!(
                annotations["prometheus.io/port"],
                container["ports"][0]["containerPort"].to_string(),
                "{context}"
            );
            // The Dockerfile's target, named and tagged through kustomize `images:`.
            let image = str_of(&container["image"]);
            let (repository, tag) = image.rsplit_once(':').unwrap_or((image, ""));
            assert!(
                repository.rsplit('/').next() == Some(service) && !tag.is_empty() && tag != "latest",
                "{context}: image {image} is not a tagged build of the Dockerfile's {service} target"
            );
        }
    }
}

#[test]
fn every_pod_of_every_rendering_runs_hardened() {
    for rendered in every_rendering() {
        for object in &rendered.objects {
            if !matches!(str_of(&object["kind"]), "Deployment" | "StatefulSet") {
                continue;
            }
            let context = format!("{}: {}", rendered.name, object["metadata"]["name"]);
            let pod = &object["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{context}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{context}"
            );
            for container in pod["containers"].as_array().unwrap() {
                let security = &container["securityContext"];
                assert_eq!(security["readOnlyRootFilesystem"], true, "{context}");
                assert_eq!(security["allowPrivilegeEscalation"], false, "{context}");
                assert_eq!(
                    security["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{context}"
                );
                assert!(container["readinessProbe"].is_object(), "{context}: readiness");
                assert!(container["livenessProbe"].is_object(), "{context}: liveness");
                assert!(
                    container["resources"]["limits"]["memory"].is_string(),
                    "{context}: memory limit"
                );
            }
        }
    }
}

#[test]
fn prod_autoscales_budgets_disruptions_and_spreads_every_service() {
    let rendered = prod();
    for (service, _) in services() {
        let context = format!("prod: {service}");
        let deployment = rendered.get("Deployment", service);
        let pod_labels = labels(&deployment["spec"]["template"]["metadata"]["labels"]);
        assert!(
            deployment["spec"]["replicas"].is_null(),
            "{context}: the HPA owns the replica count; `replicas` would reset it on apply"
        );

        let hpa = rendered
            .of_kind("HorizontalPodAutoscaler")
            .into_iter()
            .find(|hpa| hpa["spec"]["scaleTargetRef"]["name"] == service)
            .unwrap_or_else(|| panic!("{context}: no HorizontalPodAutoscaler"));
        assert_eq!(hpa["apiVersion"], "autoscaling/v2", "{context}");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment", "{context}");
        assert_eq!(hpa["spec"]["minReplicas"], 2, "{context}");
        assert_eq!(hpa["spec"]["maxReplicas"], 10, "{context}");
        let metric = &hpa["spec"]["metrics"][0];
        assert_eq!(metric["resource"]["name"], "cpu", "{context}");
        assert_eq!(metric["resource"]["target"]["type"], "Utilization", "{context}");

        let budgets: Vec<&Value> = rendered
            .of_kind("PodDisruptionBudget")
            .into_iter()
            .filter(|pdb| selects(&pdb["spec"]["selector"], &pod_labels))
            .collect();
        assert_eq!(budgets.len(), 1, "{context}: one PodDisruptionBudget");
        let budget = &budgets[0]["spec"];
        assert!(
            budget["maxUnavailable"] == 1 || budget["minAvailable"] == 1,
            "{context}: the budget lets one pod go at a time: {budget}"
        );

        let spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
            .as_array()
            .unwrap_or_else(|| panic!("{context}: no topology spread"));
        assert!(
            spread.iter().any(|constraint| {
                constraint["topologyKey"] == "kubernetes.io/hostname"
                    && selects(&constraint["labelSelector"], &pod_labels)
                    && constraint["matchLabelKeys"]
                        .as_array()
                        .is_some_and(|keys| keys.iter().any(|key| key == "app.kubernetes.io/name"))
            }),
            "{context}: not spread across nodes per service"
        );

        // External stores over TLS, from the Secret; never a value in the manifests.
        let env = environment(rendered, &deployment["spec"]["template"]["spec"]);
        for variable in store_variables() {
            if let Some(source) = env.get(&variable) {
                assert!(
                    matches!(source, Source::Secret { .. }),
                    "{context}: {variable} from {source:?}, not the Secret"
                );
            }
        }
    }
    let ingresses = rendered.of_kind("Ingress");
    assert_eq!(ingresses.len(), 1, "prod: one Ingress");
    for path in ingresses[0]["spec"]["rules"][0]["http"]["paths"]
        .as_array()
        .unwrap()
    {
        assert_eq!(
            path["backend"]["service"]["name"], "gateway",
            "only the gateway is exposed"
        );
    }
    for service in rendered.of_kind("Service") {
        assert_ne!(
            service["spec"]["type"], "LoadBalancer",
            "{}",
            service["metadata"]["name"]
        );
        assert_ne!(
            service["spec"]["type"], "NodePort",
            "{}",
            service["metadata"]["name"]
        );
    }
}

#[test]
fn secrets_come_only_from_secrets_and_none_is_in_the_repository() {
    let secrets = secret_variables();
    for rendered in every_rendering() {
        assert!(
            rendered.of_kind("Secret").is_empty(),
            "{}: a Secret with its values in the repository",
            rendered.name
        );
        for map in rendered.of_kind("ConfigMap") {
            for (key, value) in map["data"].as_object().into_iter().flatten() {
                let value = str_of(value);
                // A URL without a password (dev's database, with PGPASSWORD from the Secret) is
                // configuration; a token, a key or a URL with credentials is not.
                let credentials = value
                    .split_once("://")
                    .and_then(|(_, rest)| rest.split('/').next())
                    .is_some_and(|authority| {
                        authority
                            .rsplit_once('@')
                            .is_some_and(|(user, _)| user.contains(':'))
                    });
                assert!(
                    !credentials && (!secrets.contains(key) || key.ends_with("_URL")),
                    "{}: ConfigMap {} holds the secret {key}",
                    rendered.name,
                    map["metadata"]["name"]
                );
            }
        }
        for workload in workloads(rendered, "shopstack") {
            let env = environment(rendered, workload.pod);
            for name in &secrets {
                if let Some(source) = env.get(name) {
                    let allowed = matches!(source, Source::Secret { .. })
                        || (name.ends_with("_URL") && matches!(source, Source::Value(_)));
                    assert!(
                        allowed,
                        "{}: {} takes {name} from {source:?}",
                        rendered.name, workload.name
                    );
                }
            }
        }
    }
    // Nothing in deploy/k8s generates a Secret from committed values.
    let mut stack = vec![k8s_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|extension| extension == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    !text.contains("secretGenerator") && !text.contains("kind: Secret\n"),
                    "{} commits a Secret",
                    path.display()
                );
            }
        }
    }
    // Every service needs the shared secrets.
    for (service, _) in services() {
        let deployment = prod().get("Deployment", service);
        let env = environment(prod(), &deployment["spec"]["template"]["spec"]);
        for name in ["ADMIN_TOKEN", "SERVICE_AUTH_SECRET"] {
            assert!(
                matches!(env.get(name), Some(Source::Secret { .. })),
                "prod: {service} gets no {name} from the Secret"
            );
        }
    }
}

#[test]
fn network_policies_admit_exactly_the_service_graph_the_configuration_names() {
    for rendered in every_rendering() {
        check_network_policies(rendered);
    }
}

#[test]
fn the_policy_check_fails_when_a_policy_admits_a_peer_the_configuration_does_not_name() {
    // The catalog's policy widened to admit every pod of the namespace: the check must refuse
    // it, naming the catalog.
    let mut objects = dev().objects.clone();
    for object in &mut objects {
        if object["kind"] == "NetworkPolicy" && object["metadata"]["name"] == "catalog" {
            object["spec"]["ingress"][0]["from"] = serde_json::json!([{ "podSelector": {} }]);
        }
    }
    let widened = Rendered {
        name: "dev with a widened catalog policy".to_owned(),
        file: dev().file.clone(),
        objects,
    };
    let result = std::panic::catch_unwind(|| check_network_policies(&widened));
    let message = result
        .err()
        .and_then(|panic| panic.downcast::<String>().ok())
        .expect("a catalog policy admitting every pod passes the check");
    assert!(
        message.contains("dev with a widened catalog policy: catalog"),
        "{message}"
    );
}
