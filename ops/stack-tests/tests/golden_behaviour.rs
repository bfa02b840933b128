//! What the services serve, recorded and compared: a fixed, sequential set of requests —
//! through the gateway and straight to each backend — against the four built binaries, and the
//! answers, `/openapi.json` documents, `/metrics` and JSON log lines that come out, compared with
//! the fixtures in `tests/golden/`. A refactor that must not change behaviour (moving shared code
//! between crates) passes this test unchanged; a change that is meant keeps the fixtures in step:
//!
//! ```text
//! UPDATE_GOLDEN=1 cargo test -p stack-tests --test golden_behaviour   # rewrite the fixtures
//! cargo test -p stack-tests --test golden_behaviour                   # compare
//! ```
//!
//! The test is black-box on purpose: it starts `target/debug/{catalog,cart,orders,gateway}` as
//! processes and speaks HTTP to them, and links none of the workspace's crates, so their module
//! paths can move without touching it. (`cargo test --workspace` builds the binaries;
//! `cargo test -p stack-tests` alone does not rebuild them.)
//!
//! What varies from run to run is replaced, not dropped (the `date` header aside):
//! - the ports the services bound → `<catalog-addr>` …, the temporary directory → `<tmp>`;
//! - UUIDs (order ids, request ids, event ids) → `<uuid-N>`, numbered by first appearance;
//! - RFC 3339 timestamps → `<time>`; durations (`computation_time`, log `duration[_ms]`) →
//!   `<duration>`;
//! - response headers: `date` is dropped, `x-request-id` / `x-trace-id` are recorded as present
//!   or not; the log fields `timestamp`, `trace_id`, `span_id`, `request_id`, `duration_ms` and
//!   `duration` are placeholders (their key and position stay);
//! - metrics: gauge and histogram samples keep their names and label sets but not their values
//!   (timing), except a histogram's `_count`, which counts requests; `process_*` values go.
//!
//! - orders that follow scheduling rather than the requests: the gateway's OpenAPI schemas (see
//!   [`sort_schemas`]), metric samples labelled with a service's address (see
//!   [`stable_metrics`]), log lines of requests served concurrently for one trace (see
//!   [`order_concurrent_spans`]) and log lines of background tasks (see [`BACKGROUND_MESSAGES`]).
//!
//! JSON is recorded token for token (numbers as served: `129.00` stays `129.00`, which a round
//! trip through `f64` would turn into `129.0`), members in the order served, only re-indented; a
//! body served with white space between tokens is marked `"body_whitespace": true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

const ADMIN_TOKEN: &str = "golden-admin-token";
const POD_NAME: &str = "golden-pod";
const NODE_NAME: &str = "golden-node";

/// Log lines written by background tasks rather than by the request that caused them: their
/// position among the request lines depends on scheduling, so they are kept in their own list
/// (`background`), in the order they were written (each comes from one task, in order).
/// - `event (log only: NATS_URL not set)`: the cart's event publisher task and the orders
///   outbox relay log each event when NATS is off, a moment after the request that wrote it.
const BACKGROUND_MESSAGES: &[&str] = &["event (log only: NATS_URL not set)"];

/// Log fields whose value changes on every run; the key stays, the value is a placeholder.
const VOLATILE_LOG_FIELDS: &[(&str, &str)] = &[
    ("timestamp", "<time>"),
    ("trace_id", "<trace-id>"),
    ("span_id", "<span-id>"),
    ("request_id", "<request-id>"),
    ("duration_ms", "<duration>"),
    ("duration", "<duration>"),
];

/// Members of JSON bodies that hold a measured duration.
const DURATION_MEMBERS: &[&str] = &["computation_time"];

/// Response headers recorded with their value.
const RECORDED_HEADERS: &[&str] = &[
    "content-type",
    "etag",
    "location",
    "retry-after",
    "idempotent-replayed",
    "x-injected-fault",
    "www-authenticate",
    "allow",
    "cache-control",
];

// ---------------------------------------------------------------------------------------------
// JSON, token for token

/// A JSON value whose scalars are kept as the exact text served (strings with their quotes and
/// escapes, numbers as written), and whose object members keep their order.
#[derive(Debug, Clone)]
enum Json {
    Object(Vec<(String, Json)>),
    Array(Vec<Json>),
    Literal(String),
    /// Written on one line (a log line).
    Compact(Box<Json>),
}

impl Json {
    fn string(text: &str) -> Json {
        Json::Literal(serde_json::to_string(text).unwrap())
    }

    fn number(value: u64) -> Json {
        Json::Literal(value.to_string())
    }

    fn boolean(value: bool) -> Json {
        Json::Literal(value.to_string())
    }

    fn object(members: Vec<(&str, Json)>) -> Json {
        Json::Object(
            members
                .into_iter()
                .map(|(key, value)| (serde_json::to_string(key).unwrap(), value))
                .collect(),
        )
    }

    /// `text` as JSON when it is JSON (checked by serde_json), else `None`.
    fn parse(text: &str) -> Option<Json> {
        serde_json::from_str::<serde_json::Value>(text).ok()?;
        let mut parser = Parser { text, pos: 0 };
        let value = parser.value()?;
        parser.skip_space();
        (parser.pos == text.len()).then_some(value)
    }

    fn pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0, false);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, indent: usize, compact: bool) {
        let pad = |out: &mut String, level: usize| {
            if !compact {
                out.push('\n');
                out.push_str(&"  ".repeat(level));
            }
        };
        match self {
            Json::Literal(text) => out.push_str(text),
            Json::Compact(value) => value.write(out, indent, true),
            Json::Object(members) if members.is_empty() => out.push_str("{}"),
            Json::Array(items) if items.is_empty() => out.push_str("[]"),
            Json::Object(members) => {
                out.push('{');
                for (index, (key, value)) in members.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    pad(out, indent + 1);
                    out.push_str(key);
                    out.push_str(if compact { ":" } else { ": " });
                    value.write(out, indent + 1, compact);
                }
                pad(out, indent);
                out.push('}');
            }
            Json::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    pad(out, indent + 1);
                    item.write(out, indent + 1, compact);
                }
                pad(out, indent);
                out.push(']');
            }
        }
    }

    /// The unquoted text of a string literal (escapes left as written).
    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Literal(text) if text.starts_with('"') => Some(&text[1..text.len() - 1]),
            _ => None,
        }
    }
}

/// A recursive-descent reader for text serde_json has already accepted.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn value(&mut self) -> Option<Json> {
        self.skip_space();
        match self.peek()? {
            b'{' => {
                self.pos += 1;
                let mut members = Vec::new();
                self.skip_space();
                if self.peek()? == b'}' {
                    self.pos += 1;
                    return Some(Json::Object(members));
                }
                loop {
                    self.skip_space();
                    let key = self.string()?;
                    self.expect(b':')?;
                    members.push((key, self.value()?));
                    self.skip_space();
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b'}' => {
                            self.pos += 1;
                            return Some(Json::Object(members));
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                self.skip_space();
                if self.peek()? == b']' {
                    self.pos += 1;
                    return Some(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.skip_space();
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b']' => {
                            self.pos += 1;
                            return Some(Json::Array(items));
                        }
                        _ => return None,
                    }
                }
            }
            b'"' => self.string().map(Json::Literal),
            _ => {
                let start = self.pos;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
                ) {
                    self.pos += 1;
                }
                (self.pos > start).then(|| Json::Literal(self.text[start..self.pos].to_owned()))
            }
        }
    }

    /// A string literal with its quotes, as written.
    fn string(&mut self) -> Option<String> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.pos;
        self.pos += 1;
        loop {
            match self.peek()? {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return Some(self.text[start..self.pos].to_owned());
                }
                _ => self.pos += 1,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Normalisation

/// Replaces what changes from run to run; one instance for the whole run, so `<uuid-N>` means
/// the same id in every fixture.
struct Normaliser {
    /// Exact texts (service addresses, the temporary directory), longest first.
    fixed: Vec<(String, String)>,
    uuids: HashMap<String, String>,
}

impl Normaliser {
    fn text(&mut self, text: &str) -> String {
        let mut out = text.to_owned();
        for (from, to) in &self.fixed {
            if out.contains(from.as_str()) {
                out = out.replace(from.as_str(), to);
            }
        }
        let out = self.uuids_in(&out);
        times_in(&out)
    }

    fn uuids_in(&mut self, text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        let mut index = 0;
        while index + 36 <= bytes.len() {
            let candidate = &bytes[index..index + 36];
            let bounded = (index == 0 || !bytes[index - 1].is_ascii_alphanumeric())
                && bytes
                    .get(index + 36)
                    .is_none_or(|next| !next.is_ascii_alphanumeric());
            if bounded && is_uuid(candidate) {
                out.push_str(&text[copied..index]);
                let uuid = text[index..index + 36].to_ascii_lowercase();
                let next = self.uuids.len() + 1;
                let name = self.uuids.entry(uuid).or_insert_with(|| format!("<uuid-{next}>"));
                out.push_str(name);
                index += 36;
                copied = index;
            } else {
                index += 1;
            }
        }
        out.push_str(&text[copied..]);
        out
    }

    /// `value` with its string literals normalised, and measured durations replaced.
    fn json(&mut self, value: &Json) -> Json {
        match value {
            Json::Literal(text) if text.starts_with('"') => {
                Json::Literal(format!("\"{}\"", self.text(&text[1..text.len() - 1])))
            }
            Json::Literal(text) => Json::Literal(text.clone()),
            Json::Compact(inner) => Json::Compact(Box::new(self.json(inner))),
            Json::Array(items) => Json::Array(items.iter().map(|item| self.json(item)).collect()),
            Json::Object(members) => Json::Object(
                members
                    .iter()
                    .map(|(key, value)| {
                        let name = &key[1..key.len() - 1];
                        let value = if DURATION_MEMBERS.contains(&name) {
                            Json::string("<duration>")
                        } else {
                            self.json(value)
                        };
                        (key.clone(), value)
                    })
                    .collect(),
            ),
        }
    }

    /// A body: JSON token for token when it parses, else text.
    fn body(&mut self, text: &str) -> Json {
        if text.is_empty() {
            return Json::Literal("null".into());
        }
        match Json::parse(text) {
            Some(value) => self.json(&value),
            None => Json::string(&self.text(text)),
        }
    }
}

fn is_uuid(bytes: &[u8]) -> bool {
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => *byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

/// RFC 3339 timestamps (`2026-01-02T03:04:05.678Z`, with an offset or none) → `<time>`.
fn times_in(text: &str) -> String {
    let bytes = text.as_bytes();
    let digits = |at: usize, count: usize| {
        bytes.len() >= at + count && bytes[at..at + count].iter().all(u8::is_ascii_digit)
    };
    let is = |at: usize, byte: u8| bytes.get(at) == Some(&byte);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut index = 0;
    while index < bytes.len() {
        let start = index;
        let matched = digits(start, 4)
            && is(start + 4, b'-')
            && digits(start + 5, 2)
            && is(start + 7, b'-')
            && digits(start + 8, 2)
            && (is(start + 10, b'T') || is(start + 10, b't'))
            && digits(start + 11, 2)
            && is(start + 13, b':')
            && digits(start + 14, 2)
            && is(start + 16, b':')
            && digits(start + 17, 2);
        if !matched {
            index += 1;
            continue;
        }
        let mut end = start + 19;
        if is(end, b'.') && digits(end + 1, 1) {
            end += 1;
            while digits(end, 1) {
                end += 1;
            }
        }
        if is(end, b'Z') || is(end, b'z') {
            end += 1;
        } else if (is(end, b'+') || is(end, b'-'))
            && digits(end + 1, 2)
            && is(end + 3, b':')
            && digits(end + 4, 2)
        {
            end += 6;
        }
        out.push_str(&text[copied..start]);
        out.push_str("<time>");
        copied = end;
        index = end;
    }
    out.push_str(&text[copied..]);
    out
}

// ---------------------------------------------------------------------------------------------
// The services, as processes

/// One running service binary and everything it printed on stdout.
struct Service {
    name: &'static str,
    child: Child,
    addr: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// The running services and their temporary directory; kills each process (by its PID) and
/// removes the directory when dropped, a panic included.
struct Stack {
    services: Vec<Service>,
    dir: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for service in &mut self.services {
            let _ = service.child.kill();
            let _ = service.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `target/debug`: this test runs as `target/debug/deps/golden_behaviour-…`.
fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf()
}

impl Stack {
    fn service(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|service| service.name == name)
            .unwrap_or_else(|| panic!("{name} is not running"))
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}", self.service(name).addr)
    }

    /// Start `name` with only the variables given here (the inherited environment is cleared
    /// but for `PATH`, so no `REDIS_URL`, `DATABASE_URL`, `NATS_URL`, `OTEL_*`, `LOG_FILE`,
    /// `JWT_*` … of the caller's shell changes what is recorded), and wait for its
    /// "<name> listening" line.
    fn start(&mut self, name: &'static str, env: &[(&str, String)]) {
        let binary = binaries_dir().join(name);
        assert!(
            binary.is_file(),
            "{} is missing: build the service binaries first (`cargo build --workspace --bins`; `cargo test --workspace` builds them)",
            binary.display()
        );
        let mut command = Command::new(&binary);
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command
            .env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env("SIMULATION", "off")
            .env("LOG_LEVEL", "info")
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("STRESS_ENABLED", "true")
            .env("POD_NAME", POD_NAME)
            .env("NODE_NAME", NODE_NAME)
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        let stdout = child.stdout.take().expect("a stdout pipe");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let captured = lines.clone();
        // Read until the process exits, so its stdout never fills up.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                captured
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(line);
            }
        });
        self.services.push(Service {
            name,
            child,
            addr: String::new(),
            lines,
        });
        let listening = format!("{name} listening");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let service = self.services.last_mut().expect("just pushed");
            let addr = service.lines().iter().find_map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).ok()?;
                (value["message"] == listening.as_str()).then(|| value["addr"].as_str().map(str::to_owned))?
            });
            if let Some(addr) = addr {
                service.addr = addr;
                return;
            }
            let exited = service.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{name} did not log {listening:?} within 30 s (exit status: {exited:?}); output:\n{}",
                service.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until no service has printed anything for `quiet` (at most 10 s): the log sink
    /// writes lines in batches a few milliseconds after they are logged.
    fn settle(&self, quiet: Duration) {
        let count = || {
            self.services
                .iter()
                .map(|service| service.lines().len())
                .sum::<usize>()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = count();
        let mut since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let now = count();
            if now != seen {
                seen = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("{error}: {}", self.body))
    }
}

/// Sends requests one at a time and records each exchange.
struct Recorder {
    client: reqwest::Client,
    urls: HashMap<&'static str, String>,
    normaliser: Normaliser,
    exchanges: Vec<Json>,
}

impl Recorder {
    async fn send(
        &mut self,
        service: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let url = format!("{}{path}", self.urls[service]);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method.clone(), &url);
        if let Some(body) = body {
            if !headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            {
                request = request.header("content-type", "application/json");
            }
            request = request.body(body.to_owned());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("{method} {url}: {error}"));
        let status = response.status().as_u16();
        let response_headers = response.headers().clone();
        let text = response
            .text()
            .await
            .unwrap_or_else(|error| panic!("{method} {url}: body: {error}"));

        let mut record = vec![(
            "request",
            Json::string(&self.normaliser.text(&format!("{method} {service} {path}"))),
        )];
        if !headers.is_empty() {
            let sent = headers
                .iter()
                .map(|(name, value)| (*name, Json::string(&self.normaliser.text(value))))
                .collect();
            record.push(("request_headers", Json::object(sent)));
        }
        if let Some(body) = body {
            let sent = if body.len() > 1024 {
                Json::string(&format!("<{} bytes>", body.len()))
            } else {
                self.normaliser.body(body)
            };
            record.push(("request_body", sent));
        }
        record.push(("status", Json::number(u64::from(status))));
        let names = response_headers
            .keys()
            .map(|name| name.as_str())
            .filter(|name| *name != "date")
            .map(Json::string)
            .collect();
        record.push(("header_names", Json::Array(names)));
        let recorded = RECORDED_HEADERS
            .iter()
            .filter_map(|name| {
                let values: Vec<&str> = response_headers
                    .get_all(*name)
                    .iter()
                    .map(|value| value.to_str().unwrap_or("<not UTF-8>"))
                    .collect();
                (!values.is_empty()).then(|| (*name, Json::string(&self.normaliser.text(&values.join(", ")))))
            })
            .collect();
        record.push(("headers", Json::object(recorded)));
        record.push((
            "x-request-id",
            Json::boolean(response_headers.contains_key("x-request-id")),
        ));
        record.push((
            "x-trace-id",
            Json::boolean(response_headers.contains_key("x-trace-id")),
        ));
        if let Some(parsed) = Json::parse(&text) {
            let mut compact = String::new();
            parsed.write(&mut compact, 0, true);
            if compact != text {
                record.push(("body_whitespace", Json::boolean(true)));
            }
        }
        record.push(("body", self.normaliser.body(&text)));
        self.exchanges.push(Json::object(record));
        Reply { status, body: text }
    }

    async fn get(&mut self, service: &str, path: &str) -> Reply {
        self.send(service, "GET", path, &[], None).await
    }

    async fn json(&mut self, service: &str, method: &str, path: &str, body: serde_json::Value) -> Reply {
        self.send(service, method, path, &[], Some(&body.to_string()))
            .await
    }

    async fn admin(
        &mut self,
        service: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let token = format!("Bearer {ADMIN_TOKEN}");
        let body = body.map(|body| body.to_string());
        self.send(
            service,
            method,
            path,
            &[("authorization", &token)],
            body.as_deref(),
        )
        .await
    }
}

/// Where each kind of request goes: all through the gateway, or each straight to its service.
#[derive(Clone, Copy)]
struct Via {
    tag: &'static str,
    catalog: &'static str,
    cart: &'static str,
    orders: &'static str,
}

const THROUGH_GATEWAY: Via = Via {
    tag: "gw",
    catalog: "gateway",
    cart: "gateway",
    orders: "gateway",
};

const DIRECT: Via = Via {
    tag: "direct",
    catalog: "catalog",
    cart: "cart",
    orders: "orders",
};

async fn catalog_requests(r: &mut Recorder, via: Via) {
    let catalog = via.catalog;
    r.get(catalog, "/catalog").await;
    r.get(catalog, "/catalog?page=2&page_size=3").await;
    r.get(catalog, "/catalog?q=headphones").await;
    r.get(catalog, "/catalog?q=no-such-thing-at-all").await;
    r.get(catalog, "/catalog/prod-110").await;
    r.get(catalog, "/catalog/no-such-product").await;
    r.get(catalog, "/catalog?page=abc").await;
    r.get(catalog, "/catalog?page=0").await;
    r.get(catalog, "/catalog?page_size=100000").await;
}

async fn simple_cart_requests(r: &mut Recorder, via: Via) {
    let cart = via.cart;
    let user = format!("golden-simple-{}", via.tag);
    r.json(
        cart,
        "POST",
        "/cart/add",
        json!({"user_id": user, "product_id": "prod-110", "quantity": 2}),
    )
    .await;
    r.json(
        cart,
        "POST",
        "/cart/add",
        json!({"user_id": user, "product_id": "prod-111", "quantity": 1}),
    )
    .await;
    r.json(
        cart,
        "POST",
        "/cart/add",
        json!({"user_id": user, "product_id": "prod-110"}),
    )
    .await;
    r.get(cart, &format!("/cart/{user}")).await;
    r.send(cart, "DELETE", &format!("/cart/{user}"), &[], None).await;
    r.get(cart, &format!("/cart/{user}")).await;
}

async fn v1_cart_requests(r: &mut Recorder, via: Via) {
    let cart = via.cart;
    let user = format!("golden-v1-{}", via.tag);
    let base = format!("/v1/cart/{user}");
    let items = format!("{base}/items");
    r.get(cart, &base).await;
    r.json(
        cart,
        "POST",
        &base,
        json!({"product_id": "prod-111", "quantity": 1}),
    )
    .await;
    r.json(
        cart,
        "POST",
        &items,
        json!({"product_id": "prod-112", "quantity": 3}),
    )
    .await;
    let current = r.get(cart, &base).await;
    assert_eq!(current.status, 200, "{}", current.body);
    r.send(
        cart,
        "PATCH",
        &format!("{items}/prod-112"),
        &[("if-match", "\"v2\"")],
        Some(r#"{"quantity":5}"#),
    )
    .await;
    // The cart moved on: the same If-Match is stale now.
    r.send(
        cart,
        "PATCH",
        &format!("{items}/prod-112"),
        &[("if-match", "\"v2\"")],
        Some(r#"{"quantity":4}"#),
    )
    .await;
    r.send(cart, "DELETE", &format!("{items}/prod-111"), &[], None)
        .await;
    r.send(cart, "DELETE", &format!("{items}/prod-111"), &[], None)
        .await;
    // Unknown product, malformed bodies, out-of-range quantities, too little stock.
    r.json(
        cart,
        "POST",
        &items,
        json!({"product_id": "no-such-product", "quantity": 1}),
    )
    .await;
    r.send(cart, "POST", &items, &[], Some("{")).await;
    r.json(
        cart,
        "POST",
        &items,
        json!({"product_id": "prod-113", "quantity": 0}),
    )
    .await;
    r.json(
        cart,
        "POST",
        &items,
        json!({"product_id": "prod-113", "quantity": "two"}),
    )
    .await;
    r.json(
        cart,
        "POST",
        &items,
        json!({"product_id": "prod-113", "quantity": 999}),
    )
    .await;
    // Within the per-line maximum, beyond the product's stock (35).
    r.json(
        cart,
        "POST",
        &items,
        json!({"product_id": "prod-113", "quantity": 40}),
    )
    .await;
    r.send(
        cart,
        "POST",
        &items,
        &[("content-type", "text/plain")],
        Some(r#"{"product_id":"prod-113","quantity":1}"#),
    )
    .await;
    let oversized = format!(
        r#"{{"product_id":"prod-113","quantity":1,"pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    r.send(cart, "POST", &items, &[], Some(&oversized)).await;
    r.json(
        cart,
        "PATCH",
        &format!("{items}/prod-199"),
        json!({"quantity": 1}),
    )
    .await;
    // Idempotency-Key: the first answer, its replay, and the same key with another body.
    let key = format!("golden-key-{}", via.tag);
    let first = r#"{"product_id":"prod-113","quantity":1}"#;
    r.send(cart, "POST", &items, &[("idempotency-key", &key)], Some(first))
        .await;
    r.send(cart, "POST", &items, &[("idempotency-key", &key)], Some(first))
        .await;
    r.send(
        cart,
        "POST",
        &items,
        &[("idempotency-key", &key)],
        Some(r#"{"product_id":"prod-113","quantity":2}"#),
    )
    .await;
    r.get(cart, &base).await;
    r.send(cart, "DELETE", &base, &[("if-match", "\"v1\"")], None)
        .await;
    r.send(cart, "DELETE", &base, &[], None).await;
    r.get(cart, &base).await;
    r.get(cart, "/v1/cart/golden-never-used").await;
}

async fn orders_requests(r: &mut Recorder, via: Via) {
    let orders = via.orders;
    let user = format!("golden-orders-{}", via.tag);
    let create = json!({
        "user_id": user,
        "shipping_address": "1 Golden Street, Testville",
        "notes": "recorded",
        "order_items": [
            {"product_id": "prod-110", "quantity": 1},
            {"product_id": "prod-111", "quantity": 2},
        ],
    })
    .to_string();
    let key = format!("golden-order-key-{}", via.tag);
    let created = r
        .send(
            orders,
            "POST",
            "/api/orders",
            &[("idempotency-key", &key)],
            Some(&create),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["data"]["id"]
        .as_str()
        .expect("an order id")
        .to_owned();
    r.send(
        orders,
        "POST",
        "/api/orders",
        &[("idempotency-key", &key)],
        Some(&create),
    )
    .await;
    let other = create.replace("recorded", "changed");
    r.send(
        orders,
        "POST",
        "/api/orders",
        &[("idempotency-key", &key)],
        Some(&other),
    )
    .await;
    let second = r
        .json(
            orders,
            "POST",
            "/api/orders",
            json!({
                "user_id": user,
                "shipping_address": "2 Golden Street",
                "order_items": [{"product_id": "prod-114", "quantity": 1}],
            }),
        )
        .await;
    assert_eq!(second.status, 201, "{}", second.body);
    let second_id = second.json()["data"]["id"]
        .as_str()
        .expect("an order id")
        .to_owned();
    r.get(orders, &format!("/api/orders/{id}")).await;
    r.get(orders, &format!("/api/users/{user}/orders")).await;
    r.get(orders, &format!("/api/users/{user}/orders?page=1&page_size=1"))
        .await;
    let order = format!("/api/orders/{id}");
    r.json(
        orders,
        "PATCH",
        &format!("{order}/status"),
        json!({"status": "confirmed"}),
    )
    .await;
    r.json(
        orders,
        "PATCH",
        &format!("{order}/status"),
        json!({"status": "delivered"}),
    )
    .await;
    r.json(
        orders,
        "PATCH",
        &format!("{order}/status"),
        json!({"status": "bogus"}),
    )
    .await;
    r.send(orders, "POST", &format!("{order}/cancel"), &[], None)
        .await;
    r.send(orders, "POST", &format!("{order}/cancel"), &[], None)
        .await;
    r.json(
        orders,
        "PATCH",
        &format!("/api/orders/{second_id}/status"),
        json!({"status": "confirmed"}),
    )
    .await;
    r.json(
        orders,
        "PATCH",
        &format!("/api/orders/{second_id}/status"),
        json!({"status": "shipped"}),
    )
    .await;
    r.send(
        orders,
        "POST",
        &format!("/api/orders/{second_id}/cancel"),
        &[],
        None,
    )
    .await;
    r.get(orders, &format!("/api/users/{user}/orders")).await;
    r.get(orders, "/api/orders/00000000-0000-4000-8000-000000000000")
        .await;
    r.get(orders, "/api/orders/not-an-id").await;
    r.json(orders, "POST", "/api/orders", json!({"user_id": user}))
        .await;
    r.json(
        orders,
        "POST",
        "/api/orders",
        json!({"user_id": user, "shipping_address": "x", "order_items": [{"product_id": "no-such-product", "quantity": 1}]}),
    )
    .await;
    r.send(orders, "POST", "/api/orders", &[], Some("not json")).await;
}

async fn checkout_requests(r: &mut Recorder, via: Via) {
    let user = format!("golden-checkout-{}", via.tag);
    r.json(
        via.cart,
        "POST",
        &format!("/v1/cart/{user}"),
        json!({"product_id": "prod-115", "quantity": 2}),
    )
    .await;
    r.json(
        via.cart,
        "POST",
        &format!("/v1/cart/{user}"),
        json!({"product_id": "prod-116", "quantity": 1}),
    )
    .await;
    let checkout = json!({"user_id": user, "shipping_address": "3 Golden Street"});
    let done = r
        .json(via.orders, "POST", "/api/orders/checkout", checkout.clone())
        .await;
    assert_eq!(done.status, 201, "{}", done.body);
    r.get(via.cart, &format!("/v1/cart/{user}")).await;
    r.json(via.orders, "POST", "/api/orders/checkout", checkout).await;
    r.get(via.catalog, "/catalog/prod-115").await;
}

/// The admin simulation endpoints: `prefix` is `/admin` on a service, `/admin/<backend>` on the
/// gateway.
async fn simulation_requests(r: &mut Recorder, service: &str, path: &str) {
    r.get(service, path).await;
    r.send(
        service,
        "GET",
        path,
        &[("authorization", "Bearer wrong-token")],
        None,
    )
    .await;
    r.admin(service, "GET", path, None).await;
    r.json(service, "PUT", path, json!({"latency_max_ms": 5})).await;
    r.admin(
        service,
        "PUT",
        path,
        Some(json!({"latency_max_ms": 5, "latency_min_ms": 1})),
    )
    .await;
    r.admin(service, "PUT", path, Some(json!({"failure_rate": 2.0})))
        .await;
    r.admin(service, "PUT", path, Some(json!({"latency_min_ms": 50})))
        .await;
    r.admin(service, "PUT", path, Some(json!({"no_such_field": true})))
        .await;
    r.admin(
        service,
        "PUT",
        path,
        Some(json!({"latency_max_ms": 0, "latency_min_ms": 0})),
    )
    .await;
}

async fn operations_requests(r: &mut Recorder, service: &str) {
    for probe in ["/healthz", "/livez", "/readyz", "/health", "/ready"] {
        r.get(service, probe).await;
    }
    r.send(service, "POST", "/stress?cpu_iterations=1&memory_mb=1", &[], None)
        .await;
    r.send(service, "POST", "/stress?cpu_iterations=10001", &[], None)
        .await;
    r.send(service, "POST", "/stress?memory_mb=abc", &[], None).await;
    r.get(service, "/no-such-route").await;
    r.send(service, "DELETE", "/healthz", &[], None).await;
    r.send(service, "PUT", "/catalog", &[], None).await;
    r.get(service, "/docs").await;
    r.get(service, "/docs/").await;
}

async fn request_sequence(r: &mut Recorder) {
    for via in [THROUGH_GATEWAY, DIRECT] {
        catalog_requests(r, via).await;
        simple_cart_requests(r, via).await;
        v1_cart_requests(r, via).await;
        orders_requests(r, via).await;
        checkout_requests(r, via).await;
    }
    // Operators' stock, through the gateway and on the catalog.
    for service in ["gateway", "catalog"] {
        r.admin(service, "PUT", "/admin/stock/prod-119", Some(json!({"stock": 7})))
            .await;
        r.json(service, "PUT", "/admin/stock/prod-119", json!({"stock": 8}))
            .await;
        r.admin(
            service,
            "PUT",
            "/admin/stock/prod-119",
            Some(json!({"stock": -1})),
        )
        .await;
        r.admin(
            service,
            "PUT",
            "/admin/stock/no-such-product",
            Some(json!({"stock": 1})),
        )
        .await;
        r.get(service, "/catalog/prod-119").await;
    }
    // Simulation, on every service and through the gateway's per-backend routes.
    for service in ["catalog", "cart", "orders", "gateway"] {
        simulation_requests(r, service, "/admin/simulation").await;
    }
    for backend in ["catalog", "cart", "orders"] {
        simulation_requests(r, "gateway", &format!("/admin/{backend}/simulation")).await;
    }
    // An injected failure on every read, then off again: the failure is marked as injected.
    r.admin(
        "catalog",
        "PUT",
        "/admin/simulation",
        Some(json!({"enabled": true, "applies_to": "reads", "latency_max_ms": 0, "failure_rate": 1.0, "failure_status": 503})),
    )
    .await;
    r.get("catalog", "/catalog/prod-110").await;
    r.get("catalog", "/healthz").await;
    r.admin(
        "catalog",
        "PUT",
        "/admin/simulation",
        Some(json!({"enabled": false, "failure_rate": 0.0, "failure_status": 500, "applies_to": "none"})),
    )
    .await;
    r.get("catalog", "/catalog/prod-110").await;
    // Header faults, when switched on for the cart.
    r.admin(
        "cart",
        "PUT",
        "/admin/simulation",
        Some(json!({"enabled": true, "header_faults": true})),
    )
    .await;
    r.send(
        "cart",
        "GET",
        "/v1/cart/golden-faults",
        &[("x-fault-abort", "418")],
        None,
    )
    .await;
    r.admin(
        "cart",
        "PUT",
        "/admin/simulation",
        Some(json!({"enabled": false, "header_faults": false})),
    )
    .await;
    // Probes, stress, unknown routes and methods, docs: on each service.
    for service in ["catalog", "cart", "orders", "gateway"] {
        operations_requests(r, service).await;
    }
    r.get("gateway", "/").await;
    r.send("gateway", "HEAD", "/catalog/prod-110", &[], None).await;
    r.send("gateway", "OPTIONS", "/catalog", &[], None).await;
}

// ---------------------------------------------------------------------------------------------
// Metrics and logs

/// `/metrics` reduced to what a fixed request sequence determines: every `# HELP` and `# TYPE`
/// line; every sample's name and labels; the values of counters and of histogram `_count`s
/// (both count requests), but not of gauges, histogram buckets and sums (timing, memory) or
/// `process_*` metrics.
///
/// Samples come sorted by their label values; where a label holds a service's address (the
/// gateway's `replica`), that order follows the ports bound in this run, so the samples of such
/// a family are put in the order of their normalised labels instead.
fn stable_metrics(text: &str, normaliser: &mut Normaliser) -> String {
    let mut out = String::new();
    let mut family_type = "";
    let mut samples: Vec<(String, String)> = Vec::new();
    let flush = |out: &mut String, samples: &mut Vec<(String, String)>| {
        if samples.iter().any(|(_, line)| line.contains("-addr>")) {
            samples.sort_by(|(a, _), (b, _)| a.cmp(b));
        }
        for (_, line) in samples.drain(..) {
            out.push_str(&line);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            flush(&mut out, &mut samples);
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family_type = rest.rsplit(' ').next().unwrap_or_default();
            }
            let _ = writeln!(out, "{}", normaliser.text(line));
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or((line, ""));
        let name = series.split('{').next().unwrap_or_default();
        let keep = !name.starts_with("process_")
            && match family_type {
                "counter" => true,
                "histogram" => name.ends_with("_count"),
                _ => false,
            };
        let value = if keep { value } else { "<value>" };
        let series = normaliser.text(series);
        // The labels without `le`: a histogram's buckets, sum and count stay together, in order
        // (the sort is stable).
        let labels = series[name.len()..]
            .split(',')
            .filter(|label| !label.trim_start_matches('{').starts_with("le="))
            .collect::<Vec<_>>()
            .join(",");
        samples.push((labels, format!("{series} {value}")));
    }
    flush(&mut out, &mut samples);
    out
}

/// A parsed log line, before normalisation.
struct LogLine {
    members: Vec<(String, Json)>,
    message: String,
    trace_id: Option<String>,
    span_id: Option<String>,
    /// The line with its volatile values replaced and its UUIDs numbered within the line alone:
    /// the same for the same line in every run, whatever came before it.
    key: String,
}

impl LogLine {
    fn parse(line: &str, fixed: &[(String, String)]) -> Option<LogLine> {
        let Some(Json::Object(members)) = Json::parse(line) else {
            return None;
        };
        let field = |name: &str| {
            let quoted = serde_json::to_string(name).unwrap();
            members
                .iter()
                .find(|(key, _)| *key == quoted)
                .and_then(|(_, value)| value.as_str())
                .map(str::to_owned)
        };
        let message = field("message").unwrap_or_default();
        let (trace_id, span_id) = (field("trace_id"), field("span_id"));
        let mut alone = Normaliser {
            fixed: fixed.to_vec(),
            uuids: HashMap::new(),
        };
        let key = Json::Compact(Box::new(Json::Object(stable_members(&members, &mut alone)))).pretty();
        Some(LogLine {
            members,
            message,
            trace_id,
            span_id,
            key,
        })
    }
}

/// `members` with the values of [`VOLATILE_LOG_FIELDS`] replaced and the rest normalised.
fn stable_members(members: &[(String, Json)], normaliser: &mut Normaliser) -> Vec<(String, Json)> {
    members
        .iter()
        .map(|(key, value)| {
            let name = &key[1..key.len() - 1];
            let value = match VOLATILE_LOG_FIELDS.iter().find(|(field, _)| *field == name) {
                Some((_, placeholder)) => Json::string(placeholder),
                None => normaliser.json(value),
            };
            (key.clone(), value)
        })
        .collect()
}

/// Requests served at the same time for one trace — the orders service asks the catalog for
/// all the lines of an order at once — are logged in the order they finish. In each run of
/// consecutive lines of one trace, the lines of each span stay together and in order, and the
/// spans are put in the order of their content.
fn order_concurrent_spans(lines: Vec<LogLine>) -> Vec<LogLine> {
    let mut out = Vec::with_capacity(lines.len());
    let mut lines = lines.into_iter().peekable();
    while let Some(first) = lines.next() {
        let mut run = vec![first];
        while let Some(next) = lines.peek() {
            if next.trace_id.is_some() && next.trace_id == run[0].trace_id {
                run.extend(lines.next());
            } else {
                break;
            }
        }
        let mut spans: Vec<Vec<LogLine>> = Vec::new();
        for line in run {
            match spans.iter_mut().find(|span| span[0].span_id == line.span_id) {
                Some(span) => span.push(line),
                None => spans.push(vec![line]),
            }
        }
        if spans.len() > 1 {
            spans.sort_by_cached_key(|span| span.iter().map(|line| line.key.clone()).collect::<Vec<_>>());
        }
        out.extend(spans.into_iter().flatten());
    }
    out
}

/// One service's log lines: `startup` (up to the request sequence), `requests` (in order, see
/// [`order_concurrent_spans`]) and `background` (see [`BACKGROUND_MESSAGES`]), each line with
/// its members in order and the values of [`VOLATILE_LOG_FIELDS`] replaced.
fn stable_logs(lines: &[String], sequence_start: usize, normaliser: &mut Normaliser) -> Json {
    let mut startup = Vec::new();
    let mut requests = Vec::new();
    let mut background = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(parsed) = LogLine::parse(line, &normaliser.fixed) else {
            // Not JSON: kept as text, where it was printed.
            let text = Json::string(line);
            if index < sequence_start {
                startup.push(Err(text));
            } else {
                requests.push(Err(text));
            }
            continue;
        };
        if index < sequence_start {
            startup.push(Ok(parsed));
        } else if BACKGROUND_MESSAGES.contains(&parsed.message.as_str()) {
            background.push(Ok(parsed));
        } else {
            requests.push(Ok(parsed));
        }
    }
    // Text lines break runs: they carry no trace.
    let mut ordered = Vec::with_capacity(requests.len());
    let mut run = Vec::new();
    for line in requests {
        match line {
            Ok(parsed) => run.push(parsed),
            Err(text) => {
                ordered.extend(
                    order_concurrent_spans(std::mem::take(&mut run))
                        .into_iter()
                        .map(Ok),
                );
                ordered.push(Err(text));
            }
        }
    }
    ordered.extend(order_concurrent_spans(run).into_iter().map(Ok));
    let mut section = |lines: Vec<Result<LogLine, Json>>| {
        let entries = lines
            .into_iter()
            .map(|line| match line {
                Ok(parsed) => Json::Compact(Box::new(Json::Object(stable_members(
                    &parsed.members,
                    normaliser,
                )))),
                Err(Json::Literal(text)) => {
                    Json::Literal(format!("\"{}\"", normaliser.text(&text[1..text.len() - 1])))
                }
                Err(other) => other,
            })
            .collect();
        Json::Array(entries)
    };
    let startup = section(startup);
    let requests = section(ordered);
    let background = section(background);
    Json::object(vec![
        ("startup", startup),
        ("requests", requests),
        ("background", background),
    ])
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// The gateway adds each backend's `components.schemas` to its document in the iteration order
/// of a `HashMap` (`apps/gateway/src/openapi.rs`), which differs from process to process; the
/// schemas are recorded sorted by name. (Schemas of one name are the same in every backend, so
/// which backend's copy wins does not matter.)
fn sort_schemas(document: Json) -> Json {
    let Json::Object(mut members) = document else {
        return document;
    };
    for (key, value) in &mut members {
        if key != "\"components\"" {
            continue;
        }
        if let Json::Object(components) = value {
            for (name, schemas) in components.iter_mut() {
                if name == "\"schemas\""
                    && let Json::Object(schemas) = schemas
                {
                    schemas.sort_by(|(a, _), (b, _)| a.cmp(b));
                }
            }
        }
    }
    Json::Object(members)
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
}

/// The first stretch where `expected` and `actual` differ, with line numbers.
fn first_difference(expected: &str, actual: &str) -> String {
    let expected: Vec<&str> = expected.lines().collect();
    let actual: Vec<&str> = actual.lines().collect();
    let prefix = expected.iter().zip(&actual).take_while(|(a, b)| a == b).count();
    let suffix = expected[prefix..]
        .iter()
        .rev()
        .zip(actual[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let context = prefix.saturating_sub(3);
    let mut out = String::new();
    // Where the difference is: the exchange (its request line) or the metric family.
    if let Some(within) = expected[..prefix]
        .iter()
        .rev()
        .find(|line| line.trim_start().starts_with("\"request\": ") || line.starts_with("# TYPE "))
    {
        let _ = writeln!(out, "in {}", within.trim());
    }
    let _ = writeln!(out, "(- the fixture, + this run)");
    for (number, line) in expected.iter().enumerate().take(prefix).skip(context) {
        let _ = writeln!(out, "  {:>5}   {line}", number + 1);
    }
    let show = |out: &mut String, lines: &[&str], sign: char| {
        let end = lines.len() - suffix;
        for (number, line) in lines.iter().enumerate().take(end.min(prefix + 25)).skip(prefix) {
            let _ = writeln!(out, "{sign} {:>5}   {line}", number + 1);
        }
        if end > prefix + 25 {
            let _ = writeln!(out, "{sign}   … {} more lines", end - prefix - 25);
        }
    };
    show(&mut out, &expected, '-');
    show(&mut out, &actual, '+');
    out
}

/// Compare each fixture with what this run produced, or write them all with `UPDATE_GOLDEN=1`.
fn check_fixtures(files: &[(String, String)]) {
    let dir = golden_dir();
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|value| !value.is_empty() && value != "0") {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
        eprintln!(
            "golden_behaviour: wrote {} fixtures to {}",
            files.len(),
            dir.display()
        );
        return;
    }
    let actual_dir = binaries_dir().join("golden-actual");
    let mut failures = Vec::new();
    for (name, actual) in files {
        let path = dir.join(name);
        let Ok(expected) = std::fs::read_to_string(&path) else {
            failures.push(format!(
                "{} is missing: record it with `UPDATE_GOLDEN=1 cargo test -p stack-tests --test golden_behaviour`",
                path.display()
            ));
            continue;
        };
        if expected != *actual {
            let _ = std::fs::create_dir_all(&actual_dir);
            let _ = std::fs::write(actual_dir.join(name), actual);
            failures.push(format!(
                "{name} differs (this run's copy: {}):\n{}",
                actual_dir.join(name).display(),
                first_difference(&expected, actual)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "the services' behaviour differs from tests/golden/ ({} of {} files). If the change is intended, rerun with UPDATE_GOLDEN=1 and review the fixture diff.\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn served_behaviour_matches_the_golden_fixtures() {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!(
        "golden-behaviour-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut stack = Stack {
        services: Vec::new(),
        dir: dir.clone(),
    };

    stack.start("catalog", &[]);
    let catalog = stack.url("catalog");
    stack.start("cart", &[("CATALOG_SERVICE_URL", catalog.clone())]);
    let cart = stack.url("cart");
    let database = format!("sqlite://{}/orders.db", dir.display());
    stack.start(
        "orders",
        &[
            ("CATALOG_SERVICE_URL", catalog.clone()),
            ("CART_SERVICE_URL", cart.clone()),
            ("DATABASE_URL", database),
        ],
    );
    let orders = stack.url("orders");
    stack.start(
        "gateway",
        &[
            ("CATALOG_SERVICE_URL", catalog),
            ("CART_SERVICE_URL", cart),
            ("ORDERS_SERVICE_URL", orders),
        ],
    );
    stack.settle(Duration::from_millis(200));
    let sequence_start: Vec<usize> = stack
        .services
        .iter()
        .map(|service| service.lines().len())
        .collect();

    let mut fixed: Vec<(String, String)> = stack
        .services
        .iter()
        .map(|service| (service.addr.clone(), format!("<{}-addr>", service.name)))
        .collect();
    fixed.push((dir.display().to_string(), "<tmp>".into()));
    fixed.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    let mut recorder = Recorder {
        client: reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        urls: stack
            .services
            .iter()
            .map(|service| (service.name, format!("http://{}", service.addr)))
            .collect(),
        normaliser: Normaliser {
            fixed,
            uuids: HashMap::new(),
        },
        exchanges: Vec::new(),
    };

    request_sequence(&mut recorder).await;

    let mut files = Vec::new();
    for service in ["catalog", "cart", "orders", "gateway"] {
        let url = format!("{}/openapi.json", recorder.urls[service]);
        let response = recorder.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let text = response.text().await.unwrap();
        let document = Json::parse(&text).unwrap_or_else(|| panic!("{url} is not JSON"));
        // The document is recorded as served; only the gateway's merged document could name a
        // backend's address, which changes per run.
        let document = if service == "gateway" {
            sort_schemas(document)
        } else {
            document
        };
        let mut pretty = document.pretty();
        for (from, to) in &recorder.normaliser.fixed {
            pretty = pretty.replace(from.as_str(), to);
        }
        files.push((format!("openapi-{service}.json"), pretty));
    }
    for service in ["catalog", "cart", "orders", "gateway"] {
        let url = format!("{}/metrics", recorder.urls[service]);
        let text = recorder
            .client
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        files.push((
            format!("metrics-{service}.txt"),
            stable_metrics(&text, &mut recorder.normaliser),
        ));
    }
    stack.settle(Duration::from_millis(300));

    files.insert(
        0,
        (
            "exchanges.json".into(),
            Json::Array(std::mem::take(&mut recorder.exchanges)).pretty(),
        ),
    );
    for (service, start) in stack.services.iter().zip(sequence_start) {
        let logs = stable_logs(&service.lines(), start, &mut recorder.normaliser);
        files.push((format!("logs-{}.json", service.name), logs.pretty()));
    }
    drop(stack);
    eprintln!("golden_behaviour: sequence recorded in {:?}", started.elapsed());
    check_fixtures(&files);
}
