//! [`TotalsState`]: distinct values per scope kind (see the parent module's docs, "What is
//! bounded"): which values get totals of their own and which are counted under the kind's
//! overflow bucket.

use super::*;

/// Where an event's scope is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Under its own value; `admit` = a new value of the admission window.
    Own { admit: bool },
    /// Under the kind's overflow bucket.
    Overflow,
}

/// Per scope kind of `plan` (single dimensions, then policies): the cardinality limit
/// (`usize::MAX` = none), the overflow bucket's key and the admission window's spec index. A
/// per-kind override names a dimension or a policy as `policy:<id>` (any definition) or
/// `policy:<id>@<definition>`.
pub(super) fn kind_settings(
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
    /// Routes `key` ([`Self::route`]) for an event landing in `admission`, counting a newly
    /// admitted value or an overflowed scope; `true` when it is counted under the overflow
    /// bucket.
    pub(super) fn route_and_admit(
        &mut self,
        kind_index: usize,
        key: &str,
        admission: Option<&Window>,
        outcome: &mut ApplyOutcome,
    ) -> bool {
        match self.route(kind_index, key, admission) {
            Route::Own { admit } => {
                if let (true, Some(window)) = (admit, admission) {
                    self.admitted
                        .entry((kind_index, window.start()))
                        .or_insert((window.end(), 0))
                        .1 += 1;
                }
                false
            }
            Route::Overflow => {
                outcome.scopes_overflowed += 1;
                self.scopes_overflowed += 1;
                true
            }
        }
    }

    /// Whether `key` of kind map `kind_index` is counted under its own value or the overflow
    /// bucket, for an event landing in `admission` (its admission window). Read-only.
    pub(super) fn route(&self, kind_index: usize, key: &str, admission: Option<&Window>) -> Route {
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
}
