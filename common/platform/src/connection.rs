//! One accepted connection's socket under the server's timeouts: the request head within
//! `HEADER_READ_TIMEOUT`, the body within `BODY_READ_TIMEOUT`, the wait for the next request
//! within `IDLE_TIMEOUT` — and a lingering close, so that a client whose bytes are still coming
//! reads its answer (a 408, a 431) instead of a reset.
//!
//! hyper's own `header_read_timeout` is not used: it restarts with every wait for a head, idle
//! keep-alive waits included (so the idle timeout could not be longer), and it closes without an
//! answer. Here the socket itself keeps the deadline of what hyper is reading, learning from the
//! connection's service ([`Tracker`]) when a request's head has been read and when its answer is
//! ready.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use shopstack_base::config::ConnectionTimeouts;
use shopstack_base::problem::Problem;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Longest a closing connection keeps reading (and discarding) what its client still sends, so
/// that the client reads the answer before the close; and the most it discards meanwhile.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 256 * 1024;

/// What the connection's service tells its socket: requests whose head was read, answers
/// ready, and whether the socket gave up waiting for a body.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    heads: AtomicU32,
    answers: AtomicU32,
    body_timed_out: AtomicBool,
    /// Woken when the connection's first request head has been read.
    first_head: tokio::sync::Notify,
}

impl Tracker {
    /// A request's head was read (hyper calls the service).
    pub(crate) fn head_read(&self) {
        if self.heads.fetch_add(1, Ordering::Relaxed) == 0 {
            self.first_head.notify_waiters();
        }
    }

    /// Completes once the connection's first request head has been read (at once if it has).
    pub(crate) async fn first_head_read(&self) {
        loop {
            let notified = self.first_head.notified();
            tokio::pin!(notified);
            // Registered before the check, so a head read in between still wakes it.
            notified.as_mut().enable();
            if self.heads.load(Ordering::Relaxed) > 0 {
                return;
            }
            notified.await;
        }
    }

    /// Its answer is ready (the service's future completed).
    pub(crate) fn answered(&self) {
        self.answers.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the current request's body did not arrive in time (its answer is then a 408).
    pub(crate) fn body_timed_out(&self) -> bool {
        self.body_timed_out.load(Ordering::Relaxed)
    }
}

/// Checks the raw bytes of request heads for what hyper's parser lets through but the edge must
/// refuse: a line ending in a bare LF or a bare CR, a folded (obs-fold) header line, and
/// `Content-Length` beside `Transfer-Encoding` (hyper drops the length and reads the body as
/// chunked; a server behind that honours the length would read another request — smuggling).
/// It follows the framing of what it reads: a body of known length is skipped, and the head
/// after it checked; after a chunked body it stops until the connection next waits idle.
#[derive(Debug, Default)]
struct HeadCheck {
    scan: Scan,
    /// The current line's length and its first bytes, lowercased.
    line_len: usize,
    prefix: [u8; 18],
    after_cr: bool,
    /// Complete lines of this head (0: the request line is being read).
    lines: usize,
    in_length_line: bool,
    length: Option<u64>,
    length_invalid: bool,
    transfer_encoding: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Scan {
    #[default]
    Head,
    SkipBody(u64),
    Stopped,
}

impl HeadCheck {
    /// The next bytes read: an error naming the first problem found.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        let mut at = 0;
        while at < bytes.len() {
            match self.scan {
                Scan::Stopped => return Ok(()),
                Scan::SkipBody(left) => {
                    let skipped = left.min(u64::try_from(bytes.len() - at).unwrap_or(u64::MAX));
                    at += usize::try_from(skipped).unwrap_or(usize::MAX);
                    *self = Self::default();
                    if left > skipped {
                        self.scan = Scan::SkipBody(left - skipped);
                    }
                }
                Scan::Head => {
                    // A whole line at once where one starts here and ends in these bytes; byte
                    // by byte where a line began in an earlier read or ends in a later one.
                    let line_end = if self.line_len == 0 && !self.after_cr {
                        memchr::memchr(b'\n', &bytes[at..])
                    } else {
                        None
                    };
                    match line_end {
                        Some(end) => {
                            self.head_line(&bytes[at..at + end])?;
                            at += end + 1;
                        }
                        None => {
                            self.head_byte(bytes[at])?;
                            at += 1;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One whole line of the head, without its LF: the same checks as [`Self::head_byte`].
    fn head_line(&mut self, line: &[u8]) -> Result<(), &'static str> {
        let Some((&b'\r', content)) = line.split_last() else {
            return Err("a line of the request head ends in a bare LF");
        };
        if memchr::memchr(b'\r', content).is_some() {
            return Err("a bare CR in the request head");
        }
        if content.is_empty() {
            // An empty line before the request line is allowed (and skipped by hyper).
            return if self.lines > 0 { self.head_ended() } else { Ok(()) };
        }
        if self.lines > 0 {
            if matches!(content[0], b' ' | b'\t') {
                return Err("a folded header line (obs-fold)");
            }
            if let Some(value) = strip_name(content, b"content-length:") {
                self.length_line();
                value.iter().for_each(|&byte| self.length_byte(byte));
            } else if strip_name(content, b"transfer-encoding:").is_some() {
                self.transfer_encoding = true;
            }
        }
        self.lines += 1;
        self.in_length_line = false;
        Ok(())
    }

    /// A `Content-Length` line begins: a second one makes the length unusable for skipping.
    fn length_line(&mut self) {
        self.in_length_line = true;
        if self.length.is_some() {
            // Another length line: hyper refuses one that differs; skip none.
            self.length_invalid = true;
        }
    }

    /// A byte of a `Content-Length` value.
    fn length_byte(&mut self, byte: u8) {
        match byte {
            b'0'..=b'9' => {
                self.length = self
                    .length
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|length| length.checked_add(u64::from(byte - b'0')));
                self.length_invalid |= self.length.is_none();
            }
            b' ' | b'\t' => {}
            _ => self.length_invalid = true,
        }
    }

    fn head_byte(&mut self, byte: u8) -> Result<(), &'static str> {
        if self.after_cr && byte != b'\n' {
            return Err("a bare CR in the request head");
        }
        match byte {
            b'\r' => self.after_cr = true,
            b'\n' => {
                if !self.after_cr {
                    return Err("a line of the request head ends in a bare LF");
                }
                self.after_cr = false;
                if self.line_len > 0 {
                    self.lines += 1;
                    self.line_len = 0;
                    self.in_length_line = false;
                } else if self.lines > 0 {
                    return self.head_ended();
                }
                // An empty line before the request line is allowed (and skipped by hyper).
            }
            _ => {
                if self.line_len == 0 && self.lines > 0 && matches!(byte, b' ' | b'\t') {
                    return Err("a folded header line (obs-fold)");
                }
                if self.in_length_line {
                    self.length_byte(byte);
                }
                if let Some(slot) = self.prefix.get_mut(self.line_len) {
                    *slot = byte.to_ascii_lowercase();
                }
                self.line_len += 1;
                if self.lines > 0 {
                    if self.line_len == 15 && &self.prefix[..15] == b"content-length:" {
                        self.length_line();
                    }
                    if self.line_len == 18 && &self.prefix == b"transfer-encoding:" {
                        self.transfer_encoding = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn head_ended(&mut self) -> Result<(), &'static str> {
        let has_length = self.length.is_some() || self.length_invalid;
        if has_length && self.transfer_encoding {
            return Err("both Content-Length and Transfer-Encoding");
        }
        let next = if self.transfer_encoding || self.length_invalid {
            Scan::Stopped
        } else {
            match self.length {
                Some(length) if length > 0 => Scan::SkipBody(length),
                _ => Scan::Head,
            }
        };
        *self = Self::default();
        self.scan = next;
        Ok(())
    }
}

/// The rest of `line` after the header `name` (lowercase, with its colon), in any case.
fn strip_name<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let (head, rest) = line.split_at_checked(name.len())?;
    head.eq_ignore_ascii_case(name).then_some(rest)
}

/// What hyper is waiting to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head; `begun` once a byte of it has come.
    Head { begun: bool },
    /// The body of a request being served.
    Body,
    /// The next request on a keep-alive connection.
    Idle,
}

/// Where closing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// Writing the 408 for a head that did not come in time.
    Answering {
        written: usize,
    },
    /// The sending side is shut; reading until the client closes, for at most [`LINGER`].
    Lingering {
        discarded: usize,
    },
    Closed,
}

/// A [`TcpStream`] that keeps the deadline of whatever hyper reads (see the module docs).
pub(crate) struct GuardedStream {
    stream: TcpStream,
    tracker: Arc<Tracker>,
    timeouts: ConnectionTimeouts,
    /// The 408 written when a started head does not complete in time.
    head_timeout_answer: Bytes,
    /// What is written before closing: the 408 above, or a 400 for a malformed head.
    answer: Option<Bytes>,
    check: HeadCheck,
    phase: Phase,
    deadline: Instant,
    heads_seen: u32,
    answers_seen: u32,
    /// Armed at or before `deadline`: moved only when it fires early, so a busy connection
    /// moves its timer about once per timeout rather than once per request.
    timer: Pin<Box<Sleep>>,
    /// The timer has been polled (so holds this task's waker) since it was last set or fired.
    timer_armed: bool,
    /// A write hyper could not finish yet: answering a timeout now would cut into it.
    write_blocked: bool,
    closing: Closing,
}

impl GuardedStream {
    pub(crate) fn new(
        stream: TcpStream,
        tracker: Arc<Tracker>,
        timeouts: ConnectionTimeouts,
        head_timeout_answer: Bytes,
    ) -> Self {
        let deadline = Instant::now() + timeouts.header_read;
        Self {
            stream,
            tracker,
            timeouts,
            head_timeout_answer,
            answer: None,
            check: HeadCheck::default(),
            phase: Phase::Head { begun: false },
            deadline,
            heads_seen: 0,
            answers_seen: 0,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            timer_armed: false,
            write_blocked: false,
            closing: Closing::Open,
        }
    }

    /// Follow what the service reported since the last read: a new head means its body is
    /// being read now; an answer for every head means the next read waits for a new request.
    fn follow_service(&mut self) {
        let heads = self.tracker.heads.load(Ordering::Relaxed);
        if heads != self.heads_seen {
            self.heads_seen = heads;
            self.phase = Phase::Body;
            self.deadline = Instant::now() + self.timeouts.body_read;
        }
        let answers = self.tracker.answers.load(Ordering::Relaxed);
        if answers != self.answers_seen {
            self.answers_seen = answers;
            if answers == heads {
                if self.check.scan == Scan::Stopped {
                    self.check = HeadCheck::default();
                }
                self.phase = Phase::Idle;
                self.deadline = Instant::now() + self.timeouts.idle;
            }
        }
    }

    /// Whether `deadline` has passed; if not, the timer wakes the task when it does.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.deadline < self.timer.deadline() {
            self.timer.as_mut().reset(self.deadline);
            self.timer_armed = false;
        }
        // Polled before by this connection's task and not fired yet: it will wake the task.
        // Polling it again on every wait for bytes would only register the same waker again.
        if self.timer_armed && !self.timer.is_elapsed() {
            return false;
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                self.timer_armed = true;
                return false;
            }
            self.timer_armed = false;
            if self.timer.deadline() >= self.deadline {
                return true;
            }
            let deadline = self.deadline;
            self.timer.as_mut().reset(deadline);
        }
    }

    /// Close: a 408 first when a head had begun and did not complete in time, with nothing
    /// else being written; then the lingering close, all within [`LINGER`]. Ready (with
    /// end-of-stream for hyper's read) once closed.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.closing {
                Closing::Open => {
                    self.deadline = Instant::now() + LINGER;
                    self.closing = if self.answer.is_some() && !self.write_blocked {
                        Closing::Answering { written: 0 }
                    } else {
                        self.start_lingering(cx)
                    };
                }
                Closing::Answering { written } => {
                    let answer = self.answer.clone().unwrap_or_default();
                    let rest = &answer[written..];
                    if rest.is_empty() {
                        self.closing = self.start_lingering(cx);
                        continue;
                    }
                    match Pin::new(&mut self.stream).poll_write(cx, rest) {
                        Poll::Ready(Ok(n)) if n > 0 => {
                            self.closing = Closing::Answering { written: written + n };
                        }
                        Poll::Pending if !self.poll_expired(cx) => return Poll::Pending,
                        // A client that reads nothing gets no answer.
                        _ => self.closing = self.start_lingering(cx),
                    }
                }
                Closing::Lingering { discarded } => {
                    let mut scratch = [0u8; 4096];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            let discarded = discarded + buf.filled().len();
                            self.closing = if discarded > LINGER_MAX_BYTES {
                                Closing::Closed
                            } else {
                                Closing::Lingering { discarded }
                            };
                        }
                        Poll::Pending if !self.poll_expired(cx) => return Poll::Pending,
                        _ => self.closing = Closing::Closed,
                    }
                }
                Closing::Closed => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Shut the sending side (the client reads the end of the answer) and start lingering.
    fn start_lingering(&mut self, cx: &mut Context<'_>) -> Closing {
        // A TCP stream's shutdown completes at once.
        match Pin::new(&mut self.stream).poll_shutdown(cx) {
            Poll::Ready(Ok(())) => Closing::Lingering { discarded: 0 },
            Poll::Ready(Err(_)) | Poll::Pending => Closing::Closed,
        }
    }
}

/// The whole 408 answer to a request head that did not arrive within `timeout`, as written to
/// the socket.
pub(crate) fn head_timeout_answer(timeout: Duration) -> Bytes {
    let problem = Problem::new(
        StatusCode::REQUEST_TIMEOUT,
        "request-timeout",
        format!(
            "The request head did not arrive within {} ms.",
            timeout.as_millis()
        ),
    );
    raw_answer("408 Request Timeout", &problem)
}

/// `problem` as a whole HTTP/1.1 answer that closes the connection, for the socket to write
/// where hyper has no request to answer.
fn raw_answer(status_line: &str, problem: &Problem) -> Bytes {
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut answer = format!(
        "HTTP/1.1 {status_line}\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    Bytes::from(answer)
}

/// The whole 400 answer to a malformed request head, as written to the socket.
fn malformed_head_answer(problem: &str) -> Bytes {
    let problem = Problem::bad_request(format!("The request head is malformed: {problem}."));
    raw_answer("400 Bad Request", &problem)
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closing != Closing::Open {
            // Closing after a timeout: end-of-stream once done.
            return this.poll_close(cx);
        }
        this.follow_service();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    if let Err(problem) = this.check.feed(&buf.filled()[before..]) {
                        // hyper never sees the bytes; the client gets 400 and the close.
                        tracing::debug!(problem, "refusing a malformed request head");
                        buf.set_filled(before);
                        this.answer = Some(malformed_head_answer(problem));
                        return this.poll_close(cx);
                    }
                    match this.phase {
                        Phase::Idle => {
                            this.phase = Phase::Head { begun: true };
                            this.deadline = Instant::now() + this.timeouts.header_read;
                        }
                        Phase::Head { begun: false } => this.phase = Phase::Head { begun: true },
                        Phase::Head { begun: true } | Phase::Body => {}
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                if !this.poll_expired(cx) {
                    return Poll::Pending;
                }
                match this.phase {
                    Phase::Body => {
                        // hyper passes the error to the body; the service answers 408.
                        this.tracker.body_timed_out.store(true, Ordering::Relaxed);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the request body did not arrive in time",
                        )))
                    }
                    Phase::Head { begun: true } => {
                        this.answer = Some(this.head_timeout_answer.clone());
                        tracing::debug!("closing a connection whose request head did not arrive in time");
                        this.poll_close(cx)
                    }
                    Phase::Head { begun: false } | Phase::Idle => {
                        tracing::debug!(phase = ?this.phase, "closing a connection that sent no request in time");
                        this.poll_close(cx)
                    }
                }
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.write_blocked = written.is_pending();
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// The lingering close: the sending side shut, then what the client still sends is read
    /// and dropped until it closes (at most [`LINGER`], [`LINGER_MAX_BYTES`]), so that closing
    /// with its bytes unread does not reset the connection before it has read the answer.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_close(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.write_blocked = written.is_pending();
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::HeadCheck;

    fn check(parts: &[&[u8]]) -> Result<(), &'static str> {
        let mut check = HeadCheck::default();
        parts.iter().try_for_each(|part| check.feed(part))
    }

    #[test]
    fn well_formed_heads_pass_whatever_the_split() {
        let pipelined: &[u8] = b"\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab\ncdGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 0..pipelined.len() {
            let (first, second) = pipelined.split_at(split);
            assert_eq!(check(&[first, second]), Ok(()), "split at {split}");
        }
        // After a chunked body the check stops (until the connection next waits idle).
        let chunked: &[u8] = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\nok";
        assert_eq!(check(&[chunked]), Ok(()));
    }

    #[test]
    fn malformed_heads_are_named() {
        for (head, problem) in [
            (&b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..], "bare LF"),
            (b"GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n", "bare CR"),
            (b"GET / HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n", "obs-fold"),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
                "Transfer-Encoding",
            ),
            // The second request, behind a body of known length, is checked too.
            (
                b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nokGET / HTTP/1.1\nHost: x\r\n\r\n",
                "bare LF",
            ),
        ] {
            let found = check(&[head]).err().unwrap_or_default();
            assert!(
                found.contains(problem),
                "{:?}: {found:?}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
