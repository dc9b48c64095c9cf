//! [`TotalsState`]: closing windows (eviction, closed windows and where open ones start) and
//! draining totals to write (policy updates ahead of a flush, the dirty set).

use super::*;

impl TotalsState {
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
        self.fold();
        // Room for the deltas of a fold interval like the recent ones, not of an old burst.
        self.deltas
            .shrink_to(2 * std::mem::take(&mut self.deltas_high_water));
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
        self.fold();
        let mut updates = Vec::new();
        for (kind_index, key) in &self.dirty_scopes {
            // Maps past the single dimensions are the policies' (`map_index`).
            if *kind_index < SingleDimension::ALL.len() || self.held[*kind_index] {
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
        self.fold();
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
}
