//! [`TotalsState`]: recovery and reloads: stored totals and pending jobs put back after a restart,
//! new policy definitions held and seeded by a backfill, and re-planning when the policy set
//! changes.

use super::*;

impl TotalsState {
    /// Puts a stored total back (after a restart, before the events after its checkpoint are
    /// applied), not dirty: it is already stored. Its version may be ahead of the checkpoint
    /// (a flush wrote the row, then the process died before the checkpoint): replayed events of
    /// versions up to it are then skipped for this total only ([`Self::apply`]), so every
    /// total continues exactly where its stored row left it.
    ///
    /// `rewrite` marks it dirty, so the next drain writes it again: for a row that may not have
    /// reached every output (written to ClickHouse, then the process died before publishing it).
    pub fn restore_total(&mut self, total: StoredTotal<'_>, rewrite: bool) -> Restored {
        self.fold();
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
        self.max_version = self.max_version.max(total.version);
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
        self.fold_deltas()?;
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
            self.max_version = self.max_version.max(total.version);
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
        // Deltas name kind maps and slots by index: into their slots before maps move.
        self.fold_deltas()?;
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
        self.epoch += 1;
        self.plan = plan;
        Ok(added)
    }

    /// The scope `key` of map `kind_index`, created empty if missing.
    fn scope_entry(&mut self, kind_index: usize, key: &str) -> &mut ScopeState {
        scope_in(&mut self.scopes[kind_index], key)
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
}
