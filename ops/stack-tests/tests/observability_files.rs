//! The observability files agree with each other and with the services, where no running
//! Loki, Tempo or Docker engine is needed to tell: dashboards only use provisioned data
//! sources and defined variables, their links lead to dashboards that exist, Loki queries only
//! select on the labels the log shipper sets, every alert has a promtool test, the compose
//! file runs every component with limits and healthchecks, and latency exemplars are stored and
//! lead to their trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use stack_tests::dashboards::{self, Dashboard};
use stack_tests::{observability_path, repo_root};

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn boards() -> Vec<Dashboard> {
    dashboards::load_all(&observability_path("grafana/dashboards")).unwrap()
}

/// uid → type of each provisioned data source.
fn provisioned_datasources() -> BTreeMap<String, String> {
    let text = read(&observability_path(
        "grafana/provisioning/datasources/datasources.yml",
    ));
    let mut sources = BTreeMap::new();
    let mut uid = None;
    for line in text.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("uid:") {
            uid = Some(value.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("type:")
            && let Some(uid) = uid.take()
        {
            sources.insert(uid, value.trim().to_owned());
        }
    }
    sources
}

#[test]
fn the_five_dashboards_exist_with_unique_uids() {
    let boards = boards();
    let uids: BTreeSet<&str> = boards.iter().map(|board| board.uid.as_str()).collect();
    assert_eq!(uids.len(), boards.len(), "duplicate dashboard uids");
    for uid in [
        "shopstack-overview",
        "shopstack-gateway",
        "shopstack-business",
        "shopstack-loadtest",
        "shopstack-traces",
    ] {
        assert!(uids.contains(uid), "missing dashboard {uid}");
    }
    for board in &boards {
        assert!(!board.panels().is_empty(), "{} has no panels", board.uid);
        let ids: Vec<u64> = board
            .panels()
            .iter()
            .filter_map(|panel| panel.get("id").and_then(serde_json::Value::as_u64))
            .collect();
        let unique: BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{}: duplicate panel ids", board.uid);
    }
}

#[test]
fn every_query_uses_a_provisioned_data_source_and_defined_variables() {
    let sources = provisioned_datasources();
    assert_eq!(
        sources,
        BTreeMap::from([
            ("loki".to_owned(), "loki".to_owned()),
            ("prometheus".to_owned(), "prometheus".to_owned()),
            ("tempo".to_owned(), "tempo".to_owned()),
        ])
    );
    let mut kinds = BTreeSet::new();
    for board in boards() {
        for query in board.queries().unwrap() {
            assert_eq!(
                sources.get(&query.datasource.uid),
                Some(&query.datasource.kind),
                "{}: data source {:?} is not provisioned",
                query.name(),
                query.datasource
            );
            kinds.insert(query.datasource.kind.clone());
            // After substitution no `$name` may remain (label_replace's `${1}` is not a variable).
            let leftover = query
                .expr
                .match_indices('$')
                .map(|(index, _)| &query.expr[index..])
                .find(|rest| !rest.starts_with("${") || !rest[2..].starts_with(|c: char| c.is_ascii_digit()));
            assert!(
                leftover.is_none(),
                "{}: undefined variable in {:?}",
                query.name(),
                query.expr
            );
        }
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["loki".to_owned(), "prometheus".to_owned(), "tempo".to_owned()]),
        "the dashboards query all three data sources"
    );
}

#[test]
fn dashboard_links_lead_to_existing_dashboards() {
    let boards = boards();
    let uids: BTreeSet<String> = boards.iter().map(|board| board.uid.clone()).collect();
    for board in &boards {
        let text = board.json.to_string();
        for (index, _) in text.match_indices("/d/") {
            let uid: String = text[index + 3..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            assert!(
                uids.contains(&uid),
                "{} links to unknown dashboard {uid}",
                board.uid
            );
        }
    }
    // The alerts' dashboard annotations too.
    let alerts = read(&observability_path("prometheus/rules/alerts.yml"));
    for line in alerts
        .lines()
        .filter_map(|line| line.trim().strip_prefix("dashboard: /d/"))
    {
        assert!(
            uids.contains(line.trim()),
            "an alert links to unknown dashboard {line}"
        );
    }
}

#[test]
fn loki_queries_select_only_on_the_labels_the_log_shipper_sets() {
    let shipper = read(&observability_path("alloy/config.alloy"));
    let labels_block = shipper
        .split("stage.labels")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_default();
    let shipped: BTreeSet<&str> = ["service", "level"]
        .into_iter()
        .filter(|label| labels_block.contains(&format!("{label} ")))
        .collect();
    assert_eq!(shipped, BTreeSet::from(["service", "level"]), "{labels_block}");
    for board in boards() {
        for query in board.queries().unwrap() {
            if query.datasource.kind != "loki" {
                continue;
            }
            let selector = query
                .raw
                .split_once('{')
                .and_then(|(_, rest)| rest.split_once('}'))
                .map(|(inside, _)| inside)
                .unwrap_or_else(|| panic!("{}: no stream selector", query.name()));
            for matcher in selector.split(',') {
                let label: String = matcher
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    shipped.contains(label.as_str()),
                    "{}: selects on label {label:?}, which the shipper does not set",
                    query.name()
                );
            }
        }
    }
    // The derived field and the trace → logs link both rely on the JSON field `trace_id`.
    let datasources = read(&observability_path(
        "grafana/provisioning/datasources/datasources.yml",
    ));
    assert!(datasources.contains(r#""trace_id":"#));
    assert!(datasources.contains("tracesToLogsV2"));
}

#[test]
fn every_alert_has_a_promtool_unit_test() {
    let alerts = read(&observability_path("prometheus/rules/alerts.yml"));
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(names.len() >= 6, "{names:?}");
    let tests_dir = observability_path("prometheus/tests");
    let tests: String = std::fs::read_dir(&tests_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| read(&entry.path()))
        .collect();
    for name in names {
        let firing = tests
            .split("alertname: ")
            .skip(1)
            .filter(|rest| rest.starts_with(name))
            .count();
        assert!(
            firing >= 2,
            "{name}: test it firing and not firing ({firing} cases)"
        );
    }
}

/// The top-level `services:` of docker-compose.yml, as name → block of text.
fn compose_services() -> BTreeMap<String, String> {
    let text = read(&repo_root().join("docker-compose.yml"));
    let services = text
        .split("\nservices:\n")
        .nth(1)
        .and_then(|rest| rest.split("\nvolumes:\n").next())
        .expect("a services: section followed by volumes:");
    let mut blocks = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in services.lines() {
        let is_header = line.starts_with("  ")
            && !line.starts_with("   ")
            && line.trim_end().ends_with(':')
            && !line.trim_start().starts_with('#');
        if is_header {
            current = Some(line.trim().trim_end_matches(':').to_owned());
            blocks.insert(current.clone().unwrap_or_default(), String::new());
        } else if let Some(name) = &current {
            let block = blocks.entry(name.clone()).or_insert_with(String::new);
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks
}

#[test]
fn compose_runs_every_component_with_limits() {
    let services = compose_services();
    let expected = [
        "gateway",
        "catalog",
        "cart",
        "orders",
        "redis",
        "order-cache",
        "postgres",
        "nats",
        "otel-collector",
        "prometheus",
        "grafana",
        "tempo",
        "loki",
        "log-shipper",
    ];
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(expected));
    let anchors = read(&repo_root().join("docker-compose.yml"));
    for (name, block) in &services {
        let limited = block.contains("mem_limit:") || block.contains("<<: *service\n");
        assert!(limited, "{name} has no memory limit");
    }
    assert!(anchors.contains("x-service: &service\n  restart: unless-stopped\n  mem_limit:"));
    for service in ["gateway", "catalog", "cart", "orders"] {
        let block = &services[service];
        assert!(
            block.contains(&format!("target: {service}")),
            "{service} is built from its Dockerfile stage"
        );
        assert!(
            block.contains(&format!(
                r#"test: ["CMD", "/usr/local/bin/{service}", "healthcheck"]"#
            )),
            "{service} has the binary's own healthcheck"
        );
        assert!(block.contains(&format!("LOG_FILE: /var/log/shopstack/{service}.log")));
    }
    for heavy in ["otel-collector", "tempo", "loki", "log-shipper"] {
        assert!(
            services[heavy].contains("profiles: [full]"),
            "{heavy} belongs to the full profile only"
        );
    }
    assert!(services["nats"].contains("--jetstream"));
    assert!(services["grafana"].contains("GF_AUTH_ANONYMOUS_ENABLED: \"true\""));
    assert!(services["grafana"].contains("GF_AUTH_ANONYMOUS_ORG_ROLE: Viewer"));
    assert!(services["log-shipper"].contains("service-logs:/var/log/shopstack:ro"));
}

#[test]
fn the_dockerfile_builds_a_small_non_root_image_per_service() {
    let dockerfile = read(&repo_root().join("Dockerfile"));
    assert!(dockerfile.contains("FROM gcr.io/distroless/cc-debian12:nonroot AS runtime"));
    assert!(dockerfile.contains("USER 65532:65532"));
    for service in ["gateway", "catalog", "cart", "orders"] {
        assert!(dockerfile.contains(&format!("FROM runtime AS {service}\n")));
        assert!(dockerfile.contains(&format!(
            r#"HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/usr/local/bin/{service}", "healthcheck"]"#
        )));
    }
}

#[test]
fn prometheus_scrapes_every_service_on_its_port() {
    let config = read(&observability_path("prometheus/prometheus.yml"));
    for (service, port) in [
        ("gateway", 8000),
        ("catalog", 8001),
        ("cart", 8002),
        ("orders", 8003),
    ] {
        assert!(
            config.contains(&format!(
                "  - job_name: {service}\n    static_configs:\n      - targets: ['{service}:{port}']"
            )),
            "no scrape job for {service}:{port}"
        );
    }
}

#[test]
fn every_service_binary_answers_the_container_healthcheck() {
    // docker-compose.yml and the Dockerfile probe each service with `<binary> healthcheck`:
    // its `main` must handle that before parsing the configuration (clap would reject it).
    let mut checked = 0;
    for service in ["gateway", "catalog", "cart", "orders"] {
        let main = repo_root().join("apps").join(service).join("src").join("main.rs");
        if !main.exists() {
            // Not in this checkout yet (orders is built in parallel): nothing to probe.
            continue;
        }
        let text = read(&main);
        let probe = text
            .find("probe::healthcheck_from_args(")
            .unwrap_or_else(|| panic!("{service}'s main does not handle `{service} healthcheck`"));
        let parse = text.find("::parse()").unwrap_or(usize::MAX);
        assert!(
            probe < parse,
            "{service}: the probe must come before the config is parsed"
        );
        checked += 1;
    }
    assert!(checked >= 3);
}

#[test]
fn latency_exemplars_are_stored_and_lead_to_their_trace_in_tempo() {
    // Prometheus keeps the exemplars the services expose.
    let prometheus = &compose_services()["prometheus"];
    assert!(
        prometheus.contains("--enable-feature=exemplar-storage"),
        "{prometheus}"
    );

    // The Prometheus data source turns an exemplar's trace_id into a link to Tempo.
    let sources = provisioned_datasources();
    let text = read(&observability_path(
        "grafana/provisioning/datasources/datasources.yml",
    ));
    let destinations = text
        .split("exemplarTraceIdDestinations:")
        .nth(1)
        .expect("the Prometheus data source names where exemplars lead");
    let mut lines = destinations.lines().skip(1).map(str::trim);
    assert_eq!(
        lines.next(),
        Some("- name: trace_id"),
        "the exemplar label the services set"
    );
    let uid = lines
        .next()
        .and_then(|line| line.strip_prefix("datasourceUid:"))
        .map(str::trim)
        .expect("a datasourceUid");
    assert_eq!(sources.get(uid).map(String::as_str), Some("tempo"));

    // Every latency time series of the request histogram asks for exemplars on one query.
    let mut panels = 0;
    for board in boards() {
        for panel in board.panels() {
            let latency_targets: Vec<&serde_json::Value> = panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|target| {
                    target["expr"]
                        .as_str()
                        .is_some_and(|expr| expr.contains("http_request_duration_seconds_bucket"))
                })
                .collect();
            if panel["type"] != "timeseries" || latency_targets.is_empty() {
                continue;
            }
            panels += 1;
            let with_exemplars = latency_targets
                .iter()
                .filter(|target| target["exemplar"] == true)
                .count();
            assert_eq!(
                with_exemplars, 1,
                "{} / {}: one query shows the exemplars",
                board.file, panel["title"]
            );
        }
    }
    assert!(panels >= 3, "{panels} latency panels");
}
