//! Logs, traces and metrics of a ShopStack service: the JSON log line, OpenTelemetry spans and their OTLP export, W3C propagation, and the Prometheus registry.
//!
//! - [`telemetry`]: the subscriber (JSON log layer, trace layers) and a span's trace context.
//! - [`logsink`]: the log writer thread; [`otlp`] and [`span_queue`]: OTLP/gRPC span export.
//! - [`propagation`]: `traceparent`/`tracestate` in and out of headers.
//! - [`metrics`]: the service's metric registry, the HTTP metrics and `/metrics` (OpenMetrics
//!   with exemplars, or the Prometheus text format); `process`: the `process_*` metrics.
#![forbid(unsafe_code)]

pub mod logsink;
pub mod metrics;
pub mod otlp;
#[cfg(target_os = "linux")]
mod process;
pub mod propagation;
pub mod span_queue;
pub mod telemetry;
