//! OTLP/gRPC for spans: each span written straight into protobuf ([`SpanBatch`]), a batch
//! wrapped as an `ExportTraceServiceRequest` and sent over tonic's channel with a codec that
//! passes the bytes through ([`OtlpExporter`]). `span_queue` decides when.
//!
//! Why not opentelemetry-otlp's exporter: it clones the batch, turns every span into the
//! generated protobuf structs (a string copy per attribute key and value), then prost walks
//! them twice (size, then bytes). At 100 % sampling that costs the gateway, per span, half again
//! what proxying the request costs (docs/performance.md).
//! Here a span is written in one pass from the data the SDK hands over, as it ends. What is
//! written is checked against the generated types in the tests; what is sent, against a real
//! receiver in the trace tests.
//!
//! It honours what the project documents for export: the endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`),
//! `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_TIMEOUT`; a batch is retried on the
//! transient gRPC codes the OTLP specification names, with backoff, within the timeout.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, StringValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Attempts at one batch (the first and two retries).
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Requests to an OTLP/gRPC endpoint (see the module docs).
pub struct OtlpExporter {
    channel: tonic::transport::Channel,
    headers: MetadataMap,
    timeout: Duration,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OtlpExporter {
    /// An exporter to `endpoint` (connected when first used). Must be called inside a Tokio
    /// runtime: the connection is driven by it.
    pub fn new(endpoint: &str, headers: &[(String, String)], timeout: Duration) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .timeout(timeout)
            .connect_lazy();
        let mut metadata = MetadataMap::new();
        for (name, value) in headers {
            metadata.insert(
                MetadataKey::from_bytes(name.as_bytes())?,
                MetadataValue::try_from(value.as_str())?,
            );
        }
        Ok(Self {
            channel,
            headers: metadata,
            timeout,
        })
    }

    /// Send one `ExportTraceServiceRequest`, retried on the transient codes with backoff while
    /// the timeout allows. Runs on the span queue's own thread (under `block_on`): the backoff
    /// sleeps that thread, holding nothing else up.
    pub async fn export(&self, request: bytes::Bytes) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            match self.send(request.clone()).await {
                Ok(()) => return Ok(()),
                Err(status)
                    if attempt < ATTEMPTS && is_transient(&status) && Instant::now() + backoff < deadline =>
                {
                    std::thread::sleep(backoff);
                    backoff *= 2;
                }
                Err(status) => return Err(format!("{} {}", status.code(), status.message())),
            }
        }
        Err("no attempt made".into())
    }

    async fn send(&self, body: bytes::Bytes) -> Result<(), tonic::Status> {
        let mut client = tonic::client::Grpc::new(self.channel.clone());
        client
            .ready()
            .await
            .map_err(|error| tonic::Status::unavailable(format!("OTLP endpoint not ready: {error}")))?;
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.headers.clone();
        let path = axum::http::uri::PathAndQuery::from_static(EXPORT_PATH);
        let response = client.unary(request, path, Passthrough).await?;
        warn_about_partial_success(&response.into_inner());
        Ok(())
    }
}

/// The process's `Resource`, written once: its attributes as `KeyValue` fields and its
/// schema URL.
#[derive(Debug, Clone, Default)]
pub struct EncodedResource {
    attributes: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub fn new(resource: &Resource) -> Self {
        let mut attributes = Vec::new();
        for (key, value) in resource.iter() {
            nested(&mut attributes, 1, |out| key_value(out, key.as_str(), value));
        }
        Self {
            attributes,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

/// Spans already written as `Span` messages, grouped by instrumentation scope in the order
/// scopes first appear: a batch waiting to be sent. Cleared batches keep their buffers.
#[derive(Debug, Default)]
pub struct SpanBatch {
    scopes: Vec<ScopeBatch>,
    spans: usize,
}

#[derive(Debug)]
struct ScopeBatch {
    scope: InstrumentationScope,
    /// `ScopeSpans.spans` fields, one after the other.
    spans: Vec<u8>,
}

impl SpanBatch {
    /// Write `span` into the batch.
    pub fn push(&mut self, span: &SpanData) {
        self.push_with(&span.instrumentation_scope, |out| write_span(out, span));
    }

    /// Write a span of `scope` into the batch: `write` writes the `Span` message's fields.
    pub fn push_with(&mut self, scope: &InstrumentationScope, write: impl FnOnce(&mut Vec<u8>)) {
        let index = match self.scopes.iter().position(|batch| batch.scope == *scope) {
            Some(index) => index,
            None => {
                self.scopes.push(ScopeBatch {
                    scope: scope.clone(),
                    spans: Vec::with_capacity(16 * 1024),
                });
                self.scopes.len() - 1
            }
        };
        nested(&mut self.scopes[index].spans, 2, write);
        self.spans += 1;
    }

    /// Spans in the batch.
    pub fn len(&self) -> usize {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// Empty the batch, keeping its buffers (and the scopes seen, which are few).
    pub fn clear(&mut self) {
        for batch in &mut self.scopes {
            batch.spans.clear();
        }
        self.spans = 0;
    }

    /// The `ExportTraceServiceRequest` for the batch: one `ResourceSpans` (the process's
    /// resource), a `ScopeSpans` per scope with spans. Lengths are known before anything is
    /// written, so the spans are copied once.
    pub fn write_request(&self, resource: &EncodedResource, out: &mut Vec<u8>) {
        let mut resource_field = Vec::with_capacity(resource.attributes.len() + 8);
        nested(&mut resource_field, 1, |out| {
            out.extend_from_slice(&resource.attributes)
        });
        let mut resource_schema_url = Vec::new();
        string(&mut resource_schema_url, 3, &resource.schema_url);
        // Each scope's `InstrumentationScope` field (1) and schema URL field (3); its spans sit
        // between them.
        let scopes: Vec<(Vec<u8>, &[u8], Vec<u8>)> = self
            .scopes
            .iter()
            .filter(|batch| !batch.spans.is_empty())
            .map(|batch| {
                let scope = &batch.scope;
                let mut head = Vec::new();
                nested(&mut head, 1, |out| {
                    string(out, 1, scope.name());
                    string(out, 2, scope.version().unwrap_or_default());
                    for attribute in scope.attributes() {
                        nested(out, 3, |out| {
                            key_value(out, attribute.key.as_str(), &attribute.value)
                        });
                    }
                });
                let mut tail = Vec::new();
                string(&mut tail, 3, scope.schema_url().unwrap_or_default());
                (head, batch.spans.as_slice(), tail)
            })
            .collect();
        let scope_length =
            |(head, spans, tail): &(Vec<u8>, &[u8], Vec<u8>)| head.len() + spans.len() + tail.len();
        let resource_spans_length = resource_field.len()
            + scopes
                .iter()
                .map(|scope| field_length(scope_length(scope)))
                .sum::<usize>()
            + resource_schema_url.len();
        out.reserve(field_length(resource_spans_length));
        length_delimited(out, 1, resource_spans_length);
        out.extend_from_slice(&resource_field);
        for scope in &scopes {
            length_delimited(out, 2, scope_length(scope));
            out.extend_from_slice(&scope.0);
            out.extend_from_slice(scope.1);
            out.extend_from_slice(&scope.2);
        }
        out.extend_from_slice(&resource_schema_url);
    }
}

/// The codes after which OTLP/gRPC says a batch may be sent again.
fn is_transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// `ExportTraceServiceResponse.partial_success` (field 1): `rejected_spans` (1),
/// `error_message` (2). Logged, not retried, as the specification says.
fn warn_about_partial_success(response: &[u8]) {
    let Some(FieldValue::Bytes(partial)) = find_field(response, 1) else {
        return;
    };
    let rejected = match find_field(partial, 1) {
        Some(FieldValue::Varint(rejected)) => rejected,
        _ => 0,
    };
    let message = match find_field(partial, 2) {
        Some(FieldValue::Bytes(message)) => String::from_utf8_lossy(message),
        _ => Cow::Borrowed(""),
    };
    if rejected > 0 || !message.is_empty() {
        tracing::warn!(rejected_spans = rejected, error = %message, "the OTLP endpoint rejected spans");
    }
}

/// A field's value as read from the wire (fixed-width ones are skipped, not read).
enum FieldValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The first field `number` of `message`; `None` if absent or unreadable.
fn find_field(mut message: &[u8], number: u64) -> Option<FieldValue<'_>> {
    while !message.is_empty() {
        let key = read_varint(&mut message)?;
        let value = match key & 7 {
            0 => FieldValue::Varint(read_varint(&mut message)?),
            1 => {
                message = message.get(8..)?;
                FieldValue::Fixed
            }
            2 => {
                let length = usize::try_from(read_varint(&mut message)?).ok()?;
                let value = message.get(..length)?;
                message = &message[length..];
                FieldValue::Bytes(value)
            }
            5 => {
                message = message.get(4..)?;
                FieldValue::Fixed
            }
            _ => return None,
        };
        if key >> 3 == number {
            return Some(value);
        }
    }
    None
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Bytes in, bytes out: the request is already protobuf, the response is read by hand.
struct Passthrough;

impl Codec for Passthrough {
    type Encode = bytes::Bytes;
    type Decode = Vec<u8>;
    type Encoder = Passthrough;
    type Decoder = Passthrough;

    fn encoder(&mut self) -> Self::Encoder {
        Passthrough
    }

    fn decoder(&mut self) -> Self::Decoder {
        Passthrough
    }
}

impl Encoder for Passthrough {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: bytes::Bytes, destination: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        destination.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Passthrough {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, source: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut message = vec![0; source.remaining()];
        source.copy_to_slice(&mut message);
        Ok(Some(message))
    }
}

// ---- Protobuf, written by hand (field numbers from opentelemetry-proto's .proto files) ----

/// The fields of the `Span` message for an SDK span.
pub fn write_span(out: &mut Vec<u8>, span: &SpanData) {
    write_span_head(
        out,
        &SpanHead {
            context: &span.span_context,
            parent_span_id: span.parent_span_id,
            parent_is_remote: span.parent_span_is_remote,
            name: &span.name,
            kind: &span.span_kind,
            start_time: span.start_time,
            end_time: span.end_time,
        },
    );
    write_attributes(out, &span.attributes);
    varint_field(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        nested(out, 11, |out| {
            fixed64_field(out, 1, nanos(event.timestamp));
            string(out, 2, &event.name);
            for attribute in &event.attributes {
                nested(out, 3, |out| {
                    key_value(out, attribute.key.as_str(), &attribute.value)
                });
            }
            varint_field(out, 4, u64::from(event.dropped_attributes_count));
        });
    }
    varint_field(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        nested(out, 13, |out| {
            let linked = &link.span_context;
            bytes_field(out, 1, &linked.trace_id().to_bytes());
            bytes_field(out, 2, &linked.span_id().to_bytes());
            string(out, 3, &linked.trace_state().header());
            for attribute in &link.attributes {
                nested(out, 4, |out| {
                    key_value(out, attribute.key.as_str(), &attribute.value)
                });
            }
            varint_field(out, 5, u64::from(link.dropped_attributes_count));
            fixed32_field(
                out,
                6,
                span_flags(linked.is_remote(), linked.trace_flags().to_u8()),
            );
        });
    }
    varint_field(out, 14, u64::from(span.links.dropped_count));
    write_span_tail(out, &span.status, &span.span_context, span.parent_span_is_remote);
}

/// What every `Span` message starts with: ids, name, kind and times (fields 1–8).
pub struct SpanHead<'a> {
    pub context: &'a SpanContext,
    /// `SpanId::INVALID` for a root span.
    pub parent_span_id: SpanId,
    pub parent_is_remote: bool,
    pub name: &'a str,
    pub kind: &'a SpanKind,
    pub start_time: SystemTime,
    pub end_time: SystemTime,
}

/// A span written field by field, for spans recorded without the SDK
/// (`observe::RequestTrace`): [`write_span_head`], attributes ([`write_attribute`] or fields
/// written before by [`encode_attributes`]), then [`write_span_tail`].
pub fn write_span_head(out: &mut Vec<u8>, head: &SpanHead<'_>) {
    let context = head.context;
    bytes_field(out, 1, &context.trace_id().to_bytes());
    bytes_field(out, 2, &context.span_id().to_bytes());
    string(out, 3, &context.trace_state().header());
    if head.parent_span_id != SpanId::INVALID {
        bytes_field(out, 4, &head.parent_span_id.to_bytes());
    }
    string(out, 5, head.name);
    varint_field(out, 6, span_kind(head.kind));
    fixed64_field(out, 7, nanos(head.start_time));
    fixed64_field(out, 8, nanos(head.end_time));
}

/// One attribute of a span (field 9).
pub fn write_attribute(out: &mut Vec<u8>, key: &str, value: &Value) {
    nested(out, 9, |out| key_value(out, key, value));
}

/// A string attribute of a span, without making a `Value` of it.
pub fn write_string_attribute(out: &mut Vec<u8>, key: &str, value: &str) {
    nested(out, 9, |out| {
        key_value_with(out, key, |out| oneof_string(out, 1, value))
    });
}

fn write_attributes(out: &mut Vec<u8>, attributes: &[opentelemetry::KeyValue]) {
    for attribute in attributes {
        write_attribute(out, attribute.key.as_str(), &attribute.value);
    }
}

/// Attributes written once as span fields, to be copied into every span that has them.
pub fn encode_attributes(attributes: &[opentelemetry::KeyValue]) -> Vec<u8> {
    let mut out = Vec::new();
    write_attributes(&mut out, attributes);
    out
}

/// The status and flags that end a `Span` message (fields 15 and 16).
pub fn write_span_tail(out: &mut Vec<u8>, status: &Status, context: &SpanContext, parent_is_remote: bool) {
    nested(out, 15, |out| match status {
        Status::Unset => {}
        Status::Ok => varint_field(out, 3, 1),
        Status::Error { description } => {
            string(out, 2, description);
            varint_field(out, 3, 2);
        }
    });
    fixed32_field(
        out,
        16,
        span_flags(parent_is_remote, context.trace_flags().to_u8()),
    );
}

/// `SpanFlags`: the trace flags, and whether the parent is known to be remote (it always is
/// known here: bit 8 says so, bit 9 says it is).
fn span_flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    u32::from(trace_flags) | 0x100 | if parent_is_remote { 0x200 } else { 0 }
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

/// A `KeyValue` message's fields: the key, then the value as an `AnyValue` (always present).
fn key_value(out: &mut Vec<u8>, key: &str, value: &Value) {
    key_value_with(out, key, |out| any_value(out, value));
}

/// A `KeyValue` message's fields, the `AnyValue`'s written by `write_value`.
fn key_value_with(out: &mut Vec<u8>, key: &str, write_value: impl FnOnce(&mut Vec<u8>)) {
    string(out, 1, key);
    nested(out, 2, write_value);
}

/// An `AnyValue` message's fields (a oneof: written even when it is the default).
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(value) => oneof_varint(out, 2, u64::from(*value)),
        Value::I64(value) => oneof_varint(out, 3, *value as u64),
        Value::F64(value) => {
            tag(out, 4, 1);
            out.put_f64_le(*value);
        }
        Value::String(value) => oneof_string(out, 1, value.as_str()),
        Value::Array(array) => nested(out, 5, |out| match array {
            Array::Bool(values) => values
                .iter()
                .for_each(|v| nested(out, 1, |out| oneof_varint(out, 2, u64::from(*v)))),
            Array::I64(values) => values
                .iter()
                .for_each(|v| nested(out, 1, |out| oneof_varint(out, 3, *v as u64))),
            Array::F64(values) => values.iter().for_each(|v| {
                nested(out, 1, |out| {
                    tag(out, 4, 1);
                    out.put_f64_le(*v);
                });
            }),
            Array::String(values) => values
                .iter()
                .for_each(|v: &StringValue| nested(out, 1, |out| oneof_string(out, 1, v.as_str()))),
            // A kind of array this version does not know: sent empty rather than wrong.
            _ => {}
        }),
        // A kind of value this version does not know: the attribute is sent without one.
        _ => {}
    }
}

fn tag(out: &mut Vec<u8>, field: u64, wire_type: u64) {
    varint(out, (field << 3) | wire_type);
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_length(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// A scalar field, left out when it is zero (proto3).
fn varint_field(out: &mut Vec<u8>, field: u64, value: u64) {
    if value != 0 {
        tag(out, field, 0);
        varint(out, value);
    }
}

fn oneof_varint(out: &mut Vec<u8>, field: u64, value: u64) {
    tag(out, field, 0);
    varint(out, value);
}

fn fixed64_field(out: &mut Vec<u8>, field: u64, value: u64) {
    if value != 0 {
        tag(out, field, 1);
        out.put_u64_le(value);
    }
}

fn fixed32_field(out: &mut Vec<u8>, field: u64, value: u32) {
    if value != 0 {
        tag(out, field, 5);
        out.put_u32_le(value);
    }
}

fn bytes_field(out: &mut Vec<u8>, field: u64, value: &[u8]) {
    if !value.is_empty() {
        tag(out, field, 2);
        varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

fn string(out: &mut Vec<u8>, field: u64, value: &str) {
    bytes_field(out, field, value.as_bytes());
}

fn oneof_string(out: &mut Vec<u8>, field: u64, value: &str) {
    tag(out, field, 2);
    varint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

/// The tag and length of a length-delimited field (numbered below 16) of `length` bytes.
fn length_delimited(out: &mut Vec<u8>, field: u64, length: usize) {
    tag(out, field, 2);
    varint(out, length as u64);
}

/// Bytes a length-delimited field (numbered below 16) of `length` bytes takes.
fn field_length(length: usize) -> usize {
    1 + varint_length(length as u64) + length
}

/// A message field written in place: its length is reserved as one byte and widened (moving
/// the message) only if it turns out longer than 127 bytes.
fn nested(out: &mut Vec<u8>, field: u64, write: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, 2);
    let at = out.len();
    out.push(0);
    write(out);
    let length = out.len() - at - 1;
    let width = varint_length(length as u64);
    if width > 1 {
        out.splice(at + 1..at + 1, std::iter::repeat_n(0, width - 1));
    }
    let mut remaining = length as u64;
    for byte in &mut out[at..at + width] {
        *byte = (remaining as u8 & 0x7f) | if remaining >= 0x80 { 0x80 } else { 0 };
        remaining >>= 7;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::borrow::Cow;
    use std::time::{Duration, UNIX_EPOCH};

    use opentelemetry::trace::{
        Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use prost::Message;

    use super::*;

    fn span(
        name: &'static str,
        scope: &InstrumentationScope,
        status: Status,
        remote_parent: bool,
    ) -> SpanData {
        let trace_state = TraceState::from_key_value([("vendor", "value")]).unwrap();
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "retry",
            UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            vec![KeyValue::new("attempt", 2), KeyValue::new("reason", "503")],
            1,
        ));
        events.dropped_count = 3;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            SpanContext::new(
                TraceId::from(7),
                SpanId::from(8),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ),
            vec![KeyValue::new("link.kind", "follows")],
            0,
        ));
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
                SpanId::from(0x00f0_67aa_0ba9_02b7),
                TraceFlags::SAMPLED,
                false,
                trace_state,
            ),
            parent_span_id: if remote_parent {
                SpanId::from(0x5a17)
            } else {
                SpanId::INVALID
            },
            parent_span_is_remote: remote_parent,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(name),
            start_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000),
            end_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_250_000_000),
            attributes: vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.response.status_code", 200i64),
                KeyValue::new("negative", -42i64),
                KeyValue::new("zero", 0i64),
                KeyValue::new("ratio", 0.25),
                KeyValue::new("empty", ""),
                KeyValue::new("flag", false),
                KeyValue::new("long", "x".repeat(300)),
                KeyValue::new("ids", opentelemetry::Value::Array(vec![1i64, -2, 3].into())),
                KeyValue::new(
                    "names",
                    opentelemetry::Value::Array(vec![StringValue::from("a"), StringValue::from("b")].into()),
                ),
                KeyValue::new("bools", opentelemetry::Value::Array(vec![true, false].into())),
                KeyValue::new("floats", opentelemetry::Value::Array(vec![1.5, -0.0].into())),
            ],
            dropped_attributes_count: 2,
            events,
            links,
            status,
            instrumentation_scope: scope.clone(),
        }
    }

    /// What opentelemetry-proto's own conversion makes of the same batch (the reference).
    fn reference(batch: &[SpanData], resource: &Resource) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                batch.to_vec(),
                &ResourceAttributesWithSchema::from(resource),
            ),
        }
    }

    /// The same spans pushed one by one into a [`SpanBatch`], as the span queue does.
    fn ours(batch: &[SpanData], resource: &Resource) -> ExportTraceServiceRequest {
        let mut spans = SpanBatch::default();
        for span in batch {
            spans.push(span);
        }
        assert_eq!(spans.len(), batch.len());
        let mut bytes = Vec::new();
        spans.write_request(&EncodedResource::new(resource), &mut bytes);
        ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap()
    }

    #[test]
    fn the_request_decodes_to_what_the_reference_conversion_makes() {
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "gateway"),
                KeyValue::new("k8s.pod.name", "gateway-0"),
            ])
            .with_schema_url([], "https://opentelemetry.io/schemas/1.30.0")
            .build();
        let shopstack = InstrumentationScope::builder("shopstack").build();
        let versioned = InstrumentationScope::builder("other")
            .with_version("1.2.3")
            .with_schema_url("https://example.com/schema")
            .with_attributes([KeyValue::new("scope.attr", "x")])
            .build();
        let batch = vec![
            span("GET /catalog/{id}", &shopstack, Status::Unset, true),
            span("redis get", &versioned, Status::Ok, false),
            span(
                "POST /v1/cart/{user_id}",
                &shopstack,
                Status::error("upstream timed out"),
                false,
            ),
            span("", &shopstack, Status::error(""), true),
        ];
        assert_eq!(ours(&batch, &resource), reference(&batch, &resource));
        assert_eq!(ours(&[], &resource), reference(&[], &resource));

        // A batch emptied and filled again (the queue reuses them) holds only the new spans,
        // and a scope with none left is not written.
        let mut reused = SpanBatch::default();
        for span in &batch {
            reused.push(span);
        }
        reused.clear();
        assert!(reused.is_empty());
        let shopstack_only = [batch[0].clone(), batch[2].clone()];
        for span in &shopstack_only {
            reused.push(span);
        }
        let mut bytes = Vec::new();
        reused.write_request(&EncodedResource::new(&resource), &mut bytes);
        assert_eq!(
            ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap(),
            reference(&shopstack_only, &resource)
        );
    }

    #[test]
    fn lengths_past_one_byte_are_widened_in_place() {
        for length in [0usize, 1, 127, 128, 300, 16_383, 16_384, 2_097_152] {
            let mut out = vec![0xaa];
            nested(&mut out, 3, |out| out.extend(std::iter::repeat_n(0x55, length)));
            let mut rest = &out[1..];
            assert_eq!(read_varint(&mut rest), Some(3 << 3 | 2));
            assert_eq!(read_varint(&mut rest), Some(length as u64), "length {length}");
            assert_eq!(rest.len(), length);
            assert!(rest.iter().all(|&byte| byte == 0x55));
        }
    }

    #[test]
    fn a_partial_success_is_read_from_the_response() {
        let mut partial = Vec::new();
        oneof_varint(&mut partial, 1, 3);
        oneof_string(&mut partial, 2, "too big");
        let mut response = Vec::new();
        bytes_field(&mut response, 1, &partial);
        let Some(FieldValue::Bytes(found)) = find_field(&response, 1) else {
            panic!()
        };
        assert!(matches!(find_field(found, 1), Some(FieldValue::Varint(3))));
        assert!(matches!(
            find_field(found, 2),
            Some(FieldValue::Bytes(b"too big"))
        ));
        assert!(
            find_field(&[0xff], 1).is_none(),
            "a truncated message reads as nothing"
        );
    }
}
