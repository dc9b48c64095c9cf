//! Issue 13, point 5: enforcement does not wait for ClickHouse. With the aggregator's ClickHouse
//! down, its flushes fail and are retried, but it keeps reading, counting and publishing policy
//! totals, so the alerter still sees every scope's spend; once ClickHouse is back, the partials
//! and checkpoints catch up, exactly.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use infra::testkit;
use rust_decimal::Decimal;
use schemas::UsageEvent;
use support::*;

const POLICY: &str = r#"
- id: outage-daily
  owner: {team: platform, contact: p@example.com}
  description: cost per key per day
  unit: cost_usd
  group_by: [api_key_id]
  window: {kind: day}
  hard_cap: 1000
  action: {kind: block}
"#;

/// Cost and unpriced events per (policy scope key, day start), each distinct `event_id` once.
type PolicySums = BTreeMap<(String, i64), (Decimal, u64)>;

fn recount_policy(events: &[UsageEvent]) -> PolicySums {
    let mut seen = std::collections::HashSet::new();
    let mut sums = PolicySums::new();
    for event in events.iter().filter(|e| seen.insert(e.event_id.clone())) {
        let entry = sums
            .entry((
                format!("api_key_id={}", event.api_key_id),
                utc_window_start("day", event.occurred_at),
            ))
            .or_default();
        match event.cost_usd {
            Some(cost) => entry.0 += cost,
            None => entry.1 += 1,
        }
    }
    sums
}

fn published_policy(config: &aggregator::Config) -> PolicySums {
    let kind = policy_kind(POLICY, "outage-daily");
    let mut sums = PolicySums::new();
    for total in newest_published(&config.kafka).into_values() {
        if total.scope_kind != kind {
            continue;
        }
        let entry = sums
            .entry((total.scope_key, total.window_start.timestamp()))
            .or_default();
        entry.0 += total.cost_usd;
        entry.1 += total.unpriced_events;
    }
    sums
}

/// Issue 13, point 5 (aggregator side): with ClickHouse down, every policy total of the events
/// sent during the outage reaches the totals topic (what the alerter blocks on) while flushes
/// keep failing and reading never pauses; afterwards ClickHouse holds the exact totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn policy_totals_keep_flowing_while_clickhouse_is_down() {
    let mut config = isolated_config("agg_ch_down");
    config.aggregate.policies_dir = Some(policies_dir(POLICY));
    config.aggregate.publish_scopes = aggregator::config::PublishScopes::Policies;
    let (proxy, direct) = clickhouse_behind_proxy(&mut config).await;

    let start_at: DateTime<Utc> = Utc::now() - chrono::TimeDelta::minutes(5);
    let events = workload(21, 6_000, start_at, 10);
    let running = start(&config).await;
    produce(&config.kafka, &events[..1_000]).await;
    wait_caught_up(&config, Duration::from_secs(120)).await;

    proxy.set_down(true);
    produce(&config.kafka, &events[1_000..]).await;
    testkit::eventually(Duration::from_secs(60), "a failed flush", || async {
        (running.stats.flush_failures.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    let want = recount_policy(&events);
    // Polled with a deadline; on failure the message shows what differed.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let got = published_policy(&config);
        if got == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the policy totals on the topic never matched the recount while ClickHouse was down: \
             {} scopes published, {} expected; first differences: {:?}",
            got.len(),
            want.len(),
            want.iter()
                .filter(|(key, sums)| got.get(*key) != Some(sums))
                .map(|(key, sums)| (key, sums, got.get(key)))
                .take(3)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(proxy.is_down());
    let failures = running.stats.flush_failures.load(Ordering::Relaxed);
    assert!(failures >= 1, "no flush failed while ClickHouse was down");
    let metrics = metrics_text(&running).await;
    assert!(
        !metrics.contains("quotaflow_aggregator_paused 1"),
        "reading paused although the read-ahead was not spent:\n{metrics}"
    );

    proxy.set_down(false);
    config.clickhouse = direct.clone();
    wait_caught_up(&config, Duration::from_secs(300)).await;
    assert_totals_eq(
        "ClickHouse after the outage",
        &stored_totals(&direct).await,
        &recount(&events),
    );
    running.stop().await.unwrap();
    testkit::drop_database(&direct).await.unwrap();
}
