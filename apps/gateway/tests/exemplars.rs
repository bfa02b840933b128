//! A request's latency links to its trace: right after a request through the gateway to the
//! catalog, `/metrics` scraped as OpenMetrics shows the request's trace id as the exemplar of
//! an `http_request_duration_seconds` bucket — in the gateway (a proxied route, observed without
//! a `tracing` span) and in the catalog (the service kit's middleware). Only sampled requests
//! are linked, the Prometheus text format carries no exemplars, and an exemplar holds the trace
//! id alone: no header, key, token or id of the request reaches `/metrics`.
//!
//! The services run as child processes, as in production: each has its own telemetry set up
//! from its environment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use shopstack_testkit::process::{ServiceProcess, workspace_binary};

const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

async fn spawn(binary: PathBuf, env: Vec<(&'static str, String)>) -> ServiceProcess {
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(key, value)| (*key, value.as_str())).collect();
        ServiceProcess::spawn(&binary, &env).unwrap()
    })
    .await
    .unwrap()
}

/// The catalog, and the gateway in front of it, both with `env`.
async fn gateway_and_catalog(env: &[(&'static str, &str)]) -> (ServiceProcess, ServiceProcess) {
    let mut common: Vec<(&'static str, String)> = vec![("SIMULATION", "off".into())];
    common.extend(env.iter().map(|(key, value)| (*key, (*value).to_owned())));
    let catalog = spawn(workspace_binary("catalog"), common.clone()).await;
    let mut gateway_env = common;
    gateway_env.push(("CATALOG_SERVICE_URL", catalog.url("")));
    let gateway = spawn(PathBuf::from(env!("CARGO_BIN_EXE_gateway")), gateway_env).await;
    (gateway, catalog)
}

/// `GET /catalog/prod-110` through the gateway, with `traceparent` when given; the trace id the
/// gateway answers with.
async fn product_request(gateway: &ServiceProcess, traceparent: Option<&str>) -> String {
    let mut request = shopstack_testkit::http::client().get(gateway.url("/catalog/prod-110"));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.headers()["x-trace-id"].to_str().unwrap().to_owned()
}

/// `/metrics` asked for with `accept`: the content type and the body.
async fn scrape(service: &ServiceProcess, accept: &str) -> (String, String) {
    let response = shopstack_testkit::http::client()
        .get(service.url("/metrics"))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    (content_type, response.text().await.unwrap())
}

/// The `http_request_duration_seconds` bucket lines of `route` whose exemplar is `trace_id`.
fn exemplars_of<'a>(openmetrics: &'a str, route: &str, trace_id: &str) -> Vec<&'a str> {
    let route = format!("route=\"{route}\"");
    let exemplar = format!(" # {{trace_id=\"{trace_id}\"}} ");
    openmetrics
        .lines()
        .filter(|line| line.starts_with("http_request_duration_seconds_bucket{"))
        .filter(|line| line.contains(&route) && line.contains(&exemplar))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_of_a_sampled_request_links_to_its_trace_in_the_gateway_and_the_catalog() {
    let (gateway, catalog) = gateway_and_catalog(&[]).await;

    // A request that starts its trace: sampled, its trace id answered in `x-trace-id`.
    let trace_id = product_request(&gateway, None).await;
    for (service, route) in [(&gateway, "/catalog/{id}"), (&catalog, "/catalog/{id}")] {
        let (content_type, openmetrics) = scrape(service, OPENMETRICS).await;
        assert_eq!(
            content_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert!(openmetrics.ends_with("# EOF\n"));
        let exemplars = exemplars_of(&openmetrics, route, &trace_id);
        assert_eq!(exemplars.len(), 1, "one bucket holds the request:\n{openmetrics}");
        // The exemplar is the trace id and nothing else: `{trace_id="…"} <seconds> <timestamp>`.
        let (_, exemplar) = exemplars[0].split_once(" # ").unwrap();
        let fields: Vec<&str> = exemplar.split(' ').collect();
        assert_eq!(fields.len(), 3, "{exemplar}");
        assert!(fields[1].parse::<f64>().unwrap() >= 0.0, "{exemplar}");
        assert!(fields[2].parse::<f64>().unwrap() > 1.6e9, "{exemplar}");

        // The same metrics in the Prometheus text format: no exemplars.
        let (content_type, text) = scrape(service, "text/plain").await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(!text.contains(&trace_id) && !text.contains("# EOF"));
        assert!(text.contains("http_request_duration_seconds_bucket{method=\"GET\",route=\"/catalog/{id}\""));
    }

    // A caller that does not sample its trace: nothing links to it.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let answered = product_request(&gateway, Some(&format!("00-{unsampled}-b7ad6b7169203331-00"))).await;
    assert_eq!(answered, unsampled);
    // A caller that samples it: linked.
    let sampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    product_request(&gateway, Some(&format!("00-{sampled}-00f067aa0ba902b7-01"))).await;
    for service in [&gateway, &catalog] {
        let (_, openmetrics) = scrape(service, OPENMETRICS).await;
        assert!(!openmetrics.contains(unsampled), "{openmetrics}");
        assert_eq!(
            exemplars_of(&openmetrics, "/catalog/{id}", sampled).len(),
            1,
            "{openmetrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_spans_are_exported_the_samplers_decision_says_what_is_linked() {
    // Nothing listens on the endpoint: exports fail, which the sampling decision does not see.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    for (sampler, linked) in [("always_off", false), ("parentbased_always_on", true)] {
        let (gateway, catalog) = gateway_and_catalog(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", sampler),
        ])
        .await;
        // The caller samples its trace; this stack's sampler decides whether it is recorded.
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        product_request(&gateway, Some(&format!("00-{trace_id}-00f067aa0ba902b7-01"))).await;
        for service in [&gateway, &catalog] {
            let (_, openmetrics) = scrape(service, OPENMETRICS).await;
            assert!(
                openmetrics
                    .contains("http_request_duration_seconds_count{method=\"GET\",route=\"/catalog/{id}\""),
                "{openmetrics}"
            );
            let found = exemplars_of(&openmetrics, "/catalog/{id}", trace_id).len();
            assert_eq!(found, usize::from(linked), "{sampler}:\n{openmetrics}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_request_but_its_trace_id_reaches_an_exemplar() {
    let (gateway, catalog) = gateway_and_catalog(&[]).await;
    let secrets = [
        "Bearer secret-token-7f3a",
        "idem-key-91c2",
        "request-id-5e8d",
        "shopper-42",
    ];
    let response = shopstack_testkit::http::client()
        .get(gateway.url("/catalog/prod-110?owner=shopper-42"))
        .header("authorization", secrets[0])
        .header("idempotency-key", secrets[1])
        .header("x-request-id", secrets[2])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let trace_id = response.headers()["x-trace-id"].to_str().unwrap().to_owned();

    for service in [&gateway, &catalog] {
        let (_, openmetrics) = scrape(service, OPENMETRICS).await;
        for secret in secrets {
            assert!(!openmetrics.contains(secret), "{secret}:\n{openmetrics}");
        }
        let exemplars: Vec<&str> = openmetrics
            .lines()
            .filter_map(|line| line.split_once(" # ").map(|(_, exemplar)| exemplar))
            .collect();
        assert!(
            exemplars.iter().any(|exemplar| exemplar.contains(&trace_id)),
            "{openmetrics}"
        );
        for exemplar in exemplars {
            let labels = exemplar.split(' ').next().unwrap();
            let id = labels
                .strip_prefix("{trace_id=\"")
                .and_then(|rest| rest.strip_suffix("\"}"))
                .unwrap_or_else(|| panic!("only trace_id: {exemplar}"));
            assert!(
                id.len() == 32 && id.bytes().all(|byte| byte.is_ascii_hexdigit()),
                "{exemplar}"
            );
        }
    }
}
