//! [`TotalsState`]: the fast path of [`TotalsState::apply`] (see the parent module's docs, "The
//! fast path"): pending deltas per scope and windows, and folding them into the totals.

use super::*;

/// Contributions of events on the fast path of [`TotalsState::apply`], not yet added to the
/// scope's slots: every event of the scope since with the same windows (the same
/// [`TotalsState::epoch`]) adds here once instead of to each of its windows' totals. Added to
/// the slots by [`TotalsState::fold_deltas`] before anything reads a slot, and when the scope's
/// next event has other windows.
#[derive(Debug, Clone)]
pub(super) struct PendingDelta {
    /// The scope's kind map.
    kind_index: usize,
    /// The scope key.
    key: Arc<str>,
    /// Indices in the scope's `windows` of the slots the delta goes to (slots are only
    /// appended between folds, so indices hold).
    slots: [u16; MAX_SPECS_PER_SCOPE],
    /// Slots used in `slots`.
    slot_count: u8,
    /// The [`TotalsState::epoch`] of the windows `slots` are of.
    epoch: u64,
    /// The highest version in the delta.
    version: u64,
    /// The sum.
    delta: Delta,
}

/// One event on the fast path of [`TotalsState::apply`].
pub(super) struct FastEvent<'e> {
    event: &'e UsageEvent,
    version: u64,
    delta: &'e Delta,
    /// The event's job id, made once for all its scopes.
    job_id: Option<Arc<str>>,
    outcome: ApplyOutcome,
    /// Slots created.
    created: usize,
}

/// The most window specs one scope is counted in (a single dimension's UTC calendar windows).
pub(super) const MAX_SPECS_PER_SCOPE: usize = UTC_CALENDAR_KINDS_LEN;

impl TotalsState {
    /// [`Self::apply`] for an event whose every window is open, whose version is above every
    /// total's and whose amounts fit a [`Delta`] (the caller checked, and that the upper bound
    /// holds with it): per scope, one delta addition instead of one checked addition per window.
    /// Fails only on a broken invariant (folding a delta), before changing any total.
    pub(super) fn apply_fast(
        &mut self,
        event: &UsageEvent,
        version: u64,
        delta: &Delta,
    ) -> Result<ApplyOutcome, StateError> {
        let mut fast = FastEvent {
            event,
            version,
            delta,
            job_id: None,
            outcome: ApplyOutcome::default(),
            created: 0,
        };
        self.for_each_scope(event, |this, kind_index, key, spec_indices| {
            this.apply_fast_scope(&mut fast, kind_index, key, spec_indices)
        })?;
        self.active_windows += fast.created;
        Ok(fast.outcome)
    }

    /// Calls `each` with every scope `event` counts under (kind map, key, window specs): the
    /// scopes of [`ScopePlan::scopes_of`], in its order, with policy keys rendered into reused
    /// buffers instead of a new string per event.
    pub(super) fn for_each_scope(
        &mut self,
        event: &UsageEvent,
        mut each: impl FnMut(&mut Self, usize, &str, std::ops::Range<usize>) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let dims = policy::EventDims::from_event(event);
        for dimension in SingleDimension::ALL {
            if let Some(value) = dimension.value(&dims) {
                each(self, dimension.index(), value, 0..UTC_CALENDAR_KINDS_LEN)?;
            }
        }
        let mut keys = std::mem::take(&mut self.policy_keys);
        self.plan.policy_keys_into(&dims, &mut keys);
        let mut result = Ok(());
        for (index, key) in keys.iter() {
            let spec = UTC_CALENDAR_KINDS_LEN + index;
            result = each(
                self,
                map_index(ScopeKind::Policy(index)),
                key,
                spec..spec + 1,
            );
            if result.is_err() {
                break;
            }
        }
        self.policy_keys = keys;
        result
    }

    /// One scope of [`Self::apply_fast`]. One hash look-up unless the value is new in its
    /// admission window.
    fn apply_fast_scope(
        &mut self,
        fast: &mut FastEvent<'_>,
        kind_index: usize,
        key: &str,
        spec_indices: std::ops::Range<usize>,
    ) -> Result<(), StateError> {
        // The event's windows are all open (the fast path's condition), so the admission
        // window is the event's own ([`Self::landing_window`]).
        let admission_spec = self.admission_specs[kind_index];
        let admission = self.event_windows[admission_spec].as_ref();
        // Gives the scope's delta this event (`bind_delta`): the fields it needs are disjoint
        // from the scope maps the state is borrowed from.
        macro_rules! bind {
            ($state:expr) => {
                bind_delta(
                    $state,
                    kind_index,
                    spec_indices,
                    fast,
                    &mut self.deltas,
                    &mut self.dirty_scopes,
                    &self.event_windows,
                    self.epoch,
                    &self.config,
                )
            };
        }
        if let Some(state) = self.scopes[kind_index].get_mut(key) {
            // The common case: the scope's delta is of this event's windows. Or the value is
            // admitted in the event's admission window already: counted under its own value.
            let bound =
                state.delta != NO_DELTA && self.deltas[state.delta as usize].epoch == self.epoch;
            if bound
                || admission.is_none_or(|window| {
                    state.existing_slot(admission_spec as u32, window).is_some()
                })
            {
                return bind!(state);
            }
        }
        let admission = admission.cloned();
        let overflow = self.route_and_admit(kind_index, key, admission.as_ref(), &mut fast.outcome);
        let key = if overflow {
            &*self.overflow_keys[kind_index]
        } else {
            key
        };
        bind!(scope_in(&mut self.scopes[kind_index], key))
    }

    /// Adds every pending delta to its slots (marking them dirty, with the delta's version).
    /// Called before anything reads or reorders slots.
    pub(super) fn fold_deltas(&mut self) -> Result<(), StateError> {
        self.deltas_high_water = self.deltas_high_water.max(self.deltas.len());
        let mut result = Ok(());
        for pending in self.deltas.drain(..) {
            let Some(state) = self.scopes[pending.kind_index].get_mut(&*pending.key) else {
                debug_assert!(false, "scope {} of a pending delta missing", pending.key);
                continue;
            };
            if let Err(error) = fold_delta(state, &pending, &mut self.dirty_scopes) {
                result = Err(error);
            }
            state.delta = NO_DELTA;
        }
        result
    }

    /// [`Self::fold_deltas`] for readers that cannot fail: the deltas are proven to fit (the
    /// upper bound), so an error here is a broken invariant; it is counted, never hidden.
    pub(super) fn fold(&mut self) {
        if self.fold_deltas().is_err() {
            self.fold_errors += 1;
            debug_assert!(false, "a pending delta did not fit its totals");
        }
    }

    /// Pending deltas that did not fit their totals when folded: a broken overflow proof, so 0
    /// (tests assert it).
    pub fn fold_errors(&self) -> u64 {
        self.fold_errors
    }

    /// Turns the fast path of [`Self::apply`] off or on: the totals are the same either way
    /// (tests compare the two); off, every event takes the per-total checked path. For tests
    /// and benches.
    #[doc(hidden)]
    pub fn set_fast_path(&mut self, on: bool) {
        self.fold();
        self.fast_path = on;
    }
}

/// Adds the event's contribution to `state`'s delta of the event's windows (`epoch`), making
/// one if needed: a previous delta (of other windows) is folded into its slots first, and the
/// slots of the event's windows are created if missing.
#[allow(clippy::too_many_arguments)]
fn bind_delta(
    state: &mut ScopeState,
    kind_index: usize,
    spec_indices: std::ops::Range<usize>,
    fast: &mut FastEvent<'_>,
    deltas: &mut Vec<PendingDelta>,
    dirty_scopes: &mut Vec<(usize, Arc<str>)>,
    event_windows: &[Option<Window>],
    epoch: u64,
    config: &TotalsConfig,
) -> Result<(), StateError> {
    if state.delta != NO_DELTA {
        let pending = &mut deltas[state.delta as usize];
        if pending.epoch == epoch {
            pending.delta.add(fast.delta);
            pending.version = fast.version;
            fast.outcome.windows_counted += u32::from(pending.slot_count);
            track_job(state, fast.event, &mut fast.job_id, config);
            return Ok(());
        }
        fold_delta(state, pending, dirty_scopes)?;
    }
    let mut slots = [0u16; MAX_SPECS_PER_SCOPE];
    let mut slot_count = 0u8;
    for spec_index in spec_indices {
        let Some(window) = &event_windows[spec_index] else {
            continue; // outside the campaign: no window of this spec
        };
        let index = state.slot_index(spec_index as u32, window, &mut fast.created);
        slots[usize::from(slot_count)] =
            u16::try_from(index).expect("a scope holds far fewer than 65,536 windows");
        slot_count += 1;
    }
    fast.outcome.windows_counted += u32::from(slot_count);
    let pending = PendingDelta {
        kind_index,
        key: Arc::clone(&state.key),
        slots,
        slot_count,
        epoch,
        version: fast.version,
        delta: *fast.delta,
    };
    if state.delta != NO_DELTA {
        deltas[state.delta as usize] = pending;
    } else {
        state.delta = u32::try_from(deltas.len()).expect("fewer than 2^32 pending deltas");
        deltas.push(pending);
    }
    track_job(state, fast.event, &mut fast.job_id, config);
    Ok(())
}

/// Adds `pending` to its slots in `state` (dirty, version raised to the delta's) and lists the
/// scope as dirty. Cannot fail while the upper bound holds (every total, delta included, is
/// below it); an `Err` is a broken proof, reported, and may leave the slots partly added.
fn fold_delta(
    state: &mut ScopeState,
    pending: &PendingDelta,
    dirty_scopes: &mut Vec<(usize, Arc<str>)>,
) -> Result<(), StateError> {
    let measures = pending.delta.to_measures()?;
    let slots = &pending.slots[..usize::from(pending.slot_count)];
    for index in slots {
        let slot = &mut state.windows[usize::from(*index)];
        slot.measures.add(&measures)?;
        slot.version = slot.version.max(pending.version);
        slot.dirty = true;
    }
    if !slots.is_empty() && !state.dirty {
        state.dirty = true;
        dirty_scopes.push((pending.kind_index, Arc::clone(&state.key)));
    }
    Ok(())
}
