//! [`Engine`]: the alerter's decisions as a pure function of its inputs: the policies, the
//! aggregator's totals, the approvals, and what the control and alerts topics already hold. No IO
//! and no clock: the service feeds records and `now`, and carries out the [`Effect`]s returned.
//!
//! # Desired state, not transitions
//! For every (policy, scope) the engine derives the decision that **should** be in force:
//! - **block** or **degrade** (the policy's action) while the amount of the scope's *current*
//!   window is at or above the effective limit (the hard cap, or an approved raise that has not
//!   expired); it expires at the window's end, so a gateway lifts it on time even if the alerter is
//!   down;
//! - **allow** otherwise, once a block or degrade was in force: the window ended, an approval
//!   raised the limit above the amount, or the policy was removed.
//!
//! It compares that with the decision the control topic holds for the key and emits a
//! [`Effect::Decide`] only when they differ, with `version = held version + 1` (a key's first
//! decision: its issue time in milliseconds, see [`Engine::decide`]). After a crash the
//! service re-reads the control topic before evaluating, so a decision published just before the
//! crash is found and not published again, and one that was not published is published now:
//! **exactly one effective decision per key**, whichever side of the publish the crash fell.
//!
//! # Alerts follow decisions and thresholds
//! Every alert has a deterministic `dedup_key`; the engine emits an [`Effect::Alert`] only for keys
//! not yet in `fired` (which the service restores from the alerts topic):
//! - `soft/<policy>/<scope>/<window>/<start>/<threshold>`: once per (policy, scope, window,
//!   threshold), thresholds relative to the policy's own cap;
//! - `decision/<control key>/<version>`: one per block/degrade decision (a `hard_cap` alert that
//!   pages) and one per allow decision that lifts one (a `cap_reset` alert that resolves the page).
//!   Because these are derived from the decisions in force, a crash between publishing a decision
//!   and raising its alert is repaired at restart;
//! - `cap/<policy>/<scope>/<window>/<start>`: the hard cap of an `alert_only` policy.
//!
//! # Approvals
//! An approval raises the cap of one (policy, scope) to `new_limit` until `valid_until`. It is
//! applied only if it passes [`crate::approvals::check`]: signed by one of the policy's
//! `approval.approvers` with their key, within `approval.max_raise`, and lasting at most
//! `approval.max_duration` from the broker's append time; otherwise it is rejected with the reason
//! ([`Effect::ApprovalDecided`]). Several valid raises of one scope may overlap: the highest is in
//! force, and a later record never removes an earlier valid one. When the last one expires the cap
//! returns, and a scope still over it is blocked again (a new decision and a new page).
//!
//! # Where the rules are
//! This module holds the state, the inputs (totals, decisions and alerts read back, policy
//! reloads, ticks) and the dispatch; each rule family is a child module adding methods to
//! [`Engine`]: `caps` (soft thresholds and hard caps of one total), `approvals`, `jobs` (job
//! gauges of `concurrent_jobs` policies, aging out), `models` (allow-lists, deprecated and
//! preview models), `anomalies` (retry storms, fallback spend, baselines), `decisions`
//! (numbering, lifting, following with pages, forgetting) and `text` (every reason, message and
//! notice, re-exported here where public).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use policy::{ActionKind, Policy, PolicySet, ScopeKey, Unit};
use rust_decimal::Decimal;
use schemas::{
    Alert, AlertKind, ControlDecision, DecisionAction, JobState, Severity, UsageEvent, WindowTotal,
};

use crate::anomaly::{AnomalySettings, Detector};
use crate::approvals::{approver_names, Book, Offered, ReceivedApproval};
use crate::evaluate::unit_amount;
use crate::fired::{forget_after, Fired};
use crate::notify::{IncidentKind, Notice, NoticeKind, NoticeWindow, Owner};
use crate::totals::{Applied, TotalsView, WindowKey};

/// Prefix of the `scope_kind` of a policy's own totals (`policy:<id>@<definition>`, see
/// [`PolicySet::by_totals_scope_kind`]).
pub const POLICY_SCOPE_PREFIX: &str = policy::TOTALS_SCOPE_PREFIX;

/// Something the service must do.
// `Decide` is the largest and the most frequent effect: boxing it would add an allocation per
// decision to make the rarer variants no smaller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish this decision on the control topic (then audit it).
    Decide(ControlDecision),
    /// Notify (Slack, and PagerDuty when the notice names a service), then record the alert on
    /// the alerts topic (then audit it).
    Alert(Box<Alert>, Box<Notice>),
    /// An approval was applied, rejected, expired or withdrawn (audit it; tombstone an expired
    /// one).
    ApprovalDecided {
        /// The approval record as read.
        received: Arc<ReceivedApproval>,
        /// `applied`, `rejected`, `expired` or `withdrawn` (no longer valid after a policy reload).
        status: &'static str,
        /// Why, for people.
        reason: String,
        /// A rejected record reusing the `approval_id` of one in force: audit the check, but do not
        /// replace the status of the approval in force.
        shadowed: bool,
    },
    /// Tombstone this control key (issue 13 point 7): its last decision is an allow issued more
    /// than `2 × ended_window_keep` ago, so nothing is in force and the key is forgotten, here
    /// and, once compacted, on the control topic and in every gateway.
    Forget(String),
}

/// The alerter's state (see the module docs).
#[derive(Debug)]
pub struct Engine {
    policies: Arc<PolicySet>,
    totals: TotalsView,
    /// The latest decision per control key (the control topic's compacted state plus what this
    /// engine decided since).
    decisions: HashMap<String, ControlDecision>,
    /// Valid approvals in force.
    approvals: Book,
    /// Alert dedup keys already raised, each until its window can no longer produce it again.
    fired: Fired,
    /// The price catalog: deprecation dates and preview flags for model rules.
    catalog: Arc<pricing::Catalog>,
    /// Models seen in the totals of each policy with model rules: (policy, provider, model).
    observed_models: BTreeSet<(String, String, String)>,
    /// The day model rules were last reconciled (deprecations take effect by date).
    models_day: Option<chrono::NaiveDate>,
    /// Anomaly baselines.
    detector: Detector,
    /// Jobs in flight per gauge (policy, scope).
    jobs: JobTracker,
    /// Pending-job backlogs paged and not resolved yet: `backlog/{policy}/{scope}` → the dedup
    /// key of the page and when it fired (rebuilt from the alerts topic on restore).
    open_backlogs: BTreeMap<String, (String, DateTime<Utc>)>,
    /// Anomalies fired and not resolved yet: `anomaly/{policy}/{scope}/{window}/{start}` → the
    /// metrics still unusual (rebuilt from the alerts topic on restore).
    open_anomalies: BTreeMap<String, BTreeSet<String>>,
    /// Control keys whose decision changed (or was restored) and whose alert is not settled yet.
    to_follow: BTreeSet<String>,
    /// Policies that have ever held a block or degrade (others have nothing to lift).
    policies_with_blocks: HashSet<String>,
    /// Issue 13 point 7: a job in flight this long (since its first pending state) without a
    /// terminal event is dropped from its gauge, with a page.
    job_max_age: TimeDelta,
    /// How long the totals of an ended window are still held (and evaluated).
    ended_window_keep: TimeDelta,
}

/// Default of [`Engine::with_job_max_age`]: six hours, longer than any provider's async job.
pub const DEFAULT_JOB_MAX_AGE: TimeDelta = TimeDelta::hours(6);

/// How many entries each of the engine's maps holds ([`Engine::state_sizes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSizes {
    /// (scope, window) totals.
    pub totals: usize,
    /// Decisions held, by control key.
    pub decisions: usize,
    /// Alert dedup keys held.
    pub fired: usize,
    /// Jobs in flight over every gauge scope.
    pub jobs_in_flight: usize,
    /// Gauge scopes with jobs in flight.
    pub job_scopes: usize,
    /// Anomaly baselines (policy, scope).
    pub anomaly_tracks: usize,
}

/// `ControlDecision::window` of concurrency blocks: a gauge has no window.
pub const CONCURRENCY_WINDOW: &str = "concurrent";

/// Async jobs in flight per `concurrent_jobs` policy and scope, from the usage events.
#[derive(Debug, Default)]
struct JobTracker {
    /// (policy, rendered scope) → job id → started at (event time of its first pending state).
    in_flight: BTreeMap<(String, String), HashMap<String, DateTime<Utc>>>,
    /// Jobs that finished recently (a late pending state of one must not revive it), oldest first.
    finished: HashSet<String>,
    finished_order: VecDeque<String>,
}

/// Finished job ids remembered.
const FINISHED_JOBS_KEPT: usize = 1_000_000;

impl JobTracker {
    /// Applies a job event to every gauge policy it matches; returns the (policy, scope) whose
    /// level changed.
    fn apply(&mut self, policies: &PolicySet, event: &UsageEvent) -> Vec<(String, String)> {
        let (Some(job_id), Some(state)) = (&event.job_id, event.job_state) else {
            return Vec::new();
        };
        let dims = policy::EventDims::from_event(event);
        let mut changed = Vec::new();
        let finished = matches!(
            state,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        );
        if finished && self.finished.insert(job_id.clone()) {
            self.finished_order.push_back(job_id.clone());
            while self.finished_order.len() > FINISHED_JOBS_KEPT {
                if let Some(old) = self.finished_order.pop_front() {
                    self.finished.remove(&old);
                }
            }
        }
        for policy in policies.policies() {
            if policy.unit() != Unit::ConcurrentJobs || !policy.matches(&dims) {
                continue;
            }
            let scope = policy.scope_key_unchecked(&dims).as_str().to_owned();
            let jobs = self
                .in_flight
                .entry((policy.id().to_owned(), scope.clone()))
                .or_default();
            let moved = if finished {
                let removed = jobs.remove(job_id).is_some();
                if jobs.is_empty() {
                    self.in_flight
                        .remove(&(policy.id().to_owned(), scope.clone()));
                }
                removed
            } else if self.finished.contains(job_id) || jobs.contains_key(job_id) {
                false
            } else {
                jobs.insert(job_id.clone(), event.occurred_at);
                true
            };
            if moved {
                changed.push((policy.id().to_owned(), scope));
            }
        }
        changed
    }

    /// Drops the jobs in flight since `max_age` or longer before `now` (their terminal event was
    /// lost or never comes), and the scopes left empty; returns (policy, scope, job, started),
    /// sorted.
    fn age_out(
        &mut self,
        now: DateTime<Utc>,
        max_age: TimeDelta,
    ) -> Vec<(String, String, String, DateTime<Utc>)> {
        let mut aged = Vec::new();
        self.in_flight.retain(|(policy_id, scope), jobs| {
            jobs.retain(|job_id, started| {
                let keep = now - *started < max_age;
                if !keep {
                    aged.push((policy_id.clone(), scope.clone(), job_id.clone(), *started));
                }
                keep
            });
            !jobs.is_empty()
        });
        aged.sort();
        aged
    }

    fn level(&self, policy_id: &str, scope: &str) -> usize {
        self.in_flight
            .get(&(policy_id.to_owned(), scope.to_owned()))
            .map_or(0, HashMap::len)
    }
}

/// `ControlDecision::window` of model-rule blocks: they belong to no quota window.
pub const MODEL_RULES_WINDOW: &str = "model_rules";

impl Engine {
    /// An engine with `policies` and nothing seen yet.
    pub fn new(policies: Arc<PolicySet>) -> Engine {
        Engine {
            policies,
            totals: TotalsView::new(),
            decisions: HashMap::new(),
            approvals: Book::default(),
            fired: Fired::default(),
            catalog: Arc::new(pricing::Catalog::embedded_sample()),
            observed_models: BTreeSet::new(),
            models_day: None,
            detector: Detector::default(),
            jobs: JobTracker::default(),
            open_backlogs: BTreeMap::new(),
            open_anomalies: BTreeMap::new(),
            to_follow: BTreeSet::new(),
            policies_with_blocks: HashSet::new(),
            job_max_age: DEFAULT_JOB_MAX_AGE,
            ended_window_keep: TimeDelta::hours(1),
        }
    }

    /// Drops a job in flight without a terminal event after `max_age`, with a page (issue 13
    /// point 7; default [`DEFAULT_JOB_MAX_AGE`]).
    pub fn with_job_max_age(mut self, max_age: TimeDelta) -> Engine {
        self.job_max_age = max_age;
        self
    }

    /// Keeps (and evaluates) the totals of an ended window this long after its end (default an
    /// hour); alert dedup keys of a window are kept twice that long.
    pub fn with_ended_window_keep(mut self, keep: TimeDelta) -> Engine {
        self.ended_window_keep = keep;
        self
    }

    /// How many entries the engine's maps hold (the `quotaflow_alerter_state_entries` gauge).
    pub fn state_sizes(&self) -> StateSizes {
        StateSizes {
            totals: self.totals.len(),
            decisions: self.decisions.len(),
            fired: self.fired.len(),
            jobs_in_flight: self.jobs.in_flight.values().map(HashMap::len).sum(),
            job_scopes: self.jobs.in_flight.len(),
            anomaly_tracks: self.detector.len(),
        }
    }

    /// Records when the dedup keys of the alerts in `effects` may be forgotten.
    fn settled(&mut self, effects: Vec<Effect>) -> Vec<Effect> {
        self.fired.settle(&effects);
        effects
    }

    /// Issue 13 point 7: an overflow bucket's total (the aggregator's cardinality limit was
    /// reached for the kind; see `policy::OVERFLOW_VALUE`) raises one alert per (kind, window):
    /// Slack and a page when the policy names a PagerDuty service, because the bucket's cap
    /// applies to every value of the folded dimensions.
    fn overflow_alert(&mut self, key: &WindowKey, now: DateTime<Utc>) -> Vec<Effect> {
        if !ScopeKey::is_overflow(&key.scope_key) {
            return Vec::new();
        }
        let dedup_key = format!(
            "overflow/{}/{}/{}/{}",
            key.scope_kind,
            key.window_kind,
            key.window_tz,
            key.window_start.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        if !self.fired.insert(dedup_key.clone()) {
            return Vec::new();
        }
        let policies = Arc::clone(&self.policies);
        let policy = key
            .scope_kind
            .strip_prefix(POLICY_SCOPE_PREFIX)
            .and_then(|id| policies.get(id));
        let scope = group_scope(key);
        let window_end = self.totals.total(key).map_or(now, |total| total.window_end);
        let mut effect = rule_alert_parts(
            policy,
            &scope,
            "scope_overflow",
            format!(
                "overflow bucket in use for {} in the {} window from {}: the aggregator's aggregate.max_scopes_per_kind was reached, so further values are counted together under {} and a cap on the bucket applies to all of them; raise the limit for this kind or find what mints new ids",
                key.scope_kind,
                key.window_kind,
                key.window_start.to_rfc3339_opts(SecondsFormat::Secs, true),
                policy::OVERFLOW_VALUE,
            ),
            dedup_key,
            now,
        );
        if let Effect::Alert(alert, notice) = &mut effect {
            alert.kind = AlertKind::Anomaly;
            alert.severity = Severity::Error;
            alert.window = key.window_kind.clone();
            alert.window_start = key.window_start;
            alert.window_end = window_end;
            notice.pagerduty_service =
                policy.and_then(|policy| policy.pagerduty_service().map(str::to_owned));
        }
        vec![effect]
    }

    /// Uses `settings` for anomaly baselines.
    pub fn with_anomaly_settings(mut self, settings: AnomalySettings) -> Engine {
        self.detector = Detector::new(settings);
        self
    }

    /// Uses `catalog` for model rules (default: the embedded sample catalog).
    pub fn with_catalog(mut self, catalog: Arc<pricing::Catalog>) -> Engine {
        self.catalog = catalog;
        self
    }

    /// The policies in use.
    pub fn policies(&self) -> &Arc<PolicySet> {
        &self.policies
    }

    /// Restores a decision read back from the control topic (the highest version per key wins).
    pub fn restore_decision(&mut self, decision: ControlDecision) {
        match self.decisions.get(&decision.key) {
            Some(held) if held.version >= decision.version => {}
            _ => {
                self.to_follow.insert(decision.key.clone());
                self.policies_with_blocks.insert(decision.policy_id.clone());
                self.observe_blocked_model(&decision);
                self.decisions.insert(decision.key.clone(), decision);
            }
        }
    }

    /// A model-rule block held on the control topic counts as the model seen: the totals that
    /// showed it belong to windows that may have closed (their keys tombstoned), and the block
    /// must not be lifted because the restore no longer reads them.
    /// Only allow-list blocks come from what was seen: deprecation and preview blocks are derived
    /// from the catalog again at every reconcile, and marking their (provider-scoped) model seen
    /// would add an allow-list block under another key at a restart.
    fn observe_blocked_model(&mut self, decision: &ControlDecision) {
        if decision.window != MODEL_RULES_WINDOW
            || decision.action != DecisionAction::Block
            || decision.unit != NOT_ALLOW_LISTED_UNIT
        {
            return;
        }
        let Some(model) = decision.scope.get("model") else {
            return;
        };
        let provider = decision
            .scope
            .get("provider")
            .cloned()
            .or_else(|| {
                self.policies
                    .get(&decision.policy_id)
                    .and_then(|policy| policy.fixed_dimensions().get("provider").cloned())
            })
            .unwrap_or_default();
        self.observed_models
            .insert((decision.policy_id.clone(), provider, model.clone()));
    }

    /// Applies a tombstone read back from the control topic: the key was forgotten.
    pub fn forget_decision(&mut self, key: &str) {
        self.decisions.remove(key);
        self.to_follow.remove(key);
    }

    /// Restores an alert read back from the alerts topic: it will not be raised again.
    pub fn restore_alert(&mut self, alert: &Alert) {
        self.fired
            .insert_until(alert.dedup_key.clone(), forget_after(alert));
        self.restore_backlog(alert);
        self.restore_anomaly(alert);
    }

    /// `effects` without the alerts already raised (by dedup key); those kept are marked raised.
    /// For findings made outside the engine (per-action rules).
    pub fn take_unfired(&mut self, effects: Vec<Effect>) -> Vec<Effect> {
        effects
            .into_iter()
            .filter(|effect| match effect {
                Effect::Alert(alert, _) => self
                    .fired
                    .insert_until(alert.dedup_key.clone(), forget_after(alert)),
                _ => true,
            })
            .collect()
    }

    /// The decision held for a control key.
    pub fn decision(&self, key: &str) -> Option<&ControlDecision> {
        self.decisions.get(key)
    }

    /// Every decision held, by control key.
    pub fn decisions(&self) -> &HashMap<String, ControlDecision> {
        &self.decisions
    }

    /// The number of (scope, window) totals held.
    pub fn totals_len(&self) -> usize {
        self.totals.len()
    }

    /// Replaces the policies (a reload) and re-evaluates everything held against them: a lowered
    /// cap blocks, a raised one allows, a removed policy's blocks are lifted.
    pub fn set_policies(&mut self, policies: Arc<PolicySet>, now: DateTime<Utc>) -> Vec<Effect> {
        self.policies = policies;
        let mut effects = Vec::new();
        for (received, reason) in self.approvals.recheck(&self.policies) {
            effects.push(Effect::ApprovalDecided {
                received,
                status: "withdrawn",
                reason: format!("no longer valid under the reloaded policies: {reason}"),
                shadowed: false,
            });
        }
        let orphaned: Vec<ControlDecision> = self
            .decisions
            .values()
            .filter(|decision| {
                decision.action != DecisionAction::Allow
                    && self.policies.get(&decision.policy_id).is_none()
            })
            .cloned()
            .collect();
        for held in orphaned {
            let reason = format!(
                "policy {} was removed; its {} of this scope is lifted",
                held.policy_id,
                held.action.as_str()
            );
            effects.push(self.lift(&held, reason, now));
        }
        effects.extend(self.reshadow(now));
        effects.extend(self.reevaluate_all(now));
        effects.extend(self.evaluate_gauges(now));
        effects.extend(self.reconcile_models(now));
        effects.extend(self.follow_decisions(now));
        self.settled(effects)
    }

    /// Applies a total read during the restore, without evaluating (the view is incomplete until
    /// the topic is read to its end; [`Engine::set_policies`] evaluates everything then). A total
    /// of a window that ended more than `alert.ended_window_keep_secs` before `now` is not held (the first
    /// tick would evict it): the restored view holds the live windows, not the topic's history.
    pub fn load_total(&mut self, total: WindowTotal, now: DateTime<Utc>) {
        let key = WindowKey::of(&total);
        // Models seen before the restart stay seen: an allow-list block must not be lifted and
        // set again because the process restarted.
        self.observe_model(&key);
        if total.window_end > now - self.ended_window_keep {
            self.totals.apply(total);
        }
    }

    /// Applies a tombstone of the totals topic (the aggregator closed that window): the
    /// partial is forgotten. No evaluation: a closed window decides nothing any more (its
    /// decisions are lifted when it ends, by [`Engine::tick`]).
    pub fn remove_total(&mut self, key: &schemas::TotalsKey) -> bool {
        self.totals.remove(key)
    }

    /// Applies one record of the totals topic and evaluates the policy it belongs to.
    pub fn on_total(&mut self, total: WindowTotal, now: DateTime<Utc>) -> Vec<Effect> {
        let key = WindowKey::of(&total);
        if self.totals.apply(total) != Applied::Changed {
            return Vec::new();
        }
        let mut effects = self.overflow_alert(&key, now);
        effects.extend(self.evaluate_key(&key, now));
        effects.extend(self.detect_anomalies(&key, now));
        if self.observe_model(&key) {
            effects.extend(self.reconcile_models(now));
        }
        effects.extend(self.follow_decisions(now));
        self.settled(effects)
    }

    /// Time passes: windows end (allow, resolve), approvals expire (the cap returns).
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let mut effects = Vec::new();
        for received in self.approvals.take_expired(now) {
            let approval = &received.approval;
            let policy_id = approval.policy_id.clone();
            let scope = approval.scope.clone();
            effects.push(Effect::ApprovalDecided {
                reason: format!(
                    "the raise to {} expired at {}",
                    approval.new_limit.normalize(),
                    approval
                        .valid_until
                        .to_rfc3339_opts(SecondsFormat::Secs, true)
                ),
                received,
                status: "expired",
                shadowed: false,
            });
            effects.extend(self.reevaluate_scope(&policy_id, &scope, now));
        }
        let ended: Vec<ControlDecision> = self
            .decisions
            .values()
            .filter(|decision| {
                decision.action != DecisionAction::Allow && decision.window_end <= now
            })
            .cloned()
            .collect();
        for held in ended {
            let reason = format!(
                "the {} window of policy {} ended at {}; the cap starts again",
                held.window,
                held.policy_id,
                held.window_end.to_rfc3339_opts(SecondsFormat::Secs, true)
            );
            effects.push(self.lift(&held, reason, now));
        }
        if self.models_day != Some(now.date_naive()) {
            effects.extend(self.reconcile_models(now));
        }
        effects.extend(self.stale_jobs(now));
        effects.extend(self.pending_backlogs(now));
        effects.extend(self.age_out_jobs(now));
        effects.extend(self.follow_decisions(now));
        effects.extend(self.forget_settled(now));
        let effects = self.settled(effects);
        // Issue 13 point 7: what closed windows and finished jobs leave behind goes.
        self.totals.evict_ended(now - self.ended_window_keep);
        self.fired.prune(now - self.ended_window_keep * 2);
        // Open anomalies whose alerts were all pruned (their window is long over) go too.
        let fired = &self.fired;
        self.open_anomalies.retain(|key, metrics| {
            metrics
                .iter()
                .any(|metric| fired.contains(&format!("{key}/{metric}")))
        });
        self.detector.evict(now);
        effects
    }

    fn reevaluate_all(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let keys: Vec<WindowKey> = self
            .totals
            .keys()
            .filter(|key| key.scope_kind.starts_with(POLICY_SCOPE_PREFIX))
            .cloned()
            .collect();
        keys.iter()
            .flat_map(|key| self.evaluate_key(key, now))
            .collect()
    }

    fn reevaluate_scope(
        &mut self,
        policy_id: &str,
        scope: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let policies = Arc::clone(&self.policies);
        let keys: Vec<WindowKey> = self
            .totals
            .keys()
            .filter(|key| {
                policies
                    .by_totals_scope_kind(&key.scope_kind)
                    .is_some_and(|policy| policy.id() == policy_id)
                    && group_scope(key) == *scope
            })
            .cloned()
            .collect();
        keys.iter()
            .flat_map(|key| self.evaluate_key(key, now))
            .collect()
    }
}

mod text;

pub use crate::approvals::approval_key;
use text::*;
pub use text::{
    approval_command, enforcement_absent, enforcement_scope, group_scope, render_scope,
    render_scope_absent, rule_alert,
};

mod jobs;

mod anomalies;

mod models;

mod approvals;

mod caps;

mod decisions;

#[cfg(test)]
mod definition_tests {
    use super::*;
    use chrono::TimeZone;

    fn policies(selector: &str) -> Arc<PolicySet> {
        let text = format!(
            r#"
id: search-daily
owner: {{team: search, contact: s@example.com}}
description: cost per team per day
unit: cost_usd
{selector}
group_by: [team]
window: {{kind: day}}
hard_cap: 100
action: {{kind: block}}
"#
        );
        Arc::new(PolicySet::from_str("p.yaml", &text).unwrap())
    }

    fn over_cap(scope_kind: &str) -> WindowTotal {
        let start = Utc.with_ymd_and_hms(2026, 3, 9, 0, 0, 0).unwrap();
        WindowTotal {
            cost_usd: Decimal::from(150),
            ..schemas::fixtures::empty_day_total(scope_kind, "team=search", start)
        }
    }

    fn blocks(effects: &[Effect]) -> usize {
        effects
            .iter()
            .filter(|effect| matches!(effect, Effect::Decide(_)))
            .count()
    }

    /// Issue 13 point 3: after an edit of what a policy counts, totals of the old definition are
    /// not evaluated; only those of the current one are.
    #[test]
    fn only_totals_of_the_current_definition_are_evaluated() {
        let old = policies("");
        let current = policies("selector: {provider: openai}");
        let old_kind = old.get("search-daily").unwrap().totals_scope_kind();
        let current_kind = current.get("search-daily").unwrap().totals_scope_kind();
        assert_ne!(old_kind, current_kind);
        let now = Utc.with_ymd_and_hms(2026, 3, 9, 12, 0, 0).unwrap();
        let mut engine = Engine::new(current);
        assert_eq!(blocks(&engine.on_total(over_cap(&old_kind), now)), 0);
        assert_eq!(blocks(&engine.on_total(over_cap(&current_kind), now)), 1);
    }
}

#[cfg(test)]
mod shadow_tests {
    use super::*;
    use chrono::TimeZone;

    fn policies(shadow: bool) -> Arc<PolicySet> {
        let text = format!(
            r#"
id: search-daily
owner: {{team: search, contact: s@example.com, pagerduty_service: search-oncall}}
description: cost per team per day
unit: cost_usd
group_by: [team]
window: {{kind: day}}
hard_cap: 100
action: {{kind: block}}
shadow: {shadow}
"#
        );
        Arc::new(PolicySet::from_str("p.yaml", &text).unwrap())
    }

    fn decisions(effects: &[Effect]) -> Vec<&ControlDecision> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Decide(decision) => Some(decision),
                _ => None,
            })
            .collect()
    }

    fn notices(effects: &[Effect]) -> Vec<&crate::notify::Notice> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Alert(_, notice) => Some(&**notice),
                _ => None,
            })
            .collect()
    }

    /// Issue 15 point 4: a policy in shadow mode decides as its enforced self would, marked
    /// shadow (never enforced), says so in Slack without paging; switching shadow off re-issues
    /// the block enforced (a new version) and pages; on again, it is a dry run again.
    #[test]
    fn a_shadow_policy_decides_without_enforcing_or_paging_until_switched_off() {
        let shadow = policies(true);
        let kind = shadow.get("search-daily").unwrap().totals_scope_kind();
        let start = Utc.with_ymd_and_hms(2026, 3, 9, 0, 0, 0).unwrap();
        let now = start + TimeDelta::hours(12);
        let total = WindowTotal {
            cost_usd: Decimal::from(150),
            ..schemas::fixtures::empty_day_total(&kind, "team=search", start)
        };
        let mut engine = Engine::new(shadow);
        let effects = engine.on_total(total, now);
        let decided = decisions(&effects);
        assert_eq!(decided.len(), 1);
        assert!(decided[0].shadow);
        assert_eq!(decided[0].action, DecisionAction::Block);
        assert_eq!(decided[0].audit_action(), "would_block");
        let shadow_version = decided[0].version;
        let page = notices(&effects)
            .into_iter()
            .find(|notice| matches!(notice.kind, NoticeKind::Rule { .. }))
            .expect("a Slack notice of the dry run");
        assert_eq!(page.pagerduty_service, None, "a dry run never pages");
        let NoticeKind::Rule { text } = &page.kind else {
            unreachable!()
        };
        assert!(
            text.contains("Shadow mode") && text.contains("would block"),
            "{text}"
        );
        assert!(
            !notices(&effects)
                .iter()
                .any(|notice| notice.kind == NoticeKind::HardCap),
            "no hard-cap page for a dry run"
        );

        // Enforced from the reload on: the same block, a new version, paged.
        let effects = engine.set_policies(policies(false), now + TimeDelta::minutes(1));
        let decided = decisions(&effects);
        assert_eq!(decided.len(), 1, "{effects:?}");
        assert!(!decided[0].shadow);
        assert_eq!(decided[0].action, DecisionAction::Block);
        assert!(decided[0].version > shadow_version);
        assert!(notices(&effects).iter().any(|notice| {
            notice.kind == NoticeKind::HardCap
                && notice.pagerduty_service.as_deref() == Some("search-oncall")
        }));

        // A reload that changes nothing re-issues nothing.
        let effects = engine.set_policies(policies(false), now + TimeDelta::minutes(2));
        assert!(decisions(&effects).is_empty());

        // Back to a dry run.
        let effects = engine.set_policies(policies(true), now + TimeDelta::minutes(3));
        let decided = decisions(&effects);
        assert_eq!(decided.len(), 1);
        assert!(decided[0].shadow);
    }
}
