//! [`WindowCache`]: the hot-path form of [`WindowSpec::window_of`] for a stream of events.

use chrono::{DateTime, Utc};

use crate::spec::WindowSpec;
use crate::window::Window;

/// Remembers the last window computed for one spec, so an event in that window costs two
/// comparisons instead of time zone look-ups.
///
/// Events of a partition mostly fall in the current window, so almost every call hits. A miss
/// (an event in another window) computes the window and keeps it; a campaign miss outside the
/// campaign keeps the previous window. Results are exactly those of [`WindowSpec::window_of`].
#[derive(Debug, Clone)]
pub struct WindowCache {
    /// The spec whose windows are computed.
    spec: WindowSpec,
    /// The window of the last instant that had one.
    last_window: Option<Window>,
}

impl WindowCache {
    /// An empty cache for `spec`.
    pub fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            last_window: None,
        }
    }

    /// The spec.
    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// The window containing `occurred_at`, as [`WindowSpec::window_of`].
    pub fn window_of(&mut self, occurred_at: DateTime<Utc>) -> Option<&Window> {
        let hit = self
            .last_window
            .as_ref()
            .is_some_and(|window| window.contains(occurred_at));
        if !hit {
            self.last_window = Some(self.spec.window_of(occurred_at)?);
        }
        self.last_window.as_ref()
    }
}
