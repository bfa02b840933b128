//! W3C trace context (`traceparent`/`tracestate`) in and out of HTTP headers.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use std::str::FromStr;

use opentelemetry::Context;
use opentelemetry::propagation::Injector;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// The remote parent carried by an inbound request (the current context when there is none),
/// as the W3C propagator reads it: [`parse_traceparent`] follows its rules, without its cost on
/// every request a service answers (the global propagator's lock, the header split into a `Vec`,
/// the ids through `from_str_radix`; docs/performance.md).
pub fn extract(headers: &HeaderMap) -> Context {
    match parse_traceparent(headers) {
        Some(parent) => Context::map_current(|current| current.with_remote_span_context(parent)),
        None => Context::current(),
    }
}

/// Write a span's context (`telemetry::span_context(span)`) into outbound `headers` so the
/// callee continues the trace.
pub fn inject(span_context: SpanContext, headers: &mut HeaderMap) {
    let context = Context::new().with_remote_span_context(span_context);
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The caller's `traceparent` (W3C Trace Context, version 00 or a later one read as 00), when
/// it is valid: the remote parent of an inbound request. Parsed by hand because it is on every
/// request a service answers (the ids decoded straight from their checked hex digits, the
/// header names constants rather than parsed per lookup); the rules are the propagator's.
pub fn parse_traceparent(headers: &HeaderMap) -> Option<SpanContext> {
    let value = headers.get(TRACEPARENT)?.as_bytes();
    // version "-" trace-id "-" parent-id "-" flags, then (versions after 00) maybe more.
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    // Lowercase hex only, as the propagator requires (the version may be either case).
    let version = hex_byte(value[0].to_ascii_lowercase(), value[1].to_ascii_lowercase())?;
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    decode_hex(&value[3..35], &mut trace_id)?;
    decode_hex(&value[36..52], &mut span_id)?;
    let flags = hex_byte(value[53], value[54])?;
    let trace_state = headers
        .get(TRACESTATE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| TraceState::from_str(value).ok())
        .unwrap_or_default();
    let context = SpanContext::new(
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        trace_state,
    );
    context.is_valid().then_some(context)
}

/// The value of a lowercase hex digit.
fn hex_digit(digit: u8) -> Option<u8> {
    let value = HEX_VALUES[usize::from(digit)];
    (value != 0xff).then_some(value)
}

fn hex_byte(high: u8, low: u8) -> Option<u8> {
    Some(hex_digit(high)? << 4 | hex_digit(low)?)
}

/// Each byte's value as a lowercase hex digit, or `0xff` for any other byte.
const HEX_VALUES: [u8; 256] = {
    let mut values = [0xff; 256];
    let mut digit = 0;
    while digit < 16 {
        values[b"0123456789abcdef"[digit] as usize] = digit as u8;
        digit += 1;
    }
    values
};

/// Lowercase hex `text` into `out` (half as long), or `None` for any other character (`out` is
/// then left partly written). One table lookup per digit and one check at the end: the ids of
/// every inbound `traceparent` go through here, and a branch per digit would cost several
/// times as much.
fn decode_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    let mut invalid = 0;
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (HEX_VALUES[usize::from(pair[0])], HEX_VALUES[usize::from(pair[1])]);
        invalid |= high | low;
        *byte = high << 4 | low;
    }
    (invalid & 0xf0 == 0).then_some(())
}

/// The `traceparent` naming span `span_id` of trace `trace_id` as the callee's parent.
pub fn traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    HeaderValue::from_bytes(&traceparent_text(trace_id, span_id, sampled))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// [`traceparent`]'s text, for a request written by hand.
pub fn traceparent_text(trace_id: TraceId, span_id: SpanId, sampled: bool) -> [u8; 55] {
    let mut text = [0u8; 55];
    text[..3].copy_from_slice(b"00-");
    write_hex(&mut text[3..35], &trace_id.to_bytes());
    text[35] = b'-';
    write_hex(&mut text[36..52], &span_id.to_bytes());
    text[52] = b'-';
    text[53..].copy_from_slice(if sampled { b"01" } else { b"00" });
    text
}

/// Lowercase hex of `bytes` into `out` (twice as long).
pub fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

/// Lowercase hex of `bytes` as a `String` — what `TraceId`/`SpanId` display, without the
/// formatting machinery `to_string` goes through for every id.
pub fn hex_string(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    write_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    /// The headers as the OpenTelemetry propagator reads them.
    struct HeaderExtractor<'a>(&'a HeaderMap);

    impl Extractor for HeaderExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(HeaderName::as_str).collect()
        }
    }

    fn headers(traceparent: &str, tracestate: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_str(traceparent).unwrap());
        if let Some(state) = tracestate {
            headers.insert("tracestate", HeaderValue::from_str(state).unwrap());
        }
        headers
    }

    /// What the OpenTelemetry propagator reads from the same headers.
    fn by_the_propagator(headers: &HeaderMap) -> Option<SpanContext> {
        let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then_some(span_context)
    }

    #[test]
    fn traceparent_parsing_agrees_with_the_propagator() {
        let cases = [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "",
        ];
        for case in cases {
            let headers = headers(case, Some("vendor=value"));
            let ours = parse_traceparent(&headers);
            let theirs = by_the_propagator(&headers);
            // `extract`, the inbound path of services with a `tracing` span, reads the same.
            let extracted = extract(&headers).span().span_context().clone();
            assert_eq!(extracted.is_valid().then_some(extracted), ours, "{case:?}");
            assert_eq!(
                ours.as_ref().map(|c| (
                    c.trace_id(),
                    c.span_id(),
                    c.is_sampled(),
                    c.trace_state().header()
                )),
                theirs.as_ref().map(|c| (
                    c.trace_id(),
                    c.span_id(),
                    c.is_sampled(),
                    c.trace_state().header()
                )),
                "{case:?}"
            );
        }
        // Stricter than the propagator where the W3C text is: the ids have fixed lengths (the
        // propagator pads a short one).
        let short = headers("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None);
        assert!(by_the_propagator(&short).is_some());
        assert!(parse_traceparent(&short).is_none());
    }

    /// Every pair of bytes decodes as two lowercase hex digits would, and nothing else decodes.
    #[test]
    fn hex_decoding_takes_lowercase_digits_only() {
        let digit = |byte: u8| match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            _ => None,
        };
        for high in 0..=u8::MAX {
            for low in 0..=u8::MAX {
                let mut out = [0u8; 1];
                let expected = digit(high).zip(digit(low)).map(|(h, l)| h << 4 | l);
                let decoded = decode_hex(&[high, low], &mut out).map(|()| out[0]);
                assert_eq!(decoded, expected, "{high:#04x} {low:#04x}");
                assert_eq!(hex_byte(high, low), expected);
            }
        }
        let mut out = [0u8; 2];
        assert_eq!(decode_hex(b"00f0", &mut out), Some(()));
        assert_eq!(out, [0x00, 0xf0]);
        assert_eq!(decode_hex(b"00fG", &mut out), None);
    }

    #[test]
    fn a_written_traceparent_reads_back() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        for sampled in [true, false] {
            let value = traceparent(trace_id, span_id, sampled);
            let read = parse_traceparent(&headers(value.to_str().unwrap(), None)).unwrap();
            assert_eq!(
                (read.trace_id(), read.span_id(), read.is_sampled()),
                (trace_id, span_id, sampled)
            );
        }
        assert_eq!(
            traceparent(trace_id, span_id, true),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn hex_strings_are_what_the_ids_display() {
        for (trace, span) in [
            (1u128, 1u64),
            (u128::MAX, u64::MAX),
            (0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c, 0x00f0_67aa_0ba9_02b7),
        ] {
            let (trace, span) = (TraceId::from(trace), SpanId::from(span));
            assert_eq!(hex_string(&trace.to_bytes()), trace.to_string());
            assert_eq!(hex_string(&span.to_bytes()), span.to_string());
        }
    }
}
