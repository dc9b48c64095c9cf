//! Policy reloads on the real stack: the aggregator picks up policy edits without a restart, a
//! new or changed definition totals the whole current window (events before the edit included),
//! the old definition's totals stop growing, and a broken edit keeps the last good set.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use infra::testkit;
use policy::PolicySet;
use rust_decimal::Decimal;
use schemas::UsageEvent;
use support::*;

const DEADLINE: Duration = Duration::from_secs(90);

/// Cost per team per UTC day, every event; later edited to count only `provider: openai`.
fn team_daily(selector: &str) -> String {
    format!(
        r#"
id: team-daily
owner: {{team: platform, contact: p@example.com}}
description: cost per team per day
unit: cost_usd
{selector}
group_by: [team]
window: {{kind: day}}
hard_cap: 1000000
action: {{kind: alert_only}}
"#
    )
}

/// Requests per model per UTC day: added while the aggregator runs.
const MODEL_DAILY: &str = r#"
id: model-daily
owner: {team: platform, contact: p@example.com}
description: requests per model per day
unit: requests
group_by: [model]
window: {kind: day}
hard_cap: 1000000
action: {kind: alert_only}
"#;

/// The `scope_kind` of policy `id` as `text` defines it.
fn kind_of(text: &str, id: &str) -> String {
    PolicySet::from_str("p.yaml", text)
        .unwrap()
        .get(id)
        .unwrap()
        .totals_scope_kind()
}

/// Replaces a policy file the way an editor's save does (write aside, rename over).
fn write_policy(dir: &Path, name: &str, text: &str) {
    let aside = dir.join(format!(".{name}.tmp"));
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, dir.join(name)).unwrap();
}

/// (requests, cost) per scope key of the UTC day starting at `day`.
type DayTotals = BTreeMap<String, (u64, Decimal)>;

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct DayRow {
    scope_key: String,
    requests: u64,
    cost: String,
}

/// What `window_totals_current` holds for `scope_kind` on `day`.
async fn stored_day(
    config: &aggregator::Config,
    scope_kind: &str,
    day: DateTime<Utc>,
) -> DayTotals {
    infra::clickhouse::client(&config.clickhouse)
        .query(
            "SELECT scope_key, requests, toString(cost_usd) AS cost FROM window_totals_current \
             WHERE scope_kind = ? AND window_kind = 'day' AND window_start = toDateTime(?, 'UTC')",
        )
        .bind(scope_kind)
        .bind(day.timestamp())
        .fetch_all::<DayRow>()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|row| (row.scope_key, (row.requests, row.cost.parse().unwrap())))
        .collect()
}

/// The independent recount of `dimension`'s day totals (`support::recount`), keyed as a policy
/// grouping by that one dimension renders its scopes.
fn recount_day(
    events: &[UsageEvent],
    dimension: &str,
    day: DateTime<Utc>,
    keep: impl Fn(&UsageEvent) -> bool,
) -> DayTotals {
    let kept: Vec<UsageEvent> = events.iter().filter(|event| keep(event)).cloned().collect();
    recount(&kept)
        .into_iter()
        .filter(|((kind, _, window, start), _)| {
            kind == dimension && window == "day" && *start == day.timestamp()
        })
        .map(|((_, key, _, _), sums)| {
            (format!("{dimension}={key}"), (sums.requests, sums.cost_usd))
        })
        .collect()
}

/// The day of the workloads (UTC).
fn day() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 9, 0, 0, 0).unwrap()
}

/// `hour`:00 of [`day`].
fn hour(hour: u32) -> DateTime<Utc> {
    day() + chrono::TimeDelta::hours(i64::from(hour))
}

/// Every event.
fn all(_: &UsageEvent) -> bool {
    true
}

/// Events the edited `team-daily` counts.
fn openai(event: &UsageEvent) -> bool {
    event.provider == "openai"
}

/// An aggregator config whose policy directory holds `team-daily` counting every event, and
/// the edits the tests make to it.
struct Scenario {
    config: aggregator::Config,
    dir: std::path::PathBuf,
    /// `team-daily` before the edit (every event).
    old_team_kind: String,
    /// `team-daily` after the edit (`provider: openai`).
    new_team_kind: String,
    /// `model-daily`, added by the edit.
    model_kind: String,
}

impl Scenario {
    fn new(test: &str) -> Scenario {
        let mut config = isolated_config(test);
        let dir = policies_dir(&team_daily(""));
        config.aggregate.policies_dir = Some(dir.clone());
        config.aggregate.reload_interval_ms = 100;
        let scenario = Scenario {
            config,
            dir,
            old_team_kind: kind_of(&team_daily(""), "team-daily"),
            new_team_kind: kind_of(&team_daily(OPENAI_ONLY), "team-daily"),
            model_kind: kind_of(MODEL_DAILY, "model-daily"),
        };
        assert_ne!(scenario.old_team_kind, scenario.new_team_kind);
        scenario
    }

    /// Adds the `model-daily` file.
    fn add_model_policy(&self) {
        write_policy(&self.dir, "model.yaml", MODEL_DAILY);
    }

    /// Restricts `team-daily` to `provider: openai` (same id).
    fn restrict_team_policy(&self) {
        write_policy(&self.dir, "policies.yaml", &team_daily(OPENAI_ONLY));
    }

    /// Waits until `scope_kind`'s day totals equal the recount of `events` kept by `keep`,
    /// grouped by `dimension`.
    async fn wait_for(
        &self,
        scope_kind: &str,
        events: &[UsageEvent],
        dimension: &str,
        keep: fn(&UsageEvent) -> bool,
    ) {
        let expected = recount_day(events, dimension, day(), keep);
        wait_for_day(&self.config, scope_kind, day(), &expected).await;
    }

    /// Waits for both edited definitions to total `events`.
    async fn wait_for_edited(&self, events: &[UsageEvent]) {
        self.wait_for(&self.model_kind, events, "model", all).await;
        self.wait_for(&self.new_team_kind, events, "team", openai)
            .await;
    }

    /// The old `team-daily` definition's stored day totals.
    async fn old_team(&self) -> DayTotals {
        stored_day(&self.config, &self.old_team_kind, day()).await
    }
}

/// The edited selector of `team-daily`.
const OPENAI_ONLY: &str = "selector: {provider: openai}";

/// Waits until `scope_kind`'s stored day totals equal `expected`.
async fn wait_for_day(
    config: &aggregator::Config,
    scope_kind: &str,
    day: DateTime<Utc>,
    expected: &DayTotals,
) {
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let stored = stored_day(config, scope_kind, day).await;
        if &stored == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {scope_kind} day totals equal to the recount:\n stored \
             {stored:?}\n wanted {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 13 point 3: policy edits reach the aggregator, not only the alerter. A policy added
/// while the aggregator runs, and a policy whose selector changed under the same id, total the
/// whole current day window (events before the edit included, rebuilt from the usage topic)
/// before their totals are written; the old definition's totals never grow after the change;
/// a broken edit keeps the last good set and is counted in
/// `quotaflow_aggregator_policy_reloads_total{outcome="failed"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn policy_edits_are_enforced_over_the_whole_current_window() {
    let scenario = Scenario::new("policy_reload");
    let config = &scenario.config;
    let running = start(config).await;
    let mut sent: Vec<UsageEvent> = Vec::new();

    // Before any edit: only team-daily is counted.
    sent.extend(workload(31, 1_500, hour(1), 1_000));
    produce(&config.kafka, &sent).await;
    scenario
        .wait_for(&scenario.old_team_kind, &sent, "team", all)
        .await;

    // A new policy file, at "03:00": its day total includes the spend since 00:00.
    scenario.add_model_policy();
    let second = workload(32, 1_500, hour(3), 1_000);
    produce(&config.kafka, &second).await;
    sent.extend(second);
    scenario
        .wait_for(&scenario.model_kind, &sent, "model", all)
        .await;
    scenario
        .wait_for(&scenario.old_team_kind, &sent, "team", all)
        .await;
    let old_team_before_change = scenario.old_team().await;

    // The same id counts something else: new totals from the whole day, old ones frozen.
    scenario.restrict_team_policy();
    let third = workload(33, 1_500, hour(5), 1_000);
    produce(&config.kafka, &third).await;
    sent.extend(third);
    assert_ne!(
        recount_day(&sent, "team", day(), openai),
        recount_day(&sent, "team", day(), all),
        "the workload must have other providers for the selector to matter"
    );
    scenario.wait_for_edited(&sent).await;
    assert_eq!(
        scenario.old_team().await,
        old_team_before_change,
        "the old definition's totals grew after the change"
    );

    // A broken edit: the last good set stays in force and the failure is counted.
    let failures_before = running.stats.policy_reload_failures.load(Ordering::Acquire);
    write_policy(
        &scenario.dir,
        "model.yaml",
        "id: [model-daily\nunit: requests\n",
    );
    testkit::eventually(DEADLINE, "a failed reload", || async {
        (running.stats.policy_reload_failures.load(Ordering::Acquire) > failures_before)
            .then_some(())
    })
    .await;
    let metrics = metrics_text(&running).await;
    assert!(
        metrics.contains("quotaflow_aggregator_policy_reloads_total{outcome=\"failed\"}")
            && metrics.contains("quotaflow_aggregator_policy_reload_failing 1"),
        "{metrics}"
    );
    let fourth = workload(34, 1_000, hour(7), 1_000);
    produce(&config.kafka, &fourth).await;
    sent.extend(fourth);
    scenario.wait_for_edited(&sent).await;
    assert_eq!(
        scenario.old_team().await,
        old_team_before_change,
        "the old definition's totals grew after the change"
    );

    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&scenario.dir);
}

/// Issue 13 point 3, under `kill -9`: the aggregator (the binary) is killed at staggered moments
/// right after a policy edit (while the new definitions are held and being seeded, or just after
/// their seed was written without its checkpoint), and again mid-stream after it. Every restart
/// loads the edited set and seeds what its checkpoint does not list as complete, so the new
/// definitions end equal to the recount of the whole day, and the old definition keeps exactly
/// the events it counted before the edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn policy_edits_survive_kill_9() {
    let mut scenario = Scenario::new("policy_reload_kill");
    scenario.config.aggregate.flush_interval_ms = 20;
    let config = &scenario.config;

    let first = spawn_process(config);
    let mut sent = workload(41, 1_500, hour(1), 1_000);
    produce(&config.kafka, &sent).await;
    scenario
        .wait_for(&scenario.old_team_kind, &sent, "team", all)
        .await;
    let old_team = scenario.old_team().await;

    // The edit, then crashes while it is being applied: before the reload, during the
    // backfill, after the seed's flush (staggered moments, as in `exactly_once`).
    scenario.add_model_policy();
    scenario.restrict_team_policy();
    tokio::time::sleep(Duration::from_millis(150)).await;
    first.kill_9();
    for round in 0..3u64 {
        let process = spawn_process(config);
        tokio::time::sleep(Duration::from_millis(300 + 400 * round)).await;
        process.kill_9();
    }

    let process = spawn_process(config);
    scenario.wait_for_edited(&sent).await;
    // And mid-stream after the edit.
    let second = workload(42, 1_500, hour(3), 1_000);
    produce(&config.kafka, &second).await;
    sent.extend(second);
    let before = partial_rows(&config.clickhouse).await;
    testkit::eventually(DEADLINE, "a flush of the new events", || {
        let clickhouse = config.clickhouse.clone();
        async move { (partial_rows(&clickhouse).await > before).then_some(()) }
    })
    .await;
    process.kill_9();

    let last = spawn_process(config);
    scenario.wait_for_edited(&sent).await;
    assert_eq!(
        scenario.old_team().await,
        old_team,
        "the old definition's totals changed after the edit"
    );
    last.kill_9();
    let _ = std::fs::remove_dir_all(&scenario.dir);
}
