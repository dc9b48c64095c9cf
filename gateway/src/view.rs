//! [`DecisionView`]: the control decisions in force, indexed for [`DecisionView::check`]. Pure, no IO.
//!
//! Guarantees:
//! - **Latest version wins per key.** A decision is applied only if its `version` is higher than the
//!   highest version seen for its key (allows included), so redelivery and reordering are harmless.
//! - **An allow lifts.** An `allow` removes whatever block or degrade its key held.
//! - **A tombstone forgets.** [`DecisionView::remove`] drops the key and its version.
//! - **Expired decisions do not apply**: a decision with `expires_at <= now` never matches.
//! - **Matching is exact**: a decision matches a request when every `(dimension, value)` of its scope
//!   equals the request's attribute; an empty scope matches every request. A scope naming a
//!   dimension the request does not carry (an absent `user_id`, label, or an unknown dimension name)
//!   does not match.
//! - **Absence is a value**: a decision whose `absent` names a dimension (`user_id`, `customer_id`,
//!   `labels.<name>`) matches only requests that do not carry it, so the decision for a policy's
//!   "no `user_id`" bucket stops requests without `user_id` and never those with one (whatever
//!   its value, the empty string included). An unknown name in `absent` is refused like one in
//!   the scope.
//! - **An overflow bucket matches any value** (issue 13 point 7): a scope value of
//!   [`policy::OVERFLOW_VALUE`] (`user_id=__overflow__`, the aggregator's bucket for the values
//!   past a kind's cardinality limit) matches every request that carries the dimension, whatever
//!   its value: the gateway cannot tell a value the aggregator tracks from one it folded into
//!   the bucket, so the bucket's cap fails closed. Requests without the dimension still only
//!   match `absent`.
//! - **Precedence is deterministic**: among matching decisions a block wins over a degrade; among
//!   decisions of the same action the one with the smallest key wins.
//!
//! `check` allocates nothing: decisions are indexed by the value of their most selective scope
//! dimension, so a check costs one hash lookup per indexed dimension plus the scope comparisons of
//! the few candidates found; the strings in a [`Verdict`] are shared `Arc<str>`s.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use policy::dimension::Dimension;
use policy::OVERFLOW_VALUE;
use schemas::{ControlDecision, DecisionAction};

/// The attributes of one request that decisions are scoped by, borrowed from the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestAttributes<'a> {
    /// `api_key_id`.
    pub api_key_id: &'a str,
    /// `team`.
    pub team: &'a str,
    /// `user_id`, when the request carries one.
    pub user_id: Option<&'a str>,
    /// `customer_id`, when the request carries one.
    pub customer_id: Option<&'a str>,
    /// `workflow`.
    pub workflow: &'a str,
    /// `environment`.
    pub environment: &'a str,
    /// `provider`.
    pub provider: &'a str,
    /// `model`.
    pub model: &'a str,
    /// `endpoint`.
    pub endpoint: &'a str,
    /// `modality` (text, image, video, audio, embedding, batch).
    pub modality: &'a str,
    /// Free labels as `(name, value)`, matched by scope dimensions `labels.<name>`; a short slice
    /// is scanned linearly.
    pub labels: &'a [(&'a str, &'a str)],
}

impl<'a> RequestAttributes<'a> {
    /// The attributes of the request a usage event accounts for; `labels` holds the event's
    /// labels as pairs (see [`event_labels`]).
    pub fn of_event(
        event: &'a schemas::UsageEvent,
        labels: &'a [(&'a str, &'a str)],
    ) -> RequestAttributes<'a> {
        RequestAttributes {
            api_key_id: &event.api_key_id,
            team: &event.team,
            user_id: event.user_id.as_deref(),
            customer_id: event.customer_id.as_deref(),
            workflow: &event.workflow,
            environment: &event.environment,
            provider: &event.provider,
            model: &event.model,
            endpoint: &event.endpoint,
            modality: event.modality.as_str(),
            labels,
        }
    }

    /// The request's value for `dimension`, `None` when the request does not carry it.
    fn value(&self, dimension: &Dimension) -> Option<&'a str> {
        match dimension {
            Dimension::ApiKeyId => Some(self.api_key_id),
            Dimension::Team => Some(self.team),
            Dimension::UserId => self.user_id,
            Dimension::CustomerId => self.customer_id,
            Dimension::Workflow => Some(self.workflow),
            Dimension::Environment => Some(self.environment),
            Dimension::Provider => Some(self.provider),
            Dimension::Model => Some(self.model),
            Dimension::Endpoint => Some(self.endpoint),
            Dimension::Modality => Some(self.modality),
            Dimension::Label(name) => self
                .labels
                .iter()
                .find(|(label, _)| *label == name.as_str())
                .map(|(_, value)| *value),
        }
    }
}

/// A usage event's labels as the `(name, value)` pairs [`RequestAttributes::labels`] takes.
pub fn event_labels(event: &schemas::UsageEvent) -> Vec<(&str, &str)> {
    event
        .labels
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

/// What the gateway must do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request go as asked.
    Allow,
    /// Refuse the request; show `reason` to the user.
    Block {
        /// Human-readable reason to show the user.
        reason: Arc<str>,
        /// Policy that produced the decision.
        policy_id: Arc<str>,
        /// Compaction key of the decision (empty for the gateway's own fail-closed verdict).
        key: Arc<str>,
        /// When the block ends unless lifted earlier (its `expires_at`, else the end of its
        /// window): what a `Retry-After` says. `None`: not known (until superseded).
        until: Option<DateTime<Utc>>,
    },
    /// Let the request go, routed to `to` instead.
    Degrade {
        /// Route/model to use instead.
        to: Arc<str>,
        /// Human-readable reason to show the user.
        reason: Arc<str>,
        /// Policy that produced the decision.
        policy_id: Arc<str>,
        /// Compaction key of the decision.
        key: Arc<str>,
        /// When the degrade ends unless lifted earlier (as for [`Verdict::Block`]).
        until: Option<DateTime<Utc>>,
    },
}

impl Verdict {
    /// Whether the request may go (allowed or degraded).
    pub fn may_proceed(&self) -> bool {
        !matches!(self, Verdict::Block { .. })
    }

    /// The reason to show the user, `None` for [`Verdict::Allow`].
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Allow => None,
            Verdict::Block { reason, .. } | Verdict::Degrade { reason, .. } => Some(reason),
        }
    }
}

/// A block or degrade held for a key ([`DecisionView::in_force`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    /// What it does to a request it matches.
    pub verdict: Verdict,
    /// A decision of a policy in shadow mode: never enforced.
    pub shadow: bool,
    /// The limit it was decided against (the cap, or a raised limit under an approval).
    pub limit: rust_decimal::Decimal,
}

/// What [`DecisionView::apply`] did with a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A block or degrade is now in force for the key.
    Installed,
    /// A block or degrade of a policy in shadow mode: held apart, never enforced (see
    /// [`DecisionView::check_shadow`]); whatever the key held is lifted.
    Shadowed,
    /// An allow: whatever the key held is lifted.
    Lifted,
    /// The version is not higher than the one held for the key; nothing changed.
    Stale,
    /// The scope names a dimension requests do not have; the key's older decision is dropped and
    /// this one can never match (the alerter and the gateway disagree on dimensions).
    UnknownDimension(String),
}

/// A block or degrade in force, compiled for matching.
#[derive(Debug)]
struct ActiveDecision {
    /// Compaction key, also the tie-break between decisions of the same action.
    key: Arc<str>,
    /// Policy that produced it, reported in the verdict.
    policy_id: Arc<str>,
    /// Reason shown to the user.
    reason: Arc<str>,
    /// `Some(route)` for a degrade, `None` for a block.
    degrade_to: Option<Arc<str>>,
    /// The scope as parsed dimensions, compared on every candidate.
    scope: Vec<(Dimension, Box<str>)>,
    /// Dimensions the request must not carry (`ControlDecision::absent`), checked on every
    /// candidate.
    absent: Vec<Dimension>,
    /// Position in `scope` of the dimension it is indexed by; `None` for an empty scope.
    indexed_by: Option<usize>,
    /// The limit it was decided against ([`InForce::limit`]).
    limit: rust_decimal::Decimal,
    /// `expires_at` in microseconds since the epoch; `i64::MAX` when it never expires.
    expires_at_micros: i64,
    /// When it ends unless lifted: `expires_at`, else the end of its window (`None`: unknown).
    until: Option<DateTime<Utc>>,
}

impl ActiveDecision {
    fn is_block(&self) -> bool {
        self.degrade_to.is_none()
    }

    fn matches(&self, request: &RequestAttributes<'_>, now_micros: i64) -> bool {
        now_micros < self.expires_at_micros
            && self
                .scope
                .iter()
                .all(|(dimension, value)| match request.value(dimension) {
                    Some(held) => held == &**value || &**value == OVERFLOW_VALUE,
                    None => false,
                })
            && self
                .absent
                .iter()
                .all(|dimension| request.value(dimension).is_none())
    }

    /// Whether `self` takes precedence over `other` (block over degrade, then smaller key).
    fn precedes(&self, other: &ActiveDecision) -> bool {
        match (self.is_block(), other.is_block()) {
            (true, false) => true,
            (false, true) => false,
            _ => self.key < other.key,
        }
    }

    fn verdict(&self) -> Verdict {
        match &self.degrade_to {
            None => Verdict::Block {
                reason: self.reason.clone(),
                policy_id: self.policy_id.clone(),
                key: self.key.clone(),
                until: self.until,
            },
            Some(to) => Verdict::Degrade {
                to: to.clone(),
                reason: self.reason.clone(),
                policy_id: self.policy_id.clone(),
                key: self.key.clone(),
                until: self.until,
            },
        }
    }
}

/// When a decision ends unless lifted: its `expires_at`, else the end of its window when that is
/// a real window (after its start; a gauge's window, e.g. concurrent jobs, has none).
fn decision_until(decision: &ControlDecision) -> Option<DateTime<Utc>> {
    let window_end = (decision.window_end > decision.window_start).then_some(decision.window_end);
    match (decision.expires_at, window_end) {
        (Some(expires_at), Some(end)) => Some(expires_at.min(end)),
        (expires_at, end) => expires_at.or(end),
    }
}

/// Makes `candidate` the winner if it matches and takes precedence over the current winner.
fn consider<'view>(
    winner: &mut Option<&'view ActiveDecision>,
    candidate: &'view ActiveDecision,
    request: &RequestAttributes<'_>,
    now_micros: i64,
) {
    if candidate.matches(request, now_micros)
        && winner.is_none_or(|current| candidate.precedes(current))
    {
        *winner = Some(candidate);
    }
}

/// How selective a dimension usually is; decisions are indexed by their lowest-ranked dimension so
/// buckets stay small (one team has many models, one API key few requests' worth of scopes).
fn selectivity_rank(dimension: &Dimension) -> u8 {
    match dimension {
        Dimension::ApiKeyId => 0,
        Dimension::UserId => 1,
        Dimension::CustomerId => 2,
        Dimension::Workflow => 3,
        Dimension::Label(_) => 4,
        Dimension::Team => 5,
        Dimension::Model => 6,
        Dimension::Endpoint => 7,
        Dimension::Provider => 8,
        Dimension::Environment => 9,
        Dimension::Modality => 10,
    }
}

/// Decisions indexed by one dimension, by that dimension's value.
type DecisionsByValue = HashMap<Box<str>, Vec<Arc<ActiveDecision>>>;

/// The decisions in force and the highest version seen per key.
#[derive(Debug, Default)]
pub struct DecisionView {
    /// Highest version applied per key, allows included, so an older block cannot come back.
    versions: HashMap<String, u64>,
    /// Blocks and degrades in force, by key.
    active: HashMap<Arc<str>, Arc<ActiveDecision>>,
    /// Scoped decisions by their indexed dimension, then by that dimension's value. Few entries
    /// (one per dimension in use), scanned in full by `check`.
    index: Vec<(Dimension, DecisionsByValue)>,
    /// Decisions with an empty scope, or whose every scope value is an overflow bucket:
    /// checked against every request.
    unscoped: Vec<Arc<ActiveDecision>>,
    /// The blocks and degrades of policies in shadow mode (`ControlDecision::shadow`), kept
    /// apart: [`DecisionView::check`] never sees them, [`DecisionView::check_shadow`] tells what
    /// they would do. `None` until the first one arrives (no cost without shadow policies).
    shadow: Option<Box<DecisionView>>,
    /// Blocks and degrades held per policy (shadow ones in the shadow view's own count).
    per_policy: HashMap<Arc<str>, usize>,
}

impl DecisionView {
    /// An empty view: every request is allowed.
    pub fn new() -> DecisionView {
        DecisionView::default()
    }

    /// Number of blocks and degrades held (expired ones included until superseded).
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Whether no block or degrade is held.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Whether a block or degrade of `policy_id` is held (shadow ones included): a reader that
    /// looks decisions up by key ([`DecisionView::in_force`]) skips policies without any.
    pub fn has_decisions_of(&self, policy_id: &str) -> bool {
        self.per_policy.contains_key(policy_id)
            || self
                .shadow
                .as_ref()
                .is_some_and(|shadow| shadow.per_policy.contains_key(policy_id))
    }

    /// Number of shadow blocks and degrades held (never enforced).
    pub fn shadow_len(&self) -> usize {
        self.shadow.as_ref().map_or(0, |shadow| shadow.len())
    }

    /// Applies a decision if its version is higher than the one held for its key.
    pub fn apply(&mut self, decision: &ControlDecision) -> ApplyOutcome {
        if let Some(&held) = self.versions.get(&decision.key) {
            if decision.version <= held {
                return ApplyOutcome::Stale;
            }
        }
        self.versions.insert(decision.key.clone(), decision.version);
        self.unindex(&decision.key);
        if let Some(shadow) = &mut self.shadow {
            shadow.unindex(&decision.key);
        }
        if decision.action == DecisionAction::Allow {
            return ApplyOutcome::Lifted;
        }
        if decision.shadow {
            let shadow = self.shadow.get_or_insert_with(Box::default);
            return match shadow.install(decision) {
                ApplyOutcome::Installed => ApplyOutcome::Shadowed,
                other => other,
            };
        }
        self.install(decision)
    }

    /// Compiles and indexes a block or degrade (its version already accepted).
    fn install(&mut self, decision: &ControlDecision) -> ApplyOutcome {
        let mut scope = Vec::with_capacity(decision.scope.len());
        for (name, value) in &decision.scope {
            match Dimension::from_str(name) {
                Ok(dimension) => scope.push((dimension, Box::from(value.as_str()))),
                Err(_) => return ApplyOutcome::UnknownDimension(name.clone()),
            }
        }
        let mut absent = Vec::with_capacity(decision.absent.len());
        for name in &decision.absent {
            match Dimension::from_str(name) {
                Ok(dimension) => absent.push(dimension),
                Err(_) => return ApplyOutcome::UnknownDimension(name.clone()),
            }
        }
        // An overflow value matches any value, so it cannot be looked up by value.
        let indexed_by = scope
            .iter()
            .enumerate()
            .filter(|(_, (_, value))| &**value != OVERFLOW_VALUE)
            .min_by_key(|(_, (dimension, _))| selectivity_rank(dimension))
            .map(|(position, _)| position);
        let degrade_to = match decision.action {
            DecisionAction::Degrade => Some(Arc::from(
                decision.degrade_to.as_deref().unwrap_or_default(),
            )),
            _ => None,
        };
        let active = Arc::new(ActiveDecision {
            key: Arc::from(decision.key.as_str()),
            policy_id: Arc::from(decision.policy_id.as_str()),
            reason: Arc::from(decision.reason.as_str()),
            degrade_to,
            scope,
            absent,
            indexed_by,
            limit: decision.limit,
            expires_at_micros: decision
                .expires_at
                .map_or(i64::MAX, |expires_at| expires_at.timestamp_micros()),
            until: decision_until(decision),
        });
        self.index_decision(&active);
        *self.per_policy.entry(active.policy_id.clone()).or_default() += 1;
        self.active.insert(active.key.clone(), active);
        ApplyOutcome::Installed
    }

    /// Forgets a key entirely (a tombstone on the control topic). Returns whether it was known.
    pub fn remove(&mut self, key: &str) -> bool {
        let was_shadow = self
            .shadow
            .as_mut()
            .is_some_and(|shadow| shadow.unindex(key));
        let was_active = self.unindex(key) || was_shadow;
        self.versions.remove(key).is_some() || was_active
    }

    /// What to do with a request at `now`; see the module docs for matching and precedence.
    pub fn check(&self, request: &RequestAttributes<'_>, now: DateTime<Utc>) -> Verdict {
        let now_micros = now.timestamp_micros();
        let mut winner: Option<&ActiveDecision> = None;
        for candidate in &self.unscoped {
            consider(&mut winner, candidate, request, now_micros);
        }
        for (dimension, by_value) in &self.index {
            let Some(value) = request.value(dimension) else {
                continue;
            };
            if let Some(candidates) = by_value.get(value) {
                for candidate in candidates {
                    consider(&mut winner, candidate, request, now_micros);
                }
            }
        }
        winner.map_or(Verdict::Allow, ActiveDecision::verdict)
    }

    /// The block or degrade held for the control-topic `key` and not expired at `now`; `None`
    /// when the key is allowed.
    pub fn in_force(&self, key: &str, now: DateTime<Utc>) -> Option<InForce> {
        let now_micros = now.timestamp_micros();
        let live = |active: &&Arc<ActiveDecision>| active.expires_at_micros > now_micros;
        let in_force = |active: &Arc<ActiveDecision>, shadow: bool| InForce {
            verdict: active.verdict(),
            shadow,
            limit: active.limit,
        };
        if let Some(active) = self.active.get(key).filter(live) {
            return Some(in_force(active, false));
        }
        let shadow = self.shadow.as_ref()?;
        shadow
            .active
            .get(key)
            .filter(live)
            .map(|active| in_force(active, true))
    }

    /// What the shadow decisions (policies in shadow mode) would do with a request at `now`,
    /// with the same matching and precedence as [`DecisionView::check`]; never enforced.
    pub fn check_shadow(&self, request: &RequestAttributes<'_>, now: DateTime<Utc>) -> Verdict {
        self.shadow
            .as_ref()
            .map_or(Verdict::Allow, |shadow| shadow.check(request, now))
    }

    fn index_decision(&mut self, active: &Arc<ActiveDecision>) {
        let Some(position) = active.indexed_by else {
            self.unscoped.push(active.clone());
            return;
        };
        let (dimension, value) = &active.scope[position];
        let by_value = match self.index.iter().position(|(held, _)| held == dimension) {
            Some(slot) => &mut self.index[slot].1,
            None => {
                self.index.push((dimension.clone(), HashMap::new()));
                &mut self.index.last_mut().expect("just pushed").1
            }
        };
        by_value
            .entry(value.clone())
            .or_default()
            .push(active.clone());
    }

    /// Removes the key's block or degrade from the index; returns whether there was one.
    fn unindex(&mut self, key: &str) -> bool {
        let Some(active) = self.active.remove(key) else {
            return false;
        };
        if let Some(count) = self.per_policy.get_mut(&active.policy_id) {
            *count -= 1;
            if *count == 0 {
                self.per_policy.remove(&active.policy_id);
            }
        }
        let Some(position) = active.indexed_by else {
            self.unscoped
                .retain(|candidate| !Arc::ptr_eq(candidate, &active));
            return true;
        };
        let (dimension, value) = &active.scope[position];
        if let Some(slot) = self.index.iter().position(|(held, _)| held == dimension) {
            let by_value = &mut self.index[slot].1;
            if let Some(candidates) = by_value.get_mut(value) {
                candidates.retain(|candidate| !Arc::ptr_eq(candidate, &active));
                if candidates.is_empty() {
                    by_value.remove(value);
                }
            }
            if by_value.is_empty() {
                self.index.swap_remove(slot);
            }
        }
        true
    }
}
