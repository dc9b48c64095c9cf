//! Crash-test hooks, one mechanism for every service: `<VAR>=<step>:<n>` makes the process abort
//! (as abruptly as `kill -9`: no flush, no commit, no drain) when `<step>` is reached during the
//! `n`-th counted operation (a flush attempt of the aggregator, a publish of the alerter).
//!
//! The exactly-once and restart tests use them to crash between the writes of one operation, the
//! moments a random `kill -9` rarely hits. Unset in production; the variable is read once. A value
//! that does not parse is ignored with a warning.
//!
//! ```
//! static FAILPOINTS: infra::failpoint::Failpoints =
//!     infra::failpoint::Failpoints::new("MY_SERVICE_FAILPOINT");
//! FAILPOINTS.count(); // one operation begins
//! FAILPOINTS.reached("written"); // aborts if MY_SERVICE_FAILPOINT=written:1
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tracing::{error, warn};

/// The hooks of one service, read from the environment variable `var` (module docs).
#[derive(Debug)]
pub struct Failpoints {
    var: &'static str,
    setting: OnceLock<Option<(String, u64)>>,
    operations: AtomicU64,
}

impl Failpoints {
    /// Hooks armed by the environment variable `var`.
    pub const fn new(var: &'static str) -> Failpoints {
        Failpoints {
            var,
            setting: OnceLock::new(),
            operations: AtomicU64::new(0),
        }
    }

    fn setting(&self) -> &Option<(String, u64)> {
        self.setting.get_or_init(|| {
            let value = std::env::var(self.var).ok()?;
            let parsed = value
                .split_once(':')
                .and_then(|(step, n)| Some((step.to_owned(), n.parse().ok()?)));
            match &parsed {
                Some((step, n)) => warn!(var = self.var, step, n, "failpoint armed"),
                None => warn!(var = self.var, value, "failpoint not understood; ignored"),
            }
            parsed
        })
    }

    /// Whether a hook is armed.
    pub fn armed(&self) -> bool {
        self.setting().is_some()
    }

    /// Counts one operation (the `n` of `<step>:<n>` counts from 1).
    pub fn count(&self) {
        if self.armed() {
            self.operations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Aborts the process if the hook names `step` of the current operation.
    pub fn reached(&self, step: &str) {
        if let Some((wanted, n)) = self.setting() {
            if wanted == step && self.operations.load(Ordering::Relaxed) == *n {
                error!(var = self.var, step, n, "failpoint reached: aborting");
                eprintln!("{}: aborting after {step} of operation {n}", self.var);
                std::process::abort();
            }
        }
    }
}
