//! Remaining quota: what a request's scopes have spent, their limit, what remains, when it resets
//! and the decision in force, per policy that counts the request ([`Scopes`]). The decision
//! sidecar answers `GET /v1/scopes` with it and carries the tightest one on every check as
//! `RateLimit-*` headers; an embedding gateway asks [`Scopes::tightest`] in process, and checks
//! the `admission.estimated_cost` rule with [`Scopes::estimated_cost_refusal`].
//!
//! The totals come from the aggregator's totals topic, followed from its beginning like the
//! control topic ([`gateway::follow`]): the per-partition partials of each policy's own totals
//! (`policy:<id>@<definition>`, the current definitions only; other scope kinds are skipped as
//! they are read), highest version per partial, summed ([`TotalsView`]). The decision in force is
//! the control view's entry for the policy's control key ([`policy::Policy::control_key`]).
//!
//! Guarantees and limits:
//! - **As fresh as the totals topic**, which the aggregator publishes at each flush (about a
//!   second behind the events): `spent` can lag the last second of traffic; the decision in
//!   force is exactly the control topic's.
//! - **Not ready until caught up** with the totals topic as it stood at start: before, answers
//!   say `ready: false` and carry no `RateLimit-*` headers (a missing total would read as an
//!   untouched quota).
//! - **Windowed counter policies only**: a `concurrent_jobs` gauge has no window to reset and is
//!   left out. An approved raise shows as the `limit` of the decision it produced; a raise that
//!   has not produced one yet is not known here (the alerter, which validates approvals, has it).
//! - Ended windows are evicted every minute, so memory holds the policies' live windows.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::follow::{Apply, Following};
use crate::{DecisionView, Gateway, InForce, RequestAttributes, Verdict};
use chrono::{DateTime, Utc};
use policy::{Policy, PolicySet, ScopeKey};
use quotaflow_client::config::KafkaConfig;
use quotaflow_totals::measures::Measures;
use quotaflow_totals::view::{TotalsView, WindowKey};
use quotaflow_windows::WindowSpec;
use rdkafka::message::{BorrowedMessage, Message};
use rust_decimal::Decimal;
use schemas::quota::{DecisionInForce, ScopeQuota};
use schemas::WindowTotal;
use tracing::warn;

/// Where the decision in force for a scope is looked up: the [`Gateway`]'s view, or a fixed
/// one.
pub trait DecisionLookup {
    /// The block or degrade in force for a control-topic key; `None` when the key is allowed.
    fn in_force(&self, key: &str) -> Option<InForce>;
    /// Whether any block or degrade of `policy_id` is held (else `in_force` is not asked).
    fn has_decisions_of(&self, policy_id: &str) -> bool;
}

impl DecisionLookup for Gateway {
    fn in_force(&self, key: &str) -> Option<InForce> {
        Gateway::in_force(self, key)
    }

    fn has_decisions_of(&self, policy_id: &str) -> bool {
        Gateway::has_decisions_of(self, policy_id)
    }
}

impl DecisionLookup for RwLock<DecisionView> {
    fn in_force(&self, key: &str) -> Option<InForce> {
        self.read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .in_force(key, Utc::now())
    }

    fn has_decisions_of(&self, policy_id: &str) -> bool {
        self.read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .has_decisions_of(policy_id)
    }
}

/// One windowed policy, with what its lookups need precomputed.
struct Counted {
    policy: Policy,
    spec: WindowSpec,
    /// The policy's current window, recomputed when `now` leaves it.
    window: RwLock<Option<quotaflow_windows::Window>>,
}

impl Counted {
    fn window_at(&self, now: DateTime<Utc>) -> Option<quotaflow_windows::Window> {
        let held = self
            .window
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(window) = held.filter(|window| window.start() <= now && now < window.end()) {
            return Some(window);
        }
        let window = self.spec.window_of(now)?;
        *self
            .window
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(window.clone());
        Some(window)
    }
}

/// What the policies' scopes spent, by (policy, window start), then by scope key: the sum of
/// the partials the [`TotalsView`] holds, in the policy's unit, kept current as totals arrive
/// (a lookup per check allocates nothing).
#[derive(Default)]
struct Spent {
    /// The partials, highest version per source (the reading rule).
    totals: TotalsView,
    /// Policy index → window start (epoch seconds) → scope key → amount.
    amounts: FastMap<(usize, i64), WindowAmounts>,
}

/// A map hashed with foldhash (looked up on every check; SipHash's flooding resistance is not
/// needed for keys the aggregator wrote).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One policy window's end and its scopes' amounts.
type WindowAmounts = (DateTime<Utc>, FastMap<String, Decimal>);

/// The windowed counter policies and the totals of their current windows.
pub struct Scopes {
    policies: Vec<Counted>,
    /// `policy:<id>@<definition>` → index in `policies`.
    kinds: HashMap<String, usize>,
    spent: Arc<RwLock<Spent>>,
    following: Option<Following>,
}

/// A policy scope counted for a request, before it is rendered.
struct Candidate<'s> {
    counted: &'s Counted,
    scope_key: ScopeKey,
    window: quotaflow_windows::Window,
    spent: Decimal,
    limit: Decimal,
    /// `limit - spent`, at least 0.
    remaining: Decimal,
    in_force: Option<InForce>,
}

impl Candidate<'_> {
    /// Tighter first: less of its limit left (`remaining / limit`, compared by cross
    /// multiplication, no division), then by policy id.
    fn tighter(&self, other: &Candidate<'_>) -> std::cmp::Ordering {
        let share = |candidate: &Candidate<'_>, by: &Candidate<'_>| {
            if candidate.limit.is_zero() {
                Decimal::ZERO
            } else {
                candidate
                    .remaining
                    .checked_mul(by.limit)
                    .unwrap_or(Decimal::MAX)
            }
        };
        share(self, other)
            .cmp(&share(other, self))
            .then_with(|| self.counted.policy.id().cmp(other.counted.policy.id()))
    }

    fn render(self, now: DateTime<Utc>) -> ScopeQuota {
        let policy = &self.counted.policy;
        ScopeQuota {
            policy_id: policy.id().to_owned(),
            shadow: policy.is_shadow(),
            scope: render(&self.scope_key),
            unit: policy.unit().to_string(),
            window: self.window.kind().to_string(),
            window_start: self.window.start(),
            resets_at: self.window.end(),
            reset_seconds: u64::try_from((self.window.end() - now).num_seconds())
                .unwrap_or(0)
                .max(1),
            spent: self.spent.normalize(),
            cap: policy.hard_cap().normalize(),
            limit: self.limit.normalize(),
            remaining: self.remaining.normalize(),
            decision: self
                .in_force
                .map(|in_force| decision(&in_force.verdict, in_force.shadow)),
            approval: None,
        }
    }
}

impl Scopes {
    /// The windowed counter policies of `policies`, with an empty totals view (tests fill it
    /// with [`Scopes::apply`]; [`Scopes::follow`] follows the totals topic).
    pub fn new(policies: &PolicySet) -> Scopes {
        let mut counted: Vec<Counted> = policies
            .policies()
            .iter()
            .filter_map(|policy| {
                let spec = quotaflow_totals::scopes::policy_spec(policy.window()?).ok()?;
                Some(Counted {
                    policy: policy.clone(),
                    spec,
                    window: RwLock::default(),
                })
            })
            .collect();
        counted.sort_by(|a, b| a.policy.id().cmp(b.policy.id()));
        let kinds = counted
            .iter()
            .enumerate()
            .map(|(index, counted)| (counted.policy.totals_scope_kind(), index))
            .collect();
        Scopes {
            policies: counted,
            kinds,
            spent: Arc::default(),
            following: None,
        }
    }

    /// Starts following `kafka`'s totals topic (see the module docs).
    pub fn follow(
        mut self,
        kafka: &KafkaConfig,
        client_id: &str,
        probe_interval: Duration,
    ) -> Result<Scopes, crate::GatewayError> {
        let applier = TotalsApplier {
            spent: self.spent.clone(),
            kinds: self.kinds.clone(),
            units: self
                .policies
                .iter()
                .map(|counted| counted.policy.unit())
                .collect(),
            applied: 0,
        };
        self.following = Some(Following::start(
            kafka,
            &format!("{client_id}-totals"),
            &kafka.topics.totals,
            probe_interval,
            applier,
            "totals-follower",
        )?);
        Ok(self)
    }

    /// Whether answers are complete: caught up with the totals topic (always, without one).
    pub fn is_ready(&self) -> bool {
        self.following
            .as_ref()
            .is_none_or(|following| following.health().is_ready())
    }

    /// Whether any policy has a window (else there is nothing to answer).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Applies one total (tests and benchmarks; the follower applies what it reads).
    pub fn apply(&self, total: WindowTotal) {
        let units: Vec<policy::Unit> = self
            .policies
            .iter()
            .map(|counted| counted.policy.unit())
            .collect();
        write(&self.spent).apply(total, &self.kinds, &units);
    }

    /// The quota of every policy that counts `request`, at `now`, tightest first (least
    /// remaining share of the limit).
    pub fn quotas(
        &self,
        request: &RequestAttributes<'_>,
        checker: &dyn DecisionLookup,
        now: DateTime<Utc>,
    ) -> Vec<ScopeQuota> {
        let mut candidates = self.candidates(request, checker, now);
        candidates.sort_by(Candidate::tighter);
        candidates
            .into_iter()
            .map(|candidate| candidate.render(now))
            .collect()
    }

    /// The tightest quota of `request` (what its `RateLimit-*` headers say), rendering only it.
    pub fn tightest(
        &self,
        request: &RequestAttributes<'_>,
        checker: &dyn DecisionLookup,
        now: DateTime<Utc>,
    ) -> Option<ScopeQuota> {
        self.candidates(request, checker, now)
            .into_iter()
            .min_by(Candidate::tighter)
            .map(|candidate| candidate.render(now))
    }

    /// The `admission.estimated_cost` rule: the first quota (tightest first) of a policy in
    /// `policies` (enforced, not shadow) whose remaining headroom is below `request`'s declared
    /// maximum cost, priced from `catalog`; that quota and the refusal. `None` when the request
    /// fits, declares nothing, or cannot be priced.
    pub fn estimated_cost_refusal(
        &self,
        request: &RequestAttributes<'_>,
        declared: &policy::admission::Declared,
        policies: &std::collections::HashMap<String, Option<String>>,
        catalog: &pricing::Catalog,
        checker: &dyn DecisionLookup,
        now: DateTime<Utc>,
    ) -> Option<(ScopeQuota, policy::admission::Refusal)> {
        let mut candidates: Vec<Candidate<'_>> = self
            .candidates(request, checker, now)
            .into_iter()
            .filter(|candidate| {
                policies.contains_key(candidate.counted.policy.id())
                    && !candidate.counted.policy.is_shadow()
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let estimate = crate::admission::estimated_cost(catalog, request, declared)?;
        candidates.sort_by(Candidate::tighter);
        candidates.into_iter().find_map(|candidate| {
            let refusal = policy::admission::estimated_cost_refusal(estimate, candidate.remaining)?;
            Some((candidate.render(now), refusal))
        })
    }

    fn candidates(
        &self,
        request: &RequestAttributes<'_>,
        checker: &dyn DecisionLookup,
        now: DateTime<Utc>,
    ) -> Vec<Candidate<'_>> {
        if self.policies.is_empty() {
            return Vec::new();
        }
        let matched: Vec<(usize, ScopeKey)> = crate::admission::with_event_dims(request, |event| {
            self.policies
                .iter()
                .enumerate()
                .filter_map(|(index, counted)| Some((index, counted.policy.scope_key(event)?)))
                .collect()
        });
        let spent = self
            .spent
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        matched
            .into_iter()
            .filter_map(|(index, scope_key)| {
                let counted = &self.policies[index];
                let window = counted.window_at(now)?;
                let amount = spent
                    .amounts
                    .get(&(index, window.start().timestamp()))
                    .and_then(|(_, by_scope)| by_scope.get(scope_key.as_str()))
                    .copied()
                    .unwrap_or(Decimal::ZERO);
                let policy = &counted.policy;
                let in_force = checker
                    .has_decisions_of(policy.id())
                    .then(|| checker.in_force(&policy.control_key(scope_key.as_str())))
                    .flatten();
                let cap = policy.hard_cap();
                let limit = in_force
                    .as_ref()
                    .map_or(cap, |in_force| in_force.limit.max(cap));
                Some(Candidate {
                    counted,
                    scope_key,
                    window,
                    spent: amount,
                    limit,
                    remaining: (limit - amount).max(Decimal::ZERO),
                    in_force,
                })
            })
            .collect()
    }
}

impl Spent {
    /// Applies one record of a policy's totals and brings its scope's amount up to date.
    fn apply(
        &mut self,
        total: WindowTotal,
        kinds: &HashMap<String, usize>,
        units: &[policy::Unit],
    ) {
        let Some(&index) = kinds.get(&total.scope_kind) else {
            return;
        };
        let key = WindowKey::of(&total);
        let window_end = total.window_end;
        if self.totals.apply(total) == quotaflow_totals::view::Applied::Stale {
            return;
        }
        self.refresh(index, &key, window_end, units[index]);
    }

    /// Forgets a partial (a tombstone) and brings its scope's amount up to date.
    fn remove(
        &mut self,
        key: &schemas::TotalsKey,
        kinds: &HashMap<String, usize>,
        units: &[policy::Unit],
    ) {
        let Some(&index) = kinds.get(&key.scope_kind) else {
            return;
        };
        if !self.totals.remove(key) {
            return;
        }
        let window = WindowKey::of_key(key);
        let window_end = self
            .amounts
            .get(&(index, key.window_start.timestamp()))
            .map_or(key.window_start, |(end, _)| *end);
        self.refresh(index, &window, window_end, units[index]);
    }

    fn refresh(
        &mut self,
        index: usize,
        key: &WindowKey,
        window_end: DateTime<Utc>,
        unit: policy::Unit,
    ) {
        let (_, by_scope) = self
            .amounts
            .entry((index, key.window_start.timestamp()))
            .or_insert_with(|| (window_end, FastMap::default()));
        match self.totals.total(key) {
            Some(total) => {
                by_scope.insert(
                    key.scope_key.clone(),
                    Measures::from(&total).unit_amount(unit),
                );
            }
            None => {
                by_scope.remove(&key.scope_key);
            }
        }
    }

    /// Drops every window that ended at or before `before`.
    fn evict_ended(&mut self, before: DateTime<Utc>) {
        self.totals.evict_ended(before);
        self.amounts.retain(|_, (end, _)| *end > before);
    }
}

/// `dimension=value, …`, `no <dimension>` for one the request lacks, `(all)` for none.
fn render(scope_key: &ScopeKey) -> String {
    let parts: Vec<String> = ScopeKey::decode(scope_key.as_str())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| match value {
            Some(value) => format!("{name}={value}"),
            None => format!("no {name}"),
        })
        .collect();
    if parts.is_empty() {
        "(all)".to_owned()
    } else {
        parts.join(", ")
    }
}

fn decision(verdict: &Verdict, shadow: bool) -> DecisionInForce {
    match verdict {
        Verdict::Degrade {
            to, reason, until, ..
        } => DecisionInForce {
            action: if shadow { "would_degrade" } else { "degrade" }.to_owned(),
            reason: reason.to_string(),
            degrade_to: Some(to.to_string()),
            until: *until,
        },
        Verdict::Block { reason, until, .. } => DecisionInForce {
            action: if shadow { "would_block" } else { "block" }.to_owned(),
            reason: reason.to_string(),
            degrade_to: None,
            until: *until,
        },
        Verdict::Allow => DecisionInForce {
            action: "allow".to_owned(),
            reason: String::new(),
            degrade_to: None,
            until: None,
        },
    }
}

fn write(spent: &RwLock<Spent>) -> std::sync::RwLockWriteGuard<'_, Spent> {
    spent
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Applies the totals of the policies' current definitions (on the follower's thread), and
/// evicts ended windows every 4,096 records.
struct TotalsApplier {
    spent: Arc<RwLock<Spent>>,
    /// `policy:<id>@<definition>` → policy index.
    kinds: HashMap<String, usize>,
    /// Each policy's unit.
    units: Vec<policy::Unit>,
    applied: u64,
}

impl Apply for TotalsApplier {
    fn apply(&mut self, topic: &str, message: &BorrowedMessage<'_>) {
        self.applied += 1;
        if self.applied.is_multiple_of(4096) {
            write(&self.spent).evict_ended(Utc::now() - chrono::TimeDelta::minutes(1));
        }
        let Some(payload) = message.payload() else {
            let key = message
                .key()
                .and_then(|key| std::str::from_utf8(key).ok())
                .and_then(WindowTotal::parse_compaction_key);
            if let Some(key) = key {
                write(&self.spent).remove(&key, &self.kinds, &self.units);
            }
            return;
        };
        match schemas::decode::<WindowTotal>(payload) {
            Ok(total) => write(&self.spent).apply(total, &self.kinds, &self.units),
            Err(error) => warn!(
                %topic,
                partition = message.partition(),
                offset = message.offset(),
                %error,
                "skipping an undecodable totals record"
            ),
        }
    }

    fn entries(&self) -> usize {
        self.spent
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .totals
            .len()
    }
}
