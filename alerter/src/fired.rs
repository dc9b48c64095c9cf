//! [`Fired`]: the dedup keys of the alerts already raised, each kept until the window it is
//! about can no longer produce it again (issue 13 point 7: the set was never pruned).
//!
//! # Guarantees
//! - An alert is raised at most once per dedup key while its key is held: the engine prunes a
//!   key ([`Fired::prune`]) twice as long after [`forget_after`] its alert as it keeps
//!   evaluating an ended window (`TotalsView::evict_ended`, an hour by default), so a pruned
//!   window key cannot fire again.
//! - Deterministic on restore: the instant comes from the alert record itself (its window end
//!   and `raised_at`), so the alerts read back from the alerts topic are pruned at the same
//!   instants as the ones raised live.
//! - Bounded: what is held is the alerts of the windows still open (plus a day of alerts about no
//!   window), not every alert ever raised.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use schemas::Alert;

use crate::engine::Effect;

/// The shortest time a key is held after its alert was raised, for alerts about no window
/// (rules, pending jobs: their window ends when they are raised).
pub const FIRED_MIN_KEEP: TimeDelta = TimeDelta::days(1);

/// Until when the dedup key of `alert` must be held: its window's end, or a day after it was
/// raised for an alert about no window (whose window ends when it is raised).
pub fn forget_after(alert: &Alert) -> DateTime<Utc> {
    if alert.window_end > alert.raised_at {
        return alert.window_end;
    }
    alert
        .raised_at
        .checked_add_signed(FIRED_MIN_KEEP)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Dedup keys raised, each with the instant after which it may be forgotten.
#[derive(Debug, Default)]
pub struct Fired {
    keys: HashMap<String, DateTime<Utc>>,
}

impl Fired {
    /// Marks `key` raised; `false` if it already was. Held until [`Fired::settle`] sees its alert
    /// (or [`Fired::insert_until`] said when).
    pub fn insert(&mut self, key: String) -> bool {
        self.insert_until(key, DateTime::<Utc>::MAX_UTC)
    }

    /// Marks `key` raised, to be held until `until`; `false` if it
    /// already was (its instant is then left as it was).
    pub fn insert_until(&mut self, key: String, until: DateTime<Utc>) -> bool {
        match self.keys.entry(key) {
            Entry::Vacant(vacant) => {
                vacant.insert(until);
                true
            }
            Entry::Occupied(_) => false,
        }
    }

    /// Whether `key` was raised.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Records when the keys of the alerts in `effects` may be forgotten (their window's end).
    pub fn settle(&mut self, effects: &[Effect]) {
        for effect in effects {
            if let Effect::Alert(alert, _) = effect {
                if let Some(until) = self.keys.get_mut(&alert.dedup_key) {
                    if *until == DateTime::<Utc>::MAX_UTC {
                        *until = forget_after(alert);
                    }
                }
            }
        }
    }

    /// Forgets the keys whose instant is at or before `cutoff`; returns how many.
    pub fn prune(&mut self, cutoff: DateTime<Utc>) -> usize {
        let held = self.keys.len();
        self.keys.retain(|_, until| *until > cutoff);
        held - self.keys.len()
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
