//! Log capture for tests that check what is logged (and that no secret is): one global `tracing`
//! subscriber writing to memory, and a span per test case to tell their lines apart. Included with
//! `#[path = "support/logs.rs"] mod logs;`.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

/// Everything the tests log through `tracing`, at every level. One global subscriber: per-thread
/// subscribers (`set_default`) race with tracing's process-wide callsite interest cache when tests run
/// in parallel, and then miss events. Every test installs it first, so every test's logs are checked.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

static LOGS: OnceLock<Logs> = OnceLock::new();

impl Logs {
    pub fn global() -> &'static Logs {
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(logs.clone())
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
            logs
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Lines logged inside the span `case{test=<case>}` (see [`case`]).
    pub fn lines_of(&self, case: &str) -> Vec<String> {
        let marker = format!("case{{test=\"{case}\"}}");
        self.text()
            .lines()
            .filter(|line| line.contains(&marker))
            .map(str::to_string)
            .collect()
    }
}

/// A span that tags the log lines of one test, since the tests share the global capture.
pub fn case(name: &'static str) -> tracing::Span {
    tracing::info_span!("case", test = name)
}

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
