//! Logs and traces: one JSON object per line, and OpenTelemetry spans that carry the same ids.
//!
//! Building the subscriber ([`build_subscriber`]) is split from installing it ([`init`], once per
//! process) so tests can install a capturing variant ([`init_for_tests`]).
//!
//! Spans are always created — with or without an OTLP endpoint — so every request log line has a
//! `trace_id` and `span_id`, and an inbound `traceparent` keeps its trace id. Export happens only
//! when an endpoint is configured.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

use crate::config::{ServiceIdentity, Settings};

/// Keeps the exporters and log writers alive; call [`TelemetryGuard::shutdown`] last.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    _writers: Vec<tracing_appender::non_blocking::WorkerGuard>,
}

impl TelemetryGuard {
    /// Flush pending spans (and, on drop of the writer guards, pending log lines).
    pub fn shutdown(self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "flushing spans at shutdown failed");
        }
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "shutting down the tracer provider failed");
        }
    }
}

/// Install logging and tracing for a service process.
pub fn init(settings: &Settings) -> anyhow::Result<TelemetryGuard> {
    let mut guards = Vec::new();
    let (stdout, guard) = tracing_appender::non_blocking(std::io::stdout());
    guards.push(guard);
    let file = match &settings.log_file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("Failed to create the LOG_FILE directory {}", dir.display()))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("Failed to open LOG_FILE {}", path.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(file);
            guards.push(guard);
            Some(writer)
        }
        None => None,
    };
    let provider = tracer_provider(&settings.identity, settings.otlp_endpoint.as_ref())?;
    let writer = TeeWriter { stdout, file };
    let subscriber = build_subscriber(&settings.identity, &settings.log_level, writer, &provider)?;
    tracing::subscriber::set_global_default(subscriber)
        .context("Failed to install the tracing subscriber (already installed?)")?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(TelemetryGuard {
        provider,
        _writers: guards,
    })
}

/// The subscriber: JSON logs filtered by `log_level`, OpenTelemetry spans at INFO and above.
pub fn build_subscriber<W>(
    identity: &ServiceIdentity,
    log_level: &str,
    writer: W,
    provider: &SdkTracerProvider,
) -> anyhow::Result<impl Subscriber + Send + Sync + 'static>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let log_filter = EnvFilter::try_new(log_level).context("invalid LOG_LEVEL")?;
    // Span creation does not depend on LOG_LEVEL: LOG_LEVEL=warn must not break traces.
    let span_filter =
        EnvFilter::try_new("info,h2=off,tonic=off,hyper=off,tower=off").context("invalid span filter")?;
    let tracer = provider.tracer("shopstack");
    Ok(Registry::default()
        .with(SpanFieldsLayer)
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                // Nothing here reads OpenTelemetry's "current" context (ids and propagation go
                // through the tracing span), and activating it on every poll of every
                // instrumented future cost allocations on the hot path.
                .with_context_activation(false)
                .with_filter(span_filter),
        )
        .with(JsonLogLayer::new(identity, writer).with_filter(log_filter)))
}

fn tracer_provider(
    identity: &ServiceIdentity,
    endpoint: Option<&reqwest::Url>,
) -> anyhow::Result<SdkTracerProvider> {
    let resource = Resource::builder()
        .with_service_name(identity.name.clone())
        .with_attributes([
            KeyValue::new("service.version", identity.version.clone()),
            KeyValue::new("deployment.environment.name", identity.environment.clone()),
            KeyValue::new("k8s.pod.name", identity.pod_name.clone()),
            KeyValue::new("k8s.node.name", identity.node_name.clone()),
        ])
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.as_str())
            .build()
            .context("Failed to build the OTLP span exporter")?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Lines captured by [`init_for_tests`].
#[derive(Clone, Default)]
pub struct LogCapture {
    lines: Arc<Mutex<Vec<String>>>,
    echo: bool,
}

impl LogCapture {
    /// Every captured line that parses as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        let lines = match self.lines.lock() {
            Ok(lines) => lines.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        lines
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if self.echo {
            std::io::stderr().write_all(buf)?;
        }
        let mut lines = match self.lines.lock() {
            Ok(lines) => lines,
            Err(poisoned) => poisoned.into_inner(),
        };
        lines.extend(text.lines().map(str::to_owned));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Install telemetry once for a test binary; logs are captured (and echoed when `TEST_LOG` is set).
pub fn init_for_tests() -> &'static LogCapture {
    static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = LogCapture {
            lines: Arc::default(),
            echo: std::env::var_os("TEST_LOG").is_some(),
        };
        let identity = Settings::for_tests("test").identity;
        let provider = SdkTracerProvider::builder().build();
        if let Ok(subscriber) = build_subscriber(&identity, "info", capture.clone(), &provider) {
            let _ = tracing::subscriber::set_global_default(subscriber);
        }
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider);
        capture
    })
}

/// Writes each line to stdout and, when configured, to `LOG_FILE`.
struct TeeWriter {
    stdout: tracing_appender::non_blocking::NonBlocking,
    file: Option<tracing_appender::non_blocking::NonBlocking>,
}

impl<'a> MakeWriter<'a> for TeeWriter {
    type Writer = TeeLine;

    fn make_writer(&'a self) -> Self::Writer {
        TeeLine {
            stdout: self.stdout.clone(),
            file: self.file.clone(),
        }
    }
}

struct TeeLine {
    stdout: tracing_appender::non_blocking::NonBlocking,
    file: Option<tracing_appender::non_blocking::NonBlocking>,
}

impl Write for TeeLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(file) = &mut self.file {
            file.write_all(buf)?;
        }
        self.stdout.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Put the span's OpenTelemetry ids into its log fields (`trace_id`, `span_id`) so log lines
/// written inside it carry them; returns the trace id. They go straight into the fields the log
/// layer keeps, not through `Span::record`, which would also have copied them into every
/// exported span as attributes that repeat the span's own ids.
pub fn record_trace_ids(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    if !span_context.is_valid() {
        return None;
    }
    let trace_id = span_context.trace_id().to_string();
    let span_id = span_context.span_id().to_string();
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
    service: Value,
    pod_name: Value,
    writer: W,
}

impl<W> JsonLogLayer<W> {
    fn new(identity: &ServiceIdentity, writer: W) -> Self {
        Self {
            service: Value::String(identity.name.clone()),
            pod_name: Value::String(identity.pod_name.clone()),
            writer,
        }
    }
}

fn write_member(line: &mut Vec<u8>, name: &str, value: &impl serde::Serialize) {
    if line.len() > 1 {
        line.push(b',');
    }
    let _ = serde_json::to_writer(&mut *line, name);
    line.push(b':');
    let _ = serde_json::to_writer(&mut *line, value);
}

impl<S, W> Layer<S> for JsonLogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut visitor = FieldVisitor {
            keep_dotted: true,
            ..FieldVisitor::default()
        };
        event.record(&mut visitor);
        let event_fields = visitor.fields;
        let message = event_fields
            .iter()
            .find(|(name, _)| *name == "message")
            .map(|(_, value)| value);

        let metadata = event.metadata();
        let mut line = Vec::with_capacity(512);
        line.push(b'{');
        write_member(
            &mut line,
            "timestamp",
            &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        );
        write_member(&mut line, "level", &level_name(*metadata.level()));
        write_member(&mut line, "message", message.unwrap_or(&Value::Null));

        // Defaults, then span fields root to leaf, then the event's fields: later ones win.
        // The spans' fields are borrowed (their extensions held for the line), never copied.
        let target = Value::String(metadata.target().to_owned());
        let spans: Vec<_> = ctx
            .event_scope(event)
            .map(|scope| scope.from_root().collect())
            .unwrap_or_default();
        let extensions: Vec<_> = spans.iter().map(|span| span.extensions()).collect();
        let mut inherited: Vec<(&str, &Value)> = vec![
            ("service", &self.service),
            ("pod_name", &self.pod_name),
            ("target", &target),
        ];
        for SpanFields(fields) in extensions.iter().filter_map(|ext| ext.get::<SpanFields>()) {
            for (name, value) in fields {
                match inherited.iter_mut().find(|(existing, _)| existing == name) {
                    Some(slot) => slot.1 = value,
                    None => inherited.push((name, value)),
                }
            }
        }
        for (name, value) in &inherited {
            if !event_fields.iter().any(|(own, _)| own == name) {
                write_member(&mut line, name, value);
            }
        }
        for (name, value) in &event_fields {
            if *name != "message" {
                write_member(&mut line, name.trim_start_matches("log."), value);
            }
        }
        line.extend_from_slice(b"}\n");
        let mut writer = self.writer.make_writer();
        let _ = writer.write_all(&line);
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

#[derive(Default)]
struct FieldVisitor {
    fields: Fields,
    /// Events keep every field; spans only plain (undotted) names.
    keep_dotted: bool,
    /// Visiting a [`SERVER_SPAN`]'s fields.
    server_span: bool,
}

/// The span whose request attributes are also log fields ([`log_name`]).
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
        self.keep_dotted || log_name(field.name(), self.server_span).is_some()
    }

    fn put(&mut self, field: &Field, value: Value) {
        let name = if self.keep_dotted {
            field.name()
        } else {
            log_name(field.name(), self.server_span).unwrap_or(field.name())
        };
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
