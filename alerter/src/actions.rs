//! [`ActionWatch`]: the retry and fallback rules of a policy's `retry_policy`, checked per user
//! action (`action_id`) on the usage events themselves, because totals do not keep actions apart.
//! Pure: the service feeds events and carries out the returned [`Effect`]s.
//!
//! # Rules (for every policy with a `retry_policy` whose selector the event matches)
//! - **Non-retryable retry**: an attempt `n` ended with a status in `non_retryable`
//!   (default `quota_exceeded`, `invalid_request`, `policy_blocked`) and a later attempt of the same
//!   action exists. Attempts of one action may arrive in any order (they are spread over
//!   partitions), so the rule looks at the set of attempts seen, not at arrival order.
//! - **Retry budget**: the action made more than `max_attempts_per_action` attempts (its highest
//!   `attempt` number, or the number of distinct attempts seen, whichever is larger).
//! - **Fallback budget per action**: the cost of the action's fallback attempts
//!   (`fallback_from_model` set) exceeds `max_fallback_cost_usd`.
//!
//! - **Retry-after ignored** (`respect_retry_after`, default on): attempt `n` failed with a
//!   `retry_after_ms` (the provider's `Retry-After`), and attempt `n + 1` of the same action
//!   occurred less than that wait after attempt `n` (both by `occurred_at`; whether gateways stamp
//!   an attempt's start or its end, a retry this early did not wait, so the rule has no false
//!   positive from latency). Hammering a provider that asked for a pause prolongs the rate limit
//!   and bills nothing useful.
//!
//! - **Shared key** (a policy's `shared_key`, on any policy, not only those with a
//!   `retry_policy`): one `api_key_id` of the policy's traffic used by more than `max_workflows`
//!   workflows or `max_teams` teams in a UTC day (by `occurred_at`). A production key shared
//!   across workflows hides who spends and cannot be capped or revoked for one of them alone.
//!   Once per (policy, key, day, limit); at most the limit + 1 names are kept per key and day, and
//!   days before yesterday are forgotten.
//!
//! Each fires **once per (policy, action, rule)** (the alert's `dedup_key`; restored from the alerts
//! topic at startup), as a Slack notice grouped per policy and scope so a storm is one message per
//! grouping interval, never one per event. Actions not seen for `horizon` are forgotten (at most
//! `max_actions` are kept; the oldest go first), so memory is bounded.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, TimeDelta, Utc};
use policy::{EventDims, PolicySet};
use rust_decimal::Decimal;
use schemas::{AlertKind, Status, UsageEvent};

use crate::engine::{rule_alert, Effect};

/// What is known about one action.
#[derive(Debug, Default)]
struct ActionState {
    /// Status per attempt number.
    attempts: BTreeMap<u32, Status>,
    /// Per attempt number: when it occurred, and when a retry may occur (plus its
    /// `retry_after_ms`, when it carried one).
    timing: BTreeMap<u32, (DateTime<Utc>, Option<DateTime<Utc>>)>,
    /// Cost of its fallback attempts.
    fallback_cost: Decimal,
    /// Last time (processing) an event of it was seen.
    last_seen: Option<DateTime<Utc>>,
}

/// Workflows and teams seen per (policy, key, day), each capped at its limit + 1.
type KeyUsers = HashMap<(String, String, chrono::NaiveDate), (BTreeSet<String>, BTreeSet<String>)>;

/// Per-action retry and fallback rules (module docs).
#[derive(Debug)]
pub struct ActionWatch {
    /// The shared-key rule's sightings.
    key_users: KeyUsers,
    actions: HashMap<String, ActionState>,
    /// Actions in first-seen order, for eviction.
    order: VecDeque<(DateTime<Utc>, String)>,
    horizon: TimeDelta,
    max_actions: usize,
}

impl ActionWatch {
    /// Forgets actions idle for `horizon`; keeps at most `max_actions`.
    pub fn new(horizon: TimeDelta, max_actions: usize) -> ActionWatch {
        ActionWatch {
            key_users: HashMap::new(),
            actions: HashMap::new(),
            order: VecDeque::new(),
            horizon,
            max_actions: max_actions.max(1),
        }
    }

    /// Actions held.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// Whether no action is held.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Applies `event`; returns the alerts it triggers (the caller drops those whose dedup key
    /// already fired, see [`crate::engine::Engine::take_unfired`]).
    pub fn observe(
        &mut self,
        policies: &PolicySet,
        event: &UsageEvent,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let dims = EventDims::from_event(event);
        let mut shared = self.shared_keys(policies, &dims, event, now);
        let watching: Vec<_> = policies
            .policies()
            .iter()
            .filter(|policy| policy.record().retry_policy.is_some() && policy.matches(&dims))
            .collect();
        if watching.is_empty() {
            return shared;
        }
        self.evict(now);
        if !self.actions.contains_key(&event.action_id) {
            self.order.push_back((now, event.action_id.clone()));
        }
        let state = self.actions.entry(event.action_id.clone()).or_default();
        state.attempts.insert(event.attempt, event.status);
        let retry_not_before = event.retry_after_ms.map(|wait| {
            event.occurred_at + TimeDelta::milliseconds(i64::try_from(wait).unwrap_or(i64::MAX / 2))
        });
        state
            .timing
            .insert(event.attempt, (event.occurred_at, retry_not_before));
        if event.fallback_from_model.is_some() {
            state.fallback_cost += event.cost_usd.unwrap_or_default();
        }
        state.last_seen = Some(now);
        let mut effects = Vec::new();
        for policy in watching {
            let Some(rules) = &policy.record().retry_policy else {
                continue;
            };
            let scope = policy.scope_key_unchecked(&dims).scope_map();
            let action = &event.action_id;
            let highest = state.attempts.keys().next_back().copied().unwrap_or(0);
            if let Some((attempt, status)) = state.attempts.iter().find(|(attempt, status)| {
                rules.non_retryable.contains(status) && **attempt < highest
            }) {
                effects.push(alert(
                    policy,
                    &scope,
                    AlertKind::NonRetryableRetry,
                    format!(
                        "action {action} retried after attempt {attempt} ended in {} (not retryable under policy {}); attempt {highest} was made",
                        status.as_str(),
                        policy.id()
                    ),
                    format!("retry/{}/{action}/non_retryable", policy.id()),
                    now,
                ));
            }
            let attempts = u32::try_from(state.attempts.len())
                .unwrap_or(u32::MAX)
                .max(highest);
            if attempts > rules.max_attempts_per_action {
                effects.push(alert(
                    policy,
                    &scope,
                    AlertKind::RetryBudget,
                    format!(
                        "action {action} made {attempts} attempts; policy {} allows {}",
                        policy.id(),
                        rules.max_attempts_per_action
                    ),
                    format!("retry/{}/{action}/attempts", policy.id()),
                    now,
                ));
            }
            if rules.respect_retry_after {
                // Attempts may arrive in any order: check every consecutive pair seen.
                let early = state.timing.iter().find_map(|(attempt, (_, not_before))| {
                    let not_before = (*not_before)?;
                    let (started, _) = state.timing.get(&(attempt + 1))?;
                    (*started < not_before).then(|| (*attempt, not_before - *started))
                });
                if let Some((attempt, early_by)) = early {
                    effects.push(alert(
                        policy,
                        &scope,
                        AlertKind::RetryBudget,
                        format!(
                            "action {action} retried {} ms before the provider's Retry-After allowed: attempt {attempt} asked to wait, attempt {} did not (policy {}); back off for the time the provider asks",
                            early_by.num_milliseconds(),
                            attempt + 1,
                            policy.id()
                        ),
                        format!("retry/{}/{action}/retry_after", policy.id()),
                        now,
                    ));
                }
            }
            if let Some(max) = rules.max_fallback_cost_usd {
                if state.fallback_cost > max {
                    effects.push(alert(
                        policy,
                        &scope,
                        AlertKind::FallbackBudget,
                        format!(
                            "action {action} spent {} USD on fallbacks; policy {} allows {} per action",
                            state.fallback_cost.normalize(),
                            policy.id(),
                            max.normalize()
                        ),
                        format!("retry/{}/{action}/fallback_cost", policy.id()),
                        now,
                    ));
                }
            }
        }
        shared.extend(effects);
        shared
    }

    /// The shared-key rule (module docs) for `event`.
    fn shared_keys(
        &mut self,
        policies: &PolicySet,
        dims: &EventDims<'_>,
        event: &UsageEvent,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let day = event.occurred_at.date_naive();
        for policy in policies.policies() {
            let Some(rules) = &policy.record().shared_key else {
                continue;
            };
            if !policy.matches(dims) {
                continue;
            }
            let key = (policy.id().to_owned(), event.api_key_id.clone(), day);
            if !self.key_users.contains_key(&key) {
                // A new day: forget the days before yesterday.
                let yesterday = day.pred_opt().unwrap_or(day);
                self.key_users.retain(|(_, _, seen), _| *seen >= yesterday);
            }
            let (workflows, teams) = self.key_users.entry(key).or_default();
            let checks = [
                ("workflows", rules.max_workflows, workflows, &event.workflow),
                ("teams", rules.max_teams, teams, &event.team),
            ];
            for (what, limit, seen, name) in checks {
                let Some(limit) = limit else { continue };
                let limit = limit as usize;
                if seen.len() > limit || seen.contains(name) {
                    continue;
                }
                seen.insert(name.clone());
                if seen.len() <= limit {
                    continue;
                }
                let mut scope = BTreeMap::new();
                scope.insert("api_key_id".to_owned(), event.api_key_id.clone());
                let names: Vec<&str> = seen.iter().map(String::as_str).collect();
                effects.push(alert(
                    policy,
                    &scope,
                    AlertKind::Anomaly,
                    format!(
                        "key {} served {} {what} on {day} ({}), more than the {limit} policy {} allows: one key shared this way hides who spends and cannot be capped or revoked for one of them alone; issue a key per {}",
                        event.api_key_id,
                        seen.len(),
                        names.join(", "),
                        policy.id(),
                        what.trim_end_matches('s'),
                    ),
                    format!(
                        "shared_key/{}/{}/{day}/{what}",
                        policy.id(),
                        event.api_key_id
                    ),
                    now,
                ));
            }
        }
        effects
    }

    /// Drops idle actions from the front of the first-seen order, and the oldest while over
    /// `max_actions`. An old action still active stops the sweep until it goes idle (bounded by
    /// `max_actions` anyway).
    fn evict(&mut self, now: DateTime<Utc>) {
        while let Some((_, action)) = self.order.front() {
            let idle = self
                .actions
                .get(action)
                .and_then(|state| state.last_seen)
                .is_none_or(|last| now - last > self.horizon);
            if !idle && self.actions.len() < self.max_actions {
                break;
            }
            let action = action.clone();
            self.order.pop_front();
            self.actions.remove(&action);
        }
    }
}

fn alert(
    policy: &policy::Policy,
    scope: &BTreeMap<String, String>,
    kind: AlertKind,
    text: String,
    dedup_key: String,
    now: DateTime<Utc>,
) -> Effect {
    let mut effect = rule_alert(policy, scope, kind.as_str(), text, dedup_key, now);
    if let Effect::Alert(alert, _) = &mut effect {
        alert.kind = kind;
    }
    effect
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
id: retries
description: retry rules
owner: {team: support, contact: support@example.com}
selector: {team: search}
unit: requests
window: {kind: day}
hard_cap: 1000000
action: {kind: alert_only}
retry_policy:
  max_attempts_per_action: 3
  max_fallback_cost_usd: "0.50"
"#;

    fn event(action: &str, attempt: u32, status: Status) -> UsageEvent {
        let mut event = schemas::fixtures::text_event(&format!("{action}-{attempt}"), Utc::now());
        event.action_id = action.to_owned();
        event.attempt = attempt;
        event.status = status;
        event
    }

    fn kinds(effects: &[Effect]) -> Vec<AlertKind> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Alert(alert, _) => Some(alert.kind),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_retry_after_a_quota_error_is_flagged_in_any_arrival_order() {
        let policies = PolicySet::from_str("p.yaml", POLICY).unwrap();
        let now = Utc::now();
        let mut watch = ActionWatch::new(TimeDelta::minutes(15), 1000);
        // The retry arrives first, then the quota error it retried.
        assert!(kinds(&watch.observe(&policies, &event("a1", 2, Status::Ok), now)).is_empty());
        let effects = watch.observe(&policies, &event("a1", 1, Status::QuotaExceeded), now);
        assert_eq!(kinds(&effects), vec![AlertKind::NonRetryableRetry]);
        // A retry after a timeout is fine.
        watch.observe(&policies, &event("a2", 1, Status::Timeout), now);
        assert!(kinds(&watch.observe(&policies, &event("a2", 2, Status::Ok), now)).is_empty());
    }

    #[test]
    fn too_many_attempts_and_fallback_spend_are_flagged() {
        let policies = PolicySet::from_str("p.yaml", POLICY).unwrap();
        let now = Utc::now();
        let mut watch = ActionWatch::new(TimeDelta::minutes(15), 1000);
        for attempt in 1..=3 {
            let effects = watch.observe(&policies, &event("a", attempt, Status::Timeout), now);
            assert!(kinds(&effects).is_empty(), "attempt {attempt}");
        }
        let effects = watch.observe(&policies, &event("a", 4, Status::Ok), now);
        assert_eq!(kinds(&effects), vec![AlertKind::RetryBudget]);

        let mut fallback = event("b", 2, Status::Ok);
        fallback.fallback_from_model = Some("gpt-4o".to_owned());
        fallback.cost_usd = Some("0.30".parse().unwrap());
        assert!(kinds(&watch.observe(&policies, &fallback, now)).is_empty());
        fallback.attempt = 3;
        let effects = watch.observe(&policies, &fallback, now);
        assert_eq!(kinds(&effects), vec![AlertKind::FallbackBudget]);
    }

    #[test]
    fn a_retry_sooner_than_retry_after_is_flagged_and_a_patient_one_is_not() {
        let policies = PolicySet::from_str("p.yaml", POLICY).unwrap();
        let now = Utc::now();
        let start = now - TimeDelta::seconds(30);
        let mut watch = ActionWatch::new(TimeDelta::minutes(15), 1000);
        let limited = |action: &str| {
            let mut event = event(action, 1, Status::RateLimited);
            event.occurred_at = start;
            event.latency_ms = Some(200);
            event.retry_after_ms = Some(5_000);
            event
        };
        let retry = |action: &str, after_ms: i64| {
            let mut event = event(action, 2, Status::Ok);
            event.occurred_at = start + TimeDelta::milliseconds(after_ms);
            event
        };
        // 1.2 s after the 429 that asked for 5 s: flagged, in either arrival order.
        assert!(kinds(&watch.observe(&policies, &retry("hasty", 1_200), now)).is_empty());
        let effects = watch.observe(&policies, &limited("hasty"), now);
        assert_eq!(kinds(&effects), vec![AlertKind::RetryBudget]);
        let Effect::Alert(alert, _) = &effects[0] else {
            unreachable!()
        };
        assert!(
            alert.message.contains("3800 ms before"),
            "{}",
            alert.message
        );
        // 5.3 s after: the wait was respected.
        watch.observe(&policies, &limited("patient"), now);
        assert!(kinds(&watch.observe(&policies, &retry("patient", 5_300), now)).is_empty());
        // Turned off in the policy: nothing.
        let off = PolicySet::from_str(
            "p.yaml",
            &POLICY.replace(
                "max_attempts_per_action: 3",
                "max_attempts_per_action: 3\n  respect_retry_after: false",
            ),
        )
        .unwrap();
        let mut watch = ActionWatch::new(TimeDelta::minutes(15), 1000);
        watch.observe(&off, &limited("hasty"), now);
        assert!(kinds(&watch.observe(&off, &retry("hasty", 1_200), now)).is_empty());
    }

    #[test]
    fn a_key_shared_by_too_many_workflows_or_teams_is_flagged_once_a_day() {
        let policies = PolicySet::from_str(
            "p.yaml",
            r#"
id: keys
description: one key per workflow in production
owner: {team: platform, contact: platform@example.com}
environment: prod
unit: requests
window: {kind: day}
hard_cap: 1000000
action: {kind: alert_only}
shared_key: {max_workflows: 2}
"#,
        )
        .unwrap();
        let now = Utc::now();
        let mut watch = ActionWatch::new(TimeDelta::minutes(15), 1000);
        let used = |key: &str, team: &str, workflow: &str, environment: &str| {
            let mut event = event(&format!("{key}-{workflow}-{team}"), 1, Status::Ok);
            event.api_key_id = key.to_owned();
            event.team = team.to_owned();
            event.workflow = workflow.to_owned();
            event.environment = environment.to_owned();
            event
        };
        let mut found = Vec::new();
        for (key, team, workflow, environment) in [
            ("k-prod", "search", "answer", "prod"),
            ("k-prod", "search", "rerank", "prod"),
            ("k-prod", "search", "answer", "prod"),
            // A third workflow: over max_workflows.
            ("k-prod", "search", "summarize", "prod"),
            ("k-prod", "search", "classify", "prod"),
            // Another team on the key: over the default max_teams of 1.
            ("k-prod", "ads", "answer", "prod"),
            // A normal key, and a shared one outside the selector (staging).
            ("k-one", "search", "answer", "prod"),
            ("k-stage", "search", "a", "staging"),
            ("k-stage", "ads", "b", "staging"),
            ("k-stage", "ads", "c", "staging"),
        ] {
            for effect in watch.observe(&policies, &used(key, team, workflow, environment), now) {
                if let Effect::Alert(alert, _) = effect {
                    found.push(alert.dedup_key.clone());
                }
            }
        }
        let day = now.date_naive();
        assert_eq!(
            found,
            vec![
                format!("shared_key/keys/k-prod/{day}/workflows"),
                format!("shared_key/keys/k-prod/{day}/teams"),
            ]
        );
    }

    #[test]
    fn events_outside_the_selector_and_idle_actions_are_not_kept() {
        let policies = PolicySet::from_str("p.yaml", POLICY).unwrap();
        let now = Utc::now();
        let mut watch = ActionWatch::new(TimeDelta::minutes(15), 1000);
        let mut other = event("x", 2, Status::Ok);
        other.team = "ads".to_owned();
        assert!(watch.observe(&policies, &other, now).is_empty());
        assert!(watch.is_empty());
        watch.observe(&policies, &event("a", 1, Status::Ok), now);
        watch.observe(
            &policies,
            &event("b", 1, Status::Ok),
            now + TimeDelta::minutes(20),
        );
        assert_eq!(watch.len(), 1, "a was idle for 20 minutes");
    }
}
