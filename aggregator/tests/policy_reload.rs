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
/// `aggregator_policy_reloads_total{outcome="failed"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_edits_are_enforced_over_the_whole_current_window() {
    let mut config = isolated_config("policy_reload");
    let every_event = team_daily("");
    let openai_only = team_daily("selector: {provider: openai}");
    let dir = policies_dir(&every_event);
    config.aggregate.policies_dir = Some(dir.clone());
    config.aggregate.reload_interval_ms = 100;
    let old_team_kind = kind_of(&every_event, "team-daily");
    let new_team_kind = kind_of(&openai_only, "team-daily");
    let model_kind = kind_of(MODEL_DAILY, "model-daily");
    assert_ne!(old_team_kind, new_team_kind);

    let day = Utc.with_ymd_and_hms(2026, 3, 9, 0, 0, 0).unwrap();
    let hour = |hour: u32| Utc.with_ymd_and_hms(2026, 3, 9, hour, 0, 0).unwrap();
    let running = start(&config).await;
    let mut sent: Vec<UsageEvent> = Vec::new();

    // Before any edit: only team-daily is counted.
    let first = workload(31, 1_500, hour(1), 1_000);
    produce(&config.kafka, &first).await;
    sent.extend(first);
    let all = |_: &UsageEvent| true;
    wait_for_day(
        &config,
        &old_team_kind,
        day,
        &recount_day(&sent, "team", day, all),
    )
    .await;

    // A new policy file, at "03:00": its day total includes the spend since 00:00.
    write_policy(&dir, "model.yaml", MODEL_DAILY);
    let second = workload(32, 1_500, hour(3), 1_000);
    produce(&config.kafka, &second).await;
    sent.extend(second);
    wait_for_day(
        &config,
        &model_kind,
        day,
        &recount_day(&sent, "model", day, all),
    )
    .await;
    wait_for_day(
        &config,
        &old_team_kind,
        day,
        &recount_day(&sent, "team", day, all),
    )
    .await;
    let old_team_before_change = stored_day(&config, &old_team_kind, day).await;

    // The same id counts something else: new totals from the whole day, old ones frozen.
    write_policy(&dir, "policies.yaml", &openai_only);
    let third = workload(33, 1_500, hour(5), 1_000);
    produce(&config.kafka, &third).await;
    sent.extend(third);
    let openai = |event: &UsageEvent| event.provider == "openai";
    let expected_openai = recount_day(&sent, "team", day, openai);
    assert_ne!(
        expected_openai,
        recount_day(&sent, "team", day, all),
        "the workload must have other providers for the selector to matter"
    );
    wait_for_day(&config, &new_team_kind, day, &expected_openai).await;
    wait_for_day(
        &config,
        &model_kind,
        day,
        &recount_day(&sent, "model", day, all),
    )
    .await;
    assert_eq!(
        stored_day(&config, &old_team_kind, day).await,
        old_team_before_change,
        "the old definition's totals grew after the change"
    );

    // A broken edit: the last good set stays in force and the failure is counted.
    let failures_before = running.stats.policy_reload_failures.load(Ordering::Acquire);
    write_policy(&dir, "model.yaml", "id: [model-daily\nunit: requests\n");
    testkit::eventually(DEADLINE, "a failed reload", || async {
        (running.stats.policy_reload_failures.load(Ordering::Acquire) > failures_before)
            .then_some(())
    })
    .await;
    let metrics = metrics_text(&running).await;
    assert!(
        metrics.contains("aggregator_policy_reloads_total{outcome=\"failed\"}")
            && metrics.contains("aggregator_policy_reload_failing 1"),
        "{metrics}"
    );
    let fourth = workload(34, 1_000, hour(7), 1_000);
    produce(&config.kafka, &fourth).await;
    sent.extend(fourth);
    wait_for_day(
        &config,
        &model_kind,
        day,
        &recount_day(&sent, "model", day, all),
    )
    .await;
    wait_for_day(
        &config,
        &new_team_kind,
        day,
        &recount_day(&sent, "team", day, openai),
    )
    .await;
    assert_eq!(
        stored_day(&config, &old_team_kind, day).await,
        old_team_before_change,
        "the old definition's totals grew after the change"
    );

    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
