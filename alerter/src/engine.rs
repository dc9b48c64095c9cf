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

    /// How many entries the engine's maps hold (the `alerter_state_entries` gauge).
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

    /// Applies an async job event (read back at startup) without evaluating; see
    /// [`Engine::on_job_event`].
    pub fn load_job_event(&mut self, event: &UsageEvent) {
        let policies = Arc::clone(&self.policies);
        self.jobs.apply(&policies, event);
    }

    /// Applies an async job event and evaluates the concurrency caps it moves: at the cap the
    /// policy's action (no new job may start: gateways refuse until one finishes), under it an
    /// allow; soft thresholds once per (policy, scope, threshold) and UTC day.
    pub fn on_job_event(&mut self, event: &UsageEvent, now: DateTime<Utc>) -> Vec<Effect> {
        let policies = Arc::clone(&self.policies);
        let changed = self.jobs.apply(&policies, event);
        let mut effects = Vec::new();
        for (policy_id, scope) in changed {
            effects.extend(self.evaluate_gauge(&policy_id, &scope, now));
        }
        effects.extend(self.follow_decisions(now));
        self.settled(effects)
    }

    /// Evaluates every gauge scope held (after a restore or a reload).
    fn evaluate_gauges(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let scopes: Vec<(String, String)> = self.jobs.in_flight.keys().cloned().collect();
        let mut effects = Vec::new();
        for (policy_id, scope) in scopes {
            effects.extend(self.evaluate_gauge(&policy_id, &scope, now));
        }
        effects
    }

    fn evaluate_gauge(
        &mut self,
        policy_id: &str,
        scope_key: &str,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let policies = Arc::clone(&self.policies);
        let Some(policy) = policies.get(policy_id) else {
            return Vec::new();
        };
        let level = Decimal::from(self.jobs.level(policy_id, scope_key));
        let cap = policy.hard_cap();
        let scope = decode_scope(scope_key);
        let mut effects = Vec::new();
        let day = now.date_naive();
        let mut thresholds = policy.record().soft_alerts.clone();
        thresholds.sort_unstable();
        for threshold in thresholds {
            let reached = cap * Decimal::from(threshold) / Decimal::ONE_HUNDRED;
            let dedup_key = format!("gauge/{policy_id}/{scope_key}/{day}/{threshold}");
            if level >= reached && self.fired.insert(dedup_key.clone()) {
                let mut effect = rule_alert(
                    policy,
                    &scope,
                    "concurrent_jobs",
                    format!(
                        "{} has {level} jobs running, {threshold}% of its {} concurrent jobs (policy {policy_id})",
                        render_scope(&scope),
                        cap.normalize()
                    ),
                    dedup_key,
                    now,
                );
                if let Effect::Alert(alert, notice) = &mut effect {
                    alert.kind = AlertKind::Concurrency;
                    alert.threshold_percent = Some(u32::from(threshold));
                    alert.observed = level;
                    alert.limit = Some(cap);
                    notice.spent = level;
                    notice.limit = cap;
                }
                effects.push(effect);
            }
        }
        let enforcement = enforcement_scope(policy, &scope);
        let absent = enforcement_absent(&enforcement, scope_key);
        let key = ControlDecision::compaction_key_with_absent(policy_id, &enforcement, &absent);
        let held_block = self
            .decisions
            .get(&key)
            .filter(|held| held.action != DecisionAction::Allow)
            .cloned();
        let at_cap = level >= cap;
        match (at_cap, policy.action_kind(), held_block) {
            (true, ActionKind::Block | ActionKind::Degrade, None) => {
                let (action, degrade_to) = cap_action(policy);
                let reason = format!(
                    "{} has {level} async jobs running, the most policy {policy_id} allows at once; new jobs are {} until one finishes",
                    render_scope_absent(&scope, &absent),
                    if action == DecisionAction::Block { "refused" } else { "degraded" }
                );
                effects.push(self.decide(ControlDecision {
                    decision_id: String::new(),
                    key,
                    policy_id: policy_id.to_owned(),
                    scope: enforcement,
                    action,
                    degrade_to,
                    reason,
                    unit: Unit::ConcurrentJobs.to_string(),
                    observed: level,
                    limit: cap,
                    window: CONCURRENCY_WINDOW.to_owned(),
                    window_start: DateTime::<Utc>::UNIX_EPOCH,
                    window_end: model_rules_end(),
                    issued_at: now,
                    expires_at: None,
                    version: 0,
                    absent,
                }));
            }
            (false, _, Some(held)) => {
                let reason = format!(
                    "{} is down to {level} jobs running, under the {} allowed",
                    render_scope_absent(&scope, &absent),
                    cap.normalize()
                );
                let mut lifted = self.lift(&held, reason, now);
                if let Effect::Decide(decision) = &mut lifted {
                    decision.observed = level;
                    self.decisions
                        .insert(decision.key.clone(), decision.clone());
                }
                effects.push(lifted);
            }
            _ => {}
        }
        effects
    }

    /// Jobs pending longer than their policy's `max_job_age`: a stop-condition alert (Slack and
    /// a page) once per job.
    fn stale_jobs(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let policies = Arc::clone(&self.policies);
        let mut effects = Vec::new();
        let mut stale = Vec::new();
        for ((policy_id, scope_key), jobs) in &self.jobs.in_flight {
            let Some(policy) = policies.get(policy_id) else {
                continue;
            };
            let Some(max_age) = policy.record().max_job_age else {
                continue;
            };
            for (job_id, started) in jobs {
                if now - *started > max_age.0 {
                    stale.push((
                        policy_id.clone(),
                        scope_key.clone(),
                        job_id.clone(),
                        *started,
                        max_age,
                    ));
                }
            }
        }
        stale.sort();
        for (policy_id, scope_key, job_id, started, max_age) in stale {
            let dedup_key = format!("pending/{policy_id}/{job_id}");
            if !self.fired.insert(dedup_key.clone()) {
                continue;
            }
            let Some(policy) = policies.get(&policy_id) else {
                continue;
            };
            let scope = decode_scope(&scope_key);
            let mut effect = rule_alert(
                policy,
                &scope,
                "pending_job",
                format!(
                    "job {job_id} of {} has been pending since {} (more than {}s, policy {policy_id}): stop condition — check it with the provider and cancel it if stuck",
                    render_scope(&scope),
                    started.to_rfc3339_opts(SecondsFormat::Secs, true),
                    max_age.0.num_seconds()
                ),
                dedup_key,
                now,
            );
            if let Effect::Alert(alert, notice) = &mut effect {
                alert.kind = AlertKind::PendingJob;
                alert.severity = Severity::Error;
                notice.pagerduty_service = policy.pagerduty_service().map(str::to_owned);
            }
            effects.push(effect);
        }
        effects
    }

    /// Issue 13 point 7: jobs in flight for [`Engine::with_job_max_age`] without a terminal
    /// event leave their gauge (its level drops, which may lift a block), each with a page
    /// (Slack, and PagerDuty when the policy names a service) naming the job, its scope and its
    /// owner. The job is forgotten: a late terminal event finds nothing to remove.
    fn age_out_jobs(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let aged = self.jobs.age_out(now, self.job_max_age);
        if aged.is_empty() {
            return Vec::new();
        }
        let policies = Arc::clone(&self.policies);
        let mut effects = Vec::new();
        let mut changed = BTreeSet::new();
        for (policy_id, scope_key, job_id, started) in aged {
            changed.insert((policy_id.clone(), scope_key.clone()));
            let dedup_key = format!("aged_out/{policy_id}/{job_id}");
            if !self.fired.insert(dedup_key.clone()) {
                continue;
            }
            let Some(policy) = policies.get(&policy_id) else {
                continue;
            };
            let scope = decode_scope(&scope_key);
            let mut effect = rule_alert(
                policy,
                &scope,
                "pending_job",
                format!(
                    "job {job_id} of {} (owner {}) has had no terminal event since {} ({}s, the most alert.job_max_age_secs allows): it no longer counts toward the {} concurrent jobs of policy {policy_id}; check it with the provider and cancel it if it is still running",
                    render_scope(&scope),
                    policy.record().owner.team,
                    started.to_rfc3339_opts(SecondsFormat::Secs, true),
                    self.job_max_age.num_seconds(),
                    policy.hard_cap().normalize(),
                ),
                dedup_key,
                now,
            );
            if let Effect::Alert(alert, notice) = &mut effect {
                alert.kind = AlertKind::PendingJob;
                alert.severity = Severity::Critical;
                notice.pagerduty_service = policy.pagerduty_service().map(str::to_owned);
            }
            effects.push(effect);
        }
        for (policy_id, scope_key) in changed {
            effects.extend(self.evaluate_gauge(&policy_id, &scope_key, now));
        }
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

    /// Anomalies of the current total of a policy scope with an `anomaly` section; each
    /// (policy, scope, metric) once per window.
    fn detect_anomalies(&mut self, key: &WindowKey, now: DateTime<Utc>) -> Vec<Effect> {
        let policies = Arc::clone(&self.policies);
        let Some(policy) = policies.by_totals_scope_kind(&key.scope_kind) else {
            return Vec::new();
        };
        if policy.record().anomaly.is_none() {
            return Vec::new();
        }
        let Some(total) = self.totals.total(key) else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        for finding in self.detector.observe(policy, key, &total) {
            let dedup_key = window_alert_key("anomaly", policy.id(), key, finding.metric.as_str());
            if !self.fired.insert(dedup_key.clone()) {
                continue;
            }
            let scope = group_scope(key);
            let text = finding.describe();
            let alert = Alert {
                alert_id: alert_id(&dedup_key),
                dedup_key,
                policy_id: policy.id().to_owned(),
                scope: scope.clone(),
                kind: AlertKind::Anomaly,
                severity: Severity::Warning,
                threshold_percent: None,
                unit: finding.metric.as_str().to_owned(),
                observed: finding.value,
                limit: None,
                window: key.window_kind.clone(),
                window_start: key.window_start,
                window_end: total.window_end,
                owner: policy.record().owner.team.clone(),
                message: format!("{}: {text} (policy {})", render_scope(&scope), policy.id()),
                raised_at: now,
            };
            let spent = unit_amount(&total, policy.unit());
            let mut notice = window_notice(policy, key, &total, spent, policy.hard_cap(), now);
            notice.kind = NoticeKind::Anomaly { text };
            effects.push(Effect::Alert(Box::new(alert), Box::new(notice)));
        }
        effects
    }

    /// Notes the model of a policy total when the policy has model rules; true if new.
    fn observe_model(&mut self, key: &WindowKey) -> bool {
        let Some(policy) = self.policies.by_totals_scope_kind(&key.scope_kind) else {
            return false;
        };
        let policy_id = policy.id();
        if policy.record().model_rules.is_none() {
            return false;
        }
        let scope = group_scope(key);
        let Some(model) = scope.get("model") else {
            return false;
        };
        let provider = scope
            .get("provider")
            .cloned()
            .or_else(|| policy.fixed_dimensions().get("provider").cloned())
            .unwrap_or_default();
        self.observed_models
            .insert((policy_id.to_owned(), provider, model.clone()))
    }

    /// Model-rule blocks: what the policies' `model_rules` block (deprecated and preview models
    /// of the catalog, and models seen in a policy's totals that its allow-list refuses) against
    /// what is held; blocks what is missing, lifts what is no longer refused, alerts once per
    /// (policy, model) for `alert` rules.
    fn reconcile_models(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let today = now.date_naive();
        self.models_day = Some(today);
        let policies = Arc::clone(&self.policies);
        let catalog = Arc::clone(&self.catalog);
        let mut desired: BTreeMap<String, ControlDecision> = BTreeMap::new();
        let mut effects = Vec::new();
        for policy in policies.policies() {
            if policy.record().model_rules.is_none() {
                continue;
            }
            // Candidates: every catalog row as a request may name it, and what this policy's
            // totals showed. Pricing finds a row by the request's model, else by
            // `provider/model` (`Catalog::lookup`), so a row `p/m` is reached by the model `p/m`
            // and by provider `p` with model `m`: both are candidates from the start, before any
            // traffic. The provider is the first segment, as in LiteLLM's names
            // (`bedrock/us-east-1/x`: provider `bedrock`, model `us-east-1/x`).
            let mut candidates: BTreeSet<(String, String, bool)> = BTreeSet::new();
            for entry in catalog.models() {
                candidates.insert((String::new(), entry.name.clone(), false));
                if let Some((provider, model)) = entry.name.split_once('/') {
                    candidates.insert((provider.to_owned(), model.to_owned(), false));
                }
            }
            candidates.extend(
                self.observed_models
                    .iter()
                    .filter(|(policy_id, _, _)| policy_id == policy.id())
                    .map(|(_, provider, model)| (provider.clone(), model.clone(), true)),
            );
            let fixed_provider = policy.fixed_dimensions().get("provider").cloned();
            for (provider, model, observed) in candidates {
                let entry = catalog.lookup(&provider, &model);
                // A row found through the provider prefix applies to that provider's requests
                // only: the decision names the provider, so other providers' `model` is untouched.
                let via_provider = entry
                    .is_some_and(|entry| entry.name != model)
                    .then(|| provider.clone());
                if via_provider
                    .as_ref()
                    .zip(fixed_provider.as_ref())
                    .is_some_and(|(found, fixed)| found != fixed)
                {
                    continue;
                }
                let facts = entry.map(|entry| policy::ModelFacts {
                    deprecation_date: entry.deprecation_date,
                    is_preview: entry.is_preview,
                });
                let verdict = match policy.model_verdict(&model, facts, today) {
                    // A row nobody named yet that the allow-list refuses: its deprecation or
                    // preview status is still blocked before the first request (issue 13, point
                    // 12); the allow-list itself waits until the model is seen.
                    policy::ModelVerdict::Block(policy::ModelIssue::NotAllowListed)
                        if !observed =>
                    {
                        policy.lifecycle_verdict(facts, today)
                    }
                    verdict => verdict,
                };
                match verdict {
                    policy::ModelVerdict::Allow => {}
                    policy::ModelVerdict::Block(issue) => {
                        // The allow-list refuses the whole world but what it lists: block only
                        // what was seen, not every catalog row.
                        if issue == policy::ModelIssue::NotAllowListed && !observed {
                            continue;
                        }
                        let mut scope = policy.fixed_dimensions();
                        scope.insert("model".to_owned(), model.clone());
                        // The allow-list judges the model name whatever the provider.
                        if let Some(provider) =
                            via_provider.filter(|_| issue != policy::ModelIssue::NotAllowListed)
                        {
                            scope.insert("provider".to_owned(), provider);
                        }
                        // Its own key space, apart from the policy's quota decisions.
                        let key = ControlDecision::compaction_key(
                            &format!("{}#{MODEL_RULES_WINDOW}", policy.id()),
                            &scope,
                        );
                        let (unit, what) = describe_issue(issue, &model);
                        desired.insert(
                            key.clone(),
                            ControlDecision {
                                decision_id: String::new(),
                                key,
                                policy_id: policy.id().to_owned(),
                                reason: format!(
                                    "{what}: policy {} blocks it for {}",
                                    policy.id(),
                                    render_scope(&policy.fixed_dimensions())
                                ),
                                scope,
                                action: DecisionAction::Block,
                                degrade_to: None,
                                unit: unit.to_owned(),
                                observed: Decimal::ONE,
                                limit: Decimal::ZERO,
                                window: MODEL_RULES_WINDOW.to_owned(),
                                window_start: DateTime::<Utc>::UNIX_EPOCH,
                                window_end: model_rules_end(),
                                issued_at: now,
                                expires_at: None,
                                version: 0,
                                absent: Vec::new(),
                            },
                        );
                    }
                    policy::ModelVerdict::Alert(issue) if observed => {
                        let dedup_key = format!("model/{}/{provider}/{model}", policy.id());
                        if self.fired.insert(dedup_key.clone()) {
                            let (unit, what) = describe_issue(issue, &model);
                            let mut scope = policy.fixed_dimensions();
                            scope.insert("model".to_owned(), model.clone());
                            effects.push(rule_alert(
                                policy,
                                &scope,
                                unit,
                                format!("{what}: traffic seen; policy {} alerts only", policy.id()),
                                dedup_key,
                                now,
                            ));
                        }
                    }
                    policy::ModelVerdict::Alert(_) => {}
                }
            }
        }
        for (key, decision) in &desired {
            let held_block = self
                .decisions
                .get(key)
                .is_some_and(|held| held.action == DecisionAction::Block);
            if !held_block {
                effects.push(self.decide(decision.clone()));
            }
        }
        let lifted: Vec<ControlDecision> = self
            .decisions
            .values()
            .filter(|held| {
                held.window == MODEL_RULES_WINDOW
                    && held.action != DecisionAction::Allow
                    && !desired.contains_key(&held.key)
            })
            .cloned()
            .collect();
        for held in lifted {
            let reason = format!(
                "policy {} no longer blocks {}",
                held.policy_id,
                held.scope.get("model").map_or("this model", String::as_str)
            );
            effects.push(self.lift(&held, reason, now));
        }
        effects
    }

    /// Checks an approval record and applies it if valid (module docs, [`crate::approvals`]).
    pub fn on_approval(&mut self, received: ReceivedApproval, now: DateTime<Utc>) -> Vec<Effect> {
        let received = Arc::new(received);
        let policies = Arc::clone(&self.policies);
        let mut effects = Vec::new();
        match self.approvals.offer(&policies, &received, now) {
            Offered::AlreadyHeld => {}
            Offered::Over => {
                let reason = format!(
                    "the raise to {} expired at {} (read back after its end)",
                    received.approval.new_limit.normalize(),
                    received
                        .approval
                        .valid_until
                        .to_rfc3339_opts(SecondsFormat::Secs, true)
                );
                effects.push(Effect::ApprovalDecided {
                    received,
                    status: "expired",
                    reason,
                    shadowed: false,
                });
            }
            Offered::Rejected { reason, shadowed } => effects.push(Effect::ApprovalDecided {
                received,
                status: "rejected",
                reason,
                shadowed,
            }),
            Offered::Applied => {
                let approval = &received.approval;
                let reason = format!(
                    "{} raised the limit of {} for {} to {} until {}: {}",
                    approval.approved_by,
                    approval.policy_id,
                    render_scope(&approval.scope),
                    approval.new_limit.normalize(),
                    approval
                        .valid_until
                        .to_rfc3339_opts(SecondsFormat::Secs, true),
                    approval.reason
                );
                let policy_id = approval.policy_id.clone();
                let scope = approval.scope.clone();
                effects.push(Effect::ApprovalDecided {
                    received,
                    status: "applied",
                    reason,
                    shadowed: false,
                });
                effects.extend(self.reevaluate_scope(&policy_id, &scope, now));
                effects.extend(self.follow_decisions(now));
            }
        }
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
        effects.extend(self.age_out_jobs(now));
        effects.extend(self.follow_decisions(now));
        effects.extend(self.forget_settled(now));
        let effects = self.settled(effects);
        // Issue 13 point 7: what closed windows and finished jobs leave behind goes.
        self.totals.evict_ended(now - self.ended_window_keep);
        self.fired.prune(now - self.ended_window_keep * 2);
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

    /// Evaluates the policy of a `policy:<id>@<definition>` total of a current window.
    fn evaluate_key(&mut self, key: &WindowKey, now: DateTime<Utc>) -> Vec<Effect> {
        let policies = Arc::clone(&self.policies);
        // Only totals of the policy's current definition (`policy:<id>@<definition>`): those of
        // an earlier selector, group_by, unit or window count something else.
        let Some(policy) = policies.by_totals_scope_kind(&key.scope_kind) else {
            return Vec::new();
        };
        let Some(total) = self.totals.total(key) else {
            return Vec::new();
        };
        if total.window_end <= now {
            // An ended window changes nothing any more (its block, if any, is lifted by `tick`).
            return Vec::new();
        }
        let mut effects = Vec::new();
        let observed = unit_amount(&total, policy.unit());
        let cap = policy.hard_cap();
        let scope = group_scope(key);
        let mut thresholds = policy.record().soft_alerts.clone();
        thresholds.sort_unstable();
        for threshold in thresholds {
            let reached = cap * Decimal::from(threshold) / Decimal::ONE_HUNDRED;
            if observed < reached {
                break;
            }
            let dedup_key = window_alert_key("soft", policy.id(), key, &threshold.to_string());
            if !self.fired.contains(&dedup_key) {
                self.fired.insert(dedup_key.clone());
                effects.push(
                    self.soft_alert(policy, key, &total, threshold, observed, dedup_key, now),
                );
            }
        }
        let approved = self.approvals.in_force(policy.id(), &scope, now).cloned();
        let limit = approved
            .as_ref()
            .map_or(cap, |approval| approval.new_limit.max(cap));
        let capped = observed >= limit;
        if !capped && !self.policies_with_blocks.contains(policy.id()) {
            // Under the limit and nothing of this policy was ever blocked: nothing to lift.
            return effects;
        }
        let enforcement = enforcement_scope(policy, &scope);
        let absent = enforcement_absent(&enforcement, &key.scope_key);
        let control_key =
            ControlDecision::compaction_key_with_absent(policy.id(), &enforcement, &absent);
        let held = self.decisions.get(&control_key).cloned();
        let in_force = held.as_ref().filter(|decision| {
            decision.action != DecisionAction::Allow && decision.window_start == key.window_start
        });
        match (capped, policy.action_kind()) {
            (true, ActionKind::Block | ActionKind::Degrade) => {
                if in_force.is_none() {
                    let (action, degrade_to) = cap_action(policy);
                    let verb = match &degrade_to {
                        Some(target) => format!("degraded to {target}"),
                        None => "blocked".to_string(),
                    };
                    let reason = format!(
                        "{} reached {} {} of {} {} (policy {}, {} window from {}); {verb} until {}{}",
                        render_scope_absent(&scope, &absent),
                        observed.normalize(),
                        policy.unit(),
                        limit.normalize(),
                        policy.unit(),
                        policy.id(),
                        key.window_kind,
                        key.window_start.to_rfc3339_opts(SecondsFormat::Secs, true),
                        total.window_end.to_rfc3339_opts(SecondsFormat::Secs, true),
                        approval_hint(policy, &scope),
                    );
                    let decision = ControlDecision {
                        decision_id: String::new(),
                        key: control_key.clone(),
                        policy_id: policy.id().to_owned(),
                        scope: enforcement,
                        action,
                        degrade_to,
                        reason,
                        unit: policy.unit().to_string(),
                        observed,
                        limit,
                        window: key.window_kind.clone(),
                        window_start: key.window_start,
                        window_end: total.window_end,
                        issued_at: now,
                        expires_at: Some(total.window_end),
                        version: 0,
                        absent,
                    };
                    effects.push(self.decide(decision));
                }
            }
            (true, ActionKind::AlertOnly) => {
                let dedup_key = window_alert_key("cap", policy.id(), key, "");
                if !self.fired.contains(&dedup_key) {
                    self.fired.insert(dedup_key.clone());
                    effects
                        .push(self.cap_alert(policy, key, &total, observed, limit, dedup_key, now));
                }
            }
            (false, _) => {
                if let Some(held) = in_force.cloned() {
                    let reason = match &approved {
                        Some(approval) => format!(
                            "{} approved a raise to {} until {} ({}); {} is at {} {}",
                            approval.approved_by,
                            approval.new_limit.normalize(),
                            approval
                                .valid_until
                                .to_rfc3339_opts(SecondsFormat::Secs, true),
                            approval.reason,
                            render_scope(&scope),
                            observed.normalize(),
                            policy.unit()
                        ),
                        None => format!(
                            "{} is at {} {}, under the limit {} again",
                            render_scope(&scope),
                            observed.normalize(),
                            policy.unit(),
                            limit.normalize()
                        ),
                    };
                    let mut lifted = self.lift(&held, reason, now);
                    if let Effect::Decide(decision) = &mut lifted {
                        decision.observed = observed;
                        decision.limit = limit;
                    }
                    if let Effect::Decide(decision) = &lifted {
                        self.decisions
                            .insert(decision.key.clone(), decision.clone());
                    }
                    effects.push(lifted);
                }
            }
        }
        effects
    }

    /// An allow decision lifting `held` (same scope and window), recorded as held.
    fn lift(&mut self, held: &ControlDecision, reason: String, now: DateTime<Utc>) -> Effect {
        let decision = ControlDecision {
            decision_id: String::new(),
            action: DecisionAction::Allow,
            degrade_to: None,
            reason,
            issued_at: now,
            expires_at: None,
            version: 0,
            ..held.clone()
        };
        self.decide(decision)
    }

    /// Whether `decision` is an allow old enough to be forgotten (see [`Effect::Forget`]).
    fn forgettable(&self, decision: &ControlDecision, now: DateTime<Utc>) -> bool {
        decision.action == DecisionAction::Allow
            && decision.issued_at <= now - self.ended_window_keep * 2
    }

    /// Forgets the allows nothing depends on any more (issue 13 point 7): without this the
    /// decisions map (and the control topic) keeps one entry per scope ever blocked, a new one
    /// per `user_id` or API key capped once. An allow is the state of a key without a decision,
    /// so forgetting it changes nothing a gateway does; a later block of the key starts a new
    /// version sequence above the old one (see [`Engine::decide`]).
    fn forget_settled(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        let mut keys: Vec<String> = self
            .decisions
            .values()
            .filter(|decision| self.forgettable(decision, now))
            .map(|decision| decision.key.clone())
            .collect();
        keys.sort_unstable();
        for key in &keys {
            self.decisions.remove(key);
            self.to_follow.remove(key);
        }
        keys.into_iter().map(Effect::Forget).collect()
    }

    /// Numbers `decision` after the held one and records it as held.
    ///
    /// The first decision of a key (none held) is numbered by its issue time in milliseconds
    /// since the epoch, later ones held + 1: a key forgotten ([`Effect::Forget`]) and blocked
    /// again hours later starts above every version it had (a key would need millions of
    /// decisions within those hours to catch up), so its decision ids (`<key>@<version>`), alert
    /// dedup keys and audit rows never repeat an earlier one.
    fn decide(&mut self, mut decision: ControlDecision) -> Effect {
        let first = u64::try_from(decision.issued_at.timestamp_millis())
            .unwrap_or(0)
            .max(1);
        let version = self
            .decisions
            .get(&decision.key)
            .map_or(first, |held| held.version + 1);
        decision.version = version;
        decision.decision_id = format!("{}@{version}", decision.key);
        self.to_follow.insert(decision.key.clone());
        self.policies_with_blocks.insert(decision.policy_id.clone());
        self.decisions
            .insert(decision.key.clone(), decision.clone());
        Effect::Decide(decision)
    }

    /// The alerts the decisions in force call for and that were not raised yet: a page per
    /// block/degrade, a resolve per allow that lifted one.
    fn follow_decisions(&mut self, now: DateTime<Utc>) -> Vec<Effect> {
        if self.to_follow.is_empty() {
            return Vec::new();
        }
        let keys = std::mem::take(&mut self.to_follow);
        let mut wanted: Vec<ControlDecision> = keys
            .iter()
            .filter_map(|key| self.decisions.get(key))
            .filter(|decision| !self.fired.contains(&decision_alert_key(decision)))
            .filter(|decision| decision.action != DecisionAction::Allow || decision.version > 1)
            // An old allow read back at a restart (its resolve long sent, its dedup key pruned)
            // is forgotten, not resolved again.
            .filter(|decision| !self.forgettable(decision, now))
            .cloned()
            .collect();
        wanted.sort_by(|a, b| a.key.cmp(&b.key));
        let policies = Arc::clone(&self.policies);
        let mut effects = Vec::new();
        for decision in wanted {
            let dedup_key = decision_alert_key(&decision);
            self.fired.insert(dedup_key.clone());
            let policy = policies.get(&decision.policy_id);
            effects.push(decision_alert(policy, &decision, dedup_key, now));
        }
        effects
    }

    #[allow(clippy::too_many_arguments)]
    fn soft_alert(
        &self,
        policy: &Policy,
        key: &WindowKey,
        total: &WindowTotal,
        threshold: u8,
        observed: Decimal,
        dedup_key: String,
        now: DateTime<Utc>,
    ) -> Effect {
        let cap = policy.hard_cap();
        let severity = policy.severity_for_threshold(threshold);
        let scope = group_scope(key);
        let message = format!(
            "{} used {threshold}% of its {} {} cap ({} {}) in the {} window from {} (policy {})",
            render_scope(&scope),
            cap.normalize(),
            policy.unit(),
            observed.normalize(),
            policy.unit(),
            key.window_kind,
            key.window_start.to_rfc3339_opts(SecondsFormat::Secs, true),
            policy.id()
        );
        let pages = matches!(severity, Severity::Error | Severity::Critical);
        let alert = Alert {
            alert_id: alert_id(&dedup_key),
            dedup_key,
            policy_id: policy.id().to_owned(),
            scope: scope.clone(),
            kind: AlertKind::SoftThreshold,
            severity,
            threshold_percent: Some(u32::from(threshold)),
            unit: policy.unit().to_string(),
            observed,
            limit: Some(cap),
            window: key.window_kind.clone(),
            window_start: key.window_start,
            window_end: total.window_end,
            owner: policy.record().owner.team.clone(),
            message,
            raised_at: now,
        };
        let notice = Notice {
            kind: NoticeKind::SoftAlert,
            threshold_percent: u32::from(threshold),
            pagerduty_service: if pages {
                policy.pagerduty_service().map(str::to_owned)
            } else {
                None
            },
            ..window_notice(policy, key, total, observed, cap, now)
        };
        Effect::Alert(Box::new(alert), Box::new(notice))
    }

    #[allow(clippy::too_many_arguments)]
    fn cap_alert(
        &self,
        policy: &Policy,
        key: &WindowKey,
        total: &WindowTotal,
        observed: Decimal,
        limit: Decimal,
        dedup_key: String,
        now: DateTime<Utc>,
    ) -> Effect {
        let scope = group_scope(key);
        let alert = Alert {
            alert_id: alert_id(&dedup_key),
            dedup_key,
            policy_id: policy.id().to_owned(),
            scope: scope.clone(),
            kind: AlertKind::HardCap,
            severity: Severity::Critical,
            threshold_percent: Some(100),
            unit: policy.unit().to_string(),
            observed,
            limit: Some(limit),
            window: key.window_kind.clone(),
            window_start: key.window_start,
            window_end: total.window_end,
            owner: policy.record().owner.team.clone(),
            message: format!(
                "{} reached the cap {} {} (policy {}, alert only: traffic is not stopped)",
                render_scope(&scope),
                limit.normalize(),
                policy.unit(),
                policy.id()
            ),
            raised_at: now,
        };
        let notice = Notice {
            kind: NoticeKind::HardCap,
            threshold_percent: 100,
            ..window_notice(policy, key, total, observed, limit, now)
        };
        Effect::Alert(Box::new(alert), Box::new(notice))
    }
}

/// The alert dedup key of a decision.
fn decision_alert_key(decision: &ControlDecision) -> String {
    format!("decision/{}/{}", decision.key, decision.version)
}

/// The page of a block/degrade decision, or the resolve of an allow that lifted one.
fn decision_alert(
    policy: Option<&Policy>,
    decision: &ControlDecision,
    dedup_key: String,
    now: DateTime<Utc>,
) -> Effect {
    let lifting = decision.action == DecisionAction::Allow;
    if decision.window == MODEL_RULES_WINDOW {
        let (kind, notice_kind) = if lifting {
            (
                AlertKind::CapReset,
                NoticeKind::Resolved {
                    of: IncidentKind::Rule,
                },
            )
        } else if decision.unit == "model:not_allow_listed" {
            (
                AlertKind::ModelNotAllowed,
                NoticeKind::Rule {
                    text: decision.reason.clone(),
                },
            )
        } else {
            (
                AlertKind::DeprecatedModel,
                NoticeKind::Rule {
                    text: decision.reason.clone(),
                },
            )
        };
        let Effect::Alert(mut alert, mut notice) = rule_alert_parts(
            policy,
            &decision.scope,
            &decision.unit,
            decision.reason.clone(),
            dedup_key,
            now,
        ) else {
            unreachable!("rule_alert_parts builds an alert")
        };
        alert.kind = kind;
        notice.kind = notice_kind;
        return Effect::Alert(alert, notice);
    }
    let (kind, severity, notice_kind) = if lifting {
        (
            AlertKind::CapReset,
            Severity::Info,
            NoticeKind::Resolved {
                of: IncidentKind::HardCap,
            },
        )
    } else {
        (AlertKind::HardCap, Severity::Critical, NoticeKind::HardCap)
    };
    let owner = policy.map_or_else(String::new, |policy| policy.record().owner.team.clone());
    let alert = Alert {
        alert_id: alert_id(&dedup_key),
        dedup_key,
        policy_id: decision.policy_id.clone(),
        scope: decision.scope.clone(),
        kind,
        severity,
        threshold_percent: (!lifting).then_some(100),
        unit: decision.unit.clone(),
        observed: decision.observed,
        limit: Some(decision.limit),
        window: decision.window.clone(),
        window_start: decision.window_start,
        window_end: decision.window_end,
        owner,
        message: decision.reason.clone(),
        raised_at: now,
    };
    let tz = policy.and_then(|policy| policy.window()).map_or_else(
        || "UTC".to_string(),
        |window| window.time_zone.name().to_string(),
    );
    let mut notice = Notice {
        kind: notice_kind,
        threshold_percent: 100,
        ..notice(
            policy,
            &decision.scope,
            decision.window.clone(),
            &tz,
            decision.window_start,
            decision.window_end,
            decision.observed,
            decision.limit,
            now,
        )
    };
    // The decision's scope (group-by plus fixed dimensions) names the incident, for trigger and
    // resolve alike.
    notice.scope = render_scope(&decision.scope);
    if policy.is_none() {
        notice.pagerduty_service = None;
    }
    Effect::Alert(Box::new(alert), Box::new(notice))
}

/// What a model issue is called: the decision's unit and a sentence.
/// `ControlDecision::unit` of a block of a model outside a policy's allow-list.
const NOT_ALLOW_LISTED_UNIT: &str = "model:not_allow_listed";

fn describe_issue(issue: policy::ModelIssue, model: &str) -> (&'static str, String) {
    match issue {
        policy::ModelIssue::Deprecated { since } => (
            "model:deprecated",
            format!("model {model} is deprecated since {since} (price catalog)"),
        ),
        policy::ModelIssue::Preview => (
            "model:preview",
            format!("model {model} is a preview model (price catalog)"),
        ),
        policy::ModelIssue::NotAllowListed => (
            NOT_ALLOW_LISTED_UNIT,
            format!("model {model} is not on the allow-list"),
        ),
    }
}

/// Model-rule blocks do not end with a window: their `window_end` is 2100-01-01 (inside every
/// timestamp range the contracts and ClickHouse `DateTime` allow), and they have no expiry.
fn model_rules_end() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(4_102_444_800, 0).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// A rule finding (model rules, retries, fallbacks): Slack, no page, no window.
pub fn rule_alert(
    policy: &Policy,
    scope: &BTreeMap<String, String>,
    unit: &str,
    text: String,
    dedup_key: String,
    now: DateTime<Utc>,
) -> Effect {
    rule_alert_parts(Some(policy), scope, unit, text, dedup_key, now)
}

fn rule_alert_parts(
    policy: Option<&Policy>,
    scope: &BTreeMap<String, String>,
    unit: &str,
    text: String,
    dedup_key: String,
    now: DateTime<Utc>,
) -> Effect {
    let alert = Alert {
        alert_id: alert_id(&dedup_key),
        dedup_key,
        policy_id: policy.map_or_else(String::new, |policy| policy.id().to_owned()),
        scope: scope.clone(),
        kind: AlertKind::DeprecatedModel,
        severity: Severity::Warning,
        threshold_percent: None,
        unit: unit.to_owned(),
        observed: Decimal::ONE,
        limit: None,
        window: MODEL_RULES_WINDOW.to_owned(),
        window_start: now,
        window_end: now,
        owner: policy.map_or_else(String::new, |policy| policy.record().owner.team.clone()),
        message: text.clone(),
        raised_at: now,
    };
    // Rule notices are grouped per hour (the grouping key includes the window start).
    let hour = now
        - TimeDelta::seconds(now.timestamp().rem_euclid(3600))
        - TimeDelta::nanoseconds(i64::from(now.timestamp_subsec_nanos()));
    let mut notice = notice(
        policy,
        scope,
        "rule".to_owned(),
        "UTC",
        hour,
        hour + TimeDelta::hours(1),
        Decimal::ONE,
        Decimal::ZERO,
        now,
    );
    notice.kind = NoticeKind::Rule { text };
    notice.unit = unit.to_owned();
    notice.approval_command = None;
    notice.pagerduty_service = None;
    Effect::Alert(Box::new(alert), Box::new(notice))
}

/// The notice of an alert about `policy`'s scope and window `key` (whose total is `total`).
fn window_notice(
    policy: &Policy,
    key: &WindowKey,
    total: &WindowTotal,
    spent: Decimal,
    limit: Decimal,
    now: DateTime<Utc>,
) -> Notice {
    notice(
        Some(policy),
        &group_scope(key),
        key.window_kind.clone(),
        &key.window_tz,
        key.window_start,
        total.window_end,
        spent,
        limit,
        now,
    )
}

/// A notice's common fields.
#[allow(clippy::too_many_arguments)]
fn notice(
    policy: Option<&Policy>,
    scope: &BTreeMap<String, String>,
    window_kind: String,
    tz: &str,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    spent: Decimal,
    limit: Decimal,
    now: DateTime<Utc>,
) -> Notice {
    // Burn rate: the window's spend over the time it has run, per hour.
    let elapsed = (now.min(window_end) - window_start).num_seconds();
    let burn_rate_per_hour =
        (elapsed > 0).then(|| (spent * Decimal::from(3600) / Decimal::from(elapsed)).round_dp(6));
    let projected_cap_at = burn_rate_per_hour.and_then(|rate| {
        if rate.is_zero() || spent >= limit {
            return None;
        }
        let seconds = (limit - spent) * Decimal::from(3600) / rate;
        let seconds = i64::try_from(seconds.trunc().mantissa()).ok()?;
        let at = now + chrono::TimeDelta::seconds(seconds);
        (at < window_end).then_some(at)
    });
    Notice {
        policy_id: policy.map_or_else(String::new, |policy| policy.id().to_owned()),
        owner: Owner {
            team: policy.map_or_else(String::new, |policy| policy.record().owner.team.clone()),
            contact: policy
                .map_or_else(String::new, |policy| policy.record().owner.contact.clone()),
        },
        scope: render_scope(scope),
        window: NoticeWindow {
            kind: window_kind,
            tz: tz.to_owned(),
            start: window_start,
            end: window_end,
        },
        unit: policy.map_or_else(String::new, |policy| policy.unit().to_string()),
        spent,
        limit,
        threshold_percent: 0,
        kind: NoticeKind::SoftAlert,
        burn_rate_per_hour,
        projected_cap_at,
        approval_command: policy.and_then(|policy| approval_command(policy, scope)),
        slack_channel: policy.and_then(|policy| policy.slack_channel().map(str::to_owned)),
        pagerduty_service: policy.and_then(|policy| policy.pagerduty_service().map(str::to_owned)),
    }
}

/// The `quotaflow approve …` command for a scope of `policy`, when it takes approvals.
pub fn approval_command(policy: &Policy, scope: &BTreeMap<String, String>) -> Option<String> {
    let rule = policy.record().approval.as_ref()?;
    let cap = policy.hard_cap();
    let max = cap + rule.max_raise.absolute_for(cap);
    let scope_arg = if scope.is_empty() {
        String::new()
    } else {
        format!(" --scope '{}'", render_scope(scope))
    };
    Some(format!(
        "quotaflow-alerter approve --policy {}{scope_arg} --limit {} --until <RFC 3339, at most {}s ahead> --reason '<why>' --by <{}> --key-file <the approver's private key>",
        policy.id(),
        max.normalize(),
        rule.max_duration.0.num_seconds(),
        approver_names(policy).join("|")
    ))
}

fn approval_hint(policy: &Policy, scope: &BTreeMap<String, String>) -> String {
    match approval_command(policy, scope) {
        Some(_) => format!(
            ". To raise it, ask {} for an approval",
            policy
                .record()
                .approval
                .as_ref()
                .map(|_| approver_names(policy).join(" or "))
                .unwrap_or_default()
        ),
        None => String::new(),
    }
}

pub use crate::approvals::approval_key;

/// The group-by scope of a `policy:` total (dimensions the events lacked are left out).
pub fn group_scope(key: &WindowKey) -> BTreeMap<String, String> {
    decode_scope(&key.scope_key)
}

/// A rendered scope key back as `dimension → value` (absent dimensions left out).
fn decode_scope(scope_key: &str) -> BTreeMap<String, String> {
    ScopeKey::decode(scope_key)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name, value)))
        .collect()
}

/// The dedup key of an alert about a (policy, scope, window): `<kind>/<policy>/<scope>/<window
/// kind>/<start>[/<detail>]`.
fn window_alert_key(kind: &str, policy_id: &str, key: &WindowKey, detail: &str) -> String {
    let mut dedup_key = format!(
        "{kind}/{policy_id}/{}/{}/{}",
        key.scope_key,
        key.window_kind,
        key.window_start.to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    if !detail.is_empty() {
        dedup_key.push('/');
        dedup_key.push_str(detail);
    }
    dedup_key
}

/// What gateways do at the cap of `policy`: its action as a decision, and the degrade target.
fn cap_action(policy: &Policy) -> (DecisionAction, Option<String>) {
    match policy.action_kind() {
        ActionKind::Degrade => (
            DecisionAction::Degrade,
            policy.record().action.degrade_to.clone(),
        ),
        ActionKind::Block | ActionKind::AlertOnly => (DecisionAction::Block, None),
    }
}

/// The scope a decision enforces: the group-by scope plus the policy's single-valued filters, so
/// gateways stop only the traffic the policy counts. A fallback-spend policy with a
/// `route.fallback_route` (`provider/model`) blocks that route only.
pub fn enforcement_scope(
    policy: &Policy,
    scope: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut enforced = policy.fixed_dimensions();
    if policy.unit() == Unit::FallbackCostUsd {
        if let Some((provider, model)) = policy
            .record()
            .route
            .fallback_route
            .as_deref()
            .and_then(|route| route.split_once('/'))
        {
            enforced.insert("provider".to_owned(), provider.to_owned());
            enforced.insert("model".to_owned(), model.to_owned());
        }
    }
    enforced.extend(
        scope
            .iter()
            .map(|(name, value)| (name.clone(), value.clone())),
    );
    enforced
}

/// The `group_by` dimensions the events of `scope_key` lack (not named by `enforcement`), for
/// `ControlDecision::absent`: a decision for the bucket without `user_id` applies only to
/// requests without `user_id`, so no decision scope drops a `group_by` dimension.
pub fn enforcement_absent(enforcement: &BTreeMap<String, String>, scope_key: &str) -> Vec<String> {
    ScopeKey::absent_of(scope_key)
        .into_iter()
        .filter(|dimension| !enforcement.contains_key(dimension))
        .collect()
}

/// [`render_scope`] followed by the absent dimensions: `team=search, no user_id`; `no user_id`
/// alone for a scope whose only group-by dimension is absent.
pub fn render_scope_absent(scope: &BTreeMap<String, String>, absent: &[String]) -> String {
    let present = (!scope.is_empty()).then(|| render_scope(scope));
    present
        .into_iter()
        .chain(absent.iter().map(|dimension| format!("no {dimension}")))
        .reduce(|rendered, part| format!("{rendered}, {part}"))
        .unwrap_or_else(|| render_scope(scope))
}

/// `team=search, model=gpt-4o`, or `(all)` for an empty scope.
pub fn render_scope(scope: &BTreeMap<String, String>) -> String {
    if scope.is_empty() {
        return "(all)".to_string();
    }
    scope
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A deterministic alert id: the same alert raised again (a replay) is the same audit row.
fn alert_id(dedup_key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(dedup_key.as_bytes())[..16])
}

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
