//! `quotactl replay`: what a policy directory would have done to the history in ClickHouse.
//!
//! The archived usage events of a time range (`usage_events_raw FINAL`: one row per event id, so
//! a duplicate counts once) are read in event-time order and fed through the code the live
//! pipeline runs: the aggregator's totals state ([`aggregator::state::TotalsState`]: each
//! policy's scopes and windows, exact) and the alerter's engine ([`alerter::engine::Engine`]: the
//! soft ladder, hard caps, model rules, concurrency caps, anomalies, approvals). Approvals come
//! from the `approval_checks` audit table (the signed records as the alerter read them) and are
//! checked again and applied at the time the broker first stored them, as the live alerter did.
//!
//! **Time is event time.** The engine's clock is the current event's `occurred_at`; it ticks at
//! every new second of it (window ends, approval expiries) and once at the end of the range.
//!
//! **Enforcement.** Each event is checked, as a gateway would, against the decisions the replay has
//! in force at its time: an event a block refuses is reported as *stopped* (its cost is spend the
//! policies would have prevented), a degraded one as *degraded* (its cheaper price is not
//! recomputed). By default every event is still counted in the totals, because it happened: the
//! decisions then follow the history exactly, which is what lets a replay reproduce the live
//! alerter's decisions (on a history the live pipeline enforced, the stopped spend is the
//! overshoot that got through before the gateway saw the block). With
//! [`Replayer::excluding_refused`] refused events are left out of the totals instead, as if they
//! had never been made (a what-if for policies that were not live: later decisions, such as the
//! cap returning after an approval, then come later or not at all).
//!
//! **Limits.** The replay starts from nothing: decisions in force before the range are not known
//! (start the range where none was). Per-action rules (retries of non-retryable errors, attempts
//! and fallback spend per action) are not replayed; they raise alerts only.

use std::collections::BTreeMap;
use std::sync::Arc;

use alerter::anomaly::AnomalySettings;
use alerter::approvals::ReceivedApproval;
use alerter::engine::{Effect, Engine};
use chrono::{DateTime, TimeDelta, Utc};
use gateway::{DecisionView, RequestAttributes, Verdict};
use policy::PolicySet;
use quotaflow_archiver::row::RawRow;
use quotaflow_totals::state::{TotalsConfig, TotalsState};
use rust_decimal::Decimal;
use schemas::{Approval, DecisionAction, UsageEvent};
use serde::{Deserialize, Serialize};

use crate::Error;

/// A decision the replayed policies made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayedDecision {
    /// Event time at which it was made.
    pub at: DateTime<Utc>,
    /// The control key (policy and scope).
    pub key: String,
    /// The policy.
    pub policy_id: String,
    /// `allow`, `block` or `degrade`.
    pub action: String,
    /// Version per key, from 1.
    pub version: u64,
    /// Why.
    pub reason: String,
    /// The decision's window kind (`day`, …, `concurrent` for a concurrency gauge).
    pub window: String,
}

/// An alert the replayed policies raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayedAlert {
    /// Event time at which it was raised.
    pub at: DateTime<Utc>,
    /// `soft_threshold`, `hard_cap`, `cap_reset`, `anomaly`, …
    pub kind: String,
    /// The policy.
    pub policy_id: String,
    /// Its deduplication key.
    pub dedup_key: String,
    /// The message.
    pub message: String,
}

/// Spend the replayed decisions of one policy refused or redirected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Enforced {
    /// Events refused (their requests would not have been made).
    pub stopped_events: u64,
    /// Their cost, exact.
    pub stopped_usd: Decimal,
    /// Events degraded to a cheaper route.
    pub degraded_events: u64,
    /// Their cost as it happened.
    pub degraded_usd: Decimal,
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Start of the range (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// End of the range (exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Events read.
    pub events: u64,
    /// Events counted in the totals (read minus unusable, and minus stopped when refused events
    /// are excluded).
    pub counted: u64,
    /// Rows that are not a valid event, with the first reason (not counted).
    pub unusable: u64,
    /// The first unusable row's problem.
    pub first_problem: Option<String>,
    /// Spend of every event read, exact.
    pub spend_usd: Decimal,
    /// Decisions in the order they were made.
    pub decisions: Vec<ReplayedDecision>,
    /// Alerts in the order they were raised.
    pub alerts: Vec<ReplayedAlert>,
    /// Approvals applied (or rejected), with the reason.
    pub approvals: Vec<(String, String, String)>,
    /// Refused and degraded spend per policy.
    pub enforced: BTreeMap<String, Enforced>,
}

impl ReplayReport {
    /// All spend the replayed blocks stopped.
    pub fn stopped_usd(&self) -> Decimal {
        self.enforced.values().map(|e| e.stopped_usd).sum()
    }
}

/// The replay itself, fed one event or approval at a time (pure: no IO, no clock).
pub struct Replayer {
    state: TotalsState,
    engine: Engine,
    view: DecisionView,
    /// Approvals not applied yet, latest first seen first (popped from the back).
    approvals: Vec<ReceivedApproval>,
    /// The engine's clock: the newest event time seen.
    now: Option<DateTime<Utc>>,
    /// The last second the engine ticked at.
    ticked: Option<i64>,
    version: u64,
    /// Refused events are left out of the totals.
    exclude_refused: bool,
    report: ReplayReport,
}

impl Replayer {
    /// A replay of `policies` with the price catalog's model lifecycle and these anomaly
    /// settings, applying `approvals` at the time the broker first stored them.
    pub fn new(
        policies: Arc<PolicySet>,
        catalog: Arc<pricing::Catalog>,
        anomaly: AnomalySettings,
        mut approvals: Vec<ReceivedApproval>,
    ) -> Result<Replayer, Error> {
        let state = TotalsState::new(&policies, TotalsConfig::default())
            .map_err(|error| Error::Replay(error.to_string()))?;
        approvals.sort_by_key(|received| std::cmp::Reverse(received.appended_at));
        Ok(Replayer {
            state,
            engine: Engine::new(policies)
                .with_catalog(catalog)
                .with_anomaly_settings(anomaly),
            view: DecisionView::new(),
            approvals,
            now: None,
            ticked: None,
            version: 0,
            exclude_refused: false,
            report: ReplayReport::default(),
        })
    }

    /// Leaves refused events out of the totals (see the module docs).
    pub fn excluding_refused(mut self) -> Replayer {
        self.exclude_refused = true;
        self
    }

    /// One archived row, in event-time order.
    pub fn row(&mut self, row: RawRow) {
        match row.into_event() {
            Ok(event) => self.event(&event),
            Err(problem) => {
                self.report.events += 1;
                self.report.unusable += 1;
                self.report.first_problem.get_or_insert(problem);
            }
        }
    }

    /// One event, in event-time order.
    pub fn event(&mut self, event: &UsageEvent) {
        let now = event.occurred_at;
        self.advance(now);
        self.report.events += 1;
        let cost = event.cost_usd.unwrap_or_default();
        self.report.spend_usd += cost;
        let labels = gateway::view::event_labels(event);
        match self
            .view
            .check(&RequestAttributes::of_event(event, &labels), now)
        {
            Verdict::Block { policy_id, .. } => {
                let enforced = self
                    .report
                    .enforced
                    .entry(policy_id.to_string())
                    .or_default();
                enforced.stopped_events += 1;
                enforced.stopped_usd += cost;
                if self.exclude_refused {
                    return;
                }
            }
            Verdict::Degrade { policy_id, .. } => {
                let enforced = self
                    .report
                    .enforced
                    .entry(policy_id.to_string())
                    .or_default();
                enforced.degraded_events += 1;
                enforced.degraded_usd += cost;
            }
            Verdict::Allow => {}
        }
        self.version += 1;
        if let Err(error) = self.state.apply(event, self.version) {
            self.report.unusable += 1;
            self.report.first_problem.get_or_insert(error.to_string());
            return;
        }
        self.report.counted += 1;
        let mut effects = Vec::new();
        if event.job_id.is_some() && event.job_state.is_some() {
            effects.extend(self.engine.on_job_event(event, now));
        }
        for update in self.state.peek_policy_updates() {
            let total = quotaflow_totals::record::window_total(&update, "replay", 0, now);
            effects.extend(self.engine.on_total(total, now));
        }
        self.carry_out(effects, now);
        if self.version.is_multiple_of(10_000) {
            // Keep the state bounded as the live service does at its flushes.
            self.state.drain_dirty();
            self.state.evict_closed();
        }
    }

    /// Moves the clock to `now`: approvals requested by then, and a tick per new second.
    fn advance(&mut self, now: DateTime<Utc>) {
        if self.now.is_none() {
            // The first evaluation, as the live alerter's start: model rules from the catalog.
            let effects = self.engine.tick(now);
            self.carry_out(effects, now);
        }
        while self
            .approvals
            .last()
            .is_some_and(|received| received.appended_at.is_none_or(|seen| seen <= now))
        {
            let Some(received) = self.approvals.pop() else {
                break;
            };
            let seen = received.appended_at.unwrap_or(now);
            let at = seen.max(self.now.unwrap_or(seen));
            let effects = self.engine.on_approval(received, at);
            self.carry_out(effects, at);
        }
        if self.ticked != Some(now.timestamp()) {
            self.ticked = Some(now.timestamp());
            let effects = self.engine.tick(now);
            self.carry_out(effects, now);
        }
        self.now = Some(self.now.map_or(now, |held| held.max(now)));
    }

    fn carry_out(&mut self, effects: Vec<Effect>, at: DateTime<Utc>) {
        for effect in effects {
            match effect {
                Effect::Decide(decision) => {
                    // The engine holds what it decided; the view is the gateway's side.
                    self.view.apply(&decision);
                    self.report.decisions.push(ReplayedDecision {
                        at,
                        key: decision.key,
                        policy_id: decision.policy_id,
                        action: action_name(decision.action).to_owned(),
                        version: decision.version,
                        reason: decision.reason,
                        window: decision.window,
                    });
                }
                // The view forgets like a gateway does on the tombstone.
                Effect::Forget(key) => {
                    self.view.remove(&key);
                }
                Effect::Alert(alert, _) => {
                    self.report.alerts.push(ReplayedAlert {
                        at,
                        kind: alert.kind.as_str().to_owned(),
                        policy_id: alert.policy_id,
                        dedup_key: alert.dedup_key,
                        message: alert.message,
                    });
                }
                Effect::ApprovalDecided {
                    received,
                    status,
                    reason,
                    ..
                } => self.report.approvals.push((
                    received.approval.approval_id.clone(),
                    status.to_owned(),
                    reason,
                )),
            }
        }
    }

    /// Ends the replay at `to` (a last tick: windows and approvals that ended by then).
    pub fn finish(mut self, to: Option<DateTime<Utc>>) -> ReplayReport {
        if let Some(to) = to.or(self.now) {
            if self.now.is_some_and(|now| to > now) {
                self.advance(to);
            }
        }
        self.report
    }
}

fn action_name(action: DecisionAction) -> &'static str {
    match action {
        DecisionAction::Allow => "allow",
        DecisionAction::Block => "block",
        DecisionAction::Degrade => "degrade",
    }
}

/// How the replayed decisions compare with those the live alerter made (the `decisions` audit
/// table), per key as the sequence of actions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Keys whose sequence of actions is the same.
    pub same: Vec<String>,
    /// Keys whose sequences differ: key, live actions, replayed actions.
    pub different: Vec<(String, Vec<String>, Vec<String>)>,
}

impl Comparison {
    /// Whether the replay reproduced every live decision, and made no other.
    pub fn reproduced(&self) -> bool {
        self.different.is_empty()
    }
}

/// Compares per key the live actions (oldest first) with the replayed ones.
pub fn compare(live: &[crate::DecisionRow], replayed: &[ReplayedDecision]) -> Comparison {
    // Per key: (version, action) live, and replayed.
    type Actions = Vec<(u64, String)>;
    let mut by_key: BTreeMap<&str, (Actions, Actions)> = BTreeMap::new();
    for decision in live {
        by_key
            .entry(&decision.key)
            .or_default()
            .0
            .push((decision.version, decision.action.clone()));
    }
    for decision in replayed {
        by_key
            .entry(&decision.key)
            .or_default()
            .1
            .push((decision.version, decision.action.clone()));
    }
    // A concurrency gauge follows submits and finishes: the live alerter sees them in arrival
    // order, the replay in event-time order, so a gauge standing at its cap can dip and come back
    // (allow, block) in one and not the other within the same instant. For those keys the
    // decisions compared are the first one and the one in force at the end.
    let gauges: std::collections::BTreeSet<&str> = replayed
        .iter()
        .filter(|decision| decision.window == alerter::engine::CONCURRENCY_WINDOW)
        .map(|decision| decision.key.as_str())
        .collect();
    let mut comparison = Comparison::default();
    for (key, (mut live, mut replayed)) in by_key {
        live.sort();
        replayed.sort();
        let mut live: Vec<String> = live.into_iter().map(|(_, action)| action).collect();
        let mut replayed: Vec<String> = replayed.into_iter().map(|(_, action)| action).collect();
        if gauges.contains(key) {
            for actions in [&mut live, &mut replayed] {
                let last = actions.pop();
                actions.truncate(1);
                actions.extend(last);
                actions.dedup();
            }
        }
        if live == replayed {
            comparison.same.push(key.to_owned());
        } else {
            comparison.different.push((key.to_owned(), live, replayed));
        }
    }
    comparison
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ApprovalCheckRow {
    record_base64: String,
    record_key: String,
    first_seen_at_us: u64,
}

/// The approval records first seen before `to` that were still valid at `from`, as the alerter
/// read them (`approval_checks`, migration 0007: record bytes, key, broker append time).
/// Approvals audited before that table existed are not replayed (they were unsigned).
pub async fn approvals(
    client: &clickhouse::Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<ReceivedApproval>, Error> {
    use base64::Engine as _;
    let rows: Vec<ApprovalCheckRow> = client
        .query(
            "SELECT record_base64, record_key, first_seen_at_us FROM approval_checks FINAL \
             WHERE first_seen_at < toDateTime(?) ORDER BY first_seen_at_us, approval_id",
        )
        .bind(to.timestamp())
        .fetch_all()
        .await?;
    let mut approvals = Vec::new();
    for row in rows {
        let record = base64::engine::general_purpose::STANDARD
            .decode(row.record_base64.as_bytes())
            .map_err(|error| Error::Replay(format!("approval record: {error}")))?;
        let approval: Approval = schemas::codec::decode(&record)
            .map_err(|error| Error::Replay(format!("approval record: {error}")))?;
        if approval.valid_until < from {
            continue;
        }
        let appended_at = i64::try_from(row.first_seen_at_us)
            .ok()
            .filter(|micros| *micros > 0)
            .and_then(DateTime::from_timestamp_micros);
        approvals.push(ReceivedApproval::new(
            approval,
            appended_at,
            Some(row.record_key.as_bytes()),
            &record,
        ));
    }
    Ok(approvals)
}

/// Archived events in `[from, to)`.
pub async fn count_events(
    client: &clickhouse::Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u64, Error> {
    Ok(client
        .query(
            "SELECT count() FROM usage_events_raw FINAL \
             WHERE occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?)",
        )
        .bind(from.timestamp())
        .bind(to.timestamp())
        .fetch_one::<u64>()
        .await?)
}

/// Replays `[from, to)` (whole seconds) through `replayer`; `progress` is called with the events
/// read so far, every thousand events.
pub async fn run(
    client: &clickhouse::Client,
    mut replayer: Replayer,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    progress: &dyn Fn(u64),
) -> Result<ReplayReport, Error> {
    let mut cursor = client
        .query(
            "SELECT ?fields FROM usage_events_raw FINAL \
             WHERE occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?) \
             ORDER BY occurred_at_us, event_id",
        )
        .bind(from.timestamp())
        .bind(to.timestamp())
        .fetch::<RawRow>()?;
    let mut read = 0u64;
    while let Some(row) = cursor.next().await? {
        replayer.row(row);
        read += 1;
        if read.is_multiple_of(1_000) {
            progress(read);
        }
    }
    progress(read);
    let mut report = replayer.finish(Some(to));
    report.from = Some(from);
    report.to = Some(to);
    Ok(report)
}

/// The live decisions issued in `[from, to)`, oldest first.
pub async fn live_decisions(
    client: &clickhouse::Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<crate::DecisionRow>, Error> {
    let micros = |at: DateTime<Utc>| u64::try_from(at.timestamp_micros()).unwrap_or_default();
    Ok(client
        .query(
            "SELECT key, policy_id, action, reason, version, issued_at_us FROM decisions FINAL \
             WHERE issued_at_us >= ? AND issued_at_us < ? ORDER BY issued_at_us, key",
        )
        .bind(micros(from))
        .bind(micros(to))
        .fetch_all()
        .await?)
}

/// A plain-text report.
pub fn report_text(report: &ReplayReport, comparison: Option<&Comparison>) -> String {
    let mut out = format!(
        "replayed {} events ({} counted, {} unusable), spend {} USD\n",
        report.events,
        report.counted,
        report.unusable,
        report.spend_usd.normalize()
    );
    if let Some(problem) = &report.first_problem {
        out.push_str(&format!("first unusable row: {problem}\n"));
    }
    out.push_str(&format!("\ndecisions ({}):\n", report.decisions.len()));
    for decision in &report.decisions {
        out.push_str(&format!(
            "{}  {:<8} v{:<3} {}  {}\n",
            decision.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            decision.action,
            decision.version,
            decision.key,
            decision.reason
        ));
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for alert in &report.alerts {
        *kinds.entry(&alert.kind).or_default() += 1;
    }
    out.push_str(&format!("\nalerts ({}):", report.alerts.len()));
    for (kind, count) in kinds {
        out.push_str(&format!(" {kind} {count}"));
    }
    out.push('\n');
    for (id, status, reason) in &report.approvals {
        out.push_str(&format!("approval {id}: {status}: {reason}\n"));
    }
    out.push_str("\nenforced (what a gateway obeying these decisions would have done):\n");
    if report.enforced.is_empty() {
        out.push_str("nothing refused or degraded\n");
    }
    for (policy, enforced) in &report.enforced {
        out.push_str(&format!(
            "{policy:<36} stopped {:>6} events {:>14} USD   degraded {:>6} events {:>14} USD\n",
            enforced.stopped_events,
            enforced.stopped_usd.normalize(),
            enforced.degraded_events,
            enforced.degraded_usd.normalize()
        ));
    }
    if let Some(comparison) = comparison {
        out.push_str(&format!(
            "\ncompared with the live alerter: {} keys the same, {} different\n",
            comparison.same.len(),
            comparison.different.len()
        ));
        for (key, live, replayed) in &comparison.different {
            out.push_str(&format!("  {key}: live {live:?}, replayed {replayed:?}\n"));
        }
    }
    out
}

/// `[now - 24 h, now)` unless given.
pub fn range(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let to = to.unwrap_or(now);
    (from.unwrap_or(to - TimeDelta::hours(24)), to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(key: &str, actions: &[&str]) -> Vec<crate::DecisionRow> {
        actions
            .iter()
            .enumerate()
            .map(|(index, action)| crate::DecisionRow {
                key: key.to_owned(),
                policy_id: "p".to_owned(),
                action: (*action).to_owned(),
                reason: String::new(),
                version: index as u64 + 1,
                issued_at_us: 0,
            })
            .collect()
    }

    fn replayed(key: &str, window: &str, actions: &[&str]) -> Vec<ReplayedDecision> {
        actions
            .iter()
            .enumerate()
            .map(|(index, action)| ReplayedDecision {
                at: DateTime::<Utc>::UNIX_EPOCH,
                key: key.to_owned(),
                policy_id: "p".to_owned(),
                action: (*action).to_owned(),
                version: index as u64 + 1,
                reason: String::new(),
                window: window.to_owned(),
            })
            .collect()
    }

    #[test]
    fn a_gauge_that_dips_and_returns_in_one_run_only_compares_by_first_and_final_state() {
        let flapping = live("jobs", &["block", "allow", "block"]);
        let steady = replayed("jobs", "concurrent", &["block"]);
        assert!(compare(&flapping, &steady).different.is_empty());
        // A gauge that ends differently is still a difference.
        let lifted = live("jobs", &["block", "allow"]);
        assert_eq!(compare(&lifted, &steady).different.len(), 1);
        // Windowed caps keep the whole sequence.
        let windowed = replayed("day", "day", &["block"]);
        assert_eq!(
            compare(&live("day", &["block", "allow", "block"]), &windowed)
                .different
                .len(),
            1
        );
    }
}
