//! Event-time window arithmetic for quotas: which window an event counts in, when that window
//! resets, and whether an event is too late for it. No IO; called per event on the aggregator's
//! hot path.
//!
//! # Tour
//! - [`kind`]: [`WindowKind`] (minute, hour, day, ISO week, month, campaign) and [`CampaignId`].
//! - [`spec`]: [`WindowSpec`], a kind in a `chrono_tz` time zone (campaigns: plus `[start, end)`),
//!   and [`WindowSpec::window_of`].
//! - [`window`]: [`Window`], `[start, end)` in UTC with [`Window::next`], [`Window::contains`],
//!   [`Window::reset_at`] and the stable key [`Window::id`].
//! - [`cache`]: [`WindowCache`], the per-stream fast path (the last window is kept).
//! - [`lateness`]: [`LatenessPolicy`] → [`Lateness::OnTime`] / [`Lateness::Late`].
//! - [`error`]: typed errors, [`WindowError`].
//!
//! # Guarantees
//! - **Half-open, gapless, disjoint.** For every calendar spec and every instant `t` in chrono's
//!   range (bar its outer month), `window_of(t)` is `Some(w)` with `w.start() <= t < w.end()`;
//!   `window_of(w.start()) == w`, `window_of(w.end()) == w.next()`, and windows of later instants
//!   never start earlier. A campaign has one window, `[start, end)`: start inclusive, end
//!   exclusive, `None` outside, and `next()` is `None`.
//! - **Local calendar, UTC instants.** Windows are computed on the spec zone's local clock (tzdb
//!   through `chrono_tz`) and returned as UTC instants. A day in `America/New_York` is 23 or 25
//!   hours on DST days; hours in `Asia/Kolkata` (+05:30) start at :30 UTC, in `Asia/Kathmandu`
//!   (+05:45) at :15 UTC.
//! - **Minute and hour** windows are runs of instants showing the same truncated local clock time
//!   *at the same UTC offset*: never longer than the unit; the repeated fall-back hour is two
//!   one-hour windows (their ids differ by the offset); an hour cut by an offset change ends or
//!   starts at the change.
//! - **Day, ISO week (Monday 00:00), month (the 1st 00:00)** start at the first instant the local
//!   clock reaches the period's first day 00:00: local midnight, the **earliest** midnight when it
//!   is repeated, the **end of the gap** when it is skipped (historic `America/Sao_Paulo`,
//!   `America/Havana`). A day skipped entirely (`Pacific/Apia` 2011-12-30) has no window. They
//!   nest: every hour boundary of a day is inside it, day ⊂ week, day ⊂ month.
//! - **Stable ids.** [`Window::id`] is `kind:local-label@Zone` (`day:2026-03-08@America/New_York`)
//!   and is the same for the same window in every process and version of this crate.
//! - **Cached = uncached.** [`WindowCache::window_of`] returns exactly
//!   [`WindowSpec::window_of`]'s answer; it skips the zone look-ups while events stay in the last
//!   window.
//!
//! `docs/windows.md` lists the ClickHouse expression that reproduces each kind.

pub mod cache;
mod calendar;
pub mod error;
pub mod kind;
pub mod lateness;
pub mod spec;
pub mod window;

pub use cache::WindowCache;
pub use error::WindowError;
pub use kind::{CampaignId, WindowKind};
pub use lateness::{Lateness, LatenessPolicy};
pub use spec::WindowSpec;
pub use window::Window;
