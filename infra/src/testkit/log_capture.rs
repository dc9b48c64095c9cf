//! Every log line of a test process, kept in memory, so a test can assert what was (not) logged.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// The text of every log line (tracing events, and `log` records such as librdkafka's) written
/// since [`capture_logs`] was first called in this process.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Writes into the shared buffer.
struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufferWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once per process) a global subscriber that records every event at `debug` and above
/// from every crate, and returns the buffer. Panics if another global subscriber was installed
/// first: the capture would then miss lines and an assertion on it could not fail.
pub fn capture_logs() -> CapturedLogs {
    static CAPTURED: OnceLock<CapturedLogs> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = CapturedLogs::default();
            let buffer = Arc::clone(&captured.0);
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
                .with_ansi(false)
                .with_writer(move || BufferWriter(Arc::clone(&buffer)))
                .try_init()
                .expect("no other global tracing subscriber in a test that captures logs");
            captured
        })
        .clone()
}
