//! One HTTP/1.1 request and its whole answer on a keep-alive connection to a backend: the
//! request head written by hand, the answer's head parsed with `httparse` and its body framed
//! as RFC 9112 §6.3 says (`Content-Length`, `chunked`, or up to the end of the connection).
//!
//! Why not hyper's client connection: for each request it takes a trip through a channel to a
//! connection task of its own, a second task poll, a body channel and a header map built to be
//! copied again — for our backends' small JSON answers that is more than half of what the
//! gateway spends on a proxied request (docs/decisions/0001-hand-written-http1-exchange.md);
//! here the request's own task writes the request and reads the answer. The client side (the gateway's callers, who are not trusted) stays on
//! hyper's server. What is read here comes from the configured backends; it is still checked:
//! a malformed, oversized or ambiguous answer is an error (the caller answers 502) and the
//! connection is dropped. Lengths are added and multiplied with checks (a length near
//! `usize::MAX` is an error, not a wrap or a panic); `Content-Length` is digits only (`+5`,
//! `5,5` are refused, as `str::parse` alone would take the first); the only transfer coding read
//! is plain `chunked`, since the gateway decodes no other and would pass on a body its client
//! cannot tell is encoded; at most [`MAX_INFORMATIONAL`] 1xx answers precede the final one.
//!
//! The exchange is generic over the stream so that tests can feed an answer in pieces of any
//! size; the gateway runs it on `TcpStream` only.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest answer head (status line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in an answer.
const MAX_HEADERS: usize = 100;
/// Largest answer body read (the gateway holds an answer in memory to pass it on whole).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Reads ask for at least this much room.
const READ_CHUNK: usize = 8 * 1024;
/// Informational (1xx) answers read past before the final one; one more is an error, so a
/// backend cannot keep a request busy with interim answers.
pub const MAX_INFORMATIONAL: usize = 5;
/// Longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 1024;

/// A request as the backend is to receive it.
pub struct OutboundRequest<'a> {
    pub method: &'a Method,
    /// Origin-form target: path and query.
    pub target: &'a str,
    /// `Host` and `traceparent`, written first.
    pub host: &'a HeaderValue,
    pub traceparent: &'a [u8],
    /// Headers written next, as they are.
    pub added: &'a [(HeaderName, HeaderValue)],
    /// Then the caller's headers, those `forwards` lets through (each is checked as it is
    /// written, so nothing is removed from a map first).
    pub headers: &'a HeaderMap,
    pub forwards: &'a (dyn Fn(&HeaderName) -> bool + Sync),
    pub body: &'a Bytes,
    /// Answer headers the caller writes itself on what it passes on: left out of the answer's
    /// map rather than parsed, stored and replaced.
    pub replaced_in_answer: &'a [HeaderName],
}

/// A backend's answer, read in full.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// As received, framing headers included.
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The connection ended before any byte of an answer: on a reused connection, most likely
    /// the backend closed it while it was idle, before the request arrived.
    #[error("connection closed before an answer")]
    ClosedBeforeAnswer,
    #[error("reading or writing: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid answer: {0}")]
    Invalid(&'static str),
}

/// One keep-alive connection: the socket, what was read past the last answer, and buffers
/// reused from request to request.
pub struct Connection<S = TcpStream> {
    stream: S,
    read: BytesMut,
    write: Vec<u8>,
    /// An answer's header names and where their values are in the head.
    names: Vec<(HeaderName, std::ops::Range<usize>)>,
}

impl Connection<TcpStream> {
    /// Whether the connection can carry another request: nothing arrived since the last answer
    /// (not even the end of the connection). Costs no system call unless the socket was
    /// reported readable.
    pub fn is_idle_and_open(&self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
            names: Vec::new(),
        }
    }

    /// Send `request` and read its answer. `Ok((answer, reusable))`: `reusable` says whether
    /// the connection may carry another request.
    pub async fn exchange(&mut self, request: &OutboundRequest<'_>) -> Result<(Answer, bool), ExchangeError> {
        self.write_request(request).await?;
        let head = self.read_head(request.replaced_in_answer).await?;
        let framing = head.framing(request.method);
        let body = match framing {
            Framing::Empty => Bytes::new(),
            Framing::Length(length) => self.read_exactly(length).await?,
            Framing::Chunked => self.read_chunked().await?,
            Framing::UntilClose => self.read_until_close().await?,
        };
        // Bytes past the answer are nothing a backend should send unasked.
        let reusable = head.keep_alive(framing) && self.read.is_empty();
        Ok((
            Answer {
                status: head.status,
                headers: head.headers,
                body,
            },
            reusable,
        ))
    }

    async fn write_request(&mut self, request: &OutboundRequest<'_>) -> std::io::Result<()> {
        let buffer = &mut self.write;
        buffer.clear();
        buffer.extend_from_slice(request.method.as_str().as_bytes());
        buffer.push(b' ');
        buffer.extend_from_slice(request.target.as_bytes());
        buffer.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        buffer.extend_from_slice(request.host.as_bytes());
        buffer.extend_from_slice(b"\r\ntraceparent: ");
        buffer.extend_from_slice(request.traceparent);
        buffer.extend_from_slice(b"\r\n");
        let received = request
            .headers
            .iter()
            .filter(|(name, _)| (request.forwards)(name));
        for (name, value) in request
            .added
            .iter()
            .map(|(name, value)| (name, value))
            .chain(received)
        {
            buffer.extend_from_slice(name.as_str().as_bytes());
            buffer.extend_from_slice(b": ");
            buffer.extend_from_slice(value.as_bytes());
            buffer.extend_from_slice(b"\r\n");
        }
        // The body is always sent with its length (never chunked): it is read in full first.
        let body = request.body;
        if !body.is_empty()
            || !matches!(
                *request.method,
                Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
            )
        {
            buffer.extend_from_slice(b"content-length: ");
            buffer.extend_from_slice(itoa_usize(body.len(), &mut [0u8; 20]));
            buffer.extend_from_slice(b"\r\n");
        }
        buffer.extend_from_slice(b"\r\n");
        if body.len() <= 16 * 1024 {
            buffer.extend_from_slice(body);
            self.stream.write_all(buffer).await
        } else {
            self.stream.write_all(buffer).await?;
            self.stream.write_all(body).await
        }
    }

    /// Read more into the buffer; `Ok(false)` at the end of the connection.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 2 {
            self.read.reserve(READ_CHUNK);
        }
        Ok(self.stream.read_buf(&mut self.read).await? > 0)
    }

    /// The head of the final answer (informational 1xx answers are read past).
    async fn read_head(&mut self, replaced: &[HeaderName]) -> Result<Head, ExchangeError> {
        let mut received_any = false;
        let mut informational = 0usize;
        loop {
            if !self.read.is_empty()
                && let Some(head) = self.parse_head(replaced)?
            {
                if head.status.is_informational() {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(ExchangeError::Invalid(
                            "101 Switching Protocols without an upgrade asked",
                        ));
                    }
                    informational += 1;
                    if informational > MAX_INFORMATIONAL {
                        return Err(ExchangeError::Invalid("too many informational answers"));
                    }
                    received_any = true;
                    continue;
                }
                return Ok(head);
            }
            if self.read.len() >= MAX_HEAD_BYTES {
                return Err(ExchangeError::Invalid("answer head too large"));
            }
            match self.fill().await {
                Ok(true) => received_any = true,
                Ok(false) if !received_any && self.read.is_empty() => {
                    return Err(ExchangeError::ClosedBeforeAnswer);
                }
                Ok(false) => return Err(ExchangeError::Invalid("connection closed inside the answer head")),
                Err(error) if !received_any && is_reset(&error) => {
                    return Err(ExchangeError::ClosedBeforeAnswer);
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// A complete head at the start of the buffer, taken out of it, without the `replaced`
    /// headers; `None` if more is needed.
    fn parse_head(&mut self, replaced: &[HeaderName]) -> Result<Option<Head>, ExchangeError> {
        let Self { read, names, .. } = self;
        // Left uninitialised: filling a hundred empty headers cost more than parsing the head.
        let mut parsed = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            // Only the first MAX_HEAD_BYTES are looked at: the verdict on a head that is too
            // long is then the same however much of it had arrived.
            &read[..read.len().min(MAX_HEAD_BYTES)],
            &mut parsed,
        ) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ExchangeError::Invalid("too many headers")),
            Err(_) => return Err(ExchangeError::Invalid("malformed answer head")),
        };
        let status = response
            .code
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or(ExchangeError::Invalid("bad status code"))?;
        // Header values become slices of the head's bytes (no copy): note where they are.
        let base = read.as_ptr() as usize;
        names.clear();
        for parsed in response.headers.iter() {
            let name = answer_header_name(parsed.name)?;
            if replaced.contains(&name) {
                continue;
            }
            let start = parsed.value.as_ptr() as usize - base;
            names.push((name, start..start + parsed.value.len()));
        }
        let mut head = Head {
            status,
            // Room for the replaced headers too: the caller is about to write them.
            headers: HeaderMap::with_capacity(names.len() + replaced.len()),
            http_11: response.version == Some(1),
            close: false,
            keep_alive_asked: false,
            content_length: None,
            chunked: false,
        };
        let bytes = read.split_to(length).freeze();
        for (name, range) in names.drain(..) {
            let value = HeaderValue::from_maybe_shared(bytes.slice(range))
                .map_err(|_| ExchangeError::Invalid("bad header value"))?;
            head.note(&name, &value)?;
            head.headers.append(name, value);
        }
        Ok(Some(head))
    }

    async fn read_exactly(&mut self, length: usize) -> Result<Bytes, ExchangeError> {
        if length > MAX_BODY_BYTES {
            return Err(ExchangeError::Invalid("answer body too large"));
        }
        while self.read.len() < length {
            let missing = length - self.read.len();
            if self.read.capacity() - self.read.len() < missing {
                self.read.reserve(missing);
            }
            if !self.fill().await? {
                return Err(ExchangeError::Invalid("connection closed inside the answer body"));
            }
        }
        Ok(self.read.split_to(length).freeze())
    }

    async fn read_chunked(&mut self) -> Result<Bytes, ExchangeError> {
        let mut body = BytesMut::new();
        loop {
            let (line, size) = loop {
                // Only the first MAX_CHUNK_LINE bytes are looked at, so the verdict on a long
                // line is the same however much of it had arrived.
                let window = &self.read[..self.read.len().min(MAX_CHUNK_LINE)];
                match httparse::parse_chunk_size(window) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) if window.len() < MAX_CHUNK_LINE => {
                        if !self.fill().await? {
                            return Err(ExchangeError::Invalid("connection closed inside a chunk size"));
                        }
                    }
                    Ok(httparse::Status::Partial) => {
                        return Err(ExchangeError::Invalid("chunk size line too long"));
                    }
                    Err(_) => return Err(ExchangeError::Invalid("malformed chunk size")),
                }
            };
            let _ = self.read.split_to(line);
            let size = usize::try_from(size).map_err(|_| ExchangeError::Invalid("chunk too large"))?;
            if size == 0 {
                self.skip_trailers().await?;
                return Ok(body.freeze());
            }
            if body
                .len()
                .checked_add(size)
                .is_none_or(|total| total > MAX_BODY_BYTES)
            {
                return Err(ExchangeError::Invalid("answer body too large"));
            }
            let with_crlf = size
                .checked_add(2)
                .ok_or(ExchangeError::Invalid("answer body too large"))?;
            let chunk = self.read_exactly(with_crlf).await?;
            if !chunk.ends_with(b"\r\n") {
                return Err(ExchangeError::Invalid("chunk not followed by CRLF"));
            }
            body.put_slice(&chunk[..size]);
        }
    }

    /// The trailer section after the last chunk, up to its empty line (its fields are dropped).
    async fn skip_trailers(&mut self) -> Result<(), ExchangeError> {
        loop {
            // Parsed in a block of its own: the field array must not live across the read
            // below, or every exchange future would carry it.
            let complete = {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let window = &self.read[..self.read.len().min(MAX_HEAD_BYTES)];
                match httparse::parse_headers(window, &mut fields) {
                    Ok(httparse::Status::Complete((length, _))) => Some(length),
                    Ok(httparse::Status::Partial) if window.len() < MAX_HEAD_BYTES => None,
                    Ok(httparse::Status::Partial) => {
                        return Err(ExchangeError::Invalid("trailers too large"));
                    }
                    Err(_) => return Err(ExchangeError::Invalid("malformed trailers")),
                }
            };
            match complete {
                Some(length) => {
                    let _ = self.read.split_to(length);
                    return Ok(());
                }
                None if !self.fill().await? => {
                    return Err(ExchangeError::Invalid("connection closed inside the trailers"));
                }
                None => {}
            }
        }
    }

    async fn read_until_close(&mut self) -> Result<Bytes, ExchangeError> {
        while self.fill().await? {
            if self.read.len() > MAX_BODY_BYTES {
                return Err(ExchangeError::Invalid("answer body too large"));
            }
        }
        Ok(self.read.split().freeze())
    }
}

/// A connection reset while waiting for an answer: the backend had closed it.
fn is_reset(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

/// A `Content-Length` value: one or more ASCII digits and nothing else (no sign, no space, no
/// list), within `usize`.
fn content_length(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |total, &digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        total.checked_mul(10)?.checked_add(usize::from(digit - b'0'))
    })
}

/// `value` in decimal, in `buffer`.
fn itoa_usize(mut value: usize, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buffer[start..];
        }
    }
}

struct Head {
    status: StatusCode,
    headers: HeaderMap,
    http_11: bool,
    /// `Connection: close` was sent.
    close: bool,
    /// `Connection: keep-alive` was sent (what an HTTP/1.0 answer needs to keep the connection).
    keep_alive_asked: bool,
    content_length: Option<usize>,
    /// `Transfer-Encoding: chunked` was sent (the only coding accepted).
    chunked: bool,
}

/// How an answer's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

impl Head {
    /// Record what a header says about framing and keep-alive.
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), ExchangeError> {
        if name == header::CONTENT_LENGTH {
            let length =
                content_length(value.as_bytes()).ok_or(ExchangeError::Invalid("bad content-length"))?;
            if self.content_length.is_some_and(|earlier| earlier != length) {
                return Err(ExchangeError::Invalid("conflicting content-length"));
            }
            self.content_length = Some(length);
        } else if name == header::TRANSFER_ENCODING {
            // Exactly one coding, `chunked`: `gzip, chunked` would be passed on gzipped with
            // nothing saying so, and a second line adds codings after the first.
            if self.chunked || !value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(ExchangeError::Invalid("transfer coding other than chunked"));
            }
            self.chunked = true;
        } else if name == header::CONNECTION {
            for option in value.to_str().unwrap_or_default().split(',') {
                let option = option.trim();
                self.close |= option.eq_ignore_ascii_case("close");
                self.keep_alive_asked |= option.eq_ignore_ascii_case("keep-alive");
            }
        }
        Ok(())
    }

    fn framing(&self, method: &Method) -> Framing {
        if *method == Method::HEAD || matches!(self.status.as_u16(), 204 | 304) {
            return Framing::Empty;
        }
        match (self.chunked, self.content_length) {
            (true, _) => Framing::Chunked,
            (false, None) => Framing::UntilClose,
            (false, Some(0)) => Framing::Empty,
            (false, Some(length)) => Framing::Length(length),
        }
    }

    /// Whether the connection may carry another request after this answer. An answer with both
    /// `Transfer-Encoding` and `Content-Length` is framed by the former but is suspect
    /// (RFC 9112 §6.3): its connection is not reused; nor one whose body ran to its end.
    fn keep_alive(&self, framing: Framing) -> bool {
        let version_allows = self.http_11 || self.keep_alive_asked;
        let ambiguous = self.chunked && self.content_length.is_some();
        version_allows && !self.close && !ambiguous && framing != Framing::UntilClose
    }
}

/// The names a backend puts on nearly every answer (ShopStack's services: all of these), as
/// they write them, matched without `HeaderName::from_bytes`'s table walk — and, for the `x-`
/// names, its allocation. Any other spelling goes through `from_bytes`.
fn answer_header_name(name: &str) -> Result<HeaderName, ExchangeError> {
    Ok(match name {
        "content-type" => header::CONTENT_TYPE,
        "content-length" => header::CONTENT_LENGTH,
        "date" => header::DATE,
        "x-request-id" => shopstack_platform::observe::X_REQUEST_ID,
        "x-trace-id" => shopstack_platform::observe::X_TRACE_ID,
        _ => {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| ExchangeError::Invalid("bad header name"))?
        }
    })
}

/// A backend that answers by script, for tests of this module and of the pool.
#[cfg(test)]
pub(crate) mod scripted {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the backend does with the n-th request on a connection.
    #[derive(Clone)]
    pub enum Step {
        /// Write these bytes (an answer, or anything).
        Answer(&'static [u8]),
        /// Close the connection without answering.
        Close,
    }

    pub struct Scripted {
        pub addr: SocketAddr,
        pub accepted: Arc<AtomicUsize>,
        /// Every request received, raw.
        pub requests: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Scripted {
        /// Every connection plays `steps` from the start, then closes.
        pub async fn start(steps: Vec<Step>) -> Scripted {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(Mutex::new(Vec::new()));
            let (counter, log) = (accepted.clone(), requests.clone());
            tokio::spawn(async move {
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (steps, log) = (steps.clone(), log.clone());
                    tokio::spawn(async move {
                        let mut pending = Vec::new();
                        let mut buffer = vec![0u8; 4096];
                        for step in steps {
                            // One request: its head, then a body of its content-length.
                            let request = loop {
                                if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                                    let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                                    let length: usize = head
                                        .lines()
                                        .find_map(|line| line.strip_prefix("content-length: "))
                                        .map_or(0, |value| value.trim().parse().unwrap());
                                    if pending.len() >= end + 4 + length {
                                        break pending.drain(..end + 4 + length).collect::<Vec<u8>>();
                                    }
                                }
                                match stream.read(&mut buffer).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(read) => pending.extend_from_slice(&buffer[..read]),
                                }
                            };
                            log.lock().unwrap().push(request);
                            match step {
                                Step::Answer(bytes) => {
                                    if stream.write_all(bytes).await.is_err() {
                                        return;
                                    }
                                }
                                Step::Close => return,
                            }
                        }
                    });
                }
            });
            Scripted {
                addr,
                accepted,
                requests,
            }
        }

        pub fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::scripted::{Scripted, Step};
    use super::*;

    #[test]
    fn answer_header_names_are_found_in_any_case_and_others_parsed() {
        assert_eq!(
            answer_header_name("Content-Length").unwrap(),
            header::CONTENT_LENGTH
        );
        assert_eq!(answer_header_name("X-Trace-Id").unwrap().as_str(), "x-trace-id");
        assert_eq!(answer_header_name("X-Cache").unwrap().as_str(), "x-cache");
        assert_eq!(answer_header_name("etag").unwrap(), header::ETAG);
        assert!(answer_header_name("bad name").is_err());
    }

    struct Sent {
        method: Method,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Sent {
        fn get() -> Self {
            Self::new(Method::GET, "")
        }

        fn new(method: Method, body: &'static str) -> Self {
            let mut headers = HeaderMap::new();
            headers.insert("x-request-id", HeaderValue::from_static("r-1"));
            headers.append("accept", HeaderValue::from_static("application/json"));
            headers.append("x-dropped", HeaderValue::from_static("never sent"));
            Self {
                method,
                headers,
                body: Bytes::from_static(body.as_bytes()),
            }
        }
    }

    /// A static, so a request built by a helper may borrow it.
    static HOST: HeaderValue = HeaderValue::from_static("backend:8001");
    const TRACEPARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// `sent` as a request for `/`, all its headers forwarded, nothing added.
    fn plain_get<'a>(sent: &'a Sent, replaced_in_answer: &'a [HeaderName]) -> OutboundRequest<'a> {
        fn all(_: &HeaderName) -> bool {
            true
        }
        OutboundRequest {
            method: &sent.method,
            target: "/",
            host: &HOST,
            traceparent: TRACEPARENT,
            added: &[],
            headers: &sent.headers,
            forwards: &all,
            body: &sent.body,
            replaced_in_answer,
        }
    }

    async fn exchange(
        answer: &'static [u8],
        sent: Sent,
    ) -> (Result<(Answer, bool), ExchangeError>, Scripted) {
        let backend = Scripted::start(vec![Step::Answer(answer)]).await;
        let stream = TcpStream::connect(backend.addr).await.unwrap();
        let mut connection = Connection::new(stream);
        let outcome = connection
            .exchange(&OutboundRequest {
                method: &sent.method,
                target: "/catalog/p-1?x=1",
                host: &HOST,
                traceparent: TRACEPARENT,
                added: &[(
                    HeaderName::from_static("x-forwarded-for"),
                    HeaderValue::from_static("10.0.0.1"),
                )],
                headers: &sent.headers,
                forwards: &|name| name != "x-dropped",
                body: &sent.body,
                replaced_in_answer: &[],
            })
            .await;
        (outcome, backend)
    }

    #[tokio::test]
    async fn the_request_is_written_with_host_traceparent_headers_and_length() {
        let (outcome, backend) = exchange(
            b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            Sent::new(Method::POST, "{\"a\":1}"),
        )
        .await;
        let (answer, reusable) = outcome.unwrap();
        assert_eq!(
            (answer.status.as_u16(), &answer.body[..], reusable),
            (201, &b"ok"[..], true)
        );
        let request = String::from_utf8(backend.requests.lock().unwrap()[0].clone()).unwrap();
        assert_eq!(
            request,
            "POST /catalog/p-1?x=1 HTTP/1.1\r\nhost: backend:8001\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
             x-forwarded-for: 10.0.0.1\r\nx-request-id: r-1\r\naccept: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
        );
        let (outcome, backend) = exchange(b"HTTP/1.1 204 No Content\r\n\r\n", Sent::get()).await;
        assert_eq!(outcome.unwrap().0.status, StatusCode::NO_CONTENT);
        let request = String::from_utf8(backend.requests.lock().unwrap()[0].clone()).unwrap();
        assert!(
            !request.contains("content-length"),
            "a GET without a body states no length: {request}"
        );
    }

    #[tokio::test]
    async fn headers_the_caller_replaces_are_left_out_of_the_answer() {
        let backend = Scripted::start(vec![Step::Answer(
            b"HTTP/1.1 200 OK\r\nX-Request-Id: r-1\r\ncontent-type: text/plain\r\nx-trace-id: abc\r\ncontent-length: 2\r\n\r\nok",
        )])
        .await;
        let mut connection = Connection::new(TcpStream::connect(backend.addr).await.unwrap());
        let replaced = [
            shopstack_platform::observe::X_REQUEST_ID,
            shopstack_platform::observe::X_TRACE_ID,
        ];
        let (answer, reusable) = connection
            .exchange(&plain_get(&Sent::get(), &replaced))
            .await
            .unwrap();
        assert!(reusable);
        assert_eq!(&answer.body[..], b"ok");
        let names: Vec<&str> = answer.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "content-length"]);
    }

    #[tokio::test]
    async fn a_content_length_answer_keeps_its_headers_and_the_connection() {
        let (outcome, _) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-trace-id: abc\r\nset-cookie: a=1\r\nset-cookie: b=2\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
            Sent::get(),
        )
        .await;
        let (answer, reusable) = outcome.unwrap();
        assert!(reusable);
        assert_eq!(&answer.body[..], b"{\"ok\":true}");
        assert_eq!(answer.headers["content-type"], "application/json");
        assert_eq!(answer.headers["x-trace-id"], "abc");
        assert_eq!(
            answer.headers.get_all("set-cookie").iter().count(),
            2,
            "repeated headers stay repeated"
        );
    }

    #[tokio::test]
    async fn a_chunked_answer_is_decoded_with_extensions_and_trailers() {
        let (outcome, _) = exchange(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nx-trailer: yes\r\n\r\n",
            Sent::get(),
        )
        .await;
        let (answer, reusable) = outcome.unwrap();
        assert_eq!(&answer.body[..], b"Wikipedia in \r\n\r\nchunks.");
        assert!(reusable);
    }

    #[tokio::test]
    async fn an_answer_without_length_runs_to_the_close_and_ends_the_connection() {
        let (outcome, _) = exchange(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", Sent::get()).await;
        let (answer, reusable) = outcome.unwrap();
        assert_eq!((&answer.body[..], reusable), (&b"until the end"[..], false));
    }

    #[tokio::test]
    async fn head_204_and_304_answers_have_no_body() {
        let (outcome, _) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            Sent::new(Method::HEAD, ""),
        )
        .await;
        let (answer, reusable) = outcome.unwrap();
        assert!(answer.body.is_empty() && reusable);
        assert_eq!(answer.headers["content-length"], "5");
        for answer in [
            &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
        ] {
            let (outcome, _) = exchange(answer, Sent::get()).await;
            let (answer, reusable) = outcome.unwrap();
            assert!(answer.body.is_empty() && reusable, "{}", answer.status);
        }
    }

    #[tokio::test]
    async fn informational_answers_are_read_past() {
        let (outcome, _) = exchange(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Sent::get(),
        )
        .await;
        let (answer, _) = outcome.unwrap();
        assert_eq!((answer.status.as_u16(), &answer.body[..]), (200, &b"ok"[..]));
        assert!(answer.headers.get("link").is_none());
    }

    #[tokio::test]
    async fn keep_alive_follows_the_version_and_connection_header() {
        let cases: [(&'static [u8], bool); 5] = [
            (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 0\r\n\r\n", false),
            // Both framings: the chunked one is read, the connection is not trusted again.
            (b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false),
        ];
        for (bytes, expected) in cases {
            let (outcome, _) = exchange(bytes, Sent::get()).await;
            let (_, reusable) = outcome.unwrap();
            assert_eq!(reusable, expected, "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[tokio::test]
    async fn malformed_or_ambiguous_answers_are_errors() {
        let cases: [&'static [u8]; 5] = [
            b"NOT HTTP AT ALL\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ncontent-length: lots\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        ];
        for bytes in cases {
            let (outcome, _) = exchange(bytes, Sent::get()).await;
            assert!(
                matches!(outcome, Err(ExchangeError::Invalid(_))),
                "{}: {outcome:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let (outcome, _) = exchange(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", Sent::get()).await;
        assert!(
            matches!(outcome, Err(ExchangeError::Invalid(_))),
            "a body cut short: {outcome:?}"
        );
    }

    /// The error an answer gets, or a panic naming the answer if it is accepted.
    async fn refusal(bytes: &'static [u8]) -> &'static str {
        let (outcome, _) = exchange(bytes, Sent::get()).await;
        match outcome {
            Err(ExchangeError::Invalid(reason)) => reason,
            other => panic!("{}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[tokio::test]
    async fn content_length_is_digits_only() {
        let cases: [&'static [u8]; 8] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5,5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5.0\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length:\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ncontent-length: \xd9\xa5\r\n\r\nhello",
        ];
        for bytes in cases {
            assert_eq!(
                refusal(bytes).await,
                "bad content-length",
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        // Whitespace around the value is the field's, not the value's (RFC 9110 §5.5).
        let (outcome, _) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-length:   5  \r\n\r\nhello",
            Sent::get(),
        )
        .await;
        assert_eq!(&outcome.unwrap().0.body[..], b"hello");
    }

    #[tokio::test]
    async fn lengths_near_the_integer_limit_are_errors_not_overflows() {
        assert_eq!(
            refusal(b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\n").await,
            "bad content-length",
            "one past u64::MAX"
        );
        assert_eq!(
            refusal(b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\n").await,
            "answer body too large"
        );
        // A chunk of usize::MAX bytes: `size + 2` would overflow.
        assert_eq!(
            refusal(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\nx\r\n").await,
            "answer body too large"
        );
        // Chunks that add up past the limit: the sum is checked before anything is read.
        assert_eq!(
            refusal(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nffffffffffffffff\r\n")
                .await,
            "answer body too large"
        );
        assert_eq!(
            refusal(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1ffffffffffffffff\r\n").await,
            "malformed chunk size",
            "more hex digits than 64 bits hold"
        );
    }

    #[tokio::test]
    async fn only_plain_chunked_is_accepted_as_a_transfer_coding() {
        let cases: [&'static [u8]; 5] = [
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\nhello",
        ];
        for bytes in cases {
            assert_eq!(
                refusal(bytes).await,
                "transfer coding other than chunked",
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let (outcome, _) = exchange(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            Sent::get(),
        )
        .await;
        assert_eq!(
            &outcome.unwrap().0.body[..],
            b"ok",
            "the coding's name is case-insensitive"
        );
    }

    #[tokio::test]
    async fn a_few_informational_answers_are_read_past_and_more_are_an_error() {
        const FIVE: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n\
HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (outcome, _) = exchange(FIVE, Sent::get()).await;
        assert_eq!(&outcome.unwrap().0.body[..], b"ok");
        const SIX: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(refusal(SIX).await, "too many informational answers");
    }

    #[tokio::test]
    async fn a_chunk_size_line_or_trailers_too_long_are_errors() {
        let mut long_line = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;".to_vec();
        long_line.extend(std::iter::repeat_n(b'x', MAX_CHUNK_LINE));
        long_line.extend_from_slice(b"\r\nok\r\n0\r\n\r\n");
        let (outcome, _) = exchange(long_line.leak(), Sent::get()).await;
        assert!(
            matches!(outcome, Err(ExchangeError::Invalid("chunk size line too long"))),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_without_an_answer_says_so() {
        let backend = Scripted::start(vec![Step::Close]).await;
        let mut connection = Connection::new(TcpStream::connect(backend.addr).await.unwrap());
        let outcome = connection.exchange(&plain_get(&Sent::get(), &[])).await;
        assert!(
            matches!(outcome, Err(ExchangeError::ClosedBeforeAnswer)),
            "{outcome:?}"
        );
    }

    /// A stream that hands out an answer in the given pieces (each read gets at most one),
    /// then ends; what is written to it is dropped.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buffer: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(front) = self.0.front_mut() {
                let taken = front.len().min(buffer.remaining());
                buffer.put_slice(&front[..taken]);
                front.drain(..taken);
                if front.is_empty() {
                    self.0.pop_front();
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Pieces {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buffer: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Ok(buffer.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// What parsing `bytes`, cut at `cuts`, yields for a GET: the answer (status, headers, body)
    /// and whether the connection is reusable, or the error.
    type Parsed = Result<(u16, Vec<(String, Vec<u8>)>, Vec<u8>, bool), String>;

    async fn parse_in_pieces(bytes: &[u8], cuts: &[usize]) -> Parsed {
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
        cuts.extend([0, bytes.len()]);
        cuts.sort_unstable();
        cuts.dedup();
        // Empty pieces are left out: an empty read is the end of the stream.
        let pieces = cuts
            .windows(2)
            .map(|pair| bytes[pair[0]..pair[1]].to_vec())
            .collect();
        let sent = Sent::get();
        let mut connection = Connection::new(Pieces(pieces));
        match connection.exchange(&plain_get(&sent, &[])).await {
            Ok((answer, reusable)) => Ok((
                answer.status.as_u16(),
                answer
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                    .collect(),
                answer.body.to_vec(),
                reusable,
            )),
            Err(error) => Err(format!("{error:?}")),
        }
    }

    /// Answers built from parts (interim answers, a status line, header lines, body parts), so
    /// that many are valid or nearly so: the framing paths get exercised, not only the
    /// status-line parser.
    fn answer() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        use proptest::sample::select;
        let status: Vec<&'static [u8]> = vec![
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.0 200 OK\r\n",
            b"HTTP/1.1 204 No Content\r\n",
            b"HTTP/1.1 304 Not Modified\r\n",
            b"HTTP/1.1 503 Service Unavailable\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n",
            b"HTTP/1.1 2000 OK\r\n",
        ];
        let fixed_headers: Vec<&'static [u8]> = vec![
            b"transfer-encoding: chunked\r\n",
            b"transfer-encoding: gzip, chunked\r\n",
            b"connection: close\r\n",
            b"connection: keep-alive\r\n",
            b"content-length: 18446744073709551616\r\n",
            b"content-length: +3\r\n",
            b"content-length: 3,3\r\n",
            b"content-type: application/json\r\n",
            b"x-folded: a\r\n b\r\n",
            b"x-bare-lf: 1\n",
        ];
        let header = prop_oneof![
            4 => select(fixed_headers).prop_map(<[u8]>::to_vec),
            4 => (0usize..24).prop_map(|length| format!("content-length: {length}\r\n").into_bytes()),
            1 => proptest::collection::vec(any::<u8>(), 0..12),
        ];
        let body_part = prop_oneof![
            4 => (0usize..12, any::<u8>()).prop_map(|(size, byte)| {
                let mut chunk = format!("{size:x}\r\n").into_bytes();
                chunk.extend(std::iter::repeat_n(byte, size));
                chunk.extend_from_slice(b"\r\n");
                chunk
            }),
            2 => select(vec![
                &b"0\r\n\r\n"[..],
                b"0\r\nx-trailer: 1\r\n\r\n",
                b"ffffffffffffffff\r\n",
                b"hello",
                b"\r\n",
            ])
            .prop_map(<[u8]>::to_vec),
            1 => proptest::collection::vec(any::<u8>(), 0..12),
        ];
        (
            // Up to one more interim answer than accepted.
            prop_oneof![3 => Just(0usize), 1 => 1usize..=MAX_INFORMATIONAL + 1],
            select(status),
            proptest::collection::vec(header, 0..5),
            proptest::collection::vec(body_part, 0..5),
        )
            .prop_map(|(interim, status, headers, body)| {
                let mut answer = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(interim);
                answer.extend_from_slice(status);
                answer.extend(headers.concat());
                answer.extend_from_slice(b"\r\n");
                answer.extend(body.concat());
                answer
            })
    }

    #[test]
    fn the_parser_never_panics_and_its_verdict_does_not_depend_on_the_split_points() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        // Modest, so the test runs in seconds; a failure is shrunk to a small case and printed.
        let mut runner = TestRunner::new(Config {
            cases: 2_000,
            failure_persistence: None,
            ..Config::default()
        });
        let answers = prop_oneof![
            1 => proptest::collection::vec(any::<u8>(), 0..400),
            3 => answer(),
        ];
        let cuts = proptest::collection::vec(any::<usize>(), 0..12);
        runner
            .run(&(answers, cuts), |(bytes, cuts)| {
                let whole = runtime.block_on(parse_in_pieces(&bytes, &[]));
                let split = runtime.block_on(parse_in_pieces(&bytes, &cuts));
                // Whether the connection is reusable depends on whether bytes past the answer
                // had arrived when it ended; the rest may not.
                let without_reuse = |parsed: &Parsed| {
                    parsed
                        .as_ref()
                        .map(|(status, headers, body, _)| (*status, headers.clone(), body.clone()))
                        .map_err(Clone::clone)
                };
                prop_assert_eq!(without_reuse(&whole), without_reuse(&split));
                if let (Ok((.., true)), Ok((.., reusable))) = (&whole, &split) {
                    prop_assert!(*reusable, "reusable when whole, not when split");
                }
                Ok(())
            })
            .unwrap();
    }
}
