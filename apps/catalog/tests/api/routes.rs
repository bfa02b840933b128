//! Routes, errors, probes, metrics, OpenAPI, the admin simulation API, injected faults,
//! `/stress`, and graceful shutdown of the real binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use shopstack_base::config::Settings;
use shopstack_testkit::metrics::{metric_sum, scrape};
use shopstack_testkit::server::TestServer;
use shopstack_testkit::services;

pub use shopstack_testkit::http::{client, json_of};

pub const ADMIN: &str = "Bearer test-admin-token";

/// The catalog, its expired reservations reaped every 200 ms, with `tweak`ed settings.
pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> TestServer {
    services::catalog()
        .flags(&["--reservation-reap-interval", "200ms"])
        .settings(tweak)
        .start()
        .await
}

pub async fn spawn() -> TestServer {
    spawn_with(|_| {}).await
}

#[tokio::test]
async fn lists_products_a_page_at_a_time() {
    let server = spawn().await;
    let body = json_of(client().get(server.url("/catalog")).send().await.unwrap()).await;
    assert_eq!(body["products"].as_array().unwrap().len(), 20);
    assert_eq!(
        body["pagination"],
        json!({"page": 1, "page_size": 20, "total": 60, "total_pages": 3})
    );

    let last = json_of(
        client()
            .get(server.url("/catalog?page=3&page_size=25"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(last["products"].as_array().unwrap().len(), 10);
    assert_eq!(last["pagination"]["total_pages"], 3);

    let clamped = json_of(
        client()
            .get(server.url("/catalog?page_size=1000"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(clamped["pagination"]["page_size"], 100);
    assert_eq!(clamped["products"].as_array().unwrap().len(), 60);
}

#[tokio::test]
async fn searches_by_words_and_category() {
    let server = spawn().await;
    let body = json_of(
        client()
            .get(server.url("/catalog?q=coffee"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let products = body["products"].as_array().unwrap();
    assert!(!products.is_empty());
    for product in products {
        let text = format!(
            "{} {} {}",
            product["name"], product["description"], product["categories"]
        )
        .to_lowercase();
        assert!(text.contains("coffee"), "{product}");
    }
    let none = json_of(
        client()
            .get(server.url("/catalog?q=zeppelin"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(none["pagination"]["total"], 0);
    let shoes = json_of(
        client()
            .get(server.url("/catalog?category=shoes"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        shoes["products"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["categories"].as_array().unwrap().contains(&json!("shoes")))
    );
}

#[tokio::test]
async fn bad_paging_is_a_problem_400() {
    let server = spawn().await;
    for query in ["page=0", "page_size=0", "page=abc", "page_size=-3"] {
        let response = client()
            .get(server.url(&format!("/catalog?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let body = json_of(response).await;
        assert_eq!(body["status"], 400);
        assert!(body["detail"].as_str().unwrap().len() > 3);
    }
}

#[tokio::test]
async fn gets_one_product_with_an_exact_price() {
    let server = spawn().await;
    let response = client()
        .get(server.url("/catalog/prod-123"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(text.contains("\"price\":139.99"), "{text}");
    let product: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(product["id"], "prod-123");
    assert_eq!(product["currency"], "USD");
    assert!(product["stock"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn unknown_product_is_a_problem_404() {
    let server = spawn().await;
    let response = client()
        .get(server.url("/catalog/prod-999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body = json_of(response).await;
    assert_eq!(body["type"], "https://shopstack.dev/problems/not-found");
    assert_eq!(body["title"], "Not Found");
    assert_eq!(body["product_id"], "prod-999999");

    let unrouted = client().get(server.url("/no/such/route")).send().await.unwrap();
    assert_eq!(unrouted.status(), StatusCode::NOT_FOUND);
    assert_eq!(unrouted.headers()["content-type"], "application/problem+json");
    let wrong_method = client().delete(server.url("/catalog")).send().await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn probes_answer_in_their_documented_shapes() {
    let server = spawn().await;
    for path in ["/livez", "/health"] {
        let body = json_of(client().get(server.url(path)).send().await.unwrap()).await;
        assert_eq!(body["status"], "alive", "{path}");
    }
    for path in ["/readyz", "/ready"] {
        let response = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(json_of(response).await["status"], "ready");
    }
    let health = json_of(client().get(server.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["service"], "catalog");
    assert_eq!(health["pod_name"], "catalog-test");
    assert_eq!(health["node_name"], "test-node");
}

#[tokio::test]
async fn metrics_parse_and_label_routes_by_template() {
    let server = spawn().await;
    for id in ["prod-123", "prod-456", "no-such-product"] {
        client()
            .get(server.url(&format!("/catalog/{id}")))
            .send()
            .await
            .unwrap();
    }
    client()
        .get(server.url("/definitely/not/a/route"))
        .send()
        .await
        .unwrap();
    let (text, samples) = scrape(&server.url("/metrics")).await;
    let labels = [
        ("service", "catalog"),
        ("method", "GET"),
        ("route", "/catalog/{id}"),
    ];
    assert_eq!(
        metric_sum(
            &samples,
            "http_requests_total",
            &[labels[0], labels[1], labels[2], ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        metric_sum(
            &samples,
            "http_requests_total",
            &[labels[0], labels[1], labels[2], ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(&samples, "http_requests_total", &[("route", "unmatched")]),
        1.0
    );
    assert_eq!(
        metric_sum(&samples, "http_request_duration_seconds_count", &labels),
        3.0
    );
    assert!(samples.iter().any(|s| s.name == "http_requests_in_flight"));
    assert!(samples.iter().any(|s| s.name == "process_resident_memory_bytes"));
    // Routes are templates; ids a client sent never become label values (the stock gauge's
    // product_id comes from the catalogue, a bounded set).
    for sample in &samples {
        if let Some(route) = sample.labels.get("route") {
            assert!(
                !route.contains("prod-") && !route.contains("definitely"),
                "raw path in {sample:?}"
            );
        }
    }
    for raw in ["no-such-product", "/definitely/not"] {
        assert!(!text.contains(raw), "{raw} leaked into /metrics");
    }
}

#[tokio::test]
async fn openapi_document_and_offline_docs_page() {
    let server = spawn().await;
    let doc = json_of(client().get(server.url("/openapi.json")).send().await.unwrap()).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // Owner, product and order ids in the inventory routes and bodies.
    assert!(shopstack_testkit::openapi::assert_id_patterns(&doc) >= 8);
    for path in [
        "/catalog",
        "/catalog/{id}",
        "/healthz",
        "/metrics",
        "/admin/simulation",
        "/stress",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the document");
    }
    let page = client().get(server.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"));
    assert!(
        !html.contains("https://"),
        "the docs page must not need the internet"
    );
}

#[tokio::test]
async fn admin_simulation_needs_the_token_and_validates() {
    let server = spawn().await;
    let url = server.url("/admin/simulation");
    assert_eq!(
        client().get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let wrong = client()
        .get(&url)
        .header("authorization", "Bearer nope-nope-nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    let anonymous_put = client()
        .put(&url)
        .json(&json!({"failure_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_put.status(), StatusCode::UNAUTHORIZED);

    let before = json_of(
        client()
            .get(&url)
            .header("authorization", ADMIN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    for (bad, status) in [
        (json!({"failure_rate": 2}), StatusCode::BAD_REQUEST),
        // Each bound is fine alone; together they contradict each other.
        (
            json!({"latency_min_ms": 10, "latency_max_ms": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"nonsense": true}), StatusCode::BAD_REQUEST),
        (json!({"failure_status": 200}), StatusCode::BAD_REQUEST),
    ] {
        let response = client()
            .put(&url)
            .header("authorization", ADMIN)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{bad}");
    }
    let after = json_of(
        client()
            .get(&url)
            .header("authorization", ADMIN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(before, after, "rejected updates must change nothing");

    let updated = json_of(
        client()
            .put(&url)
            .header("authorization", ADMIN)
            .json(&json!({"enabled": true, "applies_to": "reads", "failure_rate": 0.5}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(updated["failure_rate"], 0.5);
    assert_eq!(updated["applies_to"], "reads");
}

#[tokio::test]
async fn admin_is_closed_when_no_token_is_configured() {
    let server = spawn_with(|settings| {
        settings.admin_token = None;
    })
    .await;
    let response = client()
        .get(server.url("/admin/simulation"))
        .header("authorization", ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

async fn set_simulation(server: &TestServer, profile: Value) {
    let response = client()
        .put(server.url("/admin/simulation"))
        .header("authorization", ADMIN)
        .json(&profile)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn injected_failures_follow_the_rate_and_are_labelled() {
    let server = spawn().await;
    set_simulation(
        &server,
        json!({"enabled": true, "applies_to": "reads", "failure_rate": 0.3, "failure_status": 503}),
    )
    .await;
    let total = 400;
    let mut injected = 0;
    for _ in 0..total {
        let response = client()
            .get(server.url("/catalog/prod-123"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(response.headers()["x-injected-fault"], "true");
            assert_eq!(response.headers()["content-type"], "application/problem+json");
            injected += 1;
        } else {
            assert_eq!(response.status(), StatusCode::OK);
        }
    }
    // Binomial(400, 0.3): mean 120, sd ≈ 9.2; ±46 is 5 sd.
    assert!(
        (74..=166).contains(&injected),
        "{injected} injected failures of {total}"
    );

    // Probes and metrics are never faulted.
    for _ in 0..50 {
        assert_eq!(
            client().get(server.url("/livez")).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    let (_, samples) = scrape(&server.url("/metrics")).await;
    let counted = metric_sum(
        &samples,
        "simulation_faults_injected_total",
        &[("kind", "error"), ("route", "/catalog/{id}")],
    );
    assert_eq!(counted, f64::from(injected));
    assert_eq!(
        metric_sum(&samples, "simulation_failure_rate_ppm", &[]),
        300_000.0
    );

    // The request log line says the failure was injected.
    let logs = shopstack_testkit::init_telemetry().json_lines();
    assert!(
        logs.iter()
            .any(|line| line["service"] == "catalog" && line["injected"] == true && line["status"] == 503)
    );
}

#[tokio::test]
async fn injected_latency_is_applied_and_off_means_off() {
    let server = spawn().await;
    set_simulation(
        &server,
        json!({"enabled": true, "applies_to": "reads", "latency_min_ms": 30, "latency_max_ms": 40}),
    )
    .await;
    for _ in 0..10 {
        client()
            .get(server.url("/catalog/prod-123"))
            .send()
            .await
            .unwrap();
    }
    set_simulation(&server, json!({"enabled": false})).await;
    for _ in 0..10 {
        client()
            .get(server.url("/catalog/prod-456"))
            .send()
            .await
            .unwrap();
    }
    let (_, samples) = scrape(&server.url("/metrics")).await;
    // Ten delays injected while on, none while off.
    assert_eq!(
        metric_sum(
            &samples,
            "simulation_faults_injected_total",
            &[("kind", "latency")]
        ),
        10.0
    );
    // Every delayed request took at least the minimum delay: none of them fall in buckets below 30 ms.
    let route = [("route", "/catalog/{id}"), ("method", "GET")];
    let count = metric_sum(&samples, "http_request_duration_seconds_count", &route);
    let under_25ms = metric_sum(
        &samples,
        "http_request_duration_seconds_bucket",
        &[route[0], route[1], ("le", "0.025")],
    );
    assert_eq!(count, 20.0);
    assert!(
        count - under_25ms >= 10.0,
        "{under_25ms} of {count} requests were faster than 25 ms"
    );
}

#[tokio::test]
async fn stress_is_capped_and_one_at_a_time() {
    let server = spawn().await;
    let ok = client()
        .post(server.url("/stress?cpu_iterations=3&memory_mb=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let report = json_of(ok).await;
    assert_eq!(report["primes_calculated"], 1229);
    assert_eq!(report["message"], "Stress test completed successfully");
    assert!(report["computation_time"].as_str().unwrap().ends_with('s'));
    for query in ["cpu_iterations=10001", "memory_mb=1001", "cpu_iterations=-1"] {
        let response = client()
            .post(server.url(&format!("/stress?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }

    let disabled = spawn_with(|settings| {
        settings.stress_enabled = false;
    })
    .await;
    let response = client().post(disabled.url("/stress")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn readiness_fails_first_and_in_flight_requests_finish_on_shutdown() {
    let mut server = spawn_with(|settings| {
        settings.shutdown_drain = Duration::from_millis(800);
        settings.simulation.enabled = true;
        settings.simulation.header_faults = true;
    })
    .await;
    let slow = tokio::spawn({
        let url = server.url("/catalog/prod-123");
        async move { client().get(url).header("x-fault-delay-ms", "1500").send().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = client().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_of(ready).await["status"], "draining");
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), StatusCode::OK, "the in-flight request must finish");
    server.stop().await.unwrap();
}

/// An idle keep-alive connection is closed at shutdown, not waited for until the grace period
/// (5 s in test settings) runs out.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed_at_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = spawn().await;
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nhost: catalog\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let read = idle.read(&mut answer).await.unwrap();
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..read])
    );

    tokio::time::timeout(Duration::from_secs(3), server.stop())
        .await
        .expect("shutdown must not wait out the grace period for an idle connection")
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut answer))
        .await
        .expect("the server closes the idle connection");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}

/// A client that shuts its sending side after its request (HTTP/1.1 allows it) still gets the
/// answer: a request in flight runs to its end rather than being cut when the server reads EOF
/// (the shared server's `half_close`).
#[tokio::test]
async fn a_client_that_shuts_its_sending_side_still_gets_its_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = spawn_with(|settings| {
        settings.simulation.enabled = true;
        settings.simulation.header_faults = true;
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /catalog/prod-123 HTTP/1.1\r\nhost: catalog\r\nx-fault-delay-ms: 300\r\n\r\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and then closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("prod-123"), "{answer}");
}

/// The real binary: SIGTERM → readiness fails, the in-flight request finishes, exit code 0.
#[tokio::test]
async fn the_binary_drains_on_sigterm_and_exits_cleanly() {
    let log_file = std::env::temp_dir().join(format!("shopstack-catalog-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log_file);
    let mut child = Command::new(env!("CARGO_BIN_EXE_catalog"))
        .env("LOG_FILE", &log_file)
        .env("PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("SIMULATION", "on")
        .env("SIM_HEADER_FAULTS", "true")
        .env("SHUTDOWN_DRAIN_MS", "1000")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTLP_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(json) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if !sent && json["message"] == "catalog listening" {
                let _ = addr_tx.send(json["addr"].as_str().unwrap_or_default().to_owned());
                sent = true;
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("catalog did not start");
    let base = format!("http://{addr}");

    let slow = tokio::spawn({
        let url = format!("{base}/catalog/prod-123");
        async move { client().get(url).header("x-fault-delay-ms", "1500").send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = client().get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);

    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "catalog exited with {exit}");

    // LOG_FILE got the same JSON lines, down to the last one written at shutdown.
    let written = std::fs::read_to_string(&log_file).unwrap();
    let lines: Vec<Value> = written
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|line| line["route"] == "/catalog/{id}" && line["status"] == 200)
    );
    assert!(lines.iter().any(|line| line["message"] == "server stopped"));
    let _ = std::fs::remove_file(&log_file);
}

/// A bad setting stops the binary before it binds anything, with exit code 2 and a message.
#[test]
fn invalid_configuration_exits_with_code_2() {
    for (name, value) in [
        ("SIM_FAILURE_RATE", "1.5"),
        ("SIM_LATENCY_MS", "90-30"),
        ("LOG_LEVEL", "loud[["),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
        ("PORT", "99999"),
        ("REDIS_URL", "http://not-redis"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_catalog"))
            .env("PORT", "0")
            .env(name, value)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.trim().is_empty(), "{name}={value} must say what is wrong");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_catalog"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for variable in [
        "PORT",
        "REDIS_URL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "SIMULATION",
        "ADMIN_TOKEN",
        "LOG_FILE",
    ] {
        assert!(text.contains(variable), "--help names {variable}");
    }
}
