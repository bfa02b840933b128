//! One request through gateway → cart → catalog is one trace, exported by the OpenTelemetry SDK
//! of three processes over OTLP/gRPC or OTLP/HTTP: a test receiver (tonic, or an axum route
//! decoding the protobuf) collects the spans and checks the trace id, the parent/child links,
//! the service names, the resource and the HTTP attributes. The gateway, a proxy, makes one span per
//! request (as Envoy does by default): its server span is the backend's parent and names the
//! backend; the services make a client span for each call of their own.
//!
//! Each service runs as its own child process because a process has one global tracer provider
//! (one `service.name`). The catalog and cart binaries are taken from the same target directory
//! as this test's gateway binary; `cargo test --workspace` builds them (their own integration
//! tests need them).
//!
//! Redis: run once on the embedded stores and once with a private `redis-server` (`REDIS_URL`
//! given to the services): then the cart's and the catalog's Redis commands must appear as
//! client spans under their service's server span.
//!
//! Also here: a checkout down to the orders service's SQL statements and NATS publish, with
//! nothing private in any span or log line; `OTEL_SDK_DISABLED`; an unknown protocol refused;
//! OTLP log records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use shopstack_testkit::process::{ServiceProcess, workspace_binary};
use shopstack_testkit::tls::TestCertificates;
use tokio_rustls::TlsAcceptor;

/// A span as received, with the `service.name` and the attributes of the resource that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    resource: Vec<KeyValue>,
    span: Span,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }

    fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    fn describe(&self) -> String {
        format!(
            "{} {:?} {:?} id={} parent={}",
            self.service,
            self.kind(),
            self.span.name,
            hex(&self.span.span_id),
            hex(&self.span.parent_span_id)
        )
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    text(value)
}

fn text(value: &AnyValue) -> Option<String> {
    match value.value.as_ref()? {
        any_value::Value::StringValue(text) => Some(text.clone()),
        any_value::Value::IntValue(number) => Some(number.to_string()),
        any_value::Value::BoolValue(flag) => Some(flag.to_string()),
        any_value::Value::DoubleValue(number) => Some(number.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The test OTLP receiver, over gRPC or HTTP/protobuf: keeps every span and log record it is
/// sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    logs: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
    /// TLS handshakes a client gave up on (it did not trust the certificate).
    failed_handshakes: Arc<AtomicUsize>,
}

/// A stream a receiver serves: plain TCP or TLS over it.
trait Connection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Connection for T {}

/// The receiver's side of TLS: the test authority's server certificate, offering `alpn`
/// (gRPC clients insist on `h2`).
fn tls_acceptor(certificates: &TestCertificates, alpn: &[u8]) -> TlsAcceptor {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&certificates.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&certificates.key).unwrap();
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut received = Vec::new();
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| resource.attributes)
                .unwrap_or_default();
            let service = attribute(&resource, "service.name").unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.push(Received {
                        service: service.clone(),
                        resource: resource.clone(),
                        span,
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
    }

    /// Serve OTLP/gRPC (HTTP/2 cleartext, gzip accepted) on a free loopback port; returns the
    /// endpoint URL.
    async fn start(&self) -> String {
        self.start_grpc(None).await
    }

    /// Serve OTLP/gRPC on a free loopback port, over TLS when `tls` is given; returns the
    /// endpoint URL (`https://` with TLS).
    async fn start_grpc(&self, tls: Option<TlsAcceptor>) -> String {
        let service =
            TraceServiceServer::new(self.clone()).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        self.serve(tls, move |io| {
            let service = TowerToHyperService::new(service.clone());
            async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await;
            }
        })
        .await
    }

    /// Serve OTLP/HTTP with protobuf bodies (`POST /v1/traces`, `POST /v1/logs`) on a free
    /// loopback port; returns the endpoint URL of every signal.
    async fn start_http(&self) -> String {
        self.start_http_on(None).await
    }

    /// [`Receiver::start_http`], over TLS when `tls` is given (`https://`).
    async fn start_http_on(&self, tls: Option<TlsAcceptor>) -> String {
        use axum::body::Bytes;
        use axum::http::header::CONTENT_TYPE;
        use prost::Message as _;
        let traces = self.clone();
        let logs = self.clone();
        let answer = |body: Vec<u8>| ([(CONTENT_TYPE, "application/x-protobuf")], body);
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(move |body: Bytes| async move {
                    traces.keep(ExportTraceServiceRequest::decode(body).unwrap());
                    answer(
                        ExportTraceServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec(),
                    )
                }),
            )
            .route(
                "/v1/logs",
                axum::routing::post(move |body: Bytes| async move {
                    logs.logs
                        .lock()
                        .unwrap()
                        .push(ExportLogsServiceRequest::decode(body).unwrap());
                    answer(
                        ExportLogsServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec(),
                    )
                }),
            );
        self.serve(tls, move |io| {
            let service = TowerToHyperService::new(app.clone());
            async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            }
        })
        .await
    }

    /// Accept connections on a free loopback port and hand each one, after the TLS handshake
    /// when `tls` is given, to `serve_connection`; returns the endpoint URL.
    async fn serve<F, Fut>(&self, tls: Option<TlsAcceptor>, serve_connection: F) -> String
    where
        F: Fn(TokioIo<Box<dyn Connection>>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let failed_handshakes = self.failed_handshakes.clone();
        let serve_connection = Arc::new(serve_connection);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let tls = tls.clone();
                let failed_handshakes = failed_handshakes.clone();
                let connection = serve_connection.clone();
                tokio::spawn(async move {
                    let io: Box<dyn Connection> = match tls {
                        None => Box::new(stream),
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => {
                                failed_handshakes.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        },
                    };
                    connection(TokioIo::new(io)).await;
                });
            }
        });
        format!("{scheme}://{addr}")
    }

    /// Every log record received: (resource attributes, record).
    fn log_records(&self) -> Vec<(Vec<KeyValue>, LogRecord)> {
        let mut records = Vec::new();
        for request in self.logs.lock().unwrap().iter() {
            for resource_logs in &request.resource_logs {
                let resource = resource_logs
                    .resource
                    .as_ref()
                    .map(|resource| resource.attributes.clone())
                    .unwrap_or_default();
                for scope_logs in &resource_logs.scope_logs {
                    for record in &scope_logs.log_records {
                        records.push((resource.clone(), record.clone()));
                    }
                }
            }
        }
        records
    }

    fn all_spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    fn trace(&self, trace_id: &[u8]) -> Vec<Received> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|received| received.span.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

/// Start `binary` as a child process with `env` (off the runtime's threads: it waits for the
/// service to listen).
async fn spawn_service(binary: PathBuf, env: Vec<(&'static str, String)>) -> ServiceProcess {
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(key, value)| (*key, value.as_str())).collect();
        ServiceProcess::spawn(&binary, &env).unwrap()
    })
    .await
    .unwrap()
}

/// A trace id no one else uses: the clock and the process id.
fn fresh_trace_id() -> [u8; 16] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mixed = nanos ^ (u128::from(std::process::id()) << 64) | 1;
    mixed.to_be_bytes()
}

fn find<'a>(spans: &'a [Received], service: &str, kind: SpanKind, parent: &[u8]) -> Option<&'a Received> {
    spans.iter().find(|received| {
        received.service == service && received.kind() == kind && received.span.parent_span_id == parent
    })
}

/// Is `ancestor` on the parent chain of `span`?
fn descends_from(spans: &[Received], span: &Received, ancestor: &[u8]) -> bool {
    let by_id: HashMap<&[u8], &Received> = spans
        .iter()
        .map(|received| (received.span.span_id.as_slice(), received))
        .collect();
    let mut current = span;
    for _ in 0..spans.len() {
        if current.span.parent_span_id == ancestor {
            return true;
        }
        match by_id.get(current.span.parent_span_id.as_slice()) {
            Some(parent) => current = parent,
            None => return false,
        }
    }
    false
}

/// On one CPU a service runs a single-threaded runtime, which also drives the exporter's
/// connection: the spans still waiting at SIGTERM must be flushed, and the process must not
/// hang on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_cpu_the_last_spans_are_flushed_at_shutdown() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let catalog = tokio::task::spawn_blocking(|| {
        ServiceProcess::spawn(&workspace_binary("catalog"), &[("SIMULATION", "off")]).unwrap()
    })
    .await
    .unwrap();
    let catalog_url = catalog.url("");
    let mut gateway = tokio::task::spawn_blocking(move || {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("SIMULATION", "off"),
            ("CATALOG_SERVICE_URL", catalog_url.as_str()),
            // The batch processor's own schedule is far off: only the flush at shutdown exports.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ];
        ServiceProcess::spawn_on_one_cpu(Path::new(env!("CARGO_BIN_EXE_gateway")), &env, 0).unwrap()
    })
    .await
    .unwrap();
    let trace_id = fresh_trace_id();
    let client = shopstack_testkit::http::client();
    for request in 0..20u8 {
        let traceparent = format!(
            "00-{}-{}-01",
            hex(&trace_id),
            hex(&[0x5a, 0x17, 0, 0, 0, 0, 0, request + 1])
        );
        let response = client
            .get(gateway.url("/catalog/prod-110"))
            .header("traceparent", traceparent)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(
        receiver.trace(&trace_id).is_empty(),
        "nothing exported before shutdown"
    );
    gateway.terminate().unwrap();
    let exited = tokio::task::spawn_blocking(move || gateway.wait_for_exit(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(
        exited.is_some_and(|status| status.success()),
        "exits at once and cleanly: {exited:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.trace(&trace_id).len() < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        receiver.trace(&trace_id).len(),
        20,
        "every span of the 20 requests arrived"
    );
    drop(catalog);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_gateway_cart_and_catalog() {
    trace_one_request(None, Transport::GrpcGzip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_the_redis_commands_are_child_spans_of_the_request() {
    let redis = shopstack_testkit::redis::RedisServer::start().unwrap();
    trace_one_request(Some(redis.url()), Transport::GrpcGzip).await;
}

/// The same trace over OTLP/HTTP with protobuf bodies, each service named by
/// `OTEL_SERVICE_NAME` (over `SERVICE_NAME`) and described by `OTEL_RESOURCE_ATTRIBUTES`, whose
/// keys the services' own defaults do not overwrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_protobuf_the_services_keep_the_configured_names_and_resource() {
    let redis = shopstack_testkit::redis::RedisServer::start().unwrap();
    trace_one_request(Some(redis.url()), Transport::HttpNamed).await;
}

/// `https://` collectors, over both protocols: the exporters check the collector's certificate
/// against the system's roots, which `SSL_CERT_FILE` replaces with a private authority. Spans
/// arrive when the authority is the collector's, and none do when it is another one (the
/// handshake fails, so the check is real).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_spans_arrive_only_when_the_collectors_certificate_is_trusted() {
    let collector = TestCertificates::generate().unwrap();
    let stranger = TestCertificates::generate().unwrap();
    for protocol in ["grpc", "http/protobuf"] {
        for trusted in [&collector, &stranger] {
            let receiver = Receiver::default();
            let endpoint = if protocol == "grpc" {
                receiver.start_grpc(Some(tls_acceptor(&collector, b"h2"))).await
            } else {
                receiver
                    .start_http_on(Some(tls_acceptor(&collector, b"http/1.1")))
                    .await
            };
            assert!(endpoint.starts_with("https://"));
            let env = [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
                ("SSL_CERT_FILE", trusted.ca.display().to_string()),
                ("SIMULATION", "off".to_owned()),
            ];
            let catalog = spawn_service(workspace_binary("catalog"), env.to_vec()).await;
            let trace_id = fresh_trace_id();
            let traceparent = format!(
                "00-{}-{}-01",
                hex(&trace_id),
                hex(&[0x5a, 0x17, 0, 0, 0, 0, 0, 1])
            );
            let response = shopstack_testkit::http::client()
                .get(catalog.url("/catalog/prod-110"))
                .header("traceparent", traceparent)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let deadline = Instant::now() + Duration::from_secs(20);
            let delivered = || !receiver.trace(&trace_id).is_empty();
            let refused = || receiver.failed_handshakes.load(Ordering::SeqCst) > 0;
            while !delivered() && !refused() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if std::ptr::eq(trusted, &collector) {
                assert!(delivered(), "{protocol}: the span reaches the collector over TLS");
                assert!(!refused(), "{protocol}: every handshake succeeds");
            } else {
                assert!(
                    refused(),
                    "{protocol}: the exporter tried and refused the certificate"
                );
                assert!(
                    !delivered(),
                    "{protocol}: nothing is delivered to an untrusted collector"
                );
            }
            drop(catalog);
        }
    }
}

/// How the services export in one run of [`trace_one_request`].
#[derive(Clone, Copy, PartialEq)]
enum Transport {
    /// OTLP/gRPC, gzip-compressed, the services under their own names.
    GrpcGzip,
    /// OTLP/HTTP with protobuf, the services named `shop-<name>` by `OTEL_SERVICE_NAME`.
    HttpNamed,
}

/// `OTEL_RESOURCE_ATTRIBUTES` of the [`Transport::HttpNamed`] run: two keys the services also
/// set themselves (which must stay as given) and one of the user's own.
const RESOURCE_ATTRIBUTES: &str =
    "deployment.environment.name=rehearsal,service.version=9.9.9,team=blue%2Cgreen";

async fn trace_one_request(redis_url: Option<String>, transport: Transport) {
    let receiver = Receiver::default();
    let mut common_env: Vec<(&str, String)> = vec![
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("SIMULATION", "off".into()),
    ];
    let named = |service: &str| match transport {
        Transport::GrpcGzip => service.to_owned(),
        Transport::HttpNamed => format!("shop-{service}"),
    };
    match transport {
        Transport::GrpcGzip => {
            common_env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.start().await));
            common_env.push(("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()));
        }
        Transport::HttpNamed => {
            common_env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.start_http().await));
            common_env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()));
            common_env.push(("OTEL_RESOURCE_ATTRIBUTES", RESOURCE_ATTRIBUTES.into()));
            common_env.push(("SERVICE_NAME", "not-this-name".into()));
        }
    }
    if let Some(url) = &redis_url {
        common_env.push(("REDIS_URL", url.clone()));
    }
    let start = move |binary: PathBuf, extra: Vec<(&'static str, String)>| {
        spawn_service(binary, [common_env.clone(), extra].concat())
    };
    let name_env = |service: &str| match transport {
        Transport::GrpcGzip => vec![],
        Transport::HttpNamed => vec![("OTEL_SERVICE_NAME", named(service))],
    };
    let catalog = start(workspace_binary("catalog"), name_env("catalog")).await;
    let cart = start(
        workspace_binary("cart"),
        [vec![("CATALOG_SERVICE_URL", catalog.url(""))], name_env("cart")].concat(),
    )
    .await;
    let gateway = start(
        PathBuf::from(env!("CARGO_BIN_EXE_gateway")),
        [
            vec![
                ("CATALOG_SERVICE_URL", catalog.url("")),
                ("CART_SERVICE_URL", cart.url("")),
            ],
            name_env("gateway"),
        ]
        .concat(),
    )
    .await;
    let (gateway_name, cart_name, catalog_name) = (named("gateway"), named("cart"), named("catalog"));

    // The caller's own span: the gateway must continue its trace.
    let trace_id = fresh_trace_id();
    let caller_span_id = [0x5a, 0x17, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01];
    let traceparent = format!("00-{}-{}-01", hex(&trace_id), hex(&caller_span_id));
    let client = shopstack_testkit::http::client();
    let response = client
        .post(gateway.url("/v1/cart/trace-user"))
        .header("traceparent", &traceparent)
        .json(&serde_json::json!({"product_id": "prod-110", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    assert_eq!(
        response
            .headers()
            .get("x-trace-id")
            .and_then(|value| value.to_str().ok()),
        Some(hex(&trace_id).as_str()),
        "the gateway answers with the caller's trace id"
    );

    // Wait (bounded) for the four spans of the hop chain to arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = receiver.trace(&trace_id);
        let services: Vec<&str> = spans.iter().map(|span| span.service.as_str()).collect();
        let servers = spans
            .iter()
            .filter(|span| span.kind() == SpanKind::Server)
            .count();
        let clients = spans
            .iter()
            .filter(|span| span.kind() == SpanKind::Client)
            .count();
        let complete = servers >= 3
            && clients >= 1
            && [&gateway_name, &cart_name, &catalog_name]
                .iter()
                .all(|name| services.contains(&name.as_str()));
        if complete || Instant::now() >= deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let listing: Vec<String> = spans.iter().map(Received::describe).collect();
    let listing = listing.join("\n  ");
    eprintln!("spans of trace {}:\n  {listing}", hex(&trace_id));

    // gateway server span: the child of the caller's span.
    let gateway_server = find(&spans, &gateway_name, SpanKind::Server, &caller_span_id)
        .unwrap_or_else(|| panic!("no gateway server span under the caller's span:\n  {listing}"));
    assert_eq!(
        gateway_server.attribute("http.route").as_deref(),
        Some("/v1/cart/{user_id}")
    );
    assert_eq!(
        gateway_server.attribute("http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        gateway_server.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(gateway_server.span.name, "POST /v1/cart/{user_id}");

    assert_eq!(
        gateway_server.attribute("peer.service").as_deref(),
        Some("cart"),
        "the backend it went to (as the gateway's routing table names it)"
    );
    assert_eq!(
        gateway_server.attribute("url.path").as_deref(),
        Some("/v1/cart/trace-user")
    );
    assert!(
        !spans
            .iter()
            .any(|span| span.service == gateway_name && span.kind() == SpanKind::Client),
        "a proxied request is one gateway span:\n  {listing}"
    );

    // cart server span: the child of the gateway's span (traceparent crossed the hop).
    let cart_server = find(&spans, &cart_name, SpanKind::Server, &gateway_server.span.span_id)
        .unwrap_or_else(|| panic!("no cart server span under the gateway's span:\n  {listing}"));
    assert_eq!(
        cart_server.attribute("http.route").as_deref(),
        Some("/v1/cart/{user_id}")
    );
    assert_eq!(
        cart_server.attribute("http.response.status_code").as_deref(),
        Some("200")
    );

    // cart client span → catalog, somewhere under the cart's server span.
    let cart_client = spans
        .iter()
        .find(|span| {
            span.service == cart_name
                && span.kind() == SpanKind::Client
                && span.attribute("peer.service").as_deref() == Some("catalog")
                && descends_from(&spans, span, &cart_server.span.span_id)
        })
        .unwrap_or_else(|| {
            panic!("no cart → catalog client span under the cart's server span:\n  {listing}")
        });
    // (Which catalog call the cart makes is the cart's business — today a stock hold; the
    // test checks that both sides of the hop describe the same call.)
    let called_method = cart_client.attribute("http.request.method");
    assert!(called_method.is_some(), "{}", cart_client.describe());

    // catalog server span: the child of the cart's client span, for the same route.
    let catalog_server = find(&spans, &catalog_name, SpanKind::Server, &cart_client.span.span_id)
        .unwrap_or_else(|| panic!("no catalog server span under the cart's client span:\n  {listing}"));
    assert_eq!(
        catalog_server.span.name, cart_client.span.name,
        "client and server name the same route template"
    );
    assert_eq!(catalog_server.attribute("http.request.method"), called_method);
    let catalog_route = catalog_server.attribute("http.route").unwrap_or_default();
    assert!(
        catalog_route.starts_with('/') && catalog_route.contains('{'),
        "a route template, not a raw path: {catalog_route}"
    );
    assert!(
        catalog_server
            .attribute("url.path")
            .is_some_and(|path| path.contains("prod-110")),
        "the catalog call is about the product added"
    );
    let catalog_status = catalog_server
        .attribute("http.response.status_code")
        .unwrap_or_default();
    assert!(
        catalog_status.starts_with('2'),
        "catalog answered {catalog_status}"
    );

    // One connected tree: every span's parent is in the trace, except the one under the caller.
    let ids: Vec<&[u8]> = spans.iter().map(|span| span.span.span_id.as_slice()).collect();
    let orphans: Vec<String> = spans
        .iter()
        .filter(|span| {
            span.span.parent_span_id != caller_span_id && !ids.contains(&span.span.parent_span_id.as_slice())
        })
        .map(Received::describe)
        .collect();
    assert!(
        orphans.is_empty(),
        "spans with a parent outside the trace: {orphans:?}"
    );
    assert_eq!(
        spans
            .iter()
            .filter(|span| span.span.parent_span_id == caller_span_id)
            .count(),
        1,
        "exactly one span continues the caller's span:\n  {listing}"
    );

    // Redis, when configured: each service's Redis commands are client spans under its own
    // server span (the cart's cart writes and reservations, the catalog's stock lookups).
    if redis_url.is_some() {
        for (service, server) in [(&cart_name, cart_server), (&catalog_name, catalog_server)] {
            let redis_spans: Vec<&Received> = spans
                .iter()
                .filter(|span| {
                    span.service == *service && span.attribute("db.system.name").as_deref() == Some("redis")
                })
                .collect();
            assert!(
                !redis_spans.is_empty(),
                "REDIS_URL is set but {service} exported no Redis spans:\n  {listing}"
            );
            for span in redis_spans {
                assert_eq!(span.kind(), SpanKind::Client, "{}", span.describe());
                // The database semantic conventions: the command, and where it went.
                let operation = span.attribute("db.operation.name").unwrap_or_default();
                assert!(
                    !operation.is_empty() && operation.chars().all(|c| c.is_ascii_uppercase()),
                    "a Redis command name: {}",
                    span.describe()
                );
                assert_eq!(span.attribute("server.address").as_deref(), Some("127.0.0.1"));
                assert!(span.attribute("server.port").is_some(), "{}", span.describe());
                assert!(
                    descends_from(&spans, span, &server.span.span_id),
                    "Redis span outside {service}'s request: {}",
                    span.describe()
                );
            }
        }
    } else {
        assert!(
            spans
                .iter()
                .all(|span| span.attribute("db.system.name").is_none()),
            "no Redis spans without Redis:\n  {listing}"
        );
    }

    // One name everywhere: the resource of every span, /healthz and the log lines.
    if transport == Transport::HttpNamed {
        for span in &spans {
            let resource = |key: &str| attribute(&span.resource, key);
            assert_eq!(
                resource("deployment.environment.name").as_deref(),
                Some("rehearsal")
            );
            assert_eq!(resource("service.version").as_deref(), Some("9.9.9"));
            assert_eq!(resource("team").as_deref(), Some("blue,green"));
            assert_eq!(resource("telemetry.sdk.name").as_deref(), Some("opentelemetry"));
        }
        let health: serde_json::Value = client
            .get(gateway.url("/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["service"], gateway_name.as_str(), "{health}");
        for (process, name) in [
            (&gateway, &gateway_name),
            (&cart, &cart_name),
            (&catalog, &catalog_name),
        ] {
            let lines = process.output();
            let request_lines: Vec<serde_json::Value> = lines
                .iter()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|line| line["trace_id"] == hex(&trace_id).as_str())
                .collect();
            assert!(
                !request_lines.is_empty(),
                "{name}: no log line of the trace in {lines:?}"
            );
            assert!(
                request_lines.iter().all(|line| line["service"] == name.as_str()),
                "{name}: {request_lines:?}"
            );
        }
    }

    drop(gateway);
    drop(cart);
    drop(catalog);
}

/// The gateway's HS256 secret in the checkout test.
const JWT_SECRET: &str = "trace-test-hs256-secret-of-at-least-32-bytes";

/// A token for `sub`, as `gateway mint-token` prints it.
fn mint_token(sub: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["mint-token", "--sub", sub, "--ttl", "10m"])
        .env_clear()
        .env("JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A checkout through the gateway is one trace down to the orders service's SQL statements
/// and the NATS publish of its `order.created` (which the outbox relay sends later, in the
/// order's trace); and nothing private the client sent — the shipping address, the bearer
/// token, the `Authorization` header, the `Idempotency-Key` — is in any span the services
/// export or in any line they log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_is_one_trace_down_to_its_sql_and_nats_publish_and_nothing_private_leaves() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let nats = shopstack_testkit::nats::NatsServer::start().await.unwrap();
    let data = std::env::temp_dir().join(format!(
        "trace-checkout-{}-{}",
        std::process::id(),
        hex(&fresh_trace_id())
    ));
    std::fs::create_dir_all(&data).unwrap();
    let database_url = format!("sqlite://{}", data.join("orders.db").display());

    let common_env: Vec<(&str, String)> = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("SIMULATION", "off".into()),
        ("NATS_URL", nats.url()),
    ];
    let start = move |binary: PathBuf, extra: Vec<(&'static str, String)>| {
        spawn_service(binary, [common_env.clone(), extra].concat())
    };
    let catalog = start(workspace_binary("catalog"), vec![]).await;
    let cart = start(
        workspace_binary("cart"),
        vec![("CATALOG_SERVICE_URL", catalog.url(""))],
    )
    .await;
    let orders = start(
        workspace_binary("orders"),
        vec![
            ("CATALOG_SERVICE_URL", catalog.url("")),
            ("CART_SERVICE_URL", cart.url("")),
            ("DATABASE_URL", database_url),
        ],
    )
    .await;
    let gateway = start(
        PathBuf::from(env!("CARGO_BIN_EXE_gateway")),
        vec![
            ("CATALOG_SERVICE_URL", catalog.url("")),
            ("CART_SERVICE_URL", cart.url("")),
            ("ORDERS_SERVICE_URL", orders.url("")),
            ("JWT_SECRET", JWT_SECRET.into()),
        ],
    )
    .await;

    let user = "trace-shopper";
    let token = mint_token(user);
    let authorization = format!("Bearer {token}");
    let shipping_address = "221B Baker Street, Flat Private-7731, London";
    let idempotency_key = "idem-private-key-5521";
    let client = shopstack_testkit::http::client();
    let added = client
        .post(gateway.url(&format!("/v1/cart/{user}")))
        .header("authorization", &authorization)
        .json(&serde_json::json!({"product_id": "prod-110", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200, "{:?}", added.text().await);

    let trace_id = fresh_trace_id();
    let caller_span_id = [0x5a, 0x17, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02];
    let checkout = client
        .post(gateway.url("/api/orders/checkout"))
        .header(
            "traceparent",
            format!("00-{}-{}-01", hex(&trace_id), hex(&caller_span_id)),
        )
        .header("authorization", &authorization)
        .header("idempotency-key", idempotency_key)
        .json(&serde_json::json!({"user_id": user, "shipping_address": shipping_address}))
        .send()
        .await
        .unwrap();
    assert_eq!(checkout.status(), 201, "{:?}", checkout.text().await);

    // Wait (bounded) for the orders service's SQL spans, the publish of order.created and the
    // server spans of the gateway and orders.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = receiver.trace(&trace_id);
        // (The cart's own events — `cart.cleared` — are published in the same trace.)
        let published = spans.iter().any(|span| {
            span.kind() == SpanKind::Producer
                && span.attribute("messaging.destination.name").as_deref() == Some("order.created")
        });
        let sql = spans.iter().any(|span| {
            span.service == "orders" && span.attribute("db.system.name").as_deref() == Some("sqlite")
        });
        // The services export on their own schedules: wait for every side of the request too.
        let servers = ["gateway", "orders"].iter().all(|service| {
            spans
                .iter()
                .any(|span| span.service == *service && span.kind() == SpanKind::Server)
        });
        if (published && sql && servers) || Instant::now() >= deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let listing: Vec<String> = spans.iter().map(Received::describe).collect();
    let listing = listing.join("\n  ");

    let gateway_server = find(&spans, "gateway", SpanKind::Server, &caller_span_id)
        .unwrap_or_else(|| panic!("no gateway server span under the caller's span:\n  {listing}"));
    let orders_server = find(&spans, "orders", SpanKind::Server, &gateway_server.span.span_id)
        .unwrap_or_else(|| panic!("no orders server span under the gateway's:\n  {listing}"));
    assert_eq!(
        orders_server.attribute("http.route").as_deref(),
        Some("/api/orders/checkout")
    );

    // Each SQL statement is a client span of the request, with the statement's text and no
    // values: the order's insert names its columns and placeholders, never the address.
    let statements: Vec<&Received> = spans
        .iter()
        .filter(|span| span.attribute("db.system.name").as_deref() == Some("sqlite"))
        .collect();
    let insert = statements
        .iter()
        .find(|span| {
            span.attribute("db.operation.name").as_deref() == Some("INSERT")
                && span.attribute("db.collection.name").as_deref() == Some("orders")
        })
        .unwrap_or_else(|| panic!("no INSERT INTO orders span:\n  {listing}"));
    assert_eq!(insert.span.name, "INSERT orders");
    let text = insert.attribute("db.query.text").unwrap_or_default();
    assert!(
        text.starts_with("INSERT INTO orders") && text.contains("$5"),
        "{text}"
    );
    for statement in &statements {
        assert_eq!(statement.kind(), SpanKind::Client, "{}", statement.describe());
        assert!(
            descends_from(&spans, statement, &orders_server.span.span_id),
            "SQL outside the checkout request: {}",
            statement.describe()
        );
    }

    // The publish of order.created: a producer span in the order's trace (the outbox relay
    // sends it after the request, under the context the event was written with).
    let publish = spans
        .iter()
        .find(|span| {
            span.kind() == SpanKind::Producer
                && span.attribute("messaging.destination.name").as_deref() == Some("order.created")
        })
        .unwrap_or_else(|| panic!("no publish of order.created:\n  {listing}"));
    assert_eq!(publish.service, "orders");
    assert_eq!(publish.span.name, "publish order.created");
    assert_eq!(publish.attribute("messaging.system").as_deref(), Some("nats"));
    assert_eq!(
        publish.attribute("messaging.operation.type").as_deref(),
        Some("send")
    );
    assert!(
        descends_from(&spans, publish, &orders_server.span.span_id),
        "{}",
        publish.describe()
    );

    // Nothing private in any span of any trace, nor in any log line.
    let secrets = [
        shipping_address,
        token.as_str(),
        authorization.as_str(),
        idempotency_key,
    ];
    let everything = format!("{:?}", receiver.all_spans());
    let mut logged: Vec<String> = Vec::new();
    for process in [&gateway, &cart, &catalog, &orders] {
        logged.extend(process.output());
    }
    assert!(!logged.is_empty());
    for secret in secrets {
        assert!(!everything.contains(secret), "{secret:?} is in an exported span");
        for line in &logged {
            assert!(!line.contains(secret), "{secret:?} is in a log line: {line}");
        }
    }

    drop(gateway);
    drop(orders);
    drop(cart);
    drop(catalog);
    let _ = std::fs::remove_dir_all(&data);
}

/// `OTEL_SDK_DISABLED=true` exports nothing, whatever else is set (the log lines still carry
/// their trace ids); an OTLP protocol the services do not speak is refused at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_sdk_disabled_nothing_is_exported_and_an_unknown_protocol_is_refused() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("OTEL_SDK_DISABLED", "true"),
        ("SIMULATION", "off"),
    ];
    let catalog = ServiceProcess::spawn(&workspace_binary("catalog"), &env).unwrap();
    let trace_id = fresh_trace_id();
    let client = shopstack_testkit::http::client();
    for _ in 0..5 {
        let response = client
            .get(catalog.url("/products/prod-110"))
            .header(
                "traceparent",
                format!("00-{}-5a17000000000003-01", hex(&trace_id)),
            )
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success() || response.status() == 404,
            "{}",
            response.status()
        );
    }
    // Many times the batch delay: a span would have been sent by now.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(receiver.all_spans().is_empty(), "exported with the SDK disabled");
    let lines = catalog.output();
    assert!(
        lines.iter().any(|line| line.contains(&hex(&trace_id))),
        "trace ids are still logged: {lines:?}"
    );
    drop(catalog);

    let refused = tokio::process::Command::new(workspace_binary("catalog"))
        .env("PORT", "0")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/xml")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && stderr.contains("http/xml"),
        "{stderr}"
    );
}

/// With `OTEL_LOGS_EXPORTER=otlp` each log line is also an OTLP log record, carrying the trace
/// of the request it was written in — the gateway's request line included, which is written
/// outside any `tracing` span — whether or not the process exports spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_records_are_exported_over_otlp_with_their_trace() {
    let receiver = Receiver::default();
    let endpoint = receiver.start_http().await;
    let common = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ("OTEL_LOGS_EXPORTER", "otlp".to_owned()),
        ("OTEL_BLRP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("SIMULATION", "off".to_owned()),
    ];
    let spawn = |binary: PathBuf, extra: Vec<(&'static str, String)>| {
        let env: Vec<(&'static str, String)> = common.iter().cloned().chain(extra).collect();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(key, value)| (*key, value.as_str())).collect();
            ServiceProcess::spawn(&binary, &env).unwrap()
        })
    };
    // The catalog exports no spans (its lines' trace ids come from the ids-only spans).
    let catalog = spawn(
        workspace_binary("catalog"),
        vec![("OTEL_TRACES_EXPORTER", "none".into())],
    )
    .await
    .unwrap();
    let gateway = spawn(
        PathBuf::from(env!("CARGO_BIN_EXE_gateway")),
        vec![("CATALOG_SERVICE_URL", catalog.url(""))],
    )
    .await
    .unwrap();
    let trace_id = fresh_trace_id();
    let response = shopstack_testkit::http::client()
        .get(gateway.url("/catalog/prod-110"))
        .header(
            "traceparent",
            format!("00-{}-5a17000000000004-01", hex(&trace_id)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let deadline = Instant::now() + Duration::from_secs(20);
    let of_the_trace = |records: &[(Vec<KeyValue>, LogRecord)]| -> Vec<(String, String)> {
        records
            .iter()
            .filter(|(_, record)| record.trace_id == trace_id)
            .map(|(resource, record)| {
                let body = record.body.as_ref().and_then(text).unwrap_or_default();
                (attribute(resource, "service.name").unwrap_or_default(), body)
            })
            .collect()
    };
    let records = loop {
        let records = of_the_trace(&receiver.log_records());
        let services: Vec<&str> = records.iter().map(|(service, _)| service.as_str()).collect();
        if (services.contains(&"gateway") && services.contains(&"catalog")) || Instant::now() >= deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for service in ["gateway", "catalog"] {
        assert!(
            records
                .iter()
                .any(|(from, body)| from == service && body == "request completed"),
            "no request line of {service} with the trace: {records:?}"
        );
    }
    // The gateway's request line, assembled by hand, has its members as attributes too.
    let gateway_line = receiver
        .log_records()
        .into_iter()
        .find(|(resource, record)| {
            record.trace_id == trace_id && attribute(resource, "service.name").as_deref() == Some("gateway")
        })
        .map(|(_, record)| record)
        .unwrap();
    assert_eq!(
        attribute(&gateway_line.attributes, "route").as_deref(),
        Some("/catalog/{id}")
    );
    assert_eq!(
        attribute(&gateway_line.attributes, "status").as_deref(),
        Some("200")
    );
    assert_eq!(
        attribute(&gateway_line.attributes, "trace_id"),
        Some(hex(&trace_id))
    );
    drop(gateway);
    drop(catalog);
}
