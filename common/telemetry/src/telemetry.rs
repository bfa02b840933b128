//! Logs and traces: one JSON object per line, and OpenTelemetry spans that carry the same ids,
//! exported — with the log records, when asked — by the OpenTelemetry SDK's batch processors and
//! `opentelemetry-otlp`'s exporters, configured from the settings checked at start-up.
//!
//! Building the subscriber ([`build_subscriber`]) is split from installing it ([`init`], once per
//! process) so tests can install a capturing variant (the test kit's `init_telemetry`).
//!
//! Spans are always created — with or without an OTLP endpoint — so every request log line has a
//! `trace_id` and `span_id`, and an inbound `traceparent` keeps its trace id. With an exporter,
//! the OpenTelemetry layer makes each span an SDK span and exports it; without one, nothing would
//! read those SDK spans, so `TraceIdsLayer` only gives each span its ids ([`span_context`],
//! [`set_parent`] and [`record_trace_ids`] read and set them the same way in both cases).

use std::io::Write;
use std::sync::OnceLock;

use anyhow::Context as _;
use opentelemetry::logs::{AnyValue, LogRecord as _};
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_otlp::{Compression, Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{LogProcessor, SdkLogRecord, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingResult, SdkTracer, SdkTracerProvider,
    ShouldSample,
};
use rand::Rng as _;
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Level, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

use crate::logsink::{LogSink, LogSinkGuard};
use shopstack_base::config::{OtlpProtocol, OtlpTarget, ServiceIdentity, Settings, SignalExport};

/// Keeps the exporters and the log writer alive; call [`TelemetryGuard::shutdown`] last.
pub struct TelemetryGuard {
    tracer_provider: SdkTracerProvider,
    logger_provider: Option<SdkLoggerProvider>,
    logs: LogSinkGuard,
}

impl TelemetryGuard {
    /// Export the spans and log records still waiting, then write the last log lines.
    pub fn shutdown(self) {
        if let Err(error) = self.tracer_provider.shutdown() {
            tracing::warn!(%error, "shutting down the tracer provider failed");
        }
        if let Some(provider) = self.logger_provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "shutting down the logger provider failed");
        }
        drop(self.logs);
    }
}

/// The instrumentation scope of every span the services make.
const SCOPE_NAME: &str = "shopstack";

static EXPORTING_TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer of this process when it exports spans; `None` when nothing reads them, so code
/// that records spans without `tracing` (the gateway's proxied routes) builds none.
pub fn exporting_tracer() -> Option<&'static SdkTracer> {
    EXPORTING_TRACER.get()
}

/// Install logging and tracing for a service process.
pub fn init(settings: &Settings) -> anyhow::Result<TelemetryGuard> {
    let mut outputs: Vec<Box<dyn Write + Send>> = vec![Box::new(std::io::stdout())];
    if let Some(path) = &settings.log_file {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("Failed to create the LOG_FILE directory {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("Failed to open LOG_FILE {}", path.display()))?;
        outputs.push(Box::new(file));
    }
    let (sink, logs) =
        LogSink::start(&settings.identity.name, outputs).context("Failed to start the log writer thread")?;
    let resource = resource(settings);
    let tracer_provider = tracer_provider(settings, resource.clone())?;
    let exporting = (settings.traces_export != SignalExport::None).then(|| {
        let tracer = tracer_provider.tracer_with_scope(
            InstrumentationScope::builder(SCOPE_NAME)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        let _ = EXPORTING_TRACER.set(tracer.clone());
        tracer
    });
    let logger_provider = logger_provider(settings, resource)?;
    LOGS_EXPORTED.store(logger_provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    let subscriber = build_subscriber_with_logs(
        &settings.identity,
        &settings.log_level,
        sink,
        exporting,
        logger_provider.clone(),
    )?;
    tracing::subscriber::set_global_default(subscriber)
        .context("Failed to install the tracing subscriber (already installed?)")?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());
    Ok(TelemetryGuard {
        tracer_provider,
        logger_provider,
        logs,
    })
}

/// The resource every exported span and log record names: `OTEL_RESOURCE_ATTRIBUTES` as given,
/// the service's own attributes for the keys it leaves out, and the one service name
/// (`ServiceIdentity::name`, which already took `OTEL_SERVICE_NAME` and the resource's
/// `service.name` into account).
pub fn resource(settings: &Settings) -> Resource {
    let identity = &settings.identity;
    let given = &settings.resource_attributes;
    let defaults = [
        ("service.version", &identity.version),
        ("deployment.environment.name", &identity.environment),
        ("k8s.pod.name", &identity.pod_name),
        ("k8s.node.name", &identity.node_name),
    ]
    .into_iter()
    .filter(|(key, _)| !given.iter().any(|(given, _)| given == key))
    .map(|(key, value)| KeyValue::new(key, value.clone()));
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(defaults)
        .with_attributes(
            given
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        )
        .with_service_name(identity.name.clone())
        .build()
}

/// The sampler of the service where outside requests enter: a caller's `traceparent` gives the
/// trace its id, but whether it is recorded is this service's own decision — a parent-based
/// sampler decides a remote parent's span as it would a root's — so a public client cannot have
/// every request sampled by sending the sampled flag. (Spans with a parent in this process follow
/// it, as the configured sampler says.)
#[derive(Debug, Clone)]
struct EdgeSampler(Sampler);

impl ShouldSample for EdgeSampler {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let remote_parent = parent_context.is_some_and(|context| {
            let parent = context.span().span_context().clone();
            parent.is_valid() && parent.is_remote()
        });
        match &self.0 {
            Sampler::ParentBased(root) if remote_parent => {
                root.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
            }
            configured => {
                configured.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
            }
        }
    }
}

/// The tracer provider: the sampler of `OTEL_TRACES_SAMPLER`, and the SDK's batch span processor
/// in front of the exporter `OTEL_TRACES_EXPORTER` names (none: no processor at all).
fn tracer_provider(settings: &Settings, resource: Resource) -> anyhow::Result<SdkTracerProvider> {
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let builder = if settings.decides_sampling {
        builder.with_sampler(EdgeSampler(settings.sampler.clone()))
    } else {
        builder.with_sampler(settings.sampler.clone())
    };
    let queue = &settings.span_queue;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(queue.schedule_delay)
        .with_max_queue_size(queue.max_queue_size)
        .with_max_export_batch_size(queue.max_export_batch_size)
        .build();
    let builder = match &settings.traces_export {
        SignalExport::None => builder,
        SignalExport::Console => builder.with_span_processor(
            BatchSpanProcessor::builder(opentelemetry_stdout::SpanExporter::default())
                .with_batch_config(batch)
                .build(),
        ),
        SignalExport::Otlp(target) => builder.with_span_processor(
            BatchSpanProcessor::builder(span_exporter(target)?)
                .with_batch_config(batch)
                .build(),
        ),
    };
    Ok(builder.build())
}

/// The logger provider when log records are exported (`OTEL_LOGS_EXPORTER`).
fn logger_provider(settings: &Settings, resource: Resource) -> anyhow::Result<Option<SdkLoggerProvider>> {
    let builder = SdkLoggerProvider::builder()
        .with_resource(resource)
        .with_log_processor(JsonMembersAsAttributes);
    Ok(match &settings.logs_export {
        SignalExport::None => None,
        SignalExport::Console => Some(
            builder
                .with_batch_exporter(opentelemetry_stdout::LogExporter::default())
                .build(),
        ),
        SignalExport::Otlp(target) => Some(builder.with_batch_exporter(log_exporter(target)?).build()),
    })
}

/// gRPC metadata from the OTLP headers.
fn grpc_metadata(headers: &[(String, String)]) -> anyhow::Result<tonic::metadata::MetadataMap> {
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (name, value) in headers {
        let key = tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes())
            .with_context(|| format!("OTLP header {name:?} is not gRPC metadata"))?;
        let value = value
            .parse()
            .with_context(|| format!("the value of OTLP header {name:?} is not gRPC metadata"))?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// TLS for an `https://` gRPC endpoint: the system's root certificates.
fn grpc_tls(target: &OtlpTarget) -> Option<tonic::transport::ClientTlsConfig> {
    (target.endpoint.scheme() == "https")
        .then(|| tonic::transport::ClientTlsConfig::new().with_native_roots())
}

/// `target`'s gRPC settings on an exporter builder, of spans or of log records alike. Every
/// setting is given explicitly: it was read and checked with the others at start-up
/// (`CommonConfig::resolve`).
fn with_grpc_settings<B>(builder: B, target: &OtlpTarget) -> anyhow::Result<B>
where
    B: WithExportConfig + WithTonicConfig,
{
    let mut builder = builder
        .with_endpoint(target.endpoint.as_str())
        .with_timeout(target.timeout)
        .with_metadata(grpc_metadata(&target.headers)?);
    if let Some(tls) = grpc_tls(target) {
        builder = builder.with_tls_config(tls);
    }
    if target.gzip {
        builder = builder.with_compression(Compression::Gzip);
    }
    Ok(builder)
}

/// `target`'s HTTP/protobuf settings on an exporter builder (as [`with_grpc_settings`]).
fn with_http_settings<B>(builder: B, target: &OtlpTarget) -> B
where
    B: WithExportConfig + WithHttpConfig,
{
    let builder = builder
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(target.endpoint.as_str())
        .with_timeout(target.timeout)
        .with_headers(target.headers.iter().cloned().collect());
    if target.gzip {
        builder.with_compression(Compression::Gzip)
    } else {
        builder
    }
}

/// The OTLP span exporter of `target`.
fn span_exporter(target: &OtlpTarget) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let built = match target.protocol {
        OtlpProtocol::Grpc => with_grpc_settings(builder.with_tonic(), target)?.build(),
        OtlpProtocol::HttpProtobuf => with_http_settings(builder.with_http(), target).build(),
    };
    built.context("Failed to build the OTLP span exporter")
}

/// The OTLP log exporter of `target`.
fn log_exporter(target: &OtlpTarget) -> anyhow::Result<opentelemetry_otlp::LogExporter> {
    let builder = opentelemetry_otlp::LogExporter::builder();
    let built = match target.protocol {
        OtlpProtocol::Grpc => with_grpc_settings(builder.with_tonic(), target)?.build(),
        OtlpProtocol::HttpProtobuf => with_http_settings(builder.with_http(), target).build(),
    };
    built.context("Failed to build the OTLP log exporter")
}

/// The subscriber: JSON logs filtered by `log_level`; spans at INFO and above, made SDK spans by
/// `exporting` (the tracer of an exporting provider) or, without one, given their ids only.
pub fn build_subscriber<W>(
    identity: &ServiceIdentity,
    log_level: &str,
    writer: W,
    exporting: Option<SdkTracer>,
) -> anyhow::Result<Box<dyn Subscriber + Send + Sync + 'static>>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    build_subscriber_with_logs(identity, log_level, writer, exporting, None)
}

/// [`build_subscriber`], and with `logs` every line the JSON layer writes is also a log record
/// of that provider (`OTEL_LOGS_EXPORTER`), carrying the trace context of the span it is in.
pub fn build_subscriber_with_logs<W>(
    identity: &ServiceIdentity,
    log_level: &str,
    writer: W,
    exporting: Option<SdkTracer>,
    logs: Option<SdkLoggerProvider>,
) -> anyhow::Result<Box<dyn Subscriber + Send + Sync + 'static>>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    // The stack is built whole around one trace layer or the other, not with an `Option` of
    // each: a `None` layer counts as wanting every callsite, so a line every other layer turns
    // down would still be built at each call; and boxing the layer alone would put a virtual
    // call in every span's every enter and exit.
    macro_rules! with_trace_layer {
        ($trace_layer:expr) => {
            Box::new(
                Registry::default()
                    .with(SpanFieldsLayer.with_filter(log_layer_filter(log_level)?))
                    .with($trace_layer)
                    .with(JsonLogLayer::new(identity, writer).with_filter(log_layer_filter(log_level)?)),
            )
        };
        ($trace_layer:expr, $logs:expr) => {
            Box::new(
                Registry::default()
                    .with(SpanFieldsLayer.with_filter(log_layer_filter(log_level)?))
                    .with($trace_layer)
                    .with(JsonLogLayer::new(identity, writer).with_filter(log_layer_filter(log_level)?))
                    .with(
                        LogRecords::new($logs).with_filter(log_layer_filter(log_level)?.and(not_transport())),
                    ),
            )
        };
    }
    macro_rules! otel_layer {
        ($tracer:expr) => {
            tracing_opentelemetry::layer()
                .with_tracer($tracer)
                .with_tracked_inactivity(false)
                // Nothing here reads OpenTelemetry's "current" context (ids and propagation go
                // through the tracing span), and activating it on every poll of every
                // instrumented future cost allocations on the hot path.
                .with_context_activation(false)
                .with_filter(trace_spans().and(spans_and_warnings()))
        };
    }
    // Span creation does not depend on LOG_LEVEL: LOG_LEVEL=warn must not break traces.
    let subscriber: Box<dyn Subscriber + Send + Sync> = match (exporting, logs) {
        (Some(tracer), None) => with_trace_layer!(otel_layer!(tracer)),
        (None, None) => with_trace_layer!(TraceIdsLayer.with_filter(trace_layer_filter(log_level)?)),
        (Some(tracer), Some(logs)) => with_trace_layer!(otel_layer!(tracer), &logs),
        (None, Some(logs)) => {
            with_trace_layer!(TraceIdsLayer.with_filter(trace_layer_filter(log_level)?), &logs)
        }
    };
    Ok(subscriber)
}

/// Not the transport crates' own events: exporting a log record about an export would feed
/// itself.
fn not_transport() -> Targets {
    Targets::new().with_default(LevelFilter::TRACE).with_targets(
        [
            "h2",
            "tonic",
            "hyper",
            "hyper_util",
            "tower",
            "reqwest",
            "opentelemetry",
            "opentelemetry_sdk",
            "opentelemetry_otlp",
        ]
        .map(|target| (target, LevelFilter::OFF)),
    )
}

/// The log lines as OpenTelemetry log records (opentelemetry-appender-tracing's bridge), each
/// with the trace context of the span it is written in: the bridge takes it from OpenTelemetry's
/// current context, which the services do not activate (see `with_context_activation`), so it
/// is set here for the one call.
struct LogRecords {
    bridge: OpenTelemetryTracingBridge<SdkLoggerProvider, SdkLogger>,
    dispatch: OnceLock<tracing::dispatcher::WeakDispatch>,
}

impl LogRecords {
    fn new(provider: &SdkLoggerProvider) -> Self {
        Self {
            bridge: OpenTelemetryTracingBridge::new(provider),
            dispatch: OnceLock::new(),
        }
    }
}

impl<S> Layer<S> for LogRecords
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let context = ctx
            .event_scope(event)
            .and_then(|mut scope| scope.next())
            .and_then(|span| {
                let ids = span.extensions().get::<TraceIds>().map(|ids| ids.0.clone());
                ids.or_else(|| {
                    let dispatch = self.dispatch.get()?.upgrade()?;
                    tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)
                        .map(|context| context.span().span_context().clone())
                })
            })
            .filter(SpanContext::is_valid);
        match context {
            Some(context) => {
                let _current = opentelemetry::Context::new()
                    .with_remote_span_context(context)
                    .attach();
                self.bridge.on_event(event, ctx);
            }
            None => self.bridge.on_event(event, ctx),
        }
    }
}

/// Gives a log record whose line was assembled as [`JSON_MEMBERS`] (the gateway's request line)
/// each member as an attribute of its own, as the line shows them; runs before the exporting
/// processor, which sees the record as changed here.
#[derive(Debug)]
struct JsonMembersAsAttributes;

impl LogProcessor for JsonMembersAsAttributes {
    fn emit(&self, record: &mut SdkLogRecord, _scope: &InstrumentationScope) {
        let members = record.attributes_iter().find_map(|(key, value)| match value {
            AnyValue::Bytes(bytes) if key.as_str() == JSON_MEMBERS => {
                let mut object = Vec::with_capacity(bytes.len() + 2);
                object.push(b'{');
                object.extend_from_slice(bytes);
                object.push(b'}');
                serde_json::from_slice::<serde_json::Map<String, Value>>(&object).ok()
            }
            _ => None,
        });
        for (name, value) in members.into_iter().flatten() {
            let value = match value {
                Value::String(text) => AnyValue::from(text),
                Value::Bool(flag) => AnyValue::from(flag),
                Value::Number(number) => match number.as_i64() {
                    Some(whole) => AnyValue::from(whole),
                    None => AnyValue::from(number.as_f64().unwrap_or_default()),
                },
                other => AnyValue::from(other.to_string()),
            };
            record.add_attribute(opentelemetry::Key::from(name), value);
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(
        &self,
        _timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

static LOGS_EXPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Make `context` OpenTelemetry's current one while the guard lives, when log records are
/// exported: for a line written outside any `tracing` span (the gateway's request line), so
/// that its record carries the request's trace. `None` (nothing done) when logs are not
/// exported.
pub fn trace_context_for_log_records(
    context: impl FnOnce() -> SpanContext,
) -> Option<opentelemetry::ContextGuard> {
    LOGS_EXPORTED.load(std::sync::atomic::Ordering::Relaxed).then(|| {
        opentelemetry::Context::new()
            .with_remote_span_context(context())
            .attach()
    })
}

/// A span's place in its trace when spans are not exported (kept by [`TraceIdsLayer`]).
struct TraceIds(SpanContext);

/// Without an OTLP endpoint, all that is read of a span is its ids: the log lines' `trace_id`
/// and `span_id`, the `traceparent` of the calls made inside it. This layer gives each span
/// those — its parent's trace (or a new one) and an id of its own — and nothing else. The
/// OpenTelemetry layer in its place would build a whole SDK span per `tracing` span, attributes
/// formatted and events recorded, and drop it unread: a fifth to a quarter of the catalog's
/// work per request (docs/performance.md).
struct TraceIdsLayer;

impl<S> Layer<S> for TraceIdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span
            .parent()
            .and_then(|parent| parent.extensions().get::<TraceIds>().map(|ids| ids.0.clone()));
        span.extensions_mut()
            .insert(TraceIds(new_span_context(parent.as_ref())));
    }
}

/// The context of a new span that is not exported: a child of `parent` (same trace, sampled
/// flag and trace state), or the root of a new trace, marked sampled as the SDK's default
/// parent-based sampler would mark it, so the services behind this one that export record it.
pub fn new_span_context(parent: Option<&SpanContext>) -> SpanContext {
    let mut rng = rand::rng();
    let span_id = SpanId::from_bytes(rng.random::<u64>().max(1).to_be_bytes());
    match parent.filter(|parent| parent.is_valid()) {
        Some(parent) => SpanContext::new(
            parent.trace_id(),
            span_id,
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        ),
        None => SpanContext::new(
            TraceId::from_bytes(rng.random::<u128>().max(1).to_be_bytes()),
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
    }
}

/// Run `f` on `span`'s [`TraceIds`], when it has them (spans are not exported).
fn with_trace_ids<T>(span: &tracing::Span, f: impl FnOnce(&mut SpanContext) -> T) -> Option<T> {
    let mut f = Some(f);
    span.with_subscriber(|(id, dispatch)| {
        let data = dispatch.downcast_ref::<Registry>()?.span(id)?;
        let mut extensions = data.extensions_mut();
        let TraceIds(context) = extensions.get_mut::<TraceIds>()?;
        f.take().map(|f| f(context))
    })
    .flatten()
}

/// `span`'s trace context: its trace id, its own span id, the sampled flag and trace state
/// (invalid for a span that was not created: disabled, or no subscriber).
pub fn span_context(span: &tracing::Span) -> SpanContext {
    with_trace_ids(span, |context| context.clone())
        .unwrap_or_else(|| span.context().span().span_context().clone())
}

/// Continue `parent`'s trace in `span` (a caller's context, read from its `traceparent`); call
/// it before any span is created inside `span`. An invalid parent (no `traceparent`) leaves
/// `span` the root of its own trace.
pub fn set_parent(span: &tracing::Span, parent: opentelemetry::Context) {
    let updated = with_trace_ids(span, |context| {
        let remote = parent.span().span_context().clone();
        if remote.is_valid() {
            *context = SpanContext::new(
                remote.trace_id(),
                context.span_id(),
                remote.trace_flags(),
                false,
                remote.trace_state().clone(),
            );
        }
    });
    if updated.is_none() {
        let _ = span.set_parent(parent);
    }
}

/// The spans traces are made of: INFO and above, without the transport crates' own. Fixed
/// targets rather than an `EnvFilter`, which looks each span up under a lock at every enter,
/// exit and close in case a directive names span fields.
fn trace_spans() -> Targets {
    Targets::new()
        .with_default(LevelFilter::INFO)
        .with_targets(["h2", "tonic", "hyper", "tower"].map(|target| (target, LevelFilter::OFF)))
}

/// [`trace_spans`] and no events.
fn trace_spans_only<S: Subscriber>() -> impl Filter<S> + Send + Sync + 'static {
    trace_spans().and(filter_fn(|metadata| metadata.is_span()).with_max_level_hint(LevelFilter::TRACE))
}

/// What [`TraceIdsLayer`] is given: the spans traces are made of, whatever LOG_LEVEL says, and
/// the events `log_level` lets through, which it has no use for. Taking the log layers' events
/// keeps every layer agreeing on each event, and tracing then decides an event once per callsite:
/// taken, with no filter asked again, or turned down, with its fields not even evaluated. Where
/// layers disagree, each event asks every filter again and is built for whichever takes it: at
/// LOG_LEVEL=warn a layer taking INFO events would have each request's line built and dropped
/// (docs/performance.md). The OpenTelemetry layer cannot agree so: INFO lines are not made span
/// events.
fn trace_layer_filter<S>(log_level: &str) -> anyhow::Result<impl Filter<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let spans = trace_spans_only();
    let events = log_level_filter(log_level)?
        .and(filter_fn(|metadata| metadata.is_event()).with_max_level_hint(LevelFilter::TRACE));
    Ok(spans.or(events))
}

/// What the OpenTelemetry layer takes besides spans: warnings and errors, which become events of
/// the span they happen in. INFO lines stay in the logs, joined to the trace by `trace_id`: as
/// span events they would repeat what the span already says (every request's "request
/// completed" with its status and duration) at a measurable cost per request to each exporting
/// service (docs/performance.md).
fn spans_and_warnings<S>() -> impl Filter<S> + Send + Sync + 'static {
    filter_fn(|metadata| metadata.is_span() || *metadata.level() <= Level::WARN)
        .with_max_level_hint(LevelFilter::TRACE)
}

/// What the log layers (the JSON lines and the span fields they inherit) see: events as
/// `log_level` says, and the spans traces are made of whatever it says — so that at
/// `LOG_LEVEL=warn` a warning inside a request's span still carries the request's ids, method
/// and route. Every part states its most verbose level: one that doesn't makes the subscriber's
/// TRACE, and then every `trace!` and `trace_span!` of every crate (h2's on each OTLP poll) is
/// built for nothing (docs/performance.md).
fn log_layer_filter<S>(log_level: &str) -> anyhow::Result<impl Filter<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let events = log_level_filter(log_level)?;
    let spans = trace_spans_only();
    Ok(events.or(spans))
}

/// What `LOG_LEVEL` says (`EnvFilter` directives), for the layers that take the log's events.
fn log_level_filter(log_level: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_new(log_level).context("invalid LOG_LEVEL")
}

/// Put the span's OpenTelemetry ids into its log fields (`trace_id`, `span_id`) so log lines
/// written inside it carry them; returns the trace id. They go straight into the fields the log
/// layer keeps, not through `Span::record`, which would also have copied them into every
/// exported span as attributes that repeat the span's own ids.
pub fn record_trace_ids(span: &tracing::Span) -> Option<String> {
    let span_context = span_context(span);
    if !span_context.is_valid() {
        return None;
    }
    let trace_id = crate::propagation::hex_string(&span_context.trace_id().to_bytes());
    let span_id = crate::propagation::hex_string(&span_context.span_id().to_bytes());
    span.with_subscriber(|(id, dispatch)| {
        let Some(data) = dispatch
            .downcast_ref::<Registry>()
            .and_then(|registry| registry.span(id))
        else {
            return;
        };
        if let Some(SpanFields(fields)) = data.extensions_mut().get_mut::<SpanFields>() {
            upsert(fields, "trace_id", Value::String(trace_id.clone()));
            upsert(fields, "span_id", Value::String(span_id));
        }
    });
    Some(trace_id)
}

/// Fields as (name, value) pairs: names are `&'static str` (tracing's field names), so
/// collecting them allocates only for the values.
type Fields = Vec<(&'static str, Value)>;

/// Set `name` to `value`, replacing an earlier value of the same name.
fn upsert(fields: &mut Fields, name: &'static str, value: Value) {
    match fields.iter_mut().find(|(existing, _)| *existing == name) {
        Some(slot) => slot.1 = value,
        None => fields.push((name, value)),
    }
}

/// The span fields a log line inherits, kept in the span's extensions.
#[derive(Default)]
struct SpanFields(Fields);

/// Stores span fields as JSON for [`JsonLogLayer`]. Only plain names are kept: dotted names
/// (`otel.kind`, `server.port`) are OpenTelemetry attributes for traces, not log fields — they
/// are skipped before their values are even formatted — except the three a request's log line
/// shows under plain names ([`log_name`]), so a span states each of them once.
struct SpanFieldsLayer;

impl<S> Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut visitor = FieldVisitor::for_span(attrs.metadata().name());
        attrs.record(&mut visitor);
        span.extensions_mut().insert(SpanFields(visitor.fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut visitor = FieldVisitor::for_span(span.name());
        values.record(&mut visitor);
        if visitor.fields.is_empty() {
            return;
        }
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            for (name, value) in visitor.fields {
                upsert(fields, name, value);
            }
        }
    }
}

/// Writes one JSON object per event: timestamp, level, message, service, pod_name, target, the
/// fields of the enclosing spans (trace_id, span_id, method, route, …; inner spans win) and the
/// event's own fields (which win over all). The line is written straight into one buffer.
struct JsonLogLayer<W> {
    service: String,
    pod_name: String,
    writer: W,
}

impl<W> JsonLogLayer<W> {
    fn new(identity: &ServiceIdentity, writer: W) -> Self {
        Self {
            service: identity.name.clone(),
            pod_name: identity.pod_name.clone(),
            writer,
        }
    }
}

impl<S, W> Layer<S> for JsonLogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        thread_local! {
            /// The line being written, reused from line to line.
            static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let write = |line: &mut Vec<u8>| {
            line.clear();
            self.write_line(line, event, &ctx);
            let mut writer = self.writer.make_writer();
            let _ = writer.write_all(line);
        };
        // A value whose formatting logs (re-entering here) gets a buffer of its own.
        let reused = LINE.with(|line| line.try_borrow_mut().map(|mut line| write(&mut line)).is_ok());
        if !reused {
            write(&mut Vec::with_capacity(512));
        }
    }
}

impl<W> JsonLogLayer<W> {
    /// One JSON object: timestamp, level, message, then the defaults (service, pod_name,
    /// target) and the fields of the enclosing spans root to leaf (later ones win), then the
    /// event's own fields, which win over all: a name the event sets is not inherited. Span
    /// fields are borrowed (their extensions held for the line), never copied; the event's are
    /// written straight from its values, in one visit.
    fn write_line<S>(&self, line: &mut Vec<u8>, event: &Event<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let metadata = event.metadata();
        line.extend_from_slice(b"{\"timestamp\":\"");
        write_timestamp(line);
        line.extend_from_slice(b"\",\"level\":\"");
        line.extend_from_slice(level_name(*metadata.level()).as_bytes());
        line.push(b'"');

        let spans: Vec<_> = ctx
            .event_scope(event)
            .map(|scope| scope.from_root().collect())
            .unwrap_or_default();
        let extensions: Vec<_> = spans.iter().map(|span| span.extensions()).collect();
        let mut span_fields: Vec<(&str, &Value)> = Vec::new();
        for SpanFields(fields) in extensions.iter().filter_map(|ext| ext.get::<SpanFields>()) {
            for (name, value) in fields {
                match span_fields.iter_mut().find(|(existing, _)| existing == name) {
                    Some(slot) => slot.1 = value,
                    None => span_fields.push((name, value)),
                }
            }
        }
        let mut writer = EventFieldWriter {
            line,
            inherited: Some(Inherited {
                defaults: [
                    ("service", self.service.as_str()),
                    ("pod_name", self.pod_name.as_str()),
                    ("target", metadata.target()),
                ],
                span_fields,
                event_fields: metadata.fields(),
            }),
            message: false,
        };
        event.record(&mut writer);
        writer.write_inherited();
        if !writer.message {
            writer.line.extend_from_slice(b",\"message\":null");
        }
        writer.line.extend_from_slice(b"}\n");
    }
}

/// What a line inherits: the defaults and the enclosing spans' fields, minus what the event
/// sets itself.
struct Inherited<'a> {
    defaults: [(&'static str, &'a str); 3],
    span_fields: Vec<(&'a str, &'a Value)>,
    event_fields: &'a tracing::field::FieldSet,
}

impl Inherited<'_> {
    fn write(&self, line: &mut Vec<u8>) {
        let event_sets = |name: &str| {
            self.event_fields
                .iter()
                .any(|field| event_field_name(field.name()) == name)
        };
        for (name, default) in self.defaults {
            if event_sets(name) {
                continue;
            }
            write_key(line, name);
            match self.span_fields.iter().find(|(field, _)| *field == name) {
                Some((_, value)) => {
                    let _ = serde_json::to_writer(&mut *line, value);
                }
                None => write_json_string(line, default),
            }
        }
        for (name, value) in &self.span_fields {
            if !self.defaults.iter().any(|(default, _)| default == name) && !event_sets(name) {
                write_key(line, name);
                let _ = serde_json::to_writer(&mut *line, value);
            }
        }
    }
}

/// The name of an event field whose value (given as bytes, `&[u8]`) is members already in JSON
/// (`"name":value`, comma-separated), put into the line as they are. It is for a line assembled
/// on a hot path — the request line of the service kit's `observe::RouteObserver` — without a visit, a
/// formatting step or a UTF-8 check per field; `tracing` evaluates a field's value only when the
/// event is enabled, so members built in the event's field list cost nothing while its level is
/// off. Its members don't take part in the inheritance rules: to write a default (`service`,
/// `pod_name`) among them, declare it as an event field with the value `tracing::field::Empty`,
/// which keeps the default out of the line; never write the message or `target` there.
/// [`write_json_string`] writes text inside it.
pub const JSON_MEMBERS: &str = "json_members";

/// An event field's name in the log line (`log.target` from the `log` crate shows as `target`).
fn event_field_name(name: &str) -> &str {
    name.strip_prefix("log.").unwrap_or(name)
}

/// `,"name":` (names are field names: no characters that need escaping).
fn write_key(line: &mut Vec<u8>, name: &str) {
    line.reserve(name.len() + 4);
    line.extend_from_slice(b",\"");
    line.extend_from_slice(name.as_bytes());
    line.extend_from_slice(b"\":");
}

/// `text` as a JSON string, escaped as RFC 8259 requires (`"`, `\`, control characters).
pub fn write_json_string(line: &mut Vec<u8>, text: &str) {
    line.push(b'"');
    escape_json_into(line, text);
    line.push(b'"');
}

fn escape_json_into(line: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    // Most text needs no escaping: a pass over it eight bytes at a time says so, then it is
    // copied as it is.
    if !any_needs_escape(bytes) {
        line.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if !needs_escape(byte) {
            continue;
        }
        line.extend_from_slice(&bytes[start..index]);
        match byte {
            b'"' => line.extend_from_slice(b"\\\""),
            b'\\' => line.extend_from_slice(b"\\\\"),
            b'\n' => line.extend_from_slice(b"\\n"),
            b'\r' => line.extend_from_slice(b"\\r"),
            b'\t' => line.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                line.extend_from_slice(b"\\u00");
                line.push(HEX[usize::from(byte >> 4)]);
                line.push(HEX[usize::from(byte & 0xf)]);
            }
        }
        start = index + 1;
    }
    line.extend_from_slice(&bytes[start..]);
}

/// `"`, `\` and control characters must be escaped in a JSON string (RFC 8259 §7).
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Whether any byte [`needs_escape`], tested a word at a time ("has less than" and "has zero
/// byte" from Bit Twiddling Hacks: exact for "any").
fn any_needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS != 0;
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or_default());
        let control = word.wrapping_sub(0x20 * ONES) & !word & HIGHS != 0;
        if control
            || has_zero_byte(word ^ (u64::from(b'"') * ONES))
            || has_zero_byte(word ^ (u64::from(b'\\') * ONES))
        {
            return true;
        }
    }
    words.remainder().iter().any(|&byte| needs_escape(byte))
}

/// Formats straight into a JSON string's contents (a `Debug`/`Display` field, the message).
struct JsonStringContents<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for JsonStringContents<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        escape_json_into(self.0, text);
        Ok(())
    }
}

/// The wall-clock time as RFC 3339 with microseconds (`2026-11-27T17:00:19.243111Z`). The
/// date-and-seconds part is formatted once per second per thread.
fn write_timestamp(line: &mut Vec<u8>) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != seconds {
            *cached = seconds;
            *text = i64::try_from(seconds)
                .ok()
                .and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string();
        }
        line.extend_from_slice(text.as_bytes());
    });
    let micros = since_epoch.subsec_micros();
    line.push(b'.');
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    line.extend_from_slice(&digits);
    line.push(b'Z');
}

/// Writes an event's fields into the line as they are visited. `tracing`'s macros put the
/// message first; the inherited members follow it (or come first when there is no message or
/// it comes later), then the event's other fields.
struct EventFieldWriter<'a> {
    line: &'a mut Vec<u8>,
    /// Still to be written (before the first field that is not the message).
    inherited: Option<Inherited<'a>>,
    /// The message was written.
    message: bool,
}

impl EventFieldWriter<'_> {
    fn write_inherited(&mut self) {
        // Checked before taking: moving the (large) value out costs more than the check.
        if self.inherited.is_some()
            && let Some(inherited) = self.inherited.take()
        {
            inherited.write(self.line);
        }
    }

    /// Start the member for `field`.
    fn begin(&mut self, field: &Field) {
        if field.name() == "message" {
            self.message = true;
        } else {
            self.write_inherited();
        }
        write_key(self.line, event_field_name(field.name()));
    }
}

impl Visit for EventFieldWriter<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.begin(field);
        let _ = serde_json::to_writer(
            &mut *self.line,
            &serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number),
        );
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.begin(field);
        let _ = serde_json::to_writer(&mut *self.line, &value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.begin(field);
        let _ = serde_json::to_writer(&mut *self.line, &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.begin(field);
        self.line
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.begin(field);
        write_json_string(self.line, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.begin(field);
        self.line.push(b'"');
        let _ = std::fmt::Write::write_fmt(&mut JsonStringContents(self.line), format_args!("{value}"));
        self.line.push(b'"');
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        if field.name() == JSON_MEMBERS {
            self.write_inherited();
            self.line.push(b',');
            self.line.extend_from_slice(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.begin(field);
        self.line.push(b'"');
        let _ = std::fmt::Write::write_fmt(&mut JsonStringContents(self.line), format_args!("{value:?}"));
        self.line.push(b'"');
    }
}

fn level_name(level: tracing::Level) -> &'static str {
    match level {
        tracing::Level::ERROR => "error",
        tracing::Level::WARN => "warn",
        tracing::Level::INFO => "info",
        tracing::Level::DEBUG => "debug",
        tracing::Level::TRACE => "trace",
    }
}

/// Collects a span's log fields: plain (undotted) names only, see [`log_name`].
#[derive(Default)]
struct FieldVisitor {
    fields: Fields,
    /// Visiting a [`SERVER_SPAN`]'s fields.
    server_span: bool,
}

/// The span whose request attributes are also log fields (`log_name`).
pub const SERVER_SPAN: &str = "http.server.request";

/// A span field's name in log lines, or `None` for a trace-only attribute. A server span's
/// method, route and path are log fields too, under plain names; elsewhere (a client span's
/// `http.request.method`, say) they are attributes only.
fn log_name(name: &'static str, server_span: bool) -> Option<&'static str> {
    match name {
        "http.request.method" if server_span => Some("method"),
        "http.route" if server_span => Some("route"),
        "url.path" if server_span => Some("path"),
        name if name.contains('.') => None,
        name => Some(name),
    }
}

impl FieldVisitor {
    fn for_span(name: &str) -> Self {
        Self {
            server_span: name == SERVER_SPAN,
            ..Self::default()
        }
    }

    fn wants(&self, field: &Field) -> bool {
        log_name(field.name(), self.server_span).is_some()
    }

    fn put(&mut self, field: &Field, value: Value) {
        let name = log_name(field.name(), self.server_span).unwrap_or(field.name());
        upsert(&mut self.fields, name, value);
    }
}

impl Visit for FieldVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.wants(field) {
            self.put(
                field,
                serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number),
            );
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.wants(field) {
            self.put(field, Value::from(value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.wants(field) {
            self.put(field, Value::from(value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.wants(field) {
            self.put(field, Value::Bool(value));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.wants(field) {
            self.put(field, Value::String(value.to_owned()));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.wants(field) {
            self.put(field, Value::String(value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.wants(field) {
            self.put(field, Value::String(format!("{value:?}")));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use shopstack_testkit::logs::LogCapture;

    use super::*;
    use tracing::subscriber::Interest;

    fn decision(
        sampler: &dyn ShouldSample,
        parent: Option<SpanContext>,
    ) -> opentelemetry_sdk::trace::SamplingDecision {
        let context = parent.map(|parent| opentelemetry::Context::new().with_remote_span_context(parent));
        sampler
            .should_sample(
                context.as_ref(),
                TraceId::from_bytes([7; 16]),
                "GET /v1/cart/{user_id}",
                &SpanKind::Server,
                &[],
                &[],
            )
            .decision
    }

    #[test]
    fn at_the_edge_a_callers_sampled_flag_does_not_decide_and_inside_a_parent_does() {
        use opentelemetry_sdk::trace::SamplingDecision::{Drop, RecordAndSample};
        let caller = |flags| {
            SpanContext::new(
                TraceId::from_bytes([7; 16]),
                SpanId::from_bytes([1; 8]),
                flags,
                true,
                TraceState::NONE,
            )
        };
        let sampled = caller(TraceFlags::SAMPLED);
        let not_sampled = caller(TraceFlags::default());
        let never = EdgeSampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
        let always = EdgeSampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        // A client's 01 does not force a recording, nor its 00 prevent one.
        assert_eq!(decision(&never, Some(sampled.clone())), Drop);
        assert_eq!(decision(&always, Some(not_sampled.clone())), RecordAndSample);
        assert_eq!(decision(&never, None), Drop);
        // The trace id is the caller's either way (the SDK keeps the parent's); behind the edge
        // the configured parent-based sampler follows the caller as before.
        let behind = Sampler::ParentBased(Box::new(Sampler::AlwaysOff));
        assert_eq!(decision(&behind, Some(sampled)), RecordAndSample);
        assert_eq!(
            decision(
                &Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
                Some(not_sampled)
            ),
            Drop
        );
    }

    /// The lines `body` logs through the real subscriber (installed for this thread only).
    fn log_lines(body: impl FnOnce()) -> Vec<Value> {
        let capture = LogCapture::default();
        let identity = shopstack_testkit::settings("unit").identity;
        let subscriber = build_subscriber(&identity, "debug", capture.clone(), None).unwrap();
        tracing::subscriber::with_default(subscriber, body);
        capture.json_lines()
    }

    #[test]
    fn a_line_has_the_shared_members_and_the_event_fields_as_json_values() {
        let lines = log_lines(|| {
            tracing::info!(
                count = 3u64,
                delta = -2i64,
                ratio = 0.5,
                ok = true,
                name = "plain",
                shown = %"display \"quoted\"",
                "hello {}",
                "world"
            );
        });
        let line = &lines[0];
        assert_eq!(line["message"], "hello world");
        assert_eq!(line["level"], "info");
        assert_eq!(line["service"], "unit");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["count"], 3);
        assert_eq!(line["delta"], -2);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["ok"], true);
        assert_eq!(line["name"], "plain");
        assert_eq!(line["shown"], "display \"quoted\"");
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(timestamp).is_ok()
                && timestamp.len() == 27
                && timestamp.ends_with('Z'),
            "RFC 3339 with microseconds in UTC: {timestamp}"
        );
    }

    #[test]
    fn the_word_at_a_time_check_agrees_with_the_byte_check() {
        for byte in 0..=u8::MAX {
            for position in 0..20 {
                let mut text = vec![b'a'; 20];
                text[position] = byte;
                assert_eq!(
                    any_needs_escape(&text),
                    needs_escape(byte),
                    "byte {byte:#04x} at {position}"
                );
            }
        }
        assert!(!any_needs_escape("plain ascii, ünïcödé and ✓ marks".as_bytes()));
    }

    #[test]
    fn text_is_escaped_so_every_line_stays_one_json_object() {
        let nasty = "quote \" backslash \\ newline \n tab \t bell \u{7} é ✓";
        let lines = log_lines(|| tracing::warn!(text = nasty, debug = ?nasty, "{nasty}"));
        assert_eq!(lines.len(), 1, "one line, whatever the text holds");
        assert_eq!(lines[0]["message"], nasty);
        assert_eq!(lines[0]["text"], nasty);
        assert_eq!(lines[0]["debug"], format!("{nasty:?}"));
    }

    #[test]
    fn span_fields_are_inherited_inner_spans_win_and_event_fields_win_over_all() {
        let lines = log_lines(|| {
            let outer =
                tracing::info_span!("outer", request_id = "r-1", route = "outer", otel.kind = "server");
            let _outer = outer.enter();
            let inner = tracing::info_span!("inner", route = "inner", user = "u-1");
            let _inner = inner.enter();
            tracing::info!(user = "from-event", "inside");
        });
        let line = lines[0].as_object().unwrap();
        assert_eq!(line["request_id"], "r-1");
        assert_eq!(line["route"], "inner", "the inner span wins");
        assert_eq!(line["user"], "from-event", "the event wins");
        assert!(
            !line.contains_key("otel.kind"),
            "trace-only attributes stay out of logs"
        );
    }

    #[test]
    fn a_server_spans_request_attributes_show_under_plain_names() {
        let lines = log_lines(|| {
            let span = tracing::info_span!(
                SERVER_SPAN,
                http.request.method = "GET",
                http.route = "/catalog/{id}",
                url.path = "/catalog/p-1"
            );
            let _span = span.enter();
            tracing::info!("request completed");
        });
        assert_eq!(lines[0]["method"], "GET");
        assert_eq!(lines[0]["route"], "/catalog/{id}");
        assert_eq!(lines[0]["path"], "/catalog/p-1");
    }

    /// The subscriber's most verbose level is what its filters let through, so a dependency's
    /// `trace_span!` (h2, on every poll of the OTLP channel) is skipped by the macro's level
    /// check instead of being built and closed for nothing; and a request's span lends its
    /// fields to the lines inside it whatever LOG_LEVEL says.
    #[test]
    fn nothing_more_verbose_than_the_filters_allow_is_built() {
        let identity = shopstack_testkit::settings("unit").identity;
        let provider = SdkTracerProvider::builder().build();
        for exporting in [None, Some(provider.tracer("unit"))] {
            let hint = |log_level: &str| {
                build_subscriber(&identity, log_level, LogCapture::default(), exporting.clone())
                    .unwrap()
                    .max_level_hint()
            };
            // Spans are made at INFO whatever LOG_LEVEL says (traces don't depend on it).
            assert_eq!(hint("info"), Some(LevelFilter::INFO));
            assert_eq!(hint("warn"), Some(LevelFilter::INFO));
            assert_eq!(hint("debug"), Some(LevelFilter::DEBUG));
        }

        let capture = LogCapture::default();
        let subscriber = build_subscriber(&identity, "info", capture.clone(), None).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::enabled!(target: "h2::proto::connection", tracing::Level::TRACE));
            let span = tracing::info_span!("outer", route = "from-span");
            let _span = span.enter();
            tracing::info!("inside");
        });
        assert_eq!(capture.json_lines()[0]["route"], "from-span");

        // At LOG_LEVEL=warn a warning inside a request's (INFO) span still inherits its fields;
        // the span's own INFO lines stay out.
        let capture = LogCapture::default();
        let subscriber = build_subscriber(&identity, "warn", capture.clone(), None).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("outer", route = "from-span");
            let _span = span.enter();
            tracing::info!("not written");
            tracing::warn!("written");
        });
        let lines = capture.json_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(
            (&lines[0]["message"], &lines[0]["route"]),
            (&Value::from("written"), &Value::from("from-span"))
        );
    }

    /// What is read of a span's trace — its ids in the log lines, the `traceparent` and
    /// `tracestate` of a call made inside it — is the same whether the span is an SDK span
    /// (exported) or only has its ids (not exported).
    #[test]
    fn a_spans_trace_reads_the_same_exported_or_not() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let identity = shopstack_testkit::settings("unit").identity;
        let provider = SdkTracerProvider::builder().build();
        let caller_trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let caller_span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        for exporting in [None, Some(provider.tracer("unit"))] {
            let mode = if exporting.is_some() {
                "exported"
            } else {
                "ids only"
            };
            for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
                let capture = LogCapture::default();
                let subscriber =
                    build_subscriber(&identity, "info", capture.clone(), exporting.clone()).unwrap();
                let (server, client, headers) = tracing::subscriber::with_default(subscriber, || {
                    let state = TraceState::from_key_value([("vendor", "value")]).unwrap();
                    let caller = SpanContext::new(caller_trace, caller_span, flags, true, state);
                    let span = tracing::info_span!("server");
                    set_parent(
                        &span,
                        opentelemetry::Context::new().with_remote_span_context(caller),
                    );
                    let trace_id = record_trace_ids(&span);
                    let _server = span.enter();
                    let call = tracing::info_span!("client");
                    let mut headers = axum::http::HeaderMap::new();
                    crate::propagation::inject(span_context(&call), &mut headers);
                    tracing::info!("inside");
                    assert_eq!(trace_id, Some(caller_trace.to_string()), "{mode}");
                    (span_context(&span), span_context(&call), headers)
                });
                for context in [&server, &client] {
                    assert!(context.is_valid(), "{mode}");
                    assert_eq!(context.trace_id(), caller_trace, "{mode}");
                    assert_eq!(context.is_sampled(), flags.is_sampled(), "{mode}");
                }
                assert!(server.span_id() != caller_span && client.span_id() != server.span_id());
                let expected =
                    crate::propagation::traceparent_text(caller_trace, client.span_id(), flags.is_sampled());
                assert_eq!(headers["traceparent"].as_bytes(), &expected[..], "{mode}");
                assert_eq!(headers["tracestate"], "vendor=value", "{mode}");
                let line = &capture.json_lines()[0];
                assert_eq!(line["trace_id"], caller_trace.to_string(), "{mode}");
                assert_eq!(line["span_id"], server.span_id().to_string(), "{mode}");
            }
            // Without a caller: a trace of its own, sampled (the default parent-based sampler).
            let subscriber = build_subscriber(&identity, "info", LogCapture::default(), exporting).unwrap();
            let (root, child) = tracing::subscriber::with_default(subscriber, || {
                let span = tracing::info_span!("server");
                set_parent(&span, opentelemetry::Context::new());
                let child = span.in_scope(|| tracing::info_span!("client"));
                (span_context(&span), span_context(&child))
            });
            assert!(root.is_valid() && root.is_sampled(), "{mode}");
            assert_eq!(child.trace_id(), root.trace_id(), "{mode}");
            assert_ne!(child.span_id(), root.span_id(), "{mode}");
        }
    }

    /// Keeps the spans it is handed, for a test to read.
    #[derive(Clone, Default, Debug)]
    struct Collected(Arc<Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

    impl opentelemetry_sdk::trace::SpanProcessor for Collected {
        fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}
        fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(
            &self,
            _timeout: std::time::Duration,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
    }

    /// An exported span carries the warnings and errors logged inside it as events, whatever
    /// LOG_LEVEL says; its INFO lines stay in the log (with the span's ids), not repeated on the
    /// span.
    #[test]
    fn warnings_and_errors_become_span_events_info_lines_do_not() {
        for (log_level, logged) in [
            ("info", &["request completed", "retrying", "request failed"][..]),
            ("error", &["request failed"][..]),
        ] {
            let collected = Collected::default();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(collected.clone())
                .build();
            let capture = LogCapture::default();
            let identity = shopstack_testkit::settings("unit").identity;
            let subscriber = build_subscriber(
                &identity,
                log_level,
                capture.clone(),
                Some(provider.tracer("unit")),
            )
            .unwrap();
            tracing::subscriber::with_default(subscriber, || {
                let span = tracing::info_span!("server");
                let _span = span.enter();
                tracing::info!("request completed");
                tracing::warn!(attempt = 2, "retrying");
                tracing::error!("request failed");
            });
            let spans = collected.0.lock().unwrap();
            assert_eq!(spans.len(), 1);
            let events: Vec<&str> = spans[0].events.iter().map(|event| event.name.as_ref()).collect();
            assert_eq!(events, ["retrying", "request failed"], "LOG_LEVEL={log_level}");
            let messages: Vec<Value> = capture
                .json_lines()
                .iter()
                .map(|line| line["message"].clone())
                .collect();
            assert_eq!(messages, logged, "LOG_LEVEL={log_level}");
        }
    }

    /// Each event's callsite is decided once, not at every call, wherever the layers agree: a
    /// request's INFO line at LOG_LEVEL=warn is turned down by every layer, exported or not
    /// (`never`: its fields are not even evaluated), and at LOG_LEVEL=info without export taken
    /// by every layer (`always`: no filter asked again). With export the OpenTelemetry layer
    /// turns INFO lines down where the log layers take them, so each line asks the filters.
    /// (The interest is read from each subscriber alone: in a test process the callsite's own
    /// is the sum over the subscribers of every test running beside this one.)
    #[test]
    fn an_events_callsite_is_decided_once_where_the_layers_agree() {
        type SeenEvent = Arc<Mutex<Option<&'static tracing::Metadata<'static>>>>;
        struct LastEvent(SeenEvent);
        impl<S: Subscriber> Layer<S> for LastEvent {
            fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
                *self.0.lock().unwrap() = Some(event.metadata());
            }
            // INFO and above only: a layer wanting everything would raise the most verbose
            // level of every test running beside this one.
            fn register_callsite(&self, metadata: &'static tracing::Metadata<'static>) -> Interest {
                if *metadata.level() <= Level::INFO {
                    Interest::always()
                } else {
                    Interest::never()
                }
            }
            fn max_level_hint(&self) -> Option<LevelFilter> {
                Some(LevelFilter::INFO)
            }
        }
        let identity = shopstack_testkit::settings("unit").identity;
        let seen = SeenEvent::default();
        tracing::subscriber::with_default(Registry::default().with(LastEvent(seen.clone())), || {
            tracing::info!(status = 200, "request completed");
        });
        let line = seen.lock().unwrap().expect("the line reached the layer");

        let interest = |log_level: &str, exporting: Option<SdkTracer>| {
            let subscriber =
                build_subscriber(&identity, log_level, LogCapture::default(), exporting).unwrap();
            tracing::Dispatch::new(subscriber).register_callsite(line)
        };
        let provider = SdkTracerProvider::builder().build();
        assert!(interest("info", None).is_always());
        assert!(interest("warn", None).is_never());
        assert!(interest("warn", Some(provider.tracer("unit"))).is_never());
        assert!(interest("info", Some(provider.tracer("unit"))).is_sometimes());
    }

    #[test]
    fn json_members_are_spliced_into_the_line_as_they_are() {
        let mut members = b"\"path\":".to_vec();
        write_json_string(&mut members, "/a \"quoted\"\\path\n\u{1}");
        members.extend_from_slice(b",\"status\":200");
        let lines = log_lines(|| {
            let span = tracing::info_span!("outer", route = "from-span");
            let _span = span.enter();
            tracing::info!(service = "edge", json_members = &members[..], "request completed");
            tracing::info!(
                bytes = &b"\x01\xff"[..],
                "other byte fields are written as Debug shows them"
            );
        });
        let line = &lines[0];
        assert_eq!(line["message"], "request completed");
        assert_eq!(line["service"], "edge");
        assert_eq!(line["route"], "from-span", "inherited fields are kept");
        assert_eq!(line["path"], "/a \"quoted\"\\path\n\u{1}");
        assert_eq!(line["status"], 200);
        assert!(line.get(JSON_MEMBERS).is_none());
        assert_eq!(lines[1]["bytes"], "[1, 255]");
    }

    #[test]
    fn json_members_can_carry_the_service_when_the_event_declares_it_empty() {
        let capture = LogCapture::default();
        let identity = shopstack_testkit::settings("unit").identity;
        let subscriber = build_subscriber(&identity, "info", capture.clone(), None).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                service = tracing::field::Empty,
                pod_name = tracing::field::Empty,
                json_members = &b"\"service\":\"edge\",\"pod_name\":\"edge-1\""[..],
                "request completed"
            );
        });
        let raw = capture.raw_lines().join("\n");
        assert_eq!(raw.matches("\"service\"").count(), 1, "{raw}");
        assert_eq!(raw.matches("\"pod_name\"").count(), 1, "{raw}");
        let line: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(
            (line["service"].as_str(), line["pod_name"].as_str()),
            (Some("edge"), Some("edge-1"))
        );
        assert_eq!(line["target"], module_path!());
    }

    #[test]
    fn an_event_can_name_its_own_service_target_or_message_free_line() {
        let capture = LogCapture::default();
        let identity = shopstack_testkit::settings("unit").identity;
        let subscriber = build_subscriber(&identity, "info", capture.clone(), None).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(service = "other", target = "elsewhere");
        });
        let raw = capture.raw_lines().join("\n");
        assert_eq!(raw.matches("\"service\"").count(), 1, "each member once: {raw}");
        assert_eq!(raw.matches("\"target\"").count(), 1, "each member once: {raw}");
        let line: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(line["service"], "other");
        assert_eq!(line["target"], "elsewhere");
        assert_eq!(line["message"], Value::Null);
    }
}
