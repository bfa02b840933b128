//! Logs, traces and metrics of a ShopStack service: the JSON log line, the OpenTelemetry SDK with its OTLP exporters, W3C propagation, and the Prometheus registry.
//!
//! - [`telemetry`]: the subscriber (JSON log layer, trace layers, log records), the SDK's tracer
//!   and logger providers with their OTLP exporters, and a span's trace context.
//! - [`logsink`]: the log writer thread.
//! - [`propagation`]: `traceparent`/`tracestate` in and out of headers.
//! - [`metrics`]: the service's metric registry, the HTTP metrics and `/metrics` (OpenMetrics
//!   with exemplars, or the Prometheus text format); `process`: the `process_*` metrics.
#![forbid(unsafe_code)]

pub mod logsink;
pub mod metrics;
#[cfg(target_os = "linux")]
mod process;
pub mod propagation;
pub mod telemetry;
