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
//! # Allocation on the hot path
//! A hit (existing scope and window) allocates only the rendered key of each matching policy
//! ([`crate::scopes`]). A new scope allocates its key (`Arc<str>`) and window vector; a new
//! window may grow that vector; a `submitted` job event allocates its id once.

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
use schemas::{JobState, UsageEvent};
use windows::{LatenessPolicy, Window, WindowCache};

use crate::measures::{MeasureError, Measures};
use crate::scopes::{PolicyWindowError, ScopeKind, ScopePlan, SingleDimension};

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

/// What [`TotalsState::apply`] did with one event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// (scope, window) totals the event was added to.
    pub windows_counted: u32,
    /// (scope, window) pairs whose window had closed: the event is not in those totals (it is
    /// counted in `late_events`); the caller dead-letters the event for the record (it must not
    /// re-apply it: it is counted in the other windows).
    pub windows_late: u32,
    /// Scopes of the event counted under their kind's overflow bucket (its value was not
    /// admitted: the kind's cardinality limit was reached in the window).
    pub scopes_overflowed: u32,
}

/// One absolute total to write: a `window_totals` row, or a compacted-topic record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalUpdate {
    /// `scope_kind`: a dimension name or `policy:<id>@<definition>`.
    pub scope_kind: Arc<str>,
    /// `scope_key`: the dimension's value or the policy's rendered scope.
    pub scope_key: Arc<str>,
    /// The window (kind, time zone, start, end; [`Window::id`] is its stable key).
    pub window: Window,
    /// The totals.
    pub measures: Measures,
    /// Earliest submission before the window's end among the scope's pending jobs.
    pub oldest_pending_job_started_at: Option<DateTime<Utc>>,
    /// Job submissions of the scope not tracked (cap reached); 0 = the oldest start is exact.
    pub pending_jobs_untracked: u64,
    /// The highest version applied to this total: the `ReplacingMergeTree` version.
    pub version: u64,
}

impl TotalUpdate {
    /// `oldest_pending_job_started_at_us` as the column stores it: epoch microseconds, 0 for none
    /// (and for instants before 1970, which job submissions are not).
    pub fn oldest_pending_job_started_at_us(&self) -> u64 {
        self.oldest_pending_job_started_at
            .and_then(|at| u64::try_from(at.timestamp_micros()).ok())
            .unwrap_or(0)
    }
}

/// A (scope, window) dropped because it closed: its totals-topic key is tombstoned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedWindow {
    /// `scope_kind`: a dimension name or `policy:<id>`.
    pub scope_kind: Arc<str>,
    /// `scope_key`.
    pub scope_key: Arc<str>,
    /// The window.
    pub window: Window,
}

/// A stored total to put back into a state ([`TotalsState::restore_total`]): a row of
/// `window_partials` as the aggregator wrote it.
#[derive(Debug, Clone, Copy)]
pub struct StoredTotal<'a> {
    /// `scope_kind`.
    pub scope_kind: &'a str,
    /// `scope_key`.
    pub scope_key: &'a str,
    /// `window_kind` (`minute` … `month`, `campaign:<id>`).
    pub window_kind: &'a str,
    /// `window_tz`.
    pub window_tz: &'a str,
    /// `window_start`.
    pub window_start: DateTime<Utc>,
    /// The totals.
    pub measures: Measures,
    /// The version.
    pub version: u64,
}

/// What [`TotalsState::restore_total`] did with a stored total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Back in the state; later events add to it.
    Restored,
    /// The scope kind is not in this plan (a policy removed or renamed): left as stored.
    UnknownScope,
    /// The plan has no such window for the kind (its window changed): left as stored.
    UnknownWindow,
    /// The window is closed: it takes no more events and need not be held.
    Closed,
    /// The kind is held until its seed ([`TotalsState::hold`]): its rows are not this state's.
    Held,
}

/// A scope's pending jobs as a checkpoint stores them ([`TotalsState::pending_jobs_snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingJobsSnapshot {
    /// `scope_kind`.
    pub scope_kind: String,
    /// `scope_key`.
    pub scope_key: String,
    /// `(submitted_at, job_id)` of each tracked pending job.
    pub jobs: Vec<(DateTime<Utc>, String)>,
    /// Submissions not tracked because the cap was reached.
    pub untracked: u64,
}

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
}

impl ScopeState {
    /// The slot of `window` (of spec `spec_index`), created empty if missing.
    fn slot(&mut self, spec_index: u32, window: &Window, created: &mut usize) -> &mut WindowSlot {
        let found = self.windows.iter().rposition(|slot| {
            slot.spec_index == spec_index && slot.window.start() == window.start()
        });
        let index = match found {
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
        };
        &mut self.windows[index]
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
}

/// Where an event's scope is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Under its own value; `admit` = a new value of the admission window.
    Own { admit: bool },
    /// Under the kind's overflow bucket.
    Overflow,
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

/// Per scope kind of `plan` (single dimensions, then policies): the cardinality limit
/// (`usize::MAX` = none), the overflow bucket's key and the admission window's spec index. A
/// per-kind override names a dimension or a policy as `policy:<id>` (any definition) or
/// `policy:<id>@<definition>`.
fn kind_settings(
    plan: &ScopePlan,
    config: &TotalsConfig,
) -> (Vec<usize>, Vec<Arc<str>>, Vec<usize>) {
    let kinds: Vec<ScopeKind> = SingleDimension::ALL
        .iter()
        .map(|dimension| ScopeKind::Dimension(*dimension))
        .chain((0..plan.policy_count()).map(ScopeKind::Policy))
        .collect();
    let limits = kinds
        .iter()
        .map(|kind| {
            let name = plan.kind_name(*kind);
            let bare = name.split_once('@').map_or(name, |(bare, _)| bare);
            let limit = config
                .max_scopes_by_kind
                .get(name)
                .or_else(|| config.max_scopes_by_kind.get(bare))
                .copied()
                .unwrap_or(config.max_scopes_per_kind);
            if limit == 0 {
                usize::MAX
            } else {
                limit
            }
        })
        .collect();
    let overflow_keys = kinds
        .iter()
        .map(|kind| Arc::from(plan.overflow_key(*kind)))
        .collect();
    let admission_specs = kinds
        .iter()
        .map(|kind| plan.admission_spec(*kind))
        .collect();
    (limits, overflow_keys, admission_specs)
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
        for (window, cache) in self.event_windows.iter_mut().zip(&mut self.caches) {
            *window = cache.window_of(event.occurred_at).cloned();
        }
        let step = bound_step(&contribution);
        let next_bound = match self.upper_bound.map(|bound| bound.checked_sum(&step)) {
            Some(Ok(bound)) => Some(bound),
            _ => {
                self.check_fits(event, &step, refused)?;
                None
            }
        };

        let closed_through = self.closed_through;
        let is_closed = |window: &Window| closed_through.is_some_and(|at| window.end() <= at);
        let late = Measures {
            late_events: 1,
            ..Measures::ZERO
        };
        let mut job_id: Option<Arc<str>> = None;
        let mut outcome = ApplyOutcome::default();
        let mut created = 0;
        for scope in self.plan.scopes_of(event) {
            let kind_index = map_index(scope.kind);
            let admission = self.landing_window(self.admission_specs[kind_index], refused);
            let key = match self.route(kind_index, scope.key.as_str(), admission.as_ref()) {
                Route::Own { admit } => {
                    if let (true, Some(window)) = (admit, &admission) {
                        self.admitted
                            .entry((kind_index, window.start()))
                            .or_insert((window.end(), 0))
                            .1 += 1;
                    }
                    scope.key.as_str()
                }
                Route::Overflow => {
                    outcome.scopes_overflowed += 1;
                    self.scopes_overflowed += 1;
                    &*self.overflow_keys[kind_index]
                }
            };
            let map = &mut self.scopes[kind_index];
            let state = match map.get_mut(key) {
                Some(state) => state,
                None => {
                    let key: Arc<str> = Arc::from(key);
                    map.entry(Arc::clone(&key)).or_insert(ScopeState {
                        key,
                        dirty: false,
                        windows: Vec::new(),
                        pending_jobs: None,
                    })
                }
            };
            let mut touched = false;
            for spec_index in scope.spec_indices {
                let Some(window) = &self.event_windows[spec_index] else {
                    continue; // outside the campaign: no window of this spec
                };
                let (window, addend) = if refused || is_closed(window) {
                    outcome.windows_late += 1;
                    let open = self
                        .watermark
                        .and_then(|at| self.watermark_windows[spec_index].window_of(at));
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
                self.dirty_scopes.push((kind_index, Arc::clone(&state.key)));
            }
            if !refused {
                track_job(state, event, &mut job_id, &self.config);
            }
        }
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

    /// Whether `key` of kind map `kind_index` is counted under its own value or the overflow
    /// bucket, for an event landing in `admission` (its admission window). Read-only.
    fn route(&self, kind_index: usize, key: &str, admission: Option<&Window>) -> Route {
        let limit = self.limits[kind_index];
        let Some(window) = admission else {
            return Route::Own { admit: false }; // nothing is counted in an admission window
        };
        if key == &*self.overflow_keys[kind_index] {
            return Route::Own { admit: false };
        }
        let spec_index = self.admission_specs[kind_index] as u32;
        let held = self.scopes[kind_index]
            .get(key)
            .is_some_and(|state| state.existing_slot(spec_index, window).is_some());
        if held {
            return Route::Own { admit: false };
        }
        let admitted = self
            .admitted
            .get(&(kind_index, window.start()))
            .map_or(0, |(_, count)| *count);
        if limit == usize::MAX || admitted < limit {
            Route::Own { admit: true }
        } else {
            Route::Overflow
        }
    }

    /// Scopes counted under an overflow bucket since the last call (for the metric).
    pub fn take_scopes_overflowed(&mut self) -> u64 {
        std::mem::take(&mut self.scopes_overflowed)
    }

    /// Distinct values with their own totals in the admission window of `scope_kind` holding
    /// `at`; `None` for a kind this plan does not have.
    pub fn admitted_values(&self, scope_kind: &str, at: DateTime<Utc>) -> Option<usize> {
        let (kind, _) = self.plan.kind_by_name(scope_kind)?;
        let kind_index = map_index(kind);
        let window = self.plan.specs()[self.admission_specs[kind_index]].window_of(at)?;
        Some(
            self.admitted
                .get(&(kind_index, window.start()))
                .map_or(0, |(_, count)| *count),
        )
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

    /// Drops every window that ended at or before the close horizon, unless it is dirty (drain
    /// first: a dirty closed window is dropped by a later call). Also drops pending jobs older
    /// than [`TotalsConfig::pending_job_max_age`] and scopes left empty. Returns the number of
    /// windows dropped. Walks the whole state: call it per batch, not per event. It frees
    /// memory only: whether an event is late does not depend on when it is called.
    pub fn evict_closed(&mut self) -> usize {
        self.take_closed().len()
    }

    /// [`Self::evict_closed`], returning the (scope, window) of every window dropped: the keys
    /// whose totals-topic records are tombstoned (issue 13 point 6). A window is dropped here at
    /// most once (a closed window is never re-created), so each key is handed out once per run;
    /// a replay from an older checkpoint, which restores the window as open, hands it out again.
    pub fn take_closed(&mut self) -> Vec<ClosedWindow> {
        let Some(watermark) = self.watermark else {
            return Vec::new();
        };
        let job_horizon = TimeDelta::from_std(self.config.pending_job_max_age)
            .ok()
            .and_then(|age| watermark.checked_sub_signed(age));

        let Some(closed_through) = self.closed_through else {
            return Vec::new();
        };
        let mut closed = Vec::new();
        for (kind_index, map) in self.scopes.iter_mut().enumerate() {
            let kind_name = &self.kind_names[kind_index];
            map.retain(|key, state| {
                state.windows.retain(|slot| {
                    let keep = slot.dirty || slot.window.end() > closed_through;
                    if !keep {
                        closed.push(ClosedWindow {
                            scope_kind: Arc::clone(kind_name),
                            scope_key: Arc::clone(key),
                            window: slot.window.clone(),
                        });
                    }
                    keep
                });
                if state.windows.capacity() > state.windows.len() + 2 {
                    state.windows.shrink_to_fit();
                }
                if let (Some(pending), Some(job_horizon)) = (&mut state.pending_jobs, job_horizon) {
                    pending
                        .jobs
                        .retain(|(submitted_at, _)| *submitted_at > job_horizon);
                    if pending.jobs.is_empty() {
                        state.pending_jobs = None;
                    }
                }
                !state.windows.is_empty() || state.pending_jobs.is_some()
            });
        }
        self.active_windows -= closed.len();
        self.admitted.retain(|_, (end, _)| *end > closed_through);
        closed
    }

    /// The earliest start of a window that is open at close horizon `closed_through` (ends after
    /// it), over every window spec of the plan: the window of each spec holding `closed_through`
    /// starts there or later, and so does every later one. A restore reads only stored rows
    /// starting at or after it (`window_partials` is partitioned by the month of
    /// `window_start`, so older months are not read at all).
    pub fn open_windows_start(&self, closed_through: DateTime<Utc>) -> DateTime<Utc> {
        self.plan
            .specs()
            .iter()
            .map(|spec| {
                spec.window_of(closed_through)
                    .map_or(closed_through, |window| window.start())
            })
            .min()
            .unwrap_or(closed_through)
    }

    /// Every total changed since the last drain, as absolute values with their version; clears
    /// the dirty set. Allocates the returned vector and clones each window (no string copies:
    /// kinds and keys are shared `Arc<str>`).
    /// The changed totals of `policy:` scopes whose version grew since the last peek, without
    /// draining them: the next [`TotalsState::drain_dirty`] still returns them for the durable
    /// flush. For publishing policy totals to the alerter ahead of the flush (the values are
    /// deterministic per version, so publishing early changes no result, only latency).
    pub fn peek_policy_updates(&mut self) -> Vec<TotalUpdate> {
        let mut updates = Vec::new();
        for (kind_index, key) in &self.dirty_scopes {
            if !self.kind_names[*kind_index].starts_with(policy::TOTALS_SCOPE_PREFIX)
                || self.held[*kind_index]
            {
                continue;
            }
            let Some(state) = self.scopes[*kind_index].get_mut(&**key) else {
                continue;
            };
            let untracked = state.pending_jobs.as_ref().map_or(0, |jobs| jobs.untracked);
            for index in 0..state.windows.len() {
                let slot = &state.windows[index];
                if !slot.dirty || slot.version <= slot.peeked {
                    continue;
                }
                let oldest = state.oldest_pending_before(slot.window.end());
                let slot = &mut state.windows[index];
                slot.peeked = slot.version;
                updates.push(slot.update(&self.kind_names[*kind_index], key, oldest, untracked));
            }
        }
        updates
    }

    pub fn drain_dirty(&mut self) -> Vec<TotalUpdate> {
        let mut updates = std::mem::take(&mut self.retired);
        let mut still_held = Vec::new();
        for (kind_index, key) in std::mem::take(&mut self.dirty_scopes) {
            if self.held[kind_index] {
                // Not written before its seed: a row is always the exact total up to its version.
                still_held.push((kind_index, key));
                continue;
            }
            let Some(state) = self.scopes[kind_index].get_mut(&*key) else {
                debug_assert!(false, "dirty scope {key} missing");
                continue;
            };
            state.dirty = false;
            let untracked = state.pending_jobs.as_ref().map_or(0, |jobs| jobs.untracked);
            for index in 0..state.windows.len() {
                if !state.windows[index].dirty {
                    continue;
                }
                let oldest = state.oldest_pending_before(state.windows[index].window.end());
                let slot = &mut state.windows[index];
                slot.dirty = false;
                updates.push(slot.update(&self.kind_names[kind_index], &key, oldest, untracked));
            }
        }
        self.dirty_scopes = still_held;
        updates
    }

    /// Puts a stored total back (after a restart, before the events after its checkpoint are
    /// applied), not dirty: it is already stored. Its version may be ahead of the checkpoint
    /// (a flush wrote the row, then the process died before the checkpoint): replayed events of
    /// versions up to it are then skipped for this total only ([`Self::apply`]), so every
    /// total continues exactly where its stored row left it.
    ///
    /// `rewrite` marks it dirty, so the next drain writes it again: for a row that may not have
    /// reached every output (written to ClickHouse, then the process died before publishing it).
    pub fn restore_total(&mut self, total: StoredTotal<'_>, rewrite: bool) -> Restored {
        let Some((kind, spec_indices)) = self.plan.kind_by_name(total.scope_kind) else {
            return Restored::UnknownScope;
        };
        if self.held[map_index(kind)] {
            return Restored::Held;
        }
        let specs = self.plan.specs();
        let Some(spec_index) = spec_indices.into_iter().find(|index| {
            let spec = &specs[*index];
            spec.time_zone().name() == total.window_tz
                && spec.kind().to_string() == total.window_kind
        }) else {
            return Restored::UnknownWindow;
        };
        let Some(window) = specs[spec_index].window_of(total.window_start) else {
            return Restored::UnknownWindow;
        };
        if window.start() != total.window_start {
            return Restored::UnknownWindow;
        }
        if self.closed_through.is_some_and(|at| window.end() <= at) {
            return Restored::Closed;
        }
        let step = Measures {
            cost_usd: total.measures.cost_usd.abs(),
            fallback_cost_usd: total.measures.fallback_cost_usd.abs(),
            jobs_in_flight: total.measures.jobs_in_flight.saturating_abs(),
            ..total.measures
        };
        self.upper_bound = self
            .upper_bound
            .and_then(|bound| bound.checked_sum(&step).ok());
        let kind_index = map_index(kind);
        let admission_spec = self.admission_specs[kind_index];
        let is_overflow = total.scope_key == &*self.overflow_keys[kind_index];
        let state = self.scope_entry(kind_index, total.scope_key);
        let mut created = 0;
        let slot = state.slot(spec_index as u32, &window, &mut created);
        slot.measures = total.measures;
        slot.version = total.version;
        slot.dirty = rewrite;
        if rewrite && !state.dirty {
            state.dirty = true;
            let key = Arc::clone(&state.key);
            self.dirty_scopes.push((kind_index, key));
        }
        self.active_windows += created;
        if created > 0 && spec_index == admission_spec && !is_overflow {
            // An admitted value: every admitted value has a total in its admission window.
            self.admitted
                .entry((kind_index, window.start()))
                .or_insert((window.end(), 0))
                .1 += 1;
        }
        Restored::Restored
    }

    /// The `scope_kind` of every windowed policy definition of the plan.
    pub fn policy_kinds(&self) -> impl Iterator<Item = &Arc<str>> {
        self.kind_names[SingleDimension::ALL.len()..].iter()
    }

    /// Holds back the totals of the policy definition `scope_kind` (they are counted, not
    /// drained nor peeked) until [`Self::seed`]; `false` if the plan has no such kind.
    pub fn hold(&mut self, scope_kind: &str) -> bool {
        match self.plan.kind_by_name(scope_kind) {
            Some((kind @ ScopeKind::Policy(_), _)) => {
                self.held[map_index(kind)] = true;
                true
            }
            _ => false,
        }
    }

    /// Whether `scope_kind` is held back.
    pub fn is_held(&self, scope_kind: &str) -> bool {
        self.plan
            .kind_by_name(scope_kind)
            .is_some_and(|(kind, _)| self.held[map_index(kind)])
    }

    /// Adds `seed`, the totals of the held definition `scope_kind` over the events before it
    /// counted live, to its totals (a total's version becomes the higher of the two: each seed
    /// total is the exact total up to its version, and the live part only adds later events),
    /// and releases the kind: its totals are drained and published from now on. All or nothing.
    pub fn seed(&mut self, scope_kind: &str, seed: &[TotalUpdate]) -> Result<(), StateError> {
        let Some((kind, spec_indices)) = self.plan.kind_by_name(scope_kind) else {
            return Ok(());
        };
        let kind_index = map_index(kind);
        let spec_index = spec_indices.start;
        let mut bound = self.upper_bound;
        for total in seed {
            if let Some(existing) = self.scopes[kind_index]
                .get(&*total.scope_key)
                .and_then(|state| state.existing_slot(spec_index as u32, &total.window))
            {
                existing.measures.checked_sum(&total.measures)?;
            }
            bound = bound.and_then(|bound| bound.checked_sum(&bound_step(&total.measures)).ok());
        }
        self.upper_bound = bound;
        let mut created = 0;
        for total in seed {
            debug_assert_eq!(&*total.scope_kind, scope_kind);
            let state = self.scope_entry(kind_index, &total.scope_key);
            let slot = state.slot(spec_index as u32, &total.window, &mut created);
            slot.measures.add(&total.measures)?;
            slot.version = slot.version.max(total.version);
        }
        self.active_windows += created;
        self.held[kind_index] = false;
        // Every total of the kind is due: the live ones were held back, the seeded ones are new.
        let keys: Vec<Arc<str>> = self.scopes[kind_index].keys().cloned().collect();
        for key in keys {
            let state = self.scopes[kind_index]
                .get_mut(&*key)
                .expect("listed above");
            let mut touched = false;
            for slot in &mut state.windows {
                if slot.version > 0 {
                    slot.dirty = true;
                    touched = true;
                }
            }
            if touched && !state.dirty {
                state.dirty = true;
                self.dirty_scopes.push((kind_index, key));
            }
        }
        Ok(())
    }

    /// Switches to the plan of `policies` (a reload): the single-dimension scopes and every
    /// policy definition in both plans (same `scope_kind`, i.e. same id and definition) keep
    /// their totals; definitions no longer there are dropped, their changed totals kept for the
    /// next drain (not if held: those were never complete); new definitions start empty and
    /// **held**. Returns the new definitions' kinds. On `Err` (a window the plan cannot
    /// represent) nothing changed.
    pub fn replan(&mut self, policies: &PolicySet) -> Result<Vec<Arc<str>>, StateError> {
        let plan = ScopePlan::new(policies)?;
        let dimensions = SingleDimension::ALL.len();
        let names: Vec<Arc<str>> = (0..plan.policy_count())
            .map(|index| Arc::from(plan.kind_name(ScopeKind::Policy(index))))
            .collect();
        // The old policy maps by kind, with whether they were held.
        let mut old: HashMap<Arc<str>, (usize, ScopeMap, bool)> = HashMap::new();
        let old_names = self.kind_names.split_off(dimensions);
        let old_maps = self.scopes.split_off(dimensions);
        let old_held = self.held.split_off(dimensions);
        for (old_index, ((name, map), held)) in old_names
            .into_iter()
            .zip(old_maps)
            .zip(old_held)
            .enumerate()
        {
            old.insert(name, (dimensions + old_index, map, held));
        }
        let mut remap: HashMap<usize, usize> =
            (0..dimensions).map(|index| (index, index)).collect();
        let mut added = Vec::new();
        for (index, name) in names.iter().enumerate() {
            let new_index = dimensions + index;
            let spec_index = (UTC_CALENDAR_KINDS_LEN + index) as u32;
            match old.remove(name) {
                Some((old_index, mut map, held)) => {
                    for state in map.values_mut() {
                        for slot in &mut state.windows {
                            slot.spec_index = spec_index;
                        }
                    }
                    remap.insert(old_index, new_index);
                    self.scopes.push(map);
                    self.held.push(held);
                }
                None => {
                    self.scopes
                        .push(HashMap::with_hasher(ScopeHasher::default()));
                    self.held.push(true);
                    added.push(Arc::clone(name));
                }
            }
            self.kind_names.push(Arc::clone(name));
        }
        for (name, (_, map, held)) in old {
            for state in map.values() {
                self.active_windows -= state.windows.len();
                if held {
                    continue;
                }
                let untracked = state.pending_jobs.as_ref().map_or(0, |jobs| jobs.untracked);
                for slot in state.windows.iter().filter(|slot| slot.dirty) {
                    let oldest = state.oldest_pending_before(slot.window.end());
                    self.retired
                        .push(slot.update(&name, &state.key, oldest, untracked));
                }
            }
        }
        self.dirty_scopes = std::mem::take(&mut self.dirty_scopes)
            .into_iter()
            .filter_map(|(index, key)| remap.get(&index).map(|&index| (index, key)))
            .collect();
        // Cardinality bookkeeping follows the kinds to their new places; a new definition starts
        // with nothing admitted (its totals are seeded separately).
        self.admitted = std::mem::take(&mut self.admitted)
            .into_iter()
            .filter_map(|((index, start), value)| {
                remap.get(&index).map(|&index| ((index, start), value))
            })
            .collect();
        (self.limits, self.overflow_keys, self.admission_specs) =
            kind_settings(&plan, &self.config);
        self.caches = plan.specs().iter().cloned().map(WindowCache::new).collect();
        self.watermark_windows = self.caches.clone();
        self.event_windows = vec![None; self.caches.len()];
        self.plan = plan;
        Ok(added)
    }

    /// The scope `key` of map `kind_index`, created empty if missing.
    fn scope_entry(&mut self, kind_index: usize, key: &str) -> &mut ScopeState {
        let map = &mut self.scopes[kind_index];
        if !map.contains_key(key) {
            let key: Arc<str> = Arc::from(key);
            map.insert(
                Arc::clone(&key),
                ScopeState {
                    key,
                    dirty: false,
                    windows: Vec::new(),
                    pending_jobs: None,
                },
            );
        }
        map.get_mut(key).expect("inserted above")
    }

    /// Every scope's pending jobs, for a checkpoint.
    pub fn pending_jobs_snapshot(&self) -> Vec<PendingJobsSnapshot> {
        let mut snapshot = Vec::new();
        for (kind_index, map) in self.scopes.iter().enumerate() {
            for (key, state) in map {
                let Some(pending) = &state.pending_jobs else {
                    continue;
                };
                snapshot.push(PendingJobsSnapshot {
                    scope_kind: self.kind_names[kind_index].to_string(),
                    scope_key: key.to_string(),
                    jobs: pending
                        .jobs
                        .iter()
                        .map(|(at, id)| (*at, id.to_string()))
                        .collect(),
                    untracked: pending.untracked,
                });
            }
        }
        snapshot
    }

    /// Puts a scope's pending jobs back from a checkpoint; `false` (nothing changed) when the
    /// scope kind is not in this plan.
    pub fn restore_pending_jobs(&mut self, snapshot: &PendingJobsSnapshot) -> bool {
        let Some((kind, _)) = self.plan.kind_by_name(&snapshot.scope_kind) else {
            return false;
        };
        let state = self.scope_entry(map_index(kind), &snapshot.scope_key);
        state.pending_jobs = Some(Box::new(PendingJobs {
            jobs: snapshot
                .jobs
                .iter()
                .map(|(at, id)| (*at, Arc::from(id.as_str())))
                .collect(),
            untracked: snapshot.untracked,
        }));
        true
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measures::tests::arbitrary_event;
    use crate::scopes::tests::POLICIES;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use schemas::fixtures::text_event;
    use schemas::Modality;

    fn state() -> TotalsState {
        let policies = PolicySet::from_str("test.yaml", POLICIES).unwrap();
        TotalsState::new(&policies, TotalsConfig::default()).unwrap()
    }

    fn at(hour: u32, minute: u32, second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 9, hour, minute, second)
            .unwrap()
    }

    fn find<'u>(updates: &'u [TotalUpdate], kind: &str, window_id: &str) -> &'u TotalUpdate {
        updates
            .iter()
            .find(|update| &*update.scope_kind == kind && update.window.id() == window_id)
            .unwrap_or_else(|| panic!("no {kind} {window_id}"))
    }

    /// A state whose kinds keep at most `limit` values of their own.
    fn limited_state(limit: usize) -> TotalsState {
        let policies = PolicySet::from_str("test.yaml", POLICIES).unwrap();
        let config = TotalsConfig {
            max_scopes_per_kind: limit,
            ..TotalsConfig::default()
        };
        TotalsState::new(&policies, config).unwrap()
    }

    /// The event of user `index`, costing `index` cents.
    fn user_event(index: u32, at: DateTime<Utc>) -> UsageEvent {
        let mut event = text_event(&format!("e{index}"), at);
        event.user_id = Some(format!("user-{index:02}"));
        event.cost_usd = Some(rust_decimal::Decimal::new(i64::from(index), 2));
        event
    }

    /// Issue 13 point 7: with a limit of 5, the first 5 distinct `user_id`s of the month keep
    /// their own totals, the other 15 are counted under `__overflow__` (exactly: the sum of their
    /// costs), a value already admitted stays itself, and a state restored from the written
    /// totals routes the next events the same way as the state that wrote them.
    #[test]
    fn values_past_the_limit_are_counted_in_the_overflow_bucket() {
        let mut state = limited_state(5);
        let mut overflowed = 0;
        for index in 0..20 {
            let outcome = state
                .apply(&user_event(index, at(12, 0, index)), u64::from(index) + 1)
                .unwrap();
            overflowed += outcome.scopes_overflowed;
        }
        // user_id and the key-monthly-requests policy (group_by api_key_id, user_id) overflow.
        assert_eq!(overflowed, 2 * 15);
        assert_eq!(state.take_scopes_overflowed(), 30);
        assert_eq!(state.admitted_values("user_id", at(12, 0, 0)), Some(5));
        let updates = state.drain_dirty();
        let month = |key: &str| {
            updates
                .iter()
                .find(|update| {
                    &*update.scope_kind == "user_id"
                        && &*update.scope_key == key
                        && update.window.kind().to_string() == "month"
                })
                .map(|update| update.measures.cost_usd)
        };
        for index in 0..5 {
            let cost = rust_decimal::Decimal::new(i64::from(index), 2);
            assert_eq!(month(&format!("user-{index:02}")), Some(cost));
        }
        assert_eq!(month("user-05"), None);
        let folded: rust_decimal::Decimal = (5..20)
            .map(|index| rust_decimal::Decimal::new(i64::from(index), 2))
            .sum();
        assert_eq!(month(policy::OVERFLOW_VALUE), Some(folded));
        let policy_overflow = updates
            .iter()
            .find(|update| {
                update
                    .scope_kind
                    .starts_with("policy:key-monthly-requests@")
                    && &*update.scope_key == "api_key_id=__overflow__|user_id=__overflow__"
            })
            .expect("the policy's overflow bucket");
        assert_eq!(policy_overflow.measures.requests, 15);
        let user_scopes = updates
            .iter()
            .filter(|update| &*update.scope_kind == "user_id")
            .map(|update| update.scope_key.clone())
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(user_scopes.len(), 6);

        // Restore from what was written, then apply the same next events to both.
        let mut restored = limited_state(5);
        restored.advance_watermark(state.watermark().unwrap());
        for update in &updates {
            let window_kind = update.window.kind().to_string();
            let window_tz = update.window.time_zone().name().to_owned();
            restored.restore_total(
                StoredTotal {
                    scope_kind: &update.scope_kind,
                    scope_key: &update.scope_key,
                    window_kind: &window_kind,
                    window_tz: &window_tz,
                    window_start: update.window.start(),
                    measures: update.measures,
                    version: update.version,
                },
                false,
            );
        }
        assert_eq!(restored.admitted_values("user_id", at(12, 0, 0)), Some(5));
        for index in [3, 7, 40] {
            let event = user_event(index, at(12, 1, index % 60));
            let version = 100 + u64::from(index);
            assert_eq!(
                state.apply(&event, version).unwrap(),
                restored.apply(&event, version).unwrap()
            );
        }
        let sorted = |mut updates: Vec<TotalUpdate>| {
            updates.sort_by(|a, b| {
                (&a.scope_kind, &a.scope_key, a.window.id()).cmp(&(
                    &b.scope_kind,
                    &b.scope_key,
                    b.window.id(),
                ))
            });
            updates
        };
        assert_eq!(sorted(state.drain_dirty()), sorted(restored.drain_dirty()));

        // Unlimited (0): every value is its own scope.
        let mut unlimited = limited_state(0);
        for index in 0..20 {
            let outcome = unlimited
                .apply(&user_event(index, at(12, 0, index)), 1)
                .unwrap();
            assert_eq!(outcome.scopes_overflowed, 0);
        }
    }

    #[test]
    fn an_event_counts_in_every_scope_and_window() {
        let mut state = state();
        let event = text_event("e1", at(12, 0, 30));
        let outcome = state.apply(&event, 7).unwrap();
        // 8 single dimensions × 5 UTC windows + 2 policies × 1 window.
        assert_eq!(
            outcome,
            ApplyOutcome {
                windows_counted: 42,
                windows_late: 0,
                scopes_overflowed: 0
            }
        );
        let updates = state.drain_dirty();
        assert_eq!(updates.len(), 42);
        assert_eq!(state.active_windows(), 42);
        let contribution = Measures::of_event(&event);
        assert!(updates
            .iter()
            .all(|update| update.measures == contribution && update.version == 7));
        let team_minute = find(&updates, "team", "minute:2026-03-09T12:00+00:00@UTC");
        assert_eq!(&*team_minute.scope_key, "search");
        let policy_day = find(
            &updates,
            &crate::scopes::tests::kind("team-model-daily-cost"),
            "day:2026-03-09@America/New_York",
        );
        assert_eq!(&*policy_day.scope_key, "team=search|model=gpt-4o");
        assert!(state.drain_dirty().is_empty(), "drained");

        // More events: absolute totals at the newest version, only their windows dirty.
        state.apply(&event, 8).unwrap();
        state.apply(&event, 9).unwrap();
        // A version a total already has is already in it (a replay after a restore): skipped.
        state.apply(&event, 9).unwrap();
        let updates = state.drain_dirty();
        assert_eq!(updates.len(), 42);
        let hour = find(&updates, "model", "hour:2026-03-09T12:00+00:00@UTC");
        assert_eq!(hour.measures.requests, 3);
        assert_eq!(hour.measures.input_tokens, 3_000);
        assert_eq!(hour.version, 9);
    }

    #[test]
    fn closed_windows_are_evicted_and_never_reopened() {
        let mut state = TotalsState::new(
            &PolicySet::from_str("test.yaml", POLICIES).unwrap(),
            TotalsConfig {
                lateness: LatenessPolicy::new(Duration::from_secs(60)),
                ..TotalsConfig::default()
            },
        )
        .unwrap();
        state.apply(&text_event("e1", at(12, 0, 30)), 1).unwrap();
        state.drain_dirty();
        // Watermark 12:02:00: the 12:00 minute closed at 12:01 + 60 s = 12:02.
        state.advance_watermark(at(12, 2, 0));
        assert_eq!(state.evict_closed(), 8);
        assert_eq!(state.active_windows(), 34);
        // An event for the evicted minute: late for the minute windows, counted in the others.
        let outcome = state.apply(&text_event("e2", at(12, 0, 45)), 2).unwrap();
        assert_eq!(
            outcome,
            ApplyOutcome {
                windows_counted: 34,
                windows_late: 8,
                scopes_overflowed: 0
            }
        );
        let updates = state.drain_dirty();
        // The late event is counted in the minute holding the watermark, not in its own.
        let late = find(&updates, "team", "minute:2026-03-09T12:02+00:00@UTC");
        assert_eq!(late.measures.late_events, 1);
        assert_eq!(late.measures.requests, 0);
        assert!(updates
            .iter()
            .all(|update| update.window.id() != "minute:2026-03-09T12:00+00:00@UTC"));
        let hour = find(&updates, "team", "hour:2026-03-09T12:00+00:00@UTC");
        assert_eq!(hour.measures.requests, 2);

        // The watermark never goes back; dirty windows survive eviction until drained.
        state.apply(&text_event("e3", at(12, 3, 0)), 3).unwrap();
        state.advance_watermark(at(23, 0, 0));
        state.evict_closed();
        assert!(state.active_windows() > 0);
        let drained = state.drain_dirty();
        assert!(!drained.is_empty());
        state.advance_watermark(at(0, 0, 0));
        state.evict_closed();
        assert_eq!(state.closed_through(), Some(at(22, 59, 0)));
        // Days, weeks and months are still open; minutes and hours are gone.
        assert!(state.active_windows() < 34);
        // After the month ends and is evicted, nothing is left.
        let next_month = Utc.with_ymd_and_hms(2026, 4, 2, 0, 0, 0).unwrap();
        state.advance_watermark(next_month);
        state.evict_closed();
        assert_eq!((state.active_windows(), state.scope_count()), (0, 0));
    }

    #[test]
    fn overflow_fails_the_whole_event_and_changes_nothing() {
        let mut state = state();
        let mut huge = text_event("e1", at(12, 0, 0));
        huge.input_tokens = u64::MAX - 10;
        state.apply(&huge, 1).unwrap();
        let before = state.drain_dirty();
        // A new user: its scopes are new (could take it), the existing ones cannot.
        let mut more = text_event("e2", at(12, 0, 1));
        more.input_tokens = 11;
        more.user_id = Some("new-user".to_owned());
        let error = state.apply(&more, 2).unwrap_err();
        assert_eq!(
            error,
            StateError::Measure(MeasureError::Overflow {
                measure: "input_tokens"
            })
        );
        assert!(state.drain_dirty().is_empty());
        assert_eq!(state.active_windows(), before.len());
        // Events that fit still apply (slow path, the bound is gone).
        more.input_tokens = 10;
        state.apply(&more, 3).unwrap();
        let after = state.drain_dirty();
        assert_eq!(
            find(&after, "team", "day:2026-03-09@UTC")
                .measures
                .input_tokens,
            u64::MAX
        );
    }

    #[test]
    fn oldest_pending_job_follows_submissions_and_finishes() {
        let mut state = state();
        let job = |id: &str, job_state: JobState, when: DateTime<Utc>| UsageEvent {
            modality: Modality::Video,
            endpoint: "video".to_owned(),
            job_id: Some(id.to_owned()),
            job_state: Some(job_state),
            ..text_event(&format!("{id}-{job_state:?}"), when)
        };
        state
            .apply(&job("j1", JobState::Submitted, at(12, 0, 0)), 1)
            .unwrap();
        state
            .apply(&job("j2", JobState::Submitted, at(12, 5, 0)), 2)
            .unwrap();
        let updates = state.drain_dirty();
        let day = find(&updates, "endpoint", "day:2026-03-09@UTC");
        assert_eq!(day.measures.jobs_in_flight, 2);
        assert_eq!(day.oldest_pending_job_started_at, Some(at(12, 0, 0)));
        assert_eq!(
            day.oldest_pending_job_started_at_us(),
            at(12, 0, 0).timestamp_micros() as u64
        );
        // The 12:00 minute ended before j2 was submitted.
        let first_minute = find(&updates, "endpoint", "minute:2026-03-09T12:00+00:00@UTC");
        assert_eq!(
            first_minute.oldest_pending_job_started_at,
            Some(at(12, 0, 0))
        );

        state
            .apply(&job("j1", JobState::Succeeded, at(12, 9, 0)), 3)
            .unwrap();
        let updates = state.drain_dirty();
        let day = find(&updates, "endpoint", "day:2026-03-09@UTC");
        assert_eq!(day.measures.jobs_in_flight, 1);
        assert_eq!(day.oldest_pending_job_started_at, Some(at(12, 5, 0)));
        state
            .apply(&job("j2", JobState::Failed, at(12, 9, 30)), 4)
            .unwrap();
        let updates = state.drain_dirty();
        let day = find(&updates, "endpoint", "day:2026-03-09@UTC");
        assert_eq!(
            (
                day.measures.jobs_in_flight,
                day.oldest_pending_job_started_at
            ),
            (0, None)
        );
    }

    #[test]
    fn pending_jobs_are_capped() {
        let policies = PolicySet::from_str("test.yaml", POLICIES).unwrap();
        let config = TotalsConfig {
            pending_jobs_per_scope: 2,
            ..TotalsConfig::default()
        };
        let mut state = TotalsState::new(&policies, config).unwrap();
        for (index, minute) in [3, 1, 2].into_iter().enumerate() {
            let event = UsageEvent {
                job_id: Some(format!("j{index}")),
                job_state: Some(JobState::Submitted),
                ..text_event("e", at(12, minute, 0))
            };
            state.apply(&event, index as u64 + 1).unwrap();
        }
        let updates = state.drain_dirty();
        let day = find(&updates, "team", "day:2026-03-09@UTC");
        assert_eq!(day.pending_jobs_untracked, 1);
        // The third submission (12:02) was not tracked: the oldest tracked is 12:01.
        assert_eq!(day.oldest_pending_job_started_at, Some(at(12, 1, 0)));
    }

    /// Issue 13 point 3: a reload keeps the totals of unchanged definitions (whatever their new
    /// position in the plan), hands the unwritten changes of removed ones to the next drain, and
    /// holds new ones back until their seed is added.
    #[test]
    fn a_replan_keeps_unchanged_definitions_retires_removed_and_holds_new_ones() {
        let mut state = state();
        let event = text_event("e1", at(12, 0, 30));
        state.apply(&event, 1).unwrap();
        state.drain_dirty();
        state.apply(&event, 2).unwrap();
        let kept = crate::scopes::tests::kind("team-model-daily-cost");
        let removed = crate::scopes::tests::kind("key-monthly-requests");
        // "a-first" sorts before every other id: the kept policy moves in the plan.
        let edited = POLICIES.replace(
            "- id: key-monthly-requests",
            "- id: a-first\n  owner: {team: platform, contact: p@example.com}\n  description: new\n  \
             unit: requests\n  group_by: [team]\n  window: {kind: day}\n  hard_cap: 10\n  \
             action: {kind: alert_only}\n- id: key-monthly-requests-renamed",
        );
        let policies = PolicySet::from_str("edited.yaml", &edited).unwrap();
        let added = state.replan(&policies).unwrap();
        let new_kind = policies.get("a-first").unwrap().totals_scope_kind();
        assert!(added.iter().any(|kind| **kind == *new_kind));
        assert!(state.is_held(&new_kind));
        let updates = state.drain_dirty();
        // The removed definition's unwritten change (version 2) is still drained, once.
        assert_eq!(
            find(&updates, &removed, "month:2026-03@UTC")
                .measures
                .requests,
            2
        );
        state.apply(&event, 3).unwrap();
        let updates = state.drain_dirty();
        let day = find(&updates, &kept, "day:2026-03-09@America/New_York");
        assert_eq!(
            (day.measures.requests, day.version),
            (3, 3),
            "kept across the reload"
        );
        assert!(
            updates.iter().all(|update| *update.scope_kind != *new_kind),
            "held"
        );
        assert!(updates.iter().all(|update| *update.scope_kind != *removed));
        let seed = TotalUpdate {
            scope_kind: Arc::from(new_kind.as_str()),
            scope_key: Arc::from("team=search"),
            window: state.plan().specs()[5].window_of(at(12, 0, 30)).unwrap(),
            measures: Measures::of_event(&event),
            oldest_pending_job_started_at: None,
            pending_jobs_untracked: 0,
            version: 2,
        };
        state.seed(&new_kind, &[seed]).unwrap();
        let updates = state.drain_dirty();
        let seeded = find(&updates, &new_kind, "day:2026-03-09@UTC");
        assert_eq!(
            (seeded.measures.requests, seeded.version),
            (2, 3),
            "the seed (one event) plus the live event at version 3"
        );
    }

    #[test]
    fn bytes_per_active_key_stay_under_one_kibibyte() {
        let mut state = state();
        // 2,000 users × 10 teams: many scopes, each with 5 windows, plus the policy scopes.
        for index in 0..20_000u32 {
            let mut event = text_event("e", at(12, 0, 0) + TimeDelta::milliseconds(index.into()));
            event.user_id = Some(format!("user-{}", index % 2_000));
            event.team = format!("team-{}", index % 10);
            event.api_key_id = format!("key-{}", index % 500);
            state.apply(&event, u64::from(index) + 1).unwrap();
        }
        state.drain_dirty();
        let per_key = state.approximate_bytes() / state.active_windows();
        println!(
            "{} windows in {} scopes: {} bytes, {per_key} bytes per (scope, window)",
            state.active_windows(),
            state.scope_count(),
            state.approximate_bytes()
        );
        assert!(per_key <= 1024, "{per_key} bytes per key");
    }

    proptest! {
        #[test]
        fn totals_do_not_depend_on_event_order(
            events in proptest::collection::vec(arbitrary_event(), 1..25),
        ) {
            // Within the allowed lateness (here longer than the events' spread): with a shorter
            // one, order decides which events are late, by design.
            let totals = |events: &mut dyn Iterator<Item = &UsageEvent>| {
                let mut state = TotalsState::new(
                    &PolicySet::from_str("test.yaml", POLICIES).unwrap(),
                    TotalsConfig {
                        lateness: LatenessPolicy::new(Duration::from_secs(400 * 24 * 3600)),
                        ..TotalsConfig::default()
                    },
                )
                .unwrap();
                for (version, event) in events.enumerate() {
                    state.apply(event, version as u64 + 1).unwrap();
                }
                let mut rows: Vec<(String, String, String, Measures)> = state
                    .drain_dirty()
                    .into_iter()
                    .map(|u| (u.scope_kind.to_string(), u.scope_key.to_string(), u.window.id(), u.measures))
                    .collect();
                rows.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
                rows
            };
            let forward = totals(&mut events.iter());
            let backward = totals(&mut events.iter().rev());
            prop_assert_eq!(&forward, &backward);
            // The team's month total is the sum of every event.
            let mut expected = Measures::ZERO;
            for event in &events {
                expected.add(&Measures::of_event(event)).unwrap();
            }
            let month = forward
                .iter()
                .find(|row| row.0 == "team" && row.2 == "month:2026-03@UTC")
                .unwrap();
            prop_assert_eq!(month.3, expected);
        }
    }
}
