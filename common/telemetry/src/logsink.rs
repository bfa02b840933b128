//! Where a service's JSON log lines go: stdout and, when configured, `LOG_FILE`, written in
//! batches by one background thread.
//!
//! Why batches: a service logs one line per request, and at thousands of requests per second a
//! `write` per line — or a wake-up of a writer thread per line, which is what a channel to a
//! writer thread costs when the thread keeps running dry — is a measurable share of a request
//! (docs/performance.md). Here a line is appended to an in-memory buffer under a short lock; the
//! writer thread is woken only when the buffer stops being empty, then waits [`LINGER`] so the
//! lines of that moment join the batch, and writes them all with one `write` per output.
//!
//! What that costs: a line reaches stdout at most about [`LINGER`] after it was logged, and
//! lines still in the buffer when the process is killed with SIGKILL are lost (a normal exit,
//! SIGTERM or SIGINT, flushes them: see [`LogSinkGuard`]). A line is never split or interleaved.
//! If the outputs block (a pipe nobody reads), at most [`MAX_PENDING_BYTES`] wait; later lines
//! are dropped and counted, and a warning line says how many once writing resumes.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer thread lets lines gather before writing them.
pub const LINGER: Duration = Duration::from_millis(10);
/// Bytes that may wait for a blocked output before lines are dropped.
pub const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;
/// A batch buffer larger than this after a burst is given back to the allocator.
const KEEP_CAPACITY: usize = 256 * 1024;

/// The logging side of the sink: cheap to clone, hands lines to the writer thread.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it has written every pending line.
pub struct LogSinkGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Identifies the service in the sink's own warning line.
    service: String,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    dropped: u64,
    /// The writer thread is blocked waiting for lines (so a new line must wake it).
    waiting: bool,
    closed: bool,
}

fn lock(mutex: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl LogSink {
    /// Start the writer thread for `outputs` (written in this order); `service` names the
    /// service in the sink's own "lines dropped" warning.
    pub fn start(
        service: &str,
        outputs: Vec<Box<dyn Write + Send>>,
    ) -> std::io::Result<(Self, LogSinkGuard)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            service: service.to_owned(),
        });
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_batches(&writer, outputs))?;
        let guard = LogSinkGuard {
            shared: shared.clone(),
            thread: Some(thread),
        };
        Ok((Self { shared }, guard))
    }

    /// Queue one complete line (with its `\n`).
    pub fn write_line(&self, line: &[u8]) {
        let mut pending = lock(&self.shared.pending);
        if pending.closed || pending.bytes.len() + line.len() > MAX_PENDING_BYTES {
            pending.dropped += 1;
            return;
        }
        pending.bytes.extend_from_slice(line);
        let wake = pending.waiting;
        pending.waiting = false;
        drop(pending);
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for LogSinkGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: wait for lines, let more gather, write them all; until closed and empty.
fn write_batches(shared: &Shared, mut outputs: Vec<Box<dyn Write + Send>>) {
    let mut batch = Vec::new();
    loop {
        let mut pending = lock(&shared.pending);
        while pending.bytes.is_empty() && pending.dropped == 0 && !pending.closed {
            pending.waiting = true;
            pending = match shared.wake.wait(pending) {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        pending.waiting = false;
        if !pending.closed {
            drop(pending);
            std::thread::sleep(LINGER);
            pending = lock(&shared.pending);
        }
        std::mem::swap(&mut pending.bytes, &mut batch);
        let dropped = std::mem::take(&mut pending.dropped);
        let closed = pending.closed;
        drop(pending);

        if dropped > 0 {
            batch.extend_from_slice(dropped_line(&shared.service, dropped).as_bytes());
        }
        for output in &mut outputs {
            // Nowhere to report a failing log output but the log itself; keep serving.
            let _ = output.write_all(&batch).and_then(|()| output.flush());
        }
        batch.clear();
        if batch.capacity() > KEEP_CAPACITY {
            batch = Vec::new();
        }
        if closed && lock(&shared.pending).bytes.is_empty() {
            return;
        }
    }
}

fn dropped_line(service: &str, dropped: u64) -> String {
    let line = serde_json::json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "level": "warn",
        "message": "log lines dropped: the log output did not keep up",
        "service": service,
        "target": module_path!(),
        "dropped": dropped,
    });
    format!("{line}\n")
}

/// One log line at a time, as [`MakeWriter`] hands it out to a layer.
pub struct SinkWriter<'a>(&'a LogSink);

impl Write for SinkWriter<'_> {
    /// The log layer writes each line with a single call, so a call is a line.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// An output the test can read, optionally blocked until released.
    #[derive(Clone, Default)]
    struct Output {
        written: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Output {
        fn text(&self) -> String {
            String::from_utf8(self.written.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn every_line_reaches_every_output_in_order_and_the_guard_flushes() {
        let (stdout, file) = (Output::default(), Output::default());
        let (sink, guard) =
            LogSink::start("test", vec![Box::new(stdout.clone()), Box::new(file.clone())]).unwrap();
        let writers: Vec<_> = (0..4)
            .map(|thread| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for line in 0..500 {
                        sink.make_writer()
                            .write_all(format!("{{\"thread\":{thread},\"line\":{line}}}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        drop(guard);
        for output in [stdout, file] {
            let text = output.text();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            assert_eq!(lines.len(), 2000, "no line lost or split");
            for thread in 0..4 {
                let order: Vec<u64> = lines
                    .iter()
                    .filter(|line| line["thread"] == thread)
                    .map(|line| line["line"].as_u64().unwrap())
                    .collect();
                assert_eq!(
                    order,
                    (0..500).collect::<Vec<u64>>(),
                    "one thread's lines keep their order"
                );
            }
        }
    }

    #[test]
    fn a_line_is_written_without_waiting_for_more() {
        let output = Output::default();
        let (sink, _guard) = LogSink::start("test", vec![Box::new(output.clone())]).unwrap();
        sink.write_line(b"{\"alone\":true}\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while output.text().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(output.text(), "{\"alone\":true}\n");
    }

    #[test]
    fn a_blocked_output_drops_lines_past_the_limit_and_says_how_many() {
        let output = Output::default();
        let gate = output.gate.lock().unwrap();
        let (sink, guard) = LogSink::start("test", vec![Box::new(output.clone())]).unwrap();
        // The first batch blocks in `write`; then the buffer fills up to its limit.
        sink.write_line(b"{\"first\":true}\n");
        std::thread::sleep(LINGER * 5);
        let line = vec![b'x'; 1023];
        let fit = MAX_PENDING_BYTES / 1024;
        for _ in 0..fit + 10 {
            sink.write_line(&[line.as_slice(), b"\n"].concat());
        }
        drop(gate);
        drop(guard);
        let text = output.text();
        assert_eq!(text.lines().filter(|line| line.starts_with('x')).count(), fit);
        let warning: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(warning["level"], "warn");
        assert_eq!(warning["service"], "test");
        assert_eq!(warning["dropped"], 10);
    }
}
