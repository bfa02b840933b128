// Browser traces: every user action (a click, a submitted form, a page opened) is one trace.
// The action is the root span; each API call it makes is a client span under it, and the call
// carries that span as its W3C `traceparent`, so the gateway, the services and their Redis/SQL
// spans join the click's trace. The flag asks for sampling (01); the gateway's own sampler has
// the last word (docs/storefront.md#browser-traces).

const SERVICE_NAME = 'storefront';
const SPAN_KIND_INTERNAL = 1;
const SPAN_KIND_CLIENT = 3;
const STATUS_OK = 1;
const STATUS_ERROR = 2;

function hex(bytes) {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

// W3C trace context forbids all-zero ids.
function randomId(byteCount) {
  const bytes = new Uint8Array(byteCount);
  do {
    crypto.getRandomValues(bytes);
  } while (bytes.every((byte) => byte === 0));
  return hex(bytes);
}

// Wall-clock nanoseconds as OTLP/JSON wants them: a decimal string (beyond a double's range).
function nowNanos() {
  const micros = Math.round((performance.timeOrigin + performance.now()) * 1000);
  return (BigInt(micros) * 1000n).toString();
}

function attribute(key, value) {
  const typed = typeof value === 'number' && Number.isInteger(value)
    ? { intValue: String(value) }
    : { stringValue: String(value) };
  return { key, value: typed };
}

export class Action {
  // `name`: what the shopper did, e.g. "click Add to cart".
  constructor(name, exportUrl) {
    this.name = name;
    this.traceId = randomId(16);
    this.spanId = randomId(8);
    this.start = nowNanos();
    this.spans = [];
    this.exportUrl = exportUrl;
  }

  // A client span for one API call, and the `traceparent` the call sends.
  call(method, route) {
    const span = {
      traceId: this.traceId,
      spanId: randomId(8),
      parentSpanId: this.spanId,
      name: `${method} ${route}`,
      kind: SPAN_KIND_CLIENT,
      startTimeUnixNano: nowNanos(),
      attributes: [attribute('http.request.method', method), attribute('url.path', route)],
    };
    return { span, traceparent: `00-${this.traceId}-${span.spanId}-01` };
  }

  endCall(span, status, error) {
    span.endTimeUnixNano = nowNanos();
    if (status) span.attributes.push(attribute('http.response.status_code', status));
    span.status = error || status >= 500 || status === 0
      ? { code: STATUS_ERROR, message: error || `HTTP ${status}` }
      : { code: STATUS_OK };
    this.spans.push(span);
  }

  // Close the action's span and, when the gateway forwards browser spans, send the trace.
  end(error) {
    const root = {
      traceId: this.traceId,
      spanId: this.spanId,
      name: this.name,
      kind: SPAN_KIND_INTERNAL,
      startTimeUnixNano: this.start,
      endTimeUnixNano: nowNanos(),
      attributes: [attribute('page.url', location.hash || '#/')],
      status: error ? { code: STATUS_ERROR, message: String(error) } : { code: STATUS_OK },
    };
    if (!this.exportUrl) return;
    const body = {
      resourceSpans: [{
        resource: { attributes: [attribute('service.name', SERVICE_NAME)] },
        scopeSpans: [{ scope: { name: 'shopstack-storefront' }, spans: [root, ...this.spans] }],
      }],
    };
    // Best effort: a lost span batch must never disturb the shopper.
    fetch(this.exportUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      keepalive: true,
    }).catch(() => {});
  }
}
