//! [`TotalsState`]: the aggregator's in-memory window totals, per (scope, window), with a dirty
//! set of totals to write and eviction of closed windows. Pure: no IO, no clock.
//!
//! # What is exact
//! - A window's [`Measures`] are the exact sum of the contributions of the events applied to it
//!   ([`Measures::add`]; never rounded, wrapped or saturated).
//! - [`TotalsState::apply`] is **all or nothing**: before changing anything it proves that no
//!   total can overflow, through a running upper bound of every total (the sum of all
//!   contributions applied, amounts and the job gauge in absolute value); only when that bound
//!   itself would overflow does it check each touched total first (a read-only pass). An `Err`
//!   leaves the state as it was.
//! - [`TotalsState::drain_dirty`] returns **absolute** totals with the highest `version` applied
//!   to them, so writing them as `ReplacingMergeTree(version)` rows or compacted-topic records is
//!   idempotent: re-writing after a crash or a replay is harmless as long as versions grow with
//!   the input offsets (the caller's job, CONVENTIONS.md §4).
//! - A closed window is never reopened: windows ending at or before the close horizon
//!   (`watermark - allowed_lateness`) take no more events, so an evicted window can never be
//!   re-created from zero and then overwrite its real total with a smaller one at a higher
//!   version. Events for such windows are counted in `late_events` of the same scope's window
//!   that holds the watermark, and reported in [`ApplyOutcome::windows_late`] so the caller can
//!   dead-letter them.
//! - **Deterministic**: the watermark is the latest `occurred_at` among the events applied so far
//!   (it advances in [`TotalsState::apply`], event by event, never by a clock or by when the
//!   caller evicts), so whether an event is late, and therefore every total and its version,
//!   depends only on the sequence of events applied. Replaying the same sequence from a
//!   restored state gives the same totals: this is what exactly-once rests on
//!   (see the crate docs).
//!
//! # What is bounded
//! - **Windows**: after [`TotalsState::evict_closed`] only windows ending after
//!   `watermark - lateness` (plus dirty ones not yet drained) remain: per scope about
//!   `lateness / 1 min + 5` UTC windows, or one per policy window.
//! - **Scopes**: a scope is dropped with its last window (and last pending job).
//! - **Pending jobs** (for `oldest_pending_job_started_at_us`): per scope at most
//!   [`TotalsConfig::pending_jobs_per_scope`] jobs, each dropped after
//!   [`TotalsConfig::pending_job_max_age`] of watermark. Submissions beyond the cap are not
//!   tracked and counted in [`TotalUpdate::pending_jobs_untracked`]: while it is non-zero the
//!   oldest start may be later than the truth.
//! - **Distinct values per scope kind** (issue 13 point 7): per scope kind and window of its
//!   admission spec ([`ScopePlan::admission_spec`]: the UTC month for a dimension, the policy's
//!   window for a policy), the first [`TotalsConfig::max_scopes_per_kind`] distinct values in
//!   the order events are applied get their own totals; the events of any further value are
//!   counted under the kind's **overflow bucket** ([`ScopePlan::overflow_key`],
//!   `__overflow__`), a scope like any other (written, published, capped by policies), and
//!   reported in [`ApplyOutcome::scopes_overflowed`]. So a kind holds at most
//!   `limit × open admission windows + 1` scopes (two months open at a month's turn) whatever
//!   the number of distinct `user_id`s. Deterministic like everything else: which values are
//!   admitted depends only on the sequence applied, and a restored state recounts the admitted
//!   values from the restored totals of the admission window (every admitted value has one).
//! - Memory: [`TotalsState::approximate_bytes`]; about 0.4 KiB per active (scope, window) key
//!   (unit test and `benches/state.rs`).
//!
//! # Oldest pending job
//! Kept per scope, not per window: a job is pending from its `submitted` event until a
//! `succeeded`, `failed` or `cancelled` event with the same `job_id` (the same dimensions, hence
//! the same scopes). A window's `oldest_pending_job_started_at` is the earliest submission
//! before the window's end among the scope's pending jobs, as of when the row is drained; rows of
//! windows the finishing event did not touch keep their earlier value.
//!
//! # The fast path (issue 16 point 1)
//! An event lands in up to 52 (scope, window) totals. When every window of the event is open,
//! its version is above every total's (no replayed event) and its amounts fit a [`Delta`] under
//! the upper bound (money as `i128` units of 10⁻¹², see [`crate::measures::Delta`]),
//! [`TotalsState::apply`] adds the contribution **once per scope** to a pending delta bound to
//! the event's windows, instead of once per window with checked decimal arithmetic. Events of
//! the scope with the same windows (the same *epoch*: the windows change at most once a minute
//! per partition) add to the same delta. A delta is folded into its windows' totals (each
//! slot: `add`, version raised to the delta's, dirty) when the scope's next event has other
//! windows, and for every scope before anything reads, reorders or checks totals: a peek, a
//! drain, an eviction, a restore, a seed, a replan, or an event taking the checked path that
//! needs per-total versions or the overflow check. Sums are associative and the version of a
//! total is the highest applied either way, so every total, version and money scale handed
//! out is the one the checked path gives: `the_fast_path_equals_the_checked_path` compares
//! the two on random streams with late events, overflow buckets, replays and jobs. Late
//! events, refused events, replays and sums near the overflow bound take the checked path.
//!
//! # Allocation on the hot path
//! A hit (existing scope and window) allocates nothing: policy scope keys are rendered into
//! reused buffers ([`crate::scopes::PolicyKeys`]) and pending deltas live in a vector reused from
//! fold to fold (trimmed at eviction to twice the recent need). A new scope allocates its key
//! (`Arc<str>`) and window vector; a new window may grow that vector; a `submitted` job event
//! allocates its id once.

use std::collections::{BTreeMap, HashMap};

/// The scope maps' hasher: foldhash's quality variant, seeded per process (keys come from event
/// data, so not a fixed-seed hash), about three times cheaper than SipHash on short keys.
type ScopeHasher = foldhash::quality::RandomState;

/// The scopes of one kind.
type ScopeMap = HashMap<Arc<str>, ScopeState, ScopeHasher>;

/// Spec indices before the first policy's: the single-dimension UTC calendar kinds.
const UTC_CALENDAR_KINDS_LEN: usize = crate::scopes::UTC_CALENDAR_KINDS.len();
use std::mem::size_of;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use policy::PolicySet;
use quotaflow_windows::{LatenessPolicy, Window, WindowCache};
use schemas::{JobState, UsageEvent};

use crate::measures::{Delta, MeasureError, Measures, DELTA_MONEY_MAX};
use crate::scopes::{PolicyWindowError, ScopeKind, ScopePlan, SingleDimension};
use cardinality::{kind_settings, Route};
use fast::PendingDelta;

/// Lateness and the bounds of the state that are not set by the watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalsConfig {
    /// How long after its end (on the watermark) a window still takes events.
    pub lateness: LatenessPolicy,
    /// Pending jobs tracked per scope. 64 covers the concurrency caps policies set (single
    /// digits to tens) with room, and keeps a scope's index to a few cache lines.
    pub pending_jobs_per_scope: usize,
    /// A job pending this long (on the watermark) is dropped from the index: its finishing event
    /// was lost or it will never come. Seven days exceeds any provider's async job lifetime.
    pub pending_job_max_age: Duration,
    /// Issue 13 point 7: distinct values with their own totals per scope kind and admission
    /// window (see the module docs); further values go to the overflow bucket. 0: no limit.
    pub max_scopes_per_kind: usize,
    /// Per-kind overrides of `max_scopes_per_kind`, by `scope_kind` (`user_id`,
    /// `policy:<id>`).
    pub max_scopes_by_kind: Arc<BTreeMap<String, usize>>,
}

impl Default for TotalsConfig {
    fn default() -> Self {
        Self {
            lateness: LatenessPolicy::new(Duration::from_secs(DEFAULT_ALLOWED_LATENESS_SECS)),
            pending_jobs_per_scope: 64,
            pending_job_max_age: Duration::from_secs(7 * 24 * 3600),
            max_scopes_per_kind: DEFAULT_MAX_SCOPES_PER_KIND,
            max_scopes_by_kind: Arc::default(),
        }
    }
}

/// Default distinct values per scope kind, partition and admission window: 100 000 `user_id`s a
/// month per partition is about 40 MiB of totals per kind at the month's turn, and more distinct
/// values than that in one partition is a sign of ids minted per request.
pub const DEFAULT_MAX_SCOPES_PER_KIND: usize = 100_000;

/// Default allowed lateness: ten minutes covers gateway buffering and retried deliveries, and
/// keeps about fifteen minute windows per scope open.
pub const DEFAULT_ALLOWED_LATENESS_SECS: u64 = 600;

/// Why an event could not be applied. Both are data or configuration errors: do not retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A total would overflow or lose precision; the state is unchanged.
    #[error(transparent)]
    Measure(#[from] MeasureError),
    /// A policy window cannot be computed (configuration).
    #[error(transparent)]
    PolicyWindow(#[from] PolicyWindowError),
}

pub use records::{
    ApplyOutcome, ClosedWindow, PendingJobsSnapshot, Restored, StoredTotal, TotalUpdate,
};

/// One (scope, window) total.
#[derive(Debug, Clone)]
struct WindowSlot {
    /// Which spec of the plan the window is of (a scope has one window per spec and instant).
    spec_index: u32,
    /// Whether the total changed since the last drain.
    dirty: bool,
    /// The highest version applied.
    version: u64,
    /// The version last handed out by [`TotalsState::peek_policy_updates`].
    peeked: u64,
    /// The window.
    window: Window,
    /// The totals.
    measures: Measures,
}

impl WindowSlot {
    /// The slot's total as a flush or a peek hands it out.
    fn update(
        &self,
        scope_kind: &Arc<str>,
        scope_key: &Arc<str>,
        oldest_pending_job_started_at: Option<DateTime<Utc>>,
        pending_jobs_untracked: u64,
    ) -> TotalUpdate {
        TotalUpdate {
            scope_kind: Arc::clone(scope_kind),
            scope_key: Arc::clone(scope_key),
            window: self.window.clone(),
            measures: self.measures,
            oldest_pending_job_started_at,
            pending_jobs_untracked,
            version: self.version,
        }
    }
}

/// The jobs of a scope submitted and not finished.
#[derive(Debug, Clone, Default)]
struct PendingJobs {
    /// `(submitted_at, job_id)`, unordered; at most `pending_jobs_per_scope`.
    jobs: Vec<(DateTime<Utc>, Arc<str>)>,
    /// Submissions not tracked because the cap was reached.
    untracked: u64,
}

/// Everything kept for one scope.
#[derive(Debug, Clone)]
struct ScopeState {
    /// The scope key (shared with the map key, so marking dirty and draining do not allocate).
    key: Arc<str>,
    /// Whether the scope is in the dirty list.
    dirty: bool,
    /// Its open windows, oldest first (mostly; searched from the end).
    windows: Vec<WindowSlot>,
    /// Pending jobs, only for scopes that ever saw an async job.
    pending_jobs: Option<Box<PendingJobs>>,
    /// Index in [`TotalsState::deltas`] of the scope's delta not yet added to its slots
    /// ([`NO_DELTA`]: none).
    delta: u32,
}

/// [`ScopeState::delta`] when the scope has none.
const NO_DELTA: u32 = u32::MAX;

impl ScopeState {
    /// The slot of `window` (of spec `spec_index`), created empty if missing.
    fn slot(&mut self, spec_index: u32, window: &Window, created: &mut usize) -> &mut WindowSlot {
        let index = self.slot_index(spec_index, window, created);
        &mut self.windows[index]
    }

    /// The index of [`Self::slot`].
    fn slot_index(&mut self, spec_index: u32, window: &Window, created: &mut usize) -> usize {
        let found = self.windows.iter().rposition(|slot| {
            slot.spec_index == spec_index && slot.window.start() == window.start()
        });
        match found {
            Some(index) => index,
            None => {
                *created += 1;
                // Grow by one, not by doubling: a slot is ~330 bytes and a scope holds a handful,
                // so doubling would waste more than it saves (a new window is rare per scope).
                self.windows.reserve_exact(1);
                self.windows.push(WindowSlot {
                    spec_index,
                    dirty: false,
                    version: 0,
                    peeked: 0,
                    window: window.clone(),
                    measures: Measures::ZERO,
                });
                self.windows.len() - 1
            }
        }
    }

    /// The existing slot of `window`, if any.
    fn existing_slot(&self, spec_index: u32, window: &Window) -> Option<&WindowSlot> {
        self.windows
            .iter()
            .rev()
            .find(|slot| slot.spec_index == spec_index && slot.window.start() == window.start())
    }

    /// Earliest pending submission before `end`.
    fn oldest_pending_before(&self, end: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let pending = self.pending_jobs.as_ref()?;
        pending
            .jobs
            .iter()
            .map(|(submitted_at, _)| *submitted_at)
            .filter(|submitted_at| *submitted_at < end)
            .min()
    }
}

/// The in-memory totals: (scope kind, scope key, window) → (window, measures, version).
#[derive(Debug)]
pub struct TotalsState {
    /// Scopes and window specs.
    plan: ScopePlan,
    /// Bounds on pending jobs.
    config: TotalsConfig,
    /// One window cache per spec (index = spec index): events of a partition mostly stay in the
    /// current window, so a window costs two comparisons.
    caches: Vec<WindowCache>,
    /// Scratch: the event's window per spec (`None` outside a campaign). Reused per event.
    event_windows: Vec<Option<Window>>,
    /// Per spec, the window holding the watermark (where late events are counted), computed
    /// when a late event needs it.
    watermark_windows: Vec<WindowCache>,
    /// Scopes per kind: `0..10` single dimensions ([`SingleDimension::index`]), `10 + i`
    /// policy `i`. Keyed by the scope key, so a look-up borrows the event's `&str`.
    scopes: Vec<HashMap<Arc<str>, ScopeState, ScopeHasher>>,
    /// `scope_kind` text per map, shared by every update.
    kind_names: Vec<Arc<str>>,
    /// Per map: a policy definition whose totals are held back (not drained, not peeked) until
    /// its seed of the events before it counted live is added ([`Self::hold`], [`Self::seed`]).
    held: Vec<bool>,
    /// Changed totals of policy definitions a reload removed, for the next drain.
    retired: Vec<TotalUpdate>,
    /// Scopes with a dirty window, each once.
    dirty_scopes: Vec<(usize, Arc<str>)>,
    /// The highest watermark seen.
    watermark: Option<DateTime<Utc>>,
    /// Windows ending at or before this instant are closed.
    closed_through: Option<DateTime<Utc>>,
    /// An upper bound of every total's every measure (see the module docs); `None` once it
    /// would overflow, after which every apply checks the touched totals first.
    upper_bound: Option<Measures>,
    /// (scope, window) totals held.
    active_windows: usize,
    /// Per kind map: the cardinality limit (`usize::MAX`: none).
    limits: Vec<usize>,
    /// Per kind map: the overflow bucket's `scope_key`.
    overflow_keys: Vec<Arc<str>>,
    /// Per kind map: the admission spec ([`ScopePlan::admission_spec`]).
    admission_specs: Vec<usize>,
    /// (kind map, admission window start) → (window end, distinct values admitted). Entries go
    /// with their window (at eviction).
    admitted: HashMap<(usize, DateTime<Utc>), (DateTime<Utc>, usize)>,
    /// Scopes counted under an overflow bucket since [`TotalsState::take_scopes_overflowed`].
    scopes_overflowed: u64,
    /// Deltas of the fast path not yet added to their slots ([`PendingDelta`]).
    deltas: Vec<PendingDelta>,
    /// Changes whenever an event's windows (any spec's) differ from the previous event's: two
    /// events of the same epoch land in the same windows.
    epoch: u64,
    /// [`Self::fold`] failures (a broken invariant; 0).
    fold_errors: u64,
    /// The most deltas pending at a fold since the last eviction: the vector keeps about
    /// this much room (see [`Self::take_closed`]), not what one burst needed.
    deltas_high_water: usize,
    /// Scratch: the event's policy scope keys (buffers reused from event to event).
    policy_keys: crate::scopes::PolicyKeys,
    /// Whether [`Self::apply`] may take its fast path (off only to compare against the checked
    /// path in tests and benches).
    fast_path: bool,
    /// The highest version applied, restored or seeded: an event above it cannot be in any
    /// total yet, so it needs no per-total version check (the fast path).
    max_version: u64,
}

/// Index of a kind's map in [`TotalsState::scopes`].
fn map_index(kind: ScopeKind) -> usize {
    match kind {
        ScopeKind::Dimension(dimension) => dimension.index(),
        ScopeKind::Policy(index) => SingleDimension::ALL.len() + index,
    }
}

/// What the upper bound grows by for one event: the contribution with amounts and the job gauge
/// in absolute value, and one late event (each event adds at most one to a total's
/// `late_events`).
fn bound_step(contribution: &Measures) -> Measures {
    Measures {
        cost_usd: contribution.cost_usd.abs(),
        fallback_cost_usd: contribution.fallback_cost_usd.abs(),
        jobs_in_flight: contribution.jobs_in_flight.saturating_abs(),
        late_events: 1,
        ..*contribution
    }
}

impl TotalsState {
    /// An empty state for `policies`. Fails if a policy window is not supported.
    pub fn new(policies: &PolicySet, config: TotalsConfig) -> Result<TotalsState, StateError> {
        let plan = ScopePlan::new(policies)?;
        let caches: Vec<WindowCache> = plan.specs().iter().cloned().map(WindowCache::new).collect();
        let kind_count = SingleDimension::ALL.len() + plan.policy_count();
        let kind_names = SingleDimension::ALL
            .iter()
            .map(|dimension| ScopeKind::Dimension(*dimension))
            .chain((0..plan.policy_count()).map(ScopeKind::Policy))
            .map(|kind| Arc::from(plan.kind_name(kind)))
            .collect();
        let (limits, overflow_keys, admission_specs) = kind_settings(&plan, &config);
        Ok(TotalsState {
            limits,
            overflow_keys,
            admission_specs,
            admitted: HashMap::new(),
            scopes_overflowed: 0,
            deltas: Vec::new(),
            epoch: 0,
            max_version: 0,
            fold_errors: 0,
            deltas_high_water: 0,
            fast_path: true,
            policy_keys: Default::default(),
            event_windows: vec![None; caches.len()],
            watermark_windows: caches.clone(),
            caches,
            scopes: (0..kind_count)
                .map(|_| HashMap::with_hasher(ScopeHasher::default()))
                .collect(),
            kind_names,
            held: vec![false; kind_count],
            retired: Vec::new(),
            dirty_scopes: Vec::new(),
            watermark: None,
            closed_through: None,
            upper_bound: Some(Measures::ZERO),
            active_windows: 0,
            plan,
            config,
        })
    }

    /// The scope plan (kinds, specs).
    pub fn plan(&self) -> &ScopePlan {
        &self.plan
    }

    /// Adds `event` to every (scope, window) it counts in, at `version` (the caller derives it
    /// from the input offset, increasing and at least 1). A total whose version is already
    /// `version` or more is left alone: it includes the event (a total restored from a row
    /// written after the event, see [`Self::restore_total`]). All or nothing: on `Err` nothing
    /// changed. Duplicates are not detected here: deduplicate by `event_id`
    /// upstream or rely on replay from committed offsets (CONVENTIONS.md §4).
    pub fn apply(&mut self, event: &UsageEvent, version: u64) -> Result<ApplyOutcome, StateError> {
        self.apply_as(event, version, false)
    }

    /// Counts a refused event (too late to deduplicate) in `late_events` only: as if every one
    /// of its windows had closed. Its measures go nowhere and the watermark does not move (a
    /// refused event is not counted). All or nothing, like [`Self::apply`].
    pub fn apply_refused(
        &mut self,
        event: &UsageEvent,
        version: u64,
    ) -> Result<ApplyOutcome, StateError> {
        self.apply_as(event, version, true)
    }

    fn apply_as(
        &mut self,
        event: &UsageEvent,
        version: u64,
        refused: bool,
    ) -> Result<ApplyOutcome, StateError> {
        let contribution = Measures::of_event(event);
        let mut moved = false;
        let mut all_open = true;
        for (window, cache) in self.event_windows.iter_mut().zip(&mut self.caches) {
            let new = cache.window_of(event.occurred_at);
            if window.as_ref().map(Window::start) != new.map(Window::start) {
                *window = new.cloned();
                moved = true;
            }
            if let Some(window) = window {
                all_open &= self.closed_through.is_none_or(|at| window.end() > at);
            }
        }
        if moved {
            self.epoch += 1;
        }
        let step = bound_step(&contribution);
        let bound = self.upper_bound.map(|bound| bound.checked_sum(&step));
        if let Some(Ok(next_bound)) = &bound {
            if self.fast_path && !refused && all_open && version > self.max_version {
                if let Some(delta) = Delta::of(&contribution).filter(|_| {
                    next_bound.cost_usd <= DELTA_MONEY_MAX
                        && next_bound.fallback_cost_usd <= DELTA_MONEY_MAX
                }) {
                    let next_bound = *next_bound;
                    let outcome = self.apply_fast(event, version, &delta)?;
                    self.upper_bound = Some(next_bound);
                    self.max_version = version;
                    self.advance_watermark(event.occurred_at);
                    return Ok(outcome);
                }
            }
        }
        if version <= self.max_version || !matches!(bound, Some(Ok(_))) {
            // Per-total version checks or a read of the totals follow: every delta in its slots.
            self.fold_deltas()?;
        }
        let next_bound = match bound {
            Some(Ok(bound)) => Some(bound),
            _ => {
                self.check_fits(event, &step, refused)?;
                None
            }
        };
        self.max_version = self.max_version.max(version);

        let closed_through = self.closed_through;
        let is_closed = |window: &Window| closed_through.is_some_and(|at| window.end() <= at);
        let late = Measures {
            late_events: 1,
            ..Measures::ZERO
        };
        let mut job_id: Option<Arc<str>> = None;
        let mut outcome = ApplyOutcome::default();
        let mut created = 0;
        self.for_each_scope(event, |this, kind_index, key, spec_indices| {
            let admission = this.landing_window(this.admission_specs[kind_index], refused);
            let overflow = this.route_and_admit(kind_index, key, admission.as_ref(), &mut outcome);
            let key = if overflow {
                &*this.overflow_keys[kind_index]
            } else {
                key
            };
            let state = scope_in(&mut this.scopes[kind_index], key);
            let mut touched = false;
            for spec_index in spec_indices {
                let Some(window) = &this.event_windows[spec_index] else {
                    continue; // outside the campaign: no window of this spec
                };
                let (window, addend) = if refused || is_closed(window) {
                    outcome.windows_late += 1;
                    let open = this
                        .watermark
                        .and_then(|at| this.watermark_windows[spec_index].window_of(at));
                    match open {
                        Some(open) if !is_closed(open) => (open, &late),
                        _ => continue, // e.g. a campaign that is over: nowhere to count it
                    }
                } else {
                    outcome.windows_counted += 1;
                    (window, &contribution)
                };
                let slot = state.slot(spec_index as u32, window, &mut created);
                if version <= slot.version {
                    // Already in this total: it was restored from a row written after this
                    // event (ahead of the checkpoint the replay started from).
                    continue;
                }
                // Proven not to fail above; kept checked so a broken proof is an error, not a
                // wrong total.
                slot.measures.add(addend)?;
                slot.version = version;
                slot.dirty = true;
                touched = true;
            }
            if touched && !state.dirty {
                state.dirty = true;
                this.dirty_scopes.push((kind_index, Arc::clone(&state.key)));
            }
            if !refused {
                track_job(state, event, &mut job_id, &this.config);
            }
            Ok(())
        })?;
        self.active_windows += created;
        if let Some(bound) = next_bound {
            self.upper_bound = Some(bound);
        } else {
            self.upper_bound = None;
        }
        if !refused {
            self.advance_watermark(event.occurred_at);
        }
        Ok(outcome)
    }

    /// The window of spec `spec_index` an event's contribution lands in: the event's own window
    /// while it is open, else (late, or refused) the open window holding the watermark; `None`
    /// when there is none (outside a campaign, or a campaign that is over).
    fn landing_window(&self, spec_index: usize, refused: bool) -> Option<Window> {
        let window = self.event_windows[spec_index].as_ref()?;
        let closed = |window: &Window| self.closed_through.is_some_and(|at| window.end() <= at);
        if !refused && !closed(window) {
            return Some(window.clone());
        }
        let open = self
            .watermark
            .and_then(|at| self.plan.specs()[spec_index].window_of(at))?;
        (!closed(&open)).then_some(open)
    }

    /// The slow path of [`Self::apply`]: checks, without changing anything, that every total
    /// the event touches can take `step` (a superset of what it adds).
    fn check_fits(
        &self,
        event: &UsageEvent,
        step: &Measures,
        refused: bool,
    ) -> Result<(), StateError> {
        Measures::ZERO.checked_sum(step)?;
        for scope in self.plan.scopes_of(event) {
            let kind_index = map_index(scope.kind);
            let admission = self.landing_window(self.admission_specs[kind_index], refused);
            let key = match self.route(kind_index, scope.key.as_str(), admission.as_ref()) {
                Route::Own { .. } => scope.key.as_str(),
                Route::Overflow => &*self.overflow_keys[kind_index],
            };
            let Some(state) = self.scopes[kind_index].get(key) else {
                continue;
            };
            for spec_index in scope.spec_indices {
                let watermark_window = self
                    .watermark
                    .and_then(|at| self.plan.specs()[spec_index].window_of(at));
                let windows = [
                    self.event_windows[spec_index].as_ref(),
                    watermark_window.as_ref(),
                ];
                for window in windows.into_iter().flatten() {
                    if let Some(slot) = state.existing_slot(spec_index as u32, window) {
                        slot.measures.checked_sum(step)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves the watermark to `to` if that is later (it never goes back), and the close horizon
    /// `watermark - lateness.allowed_lateness` with it. [`Self::apply`] calls it after every
    /// event; call it directly only to restore a state or in tests.
    pub fn advance_watermark(&mut self, to: DateTime<Utc>) {
        let watermark = self.watermark.map_or(to, |seen| seen.max(to));
        self.watermark = Some(watermark);
        let horizon = TimeDelta::from_std(self.config.lateness.allowed_lateness)
            .ok()
            .and_then(|lateness| watermark.checked_sub_signed(lateness));
        self.closed_through = self.closed_through.max(horizon);
    }

    /// Restores the close horizon of a checkpoint (it never goes back). The watermark alone does
    /// not determine it when the lateness setting changed since.
    pub fn restore_closed_through(&mut self, closed_through: DateTime<Utc>) {
        self.closed_through = self.closed_through.max(Some(closed_through));
    }

    /// The watermark: the latest `occurred_at` applied.
    pub fn watermark(&self) -> Option<DateTime<Utc>> {
        self.watermark
    }

    /// (scope, window) totals held.
    pub fn active_windows(&self) -> usize {
        self.active_windows
    }

    /// Scopes held.
    pub fn scope_count(&self) -> usize {
        self.scopes.iter().map(HashMap::len).sum()
    }

    /// The close horizon: windows ending at or before it are closed.
    pub fn closed_through(&self) -> Option<DateTime<Utc>> {
        self.closed_through
    }

    /// Heap and inline bytes of the state, estimated from capacities and element sizes (hash
    /// table slots plus one control byte each, `Arc<str>` headers, vectors); allocator overhead
    /// and shared window-kind strings are not counted.
    pub fn approximate_bytes(&self) -> usize {
        let arc_str = |text: &str| 2 * size_of::<usize>() + text.len();
        let mut bytes = size_of::<Self>()
            + self.caches.capacity() * size_of::<WindowCache>()
            + self.event_windows.capacity() * size_of::<Option<Window>>()
            + self.watermark_windows.capacity() * size_of::<WindowCache>()
            + self.dirty_scopes.capacity() * size_of::<(usize, Arc<str>)>()
            + self.deltas.capacity() * size_of::<PendingDelta>()
            + self.scopes.capacity() * size_of::<HashMap<Arc<str>, ScopeState, ScopeHasher>>()
            + self.admitted.capacity()
                * (size_of::<((usize, DateTime<Utc>), (DateTime<Utc>, usize))>() + 1);
        for map in &self.scopes {
            bytes += map.capacity() * (size_of::<(Arc<str>, ScopeState)>() + 1);
            for (key, state) in map {
                bytes += arc_str(key);
                bytes += state.windows.capacity() * size_of::<WindowSlot>();
                if let Some(pending) = &state.pending_jobs {
                    bytes += size_of::<PendingJobs>()
                        + pending.jobs.capacity() * size_of::<(DateTime<Utc>, Arc<str>)>()
                        + pending
                            .jobs
                            .iter()
                            .map(|(_, id)| arc_str(id))
                            .sum::<usize>();
                }
            }
        }
        bytes
    }
}

/// The scope `key` of `map`, created empty if missing.
fn scope_in<'m>(map: &'m mut ScopeMap, key: &str) -> &'m mut ScopeState {
    if !map.contains_key(key) {
        let key: Arc<str> = Arc::from(key);
        map.insert(
            Arc::clone(&key),
            ScopeState {
                key,
                dirty: false,
                windows: Vec::new(),
                pending_jobs: None,
                delta: NO_DELTA,
            },
        );
    }
    map.get_mut(key).expect("inserted above")
}

/// Updates the scope's pending jobs for a job event. `job_id` is the event's id as an `Arc`,
/// made on first use so one event allocates it once for all its scopes.
fn track_job(
    state: &mut ScopeState,
    event: &UsageEvent,
    job_id: &mut Option<Arc<str>>,
    config: &TotalsConfig,
) {
    let (Some(id), Some(job_state)) = (event.job_id.as_deref(), event.job_state) else {
        return;
    };
    match job_state {
        JobState::Submitted => {
            let pending = state.pending_jobs.get_or_insert_with(Box::default);
            if pending
                .jobs
                .iter()
                .any(|(_, pending_id)| &**pending_id == id)
            {
                return; // a duplicate submission: keep the first
            }
            if pending.jobs.len() >= config.pending_jobs_per_scope {
                pending.untracked += 1;
                return;
            }
            let id = job_id.get_or_insert_with(|| Arc::from(id));
            pending.jobs.push((event.occurred_at, Arc::clone(id)));
        }
        JobState::Succeeded | JobState::Failed | JobState::Cancelled => {
            if let Some(pending) = &mut state.pending_jobs {
                pending.jobs.retain(|(_, pending_id)| &**pending_id != id);
                if pending.jobs.is_empty() && pending.untracked == 0 {
                    state.pending_jobs = None;
                }
            }
        }
        JobState::Running => {}
    }
}

mod cardinality;
mod closing;
mod fast;
mod records;

mod recovery;

#[cfg(test)]
mod tests;
