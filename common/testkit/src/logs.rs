//! Telemetry for tests: log lines captured in memory (echoed to stderr when `TEST_LOG` is set).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use shopstack_telemetry::telemetry::build_subscriber;
use tracing_subscriber::fmt::MakeWriter;

/// Log lines a test keeps in memory: the writer of [`init_telemetry`]'s subscriber, or of one a
/// test builds with `telemetry::build_subscriber`.
#[derive(Clone, Default)]
pub struct LogCapture {
    lines: Arc<Mutex<Vec<String>>>,
    echo: bool,
}

impl LogCapture {
    /// Every captured line as written.
    pub fn raw_lines(&self) -> Vec<String> {
        match self.lines.lock() {
            Ok(lines) => lines.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Every captured line that parses as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        let lines = match self.lines.lock() {
            Ok(lines) => lines.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        lines
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if self.echo {
            std::io::stderr().write_all(buf)?;
        }
        let mut lines = match self.lines.lock() {
            Ok(lines) => lines,
            Err(poisoned) => poisoned.into_inner(),
        };
        lines.extend(text.lines().map(str::to_owned));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Install telemetry once for a test binary; logs are captured (and echoed when `TEST_LOG` is set).
pub fn init_telemetry() -> &'static LogCapture {
    static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = LogCapture {
            lines: Arc::default(),
            echo: std::env::var_os("TEST_LOG").is_some(),
        };
        let identity = crate::settings("test").identity;
        let provider = SdkTracerProvider::builder().build();
        if let Ok(subscriber) = build_subscriber(&identity, "info", capture.clone(), None) {
            let _ = tracing::subscriber::set_global_default(subscriber);
        }
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider);
        capture
    })
}
