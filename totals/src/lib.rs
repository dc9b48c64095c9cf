//! The pure core of windowed totals, shared by the aggregator (which keeps them, exactly once),
//! the alerter (which reads [`measures::Measures`] of published totals) and `quotactl replay`
//! (which recomputes them from the raw archive). No IO and no clock: every function is a
//! function of its inputs, which is what the aggregator's exactly-once guarantee rests on
//! (replaying the same records from a checkpoint gives the same totals).
//!
//! - [`measures`]: [`measures::Measures`], the totals' measures and one event's exact
//!   contribution.
//! - [`scopes`]: which (scope kind, scope key) totals an event counts under, and in which window
//!   specs.
//! - [`state`]: [`state::TotalsState`], in-memory windowed totals: apply, dirty set, drain,
//!   eviction.
//! - [`dedup`]: the per-partition duplicate filter by `event_id`.
//! - [`record`]: the totals-topic record of a drained total.
//! - [`view`]: [`view::TotalsView`], the totals as a reader of the totals topic sees them
//!   (partials by source partition, highest version each, summed): the alerter's and the
//!   decision sidecar's.

pub mod dedup;
#[doc(hidden)]
pub mod fixtures;
pub mod measures;
pub mod record;
pub mod scopes;
pub mod state;
pub mod view;
