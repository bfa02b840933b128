//! The span processor of a service that exports spans: every sampled span is written as OTLP
//! protobuf the moment it ends, into the batch being filled, and one background thread sends
//! full batches (and, every `OTEL_BSP_SCHEDULE_DELAY`, the one being filled) to the endpoint.
//!
//! Why not the SDK's `BatchSpanProcessor`: it queues each span's `SpanData` (a few hundred bytes
//! plus its attributes' allocations) through a channel to its thread, which moves it into a
//! `Vec`, encodes it when the batch is full and frees it there — memory written on one thread,
//! read cold and freed on another, and the allocator collecting those cross-thread frees on the
//! request threads. Here the span is encoded while its data is still in cache and freed by the
//! thread that built it; what waits in the queue is its ≈ 250 bytes of protobuf
//! (docs/performance.md).
//!
//! It keeps the batch processor's contract and settings (`OTEL_BSP_SCHEDULE_DELAY`,
//! `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`): ending a span never waits on
//! the network; past the queue size spans are dropped and counted (a warning says how many);
//! `force_flush` and `shutdown` send everything ended before them.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

pub use shopstack_base::config::QueueSettings;
use std::time::{Duration, Instant};

use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use crate::otlp::{self, EncodedResource, SpanBatch};

/// Longest `force_flush` waits for the export thread (the SDK's batch processor's figure).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Dropped spans are reported at most this often (and at shutdown).
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Emptied batches kept for reuse, buffers and all.
const SPARE_BATCHES: usize = 4;

/// See the module docs.
pub struct SpanQueue {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for SpanQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanQueue")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the export thread: a batch is full, or a flush or the shutdown was asked for.
    work: Condvar,
    /// Wakes `force_flush` and `shutdown` callers: a flush round ended, or the thread stopped.
    done: Condvar,
    settings: QueueSettings,
}

#[derive(Default)]
struct State {
    /// The batch ended spans are written into.
    filling: SpanBatch,
    /// Full batches waiting for the export thread, oldest first.
    full: VecDeque<SpanBatch>,
    spare: Vec<SpanBatch>,
    /// Spans in `filling` and `full`.
    queued: usize,
    /// Spans dropped (queue full, or ended after shutdown) and not yet reported.
    dropped: u64,
    resource: Arc<EncodedResource>,
    /// Flush rounds asked for and completed (a `force_flush` waits for its number), and whether
    /// the last completed one sent everything.
    flushes_asked: u64,
    flushes_done: u64,
    last_flush_ok: bool,
    shutting_down: bool,
    stopped: bool,
}

impl Shared {
    /// Write a span of `scope` into the batch being filled (`write` writes the `Span` message's
    /// fields), or count it dropped when the queue is full or shut down.
    fn enqueue(&self, scope: &InstrumentationScope, write: impl FnOnce(&mut Vec<u8>)) {
        let mut state = lock(&self.state);
        if state.shutting_down || state.queued >= self.settings.max_queue_size {
            state.dropped += 1;
            return;
        }
        state.filling.push_with(scope, write);
        state.queued += 1;
        if state.filling.len() >= self.settings.max_export_batch_size {
            let empty = state.spare.pop().unwrap_or_default();
            let full = std::mem::replace(&mut state.filling, empty);
            state.full.push_back(full);
            self.work.notify_one();
        }
    }
}

/// Writes sampled spans recorded without the SDK into a [`SpanQueue`]'s batches.
#[derive(Clone)]
pub struct SpanRecorder {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SpanRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanRecorder").finish_non_exhaustive()
    }
}

impl SpanRecorder {
    /// Queue a span of `scope`: `write` writes its `Span` message's fields (see
    /// [`otlp::write_span_head`]).
    pub fn record(&self, scope: &InstrumentationScope, write: impl FnOnce(&mut Vec<u8>)) {
        self.shared.enqueue(scope, write);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves counters, not broken invariants: carry on.
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SpanQueue {
    /// A queue handing each `ExportTraceServiceRequest` to `send` on its own thread (in the
    /// services, [`crate::otlp::OtlpExporter::export`]).
    pub fn new(
        send: impl FnMut(bytes::Bytes) -> Result<(), String> + Send + 'static,
        settings: QueueSettings,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                last_flush_ok: true,
                ..State::default()
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            settings,
        });
        let worker = std::thread::Builder::new().name("span-export".into()).spawn({
            let shared = Arc::clone(&shared);
            move || export_until_shutdown(&shared, send)
        })?;
        Ok(Self {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// A handle for spans recorded without the SDK (`observe::RequestTrace`), written into the
    /// same batches.
    pub fn recorder(&self) -> SpanRecorder {
        SpanRecorder {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Wait until the export thread has completed flush round `ticket` (or stopped).
    fn wait_for_flush(&self, ticket: u64, timeout: Duration) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        while state.flushes_done < ticket && !state.stopped {
            let now = Instant::now();
            if now >= deadline {
                return Err(OTelSdkError::Timeout(timeout));
            }
            state = self
                .shared
                .done
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        if state.flushes_done >= ticket && !state.last_flush_ok {
            return Err(OTelSdkError::InternalFailure(
                "some spans could not be exported".into(),
            ));
        }
        Ok(())
    }
}

impl SpanProcessor for SpanQueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.shared
                .enqueue(&span.instrumentation_scope, |out| otlp::write_span(out, &span));
        }
        // `span` is freed here, after the lock is let go, by the thread that built it.
    }

    fn force_flush(&self) -> OTelSdkResult {
        let ticket = {
            let mut state = lock(&self.shared.state);
            if state.stopped {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            state.flushes_asked += 1;
            state.flushes_asked
        };
        self.shared.work.notify_one();
        self.wait_for_flush(ticket, FLUSH_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let ticket = {
            let mut state = lock(&self.shared.state);
            if state.shutting_down {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            state.shutting_down = true;
            state.flushes_asked += 1;
            state.flushes_asked
        };
        self.shared.work.notify_one();
        let flushed = self.wait_for_flush(ticket, timeout);
        if lock(&self.shared.state).stopped {
            let worker = self
                .worker
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(worker) = worker {
                let _ = worker.join();
            }
        }
        flushed
    }

    fn set_resource(&mut self, resource: &Resource) {
        lock(&self.shared.state).resource = Arc::new(EncodedResource::new(resource));
    }
}

impl Drop for SpanQueue {
    /// A queue dropped without a shutdown still stops its thread (after one last round).
    fn drop(&mut self) {
        lock(&self.shared.state).shutting_down = true;
        self.shared.work.notify_one();
    }
}

/// The export thread: waits for work, takes the batches due, sends them with the lock let go.
fn export_until_shutdown(shared: &Shared, mut send: impl FnMut(bytes::Bytes) -> Result<(), String>) {
    let delay = shared.settings.schedule_delay;
    let mut next_scheduled = Instant::now() + delay;
    let mut reports = Reports::default();
    loop {
        let mut state = lock(&shared.state);
        loop {
            let flush_asked = state.flushes_asked > state.flushes_done || state.shutting_down;
            let now = Instant::now();
            if !state.full.is_empty() || flush_asked || now >= next_scheduled {
                break;
            }
            state = shared
                .work
                .wait_timeout(state, next_scheduled - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        // Full batches always go; the one being filled when the delay is up or a flush (or the
        // shutdown) asks for everything ended so far.
        let ticket = state.flushes_asked;
        let shutting_down = state.shutting_down;
        let everything = ticket > state.flushes_done || shutting_down || Instant::now() >= next_scheduled;
        let mut batches: Vec<SpanBatch> = state.full.drain(..).collect();
        if everything {
            if !state.filling.is_empty() {
                let empty = state.spare.pop().unwrap_or_default();
                batches.push(std::mem::replace(&mut state.filling, empty));
            }
            next_scheduled = Instant::now() + delay;
        }
        state.queued -= batches.iter().map(SpanBatch::len).sum::<usize>();
        let resource = Arc::clone(&state.resource);
        reports.dropped += std::mem::take(&mut state.dropped);
        drop(state);

        let mut all_sent = true;
        for batch in &batches {
            let mut request = Vec::with_capacity(300 * batch.len() + 1024);
            batch.write_request(&resource, &mut request);
            let result = send(bytes::Bytes::from(request));
            all_sent &= result.is_ok();
            reports.export_result(result, batch.len());
        }
        reports.dropped_spans(shutting_down);

        let mut state = lock(&shared.state);
        for mut batch in batches {
            if state.spare.len() < SPARE_BATCHES {
                batch.clear();
                state.spare.push(batch);
            }
        }
        if everything && ticket > state.flushes_done {
            state.flushes_done = ticket;
            state.last_flush_ok = all_sent;
        }
        if shutting_down {
            state.stopped = true;
        }
        drop(state);
        shared.done.notify_all();
        if shutting_down {
            return;
        }
    }
}

/// What the export thread tells the logs: the first failure of a run of failed exports and the
/// recovery after it, and dropped spans at most every [`DROP_REPORT_INTERVAL`].
#[derive(Default)]
struct Reports {
    failed_batches: u64,
    lost_spans: u64,
    dropped: u64,
    last_drop_report: Option<Instant>,
}

impl Reports {
    fn export_result(&mut self, result: Result<(), String>, spans: usize) {
        match result {
            Ok(()) if self.failed_batches > 0 => {
                tracing::info!(
                    failed_batches = self.failed_batches,
                    lost_spans = self.lost_spans,
                    "exporting spans works again"
                );
                self.failed_batches = 0;
                self.lost_spans = 0;
            }
            Ok(()) => {}
            Err(error) => {
                if self.failed_batches == 0 {
                    tracing::warn!(%error, spans, "exporting spans failed; the batch is lost");
                }
                self.failed_batches += 1;
                self.lost_spans += spans as u64;
            }
        }
    }

    fn dropped_spans(&mut self, final_report: bool) {
        let due = self
            .last_drop_report
            .is_none_or(|last| last.elapsed() >= DROP_REPORT_INTERVAL);
        if self.dropped > 0 && (due || final_report) {
            tracing::warn!(
                dropped_spans = self.dropped,
                "the span queue was full (OTEL_BSP_MAX_QUEUE_SIZE): spans dropped"
            );
            self.dropped = 0;
            self.last_drop_report = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::borrow::Cow;
    use std::sync::mpsc;
    use std::time::SystemTime;

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;

    fn span(name: &'static str, flags: TraceFlags) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1),
                SpanId::from(2),
                flags,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(name),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("shopstack").build(),
        }
    }

    fn sampled(name: &'static str) -> SpanData {
        span(name, TraceFlags::SAMPLED)
    }

    /// The span names of each request sent, in order.
    type Sent = Arc<Mutex<Vec<Vec<String>>>>;

    /// A send that records what it was given and answers with `results` (then `Ok`).
    fn recording(results: Vec<Result<(), String>>) -> (Sent, impl FnMut(bytes::Bytes) -> Result<(), String>) {
        let sent = Sent::default();
        let mut results = results.into_iter();
        let record = Arc::clone(&sent);
        let send = move |request: bytes::Bytes| {
            let request = ExportTraceServiceRequest::decode(request).unwrap();
            let names = request
                .resource_spans
                .iter()
                .flat_map(|resource| &resource.scope_spans)
                .flat_map(|scope| &scope.spans)
                .map(|span| span.name.clone())
                .collect();
            record.lock().unwrap().push(names);
            results.next().unwrap_or(Ok(()))
        };
        (sent, send)
    }

    fn settings(delay: Duration, max_queue_size: usize, max_export_batch_size: usize) -> QueueSettings {
        QueueSettings {
            schedule_delay: delay,
            max_queue_size,
            max_export_batch_size,
        }
    }

    const LONG: Duration = Duration::from_secs(3_600);

    /// Wait (up to 10 s) until `done` holds.
    fn eventually(mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn a_full_batch_is_sent_at_once_the_rest_on_flush_and_unsampled_spans_never() {
        let (sent, send) = recording(Vec::new());
        let queue = SpanQueue::new(send, settings(LONG, 10, 2)).unwrap();
        queue.on_end(span("unsampled", TraceFlags::default()));
        for name in ["a", "b", "c", "d", "e"] {
            queue.on_end(sampled(name));
        }
        eventually(|| sent.lock().unwrap().len() == 2);
        assert_eq!(*sent.lock().unwrap(), [names(&["a", "b"]), names(&["c", "d"])]);

        queue.force_flush().unwrap();
        assert_eq!(sent.lock().unwrap().last(), Some(&names(&["e"])));
        queue.force_flush().unwrap();
        assert_eq!(sent.lock().unwrap().len(), 3, "an empty flush sends nothing");
    }

    #[test]
    fn the_batch_being_filled_is_sent_after_the_schedule_delay() {
        let (sent, send) = recording(Vec::new());
        let queue = SpanQueue::new(send, settings(Duration::from_millis(50), 2_048, 512)).unwrap();
        queue.on_end(sampled("lonely"));
        eventually(|| !sent.lock().unwrap().is_empty());
        assert_eq!(*sent.lock().unwrap(), [names(&["lonely"])]);
    }

    #[test]
    fn past_the_queue_size_spans_are_dropped_and_ending_one_never_waits() {
        let (sent, mut record) = recording(Vec::new());
        let (open_gate, gate) = mpsc::channel::<()>();
        // The endpoint hangs on the first request until the gate opens.
        let send = move |request| {
            let _ = gate.recv();
            record(request)
        };
        let queue = SpanQueue::new(send, settings(LONG, 1, 1)).unwrap();
        queue.on_end(sampled("in flight"));
        eventually(|| lock(&queue.shared.state).queued == 0);
        queue.on_end(sampled("waiting"));
        queue.on_end(sampled("dropped"));
        assert_eq!(lock(&queue.shared.state).dropped, 1);

        open_gate.send(()).unwrap();
        open_gate.send(()).unwrap();
        queue.force_flush().unwrap();
        assert_eq!(
            *sent.lock().unwrap(),
            [names(&["in flight"]), names(&["waiting"])]
        );
    }

    #[test]
    fn a_failed_export_fails_its_flush_and_the_next_can_succeed() {
        let (sent, send) = recording(vec![Err("unavailable".into())]);
        let queue = SpanQueue::new(send, settings(LONG, 10, 5)).unwrap();
        queue.on_end(sampled("lost"));
        assert!(queue.force_flush().is_err());
        queue.on_end(sampled("kept"));
        queue.force_flush().unwrap();
        assert_eq!(*sent.lock().unwrap(), [names(&["lost"]), names(&["kept"])]);
    }

    #[test]
    fn shutdown_sends_what_is_left_and_then_nothing_more() {
        let (sent, send) = recording(Vec::new());
        let queue = SpanQueue::new(send, settings(LONG, 10, 5)).unwrap();
        queue.on_end(sampled("one"));
        queue.on_end(sampled("two"));
        queue.shutdown_with_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(*sent.lock().unwrap(), [names(&["one", "two"])]);
        assert!(queue.worker.lock().unwrap().is_none(), "the thread was joined");

        queue.on_end(sampled("late"));
        assert!(matches!(queue.force_flush(), Err(OTelSdkError::AlreadyShutdown)));
        assert!(matches!(
            queue.shutdown_with_timeout(Duration::from_secs(1)),
            Err(OTelSdkError::AlreadyShutdown)
        ));
        assert_eq!(sent.lock().unwrap().len(), 1);
    }
}
