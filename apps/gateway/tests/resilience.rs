//! The gateway's resilience policies against misbehaving backends (tiny axum servers that fail,
//! stall or die on cue): retry budget and safety, circuit breaker, outlier ejection across
//! replicas, load shedding, timeouts and the request deadline, body limit.
//!
//! Assertions are on counts and states, never on wall-clock thresholds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;
use shopstack_testkit::wait::eventually;
use support::{Tiny, client, gateway, metric, problem_kind};
use tokio::sync::Semaphore;

fn ok_catalog() -> Router {
    Router::new().route("/catalog", get(|| async { axum::Json(json!({"products": []})) }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_gets_at_most_ten_percent_retries_and_unkeyed_posts_never_repeat() {
    let backend =
        Tiny::start(Router::new().fallback(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") })).await;
    // Breaker off: the worst case, every request reaches the backend.
    let (gw, state) = gateway(
        &backend.url(),
        &backend.url(),
        &[
            "--breaker-failure-threshold",
            "0",
            "--retry-backoff-base",
            "1ms",
            "--retry-backoff-max",
            "2ms",
        ],
    )
    .await;
    let http = client();

    let gets = 200;
    for _ in 0..gets {
        let response = http.get(gw.url("/catalog")).send().await.unwrap();
        assert_eq!(response.status(), 503);
    }
    let attempts = backend.hits();
    assert!(
        attempts <= gets * 11 / 10,
        "{attempts} attempts for {gets} requests"
    );
    assert!(attempts > gets, "GETs are retried while the budget allows");
    let retries = metric(
        &state,
        "gateway_upstream_retries_total",
        &[("upstream", "catalog")],
    );
    assert_eq!(retries as usize, attempts - gets);
    assert!(
        metric(
            &state,
            "gateway_retry_budget_exhausted_total",
            &[("upstream", "catalog")]
        ) > 0.0
    );

    let before = backend.hits();
    let posts = 50;
    for _ in 0..posts {
        let response = http
            .post(gw.url("/cart/add"))
            .json(&json!({"user_id": "u1", "product_id": "prod-110", "quantity": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
    }
    assert_eq!(
        backend.hits() - before,
        posts,
        "a POST without Idempotency-Key is sent once"
    );
    assert_eq!(
        metric(
            &state,
            "gateway_upstream_retries_total",
            &[("route", "/cart/add")]
        ),
        0.0
    );

    let before = backend.hits();
    let keyed = 100;
    for index in 0..keyed {
        let response = http
            .post(gw.url("/cart/add"))
            .header("Idempotency-Key", format!("key-{index}"))
            .json(&json!({"user_id": "u1", "product_id": "prod-110", "quantity": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
    }
    assert!(backend.hits() - before > keyed, "keyed POSTs may be retried");
    let requests = gets + posts + keyed;
    assert!(
        backend.hits() <= requests * 11 / 10,
        "{} attempts for {requests} requests",
        backend.hits()
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_a_dead_backend_fails_fast_and_closes_after_restart() {
    let backend = Tiny::start(ok_catalog()).await;
    let (gw, state) = gateway(&backend.url(), &backend.url(), &["--breaker-open-duration", "1s"]).await;
    let http = client();
    for _ in 0..20 {
        assert_eq!(http.get(gw.url("/catalog")).send().await.unwrap().status(), 200);
    }
    let attempts = |state: &gateway::GatewayState| {
        metric(
            state,
            "gateway_upstream_requests_total",
            &[("upstream", "catalog")],
        )
    };
    let dead = backend.kill();

    let before = attempts(&state);
    let mut opened = false;
    for _ in 0..20 {
        let (status, kind, _) = problem_kind(http.get(gw.url("/catalog")).send().await.unwrap()).await;
        assert_eq!(status, 503);
        if kind == "circuit-open" {
            opened = true;
            break;
        }
    }
    assert!(opened, "the breaker opened");
    let failed = attempts(&state) - before;
    assert!(
        (1.0..=5.0).contains(&failed),
        "opened after {failed} failed attempts"
    );
    assert_eq!(
        metric(
            &state,
            "gateway_circuit_breaker_state",
            &[("upstream", "catalog")]
        ),
        2.0
    );

    // While open, requests fail fast without reaching the backend; only a half-open probe may.
    let before = attempts(&state);
    let probes_before = metric(
        &state,
        "gateway_circuit_breaker_transitions_total",
        &[("upstream", "catalog"), ("to", "half_open")],
    );
    let mut fast = 0;
    for _ in 0..20 {
        let response = http.get(gw.url("/catalog")).send().await.unwrap();
        let (status, kind, retry_after) = problem_kind(response).await;
        assert_eq!(status, 503);
        if kind == "circuit-open" {
            assert!(retry_after.is_some_and(|secs| secs.parse::<u64>().is_ok_and(|secs| secs >= 1)));
            fast += 1;
        }
    }
    let probes = metric(
        &state,
        "gateway_circuit_breaker_transitions_total",
        &[("upstream", "catalog"), ("to", "half_open")],
    ) - probes_before;
    let reached = attempts(&state) - before;
    assert_eq!(reached, probes, "only half-open probes reached the backend");
    assert_eq!(fast as f64 + reached, 20.0);
    assert!(fast as f64 > reached, "most requests failed fast");
    assert!(
        metric(
            &state,
            "gateway_circuit_breaker_rejected_total",
            &[("upstream", "catalog")]
        ) >= fast as f64
    );

    let backend = dead.restart().await;
    let recovered = eventually(Duration::from_secs(15), || {
        let http = http.clone();
        let url = gw.url("/catalog");
        async move { http.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    assert!(recovered, "requests succeed again after the restart");
    assert_eq!(
        metric(
            &state,
            "gateway_circuit_breaker_state",
            &[("upstream", "catalog")]
        ),
        0.0
    );
    assert!(
        metric(
            &state,
            "gateway_circuit_breaker_transitions_total",
            &[("upstream", "catalog"), ("to", "closed")]
        ) >= 1.0
    );
    drop(backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_two_replicas_killed_at_least_99_percent_succeed_and_it_comes_back() {
    let a = Tiny::start(ok_catalog()).await;
    let b = Tiny::start(ok_catalog()).await;
    let replicas = format!("{},{}", a.url(), b.url());
    let (gw, state) = gateway(
        &replicas,
        &b.url(),
        &[
            "--outlier-base-ejection",
            "200ms",
            "--outlier-probe-interval",
            "50ms",
        ],
    )
    .await;
    let http = client();
    for _ in 0..50 {
        assert_eq!(http.get(gw.url("/catalog")).send().await.unwrap().status(), 200);
    }
    assert!(a.hits() > 0 && b.hits() > 0, "both replicas take traffic");
    let a_label = format!("{}/", a.url());
    let dead = a.kill();

    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let http = http.clone();
        let url = gw.url("/catalog");
        workers.spawn(async move {
            let mut ok = 0;
            for _ in 0..100 {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => eprintln!(
                        "failed request: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    ),
                    Err(e) => eprintln!("failed request: {e}"),
                }
            }
            ok
        });
    }
    let mut succeeded = 0;
    while let Some(ok) = workers.join_next().await {
        succeeded += ok.unwrap();
    }
    assert!(succeeded >= 990, "{succeeded} of 1000 succeeded");
    assert_eq!(
        metric(
            &state,
            "gateway_upstream_ejections_total",
            &[("replica", &a_label)]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &state,
            "gateway_upstream_replica_ejected",
            &[("replica", &a_label)]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &state,
            "gateway_circuit_breaker_state",
            &[("upstream", "catalog")]
        ),
        0.0
    );

    let a = dead.restart().await;
    let back = eventually(Duration::from_secs(10), || {
        let state = state.clone();
        let label = a_label.clone();
        async move { metric(&state, "gateway_upstream_replica_ejected", &[("replica", &label)]) == 0.0 }
    })
    .await;
    assert!(back, "the probe brought the replica back");
    let before = a.hits();
    for _ in 0..100 {
        assert_eq!(http.get(gw.url("/catalog")).send().await.unwrap().status(), 200);
    }
    assert!(a.hits() > before, "the restarted replica takes traffic again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_concurrency_is_shed_with_a_fast_503() {
    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let backend = Tiny::start(Router::new().route(
        "/catalog",
        get(move || {
            let gate = held.clone();
            async move {
                let _permit = gate.acquire().await;
                "done"
            }
        }),
    ))
    .await;
    let (gw, state) = gateway(
        &backend.url(),
        &backend.url(),
        &["--upstream-max-concurrency", "2"],
    )
    .await;
    let http = client();
    let mut blocked = Vec::new();
    for _ in 0..2 {
        let http = http.clone();
        let url = gw.url("/catalog");
        blocked.push(tokio::spawn(async move {
            http.get(url).send().await.map(|r| r.status().as_u16())
        }));
    }
    assert!(eventually(Duration::from_secs(5), || async { backend.hits() == 2 }).await);
    let (status, kind, retry_after) = problem_kind(http.get(gw.url("/catalog")).send().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (503, "overloaded"));
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(backend.hits(), 2, "the shed request never reached the backend");
    assert_eq!(
        metric(&state, "gateway_load_shed_total", &[("upstream", "catalog")]),
        1.0
    );
    gate.add_permits(2);
    for request in blocked {
        assert_eq!(request.await.unwrap().unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_backend_gets_504_from_the_attempt_timeout_and_from_the_deadline() {
    let backend = Tiny::start(Router::new().route(
        "/catalog",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    ))
    .await;
    let http = client();

    let (gw, _state) = gateway(
        &backend.url(),
        &backend.url(),
        &["--upstream-timeout", "5s,catalog=150ms"],
    )
    .await;
    let response = http.get(gw.url("/catalog")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["upstream"], "catalog");

    let (gw, state) = gateway(
        &backend.url(),
        &backend.url(),
        &["--upstream-timeout", "20s", "--request-deadline", "200ms"],
    )
    .await;
    let (status, kind, _) = problem_kind(http.get(gw.url("/catalog")).send().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (504, "upstream-timeout"));
    assert_eq!(
        metric(
            &state,
            "gateway_request_deadline_exceeded_total",
            &[("upstream", "catalog")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_never_reach_the_backend() {
    let backend = Tiny::start(Router::new().fallback(|| async { "ok" })).await;
    let (gw, _state) = gateway(&backend.url(), &backend.url(), &[]).await;
    let http = client();
    let big = vec![b'x'; 100 * 1024];
    let (status, kind, _) = problem_kind(
        http.post(gw.url("/v1/cart/u1"))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, kind.as_str()), (413, "body-too-large"));

    // Chunked, no Content-Length: the limit still holds while reading.
    let stream = futures::stream::iter((0..100).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1024])));
    let response = http
        .post(gw.url("/v1/cart/u1"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_injected_faults_never_touch_the_proxied_admin_routes() {
    let backend = Tiny::start(
        Router::new()
            .route("/catalog", get(|| async { "products" }))
            .route(
                "/admin/simulation",
                get(|| async { axum::Json(json!({"enabled": false})) }),
            ),
    )
    .await;
    let (gw, _state) = support::gateway_with(&backend.url(), &backend.url(), &[], |settings| {
        settings.simulation = shopstack_base::simulation::SimulationProfile {
            enabled: true,
            applies_to: shopstack_base::simulation::AppliesTo::All,
            failure_rate: 1.0,
            failure_status: 503,
            ..shopstack_base::simulation::SimulationProfile::OFF
        };
    })
    .await;
    let http = client();
    let business = http.get(gw.url("/catalog")).send().await.unwrap();
    assert_eq!(business.status(), 503);
    assert!(business.headers().contains_key("x-injected-fault"));
    let admin = http
        .get(gw.url("/admin/catalog/simulation"))
        .bearer_auth(support::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_an_answer_and_leaves_the_breaker_closed_while_503s_open_it() {
    let backend = Tiny::start(
        Router::new()
            .route(
                "/cart/add",
                axum::routing::post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "bug") }),
            )
            .route(
                "/catalog",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
            ),
    )
    .await;
    let (gw, state) = gateway(
        &backend.url(),
        &backend.url(),
        &["--breaker-open-duration", "60s"],
    )
    .await;
    let http = client();
    for _ in 0..20 {
        let response = http
            .post(gw.url("/cart/add"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
    }
    assert_eq!(
        metric(&state, "gateway_circuit_breaker_state", &[("upstream", "cart")]),
        0.0
    );
    let mut opened = false;
    for _ in 0..20 {
        let (status, kind, _) = problem_kind(http.get(gw.url("/catalog")).send().await.unwrap()).await;
        assert_eq!(status, 503);
        opened |= kind == "circuit-open";
    }
    assert!(opened);
    assert_eq!(
        metric(
            &state,
            "gateway_circuit_breaker_state",
            &[("upstream", "catalog")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulation_switch_reaches_every_replica_or_says_which_it_missed() {
    use shopstack_testkit::settings::ADMIN_TOKEN;
    let first = shopstack_testkit::services::catalog().start().await;
    let second = shopstack_testkit::services::catalog().start().await;
    let replicas = format!("{},{}", first.url(""), second.url(""));
    let (gw, _state) = gateway(&replicas, &replicas, &[]).await;
    let switch = |latency: u64| {
        client()
            .put(gw.url("/admin/catalog/simulation"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"enabled": true, "latency_min_ms": latency, "latency_max_ms": latency}))
            .send()
    };
    let seen_by = |replica: &shopstack_testkit::server::TestServer| {
        let url = replica.url("/admin/simulation");
        async move {
            let answer: serde_json::Value = client()
                .get(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer["latency_min_ms"].as_u64()
        }
    };
    let answer = switch(7).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(seen_by(&first).await, Some(7));
    assert_eq!(seen_by(&second).await, Some(7));

    // A replica that is down: the other still takes the switch, and the answer names the one
    // that did not.
    second.stop().await.unwrap();
    let (status, kind, _) = problem_kind(switch(9).await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (502, "not-on-every-replica"));
    assert_eq!(seen_by(&first).await, Some(9));
}
