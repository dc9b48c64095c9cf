//! Issue 13 point 7, "Unbounded state from external cardinality", on the real stack: past
//! `aggregate.max_scopes_per_kind` distinct values of a kind in a window, the events of further
//! values are counted under the kind's overflow bucket `__overflow__` — exactly, written to
//! ClickHouse and published like any total, so policies cap it — and counted in
//! `quotaflow_aggregator_scope_overflows_total`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use infra::testkit;
use schemas::fixtures::text_event;
use support::*;

const PER_USER: &str = r#"
- id: per-user-daily
  owner: {team: growth, contact: g@example.com}
  description: spend per user and day
  unit: cost_usd
  group_by: [user_id]
  window: {kind: day}
  hard_cap: 10
  action: {kind: block}
"#;

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Row {
    scope_key: String,
    requests: u64,
    input_tokens: u64,
}

/// `scope_key → (requests, input_tokens)` of `scope_kind`'s totals in `window_kind` windows.
async fn totals_of(
    config: &aggregator::Config,
    scope_kind: &str,
    window_kind: &str,
) -> BTreeMap<String, (u64, u64)> {
    infra::clickhouse::client(&config.clickhouse)
        .query(
            "SELECT scope_key, requests, input_tokens FROM window_totals_current \
             WHERE scope_kind = ? AND window_kind = ?",
        )
        .bind(scope_kind)
        .bind(window_kind)
        .fetch_all::<Row>()
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.scope_key, (row.requests, row.input_tokens)))
        .collect()
}

/// Issue 13 point 7: with a limit of 5, 20 distinct `user_id`s give 5 totals of their own and
/// one `__overflow__` total equal to the exact recount of the other 15 — for the `user_id`
/// dimension (month and minute) and for a `group_by: [user_id]` policy (day) —
/// and a value admitted once keeps its own total. Today's main gives every value its own total.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn values_past_the_limit_are_counted_exactly_in_a_capped_overflow_bucket() {
    let mut config = isolated_config("agg_cardinality");
    // One partition: the limit is per partition.
    config.kafka.topics.partitions = 1;
    config.aggregate.policies_dir = Some(policies_dir(PER_USER));
    config.aggregate.max_scopes_per_kind = 5;
    // Distinct token counts per user, so a sum names the values in it.
    let tokens = |user: u32| 1000 + 7 * u64::from(user) * u64::from(user);
    let first: DateTime<Utc> = "2026-03-09T12:00:00Z".parse().unwrap();
    let user_event = |index: u32, user: u32| {
        let mut event = text_event(
            &testkit::unique_name(&format!("card{index}")),
            first + TimeDelta::seconds(i64::from(index)),
        );
        event.user_id = Some(format!("user-{user:02}"));
        event.input_tokens = tokens(user);
        event
    };
    let mut events: Vec<_> = (0..20).map(|user| user_event(user, user)).collect();
    // user-02 again, after the limit was reached: still its own total.
    events.push(user_event(20, 2));

    let running = start(&config).await;
    produce(&config.kafka, &events).await;
    wait_caught_up(&config, Duration::from_secs(120)).await;

    let folded: u64 = (5..20).map(tokens).sum();
    let mut want: BTreeMap<String, (u64, u64)> = (0..5)
        .map(|user| (format!("user-{user:02}"), (1, tokens(user))))
        .collect();
    want.insert("user-02".to_owned(), (2, 2 * tokens(2)));
    want.insert(policy::OVERFLOW_VALUE.to_owned(), (15, folded));
    assert_eq!(totals_of(&config, "user_id", "month").await, want);
    assert_eq!(totals_of(&config, "user_id", "minute").await, want);

    let policy_want: BTreeMap<String, (u64, u64)> = want
        .iter()
        .map(|(user, sums)| (format!("user_id={user}"), *sums))
        .collect();
    assert_eq!(
        totals_of(&config, &policy_kind(PER_USER, "per-user-daily"), "day").await,
        policy_want
    );

    // Other kinds hold one value each: nothing else overflowed (15 user_id + 15 policy scopes).
    testkit::eventually(Duration::from_secs(20), "the overflow metric", || {
        let url = running.metrics_url.clone();
        async move {
            let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
            body.lines()
                .any(|line| line == "quotaflow_aggregator_scope_overflows_total 30")
                .then_some(())
        }
    })
    .await;
    running.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
