//! Decisions do not wait for the audit (ClickHouse) or the notifications (webhooks): the alerter on
//! the real stack, its ClickHouse behind a [`FaultProxy`] that the test takes down, its Slack
//! receiver answering slowly, and its effect queues made tiny so that they overflow.

#[allow(dead_code)]
#[path = "support/logs.rs"]
mod logs;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use infra::testkit;
use schemas::DecisionAction;
use support::*;

/// Keys filling the queues before the probe.
const FILL: usize = 8;

async fn count(config: &infra::config::ClickHouseConfig, sql: &str) -> u64 {
    let client = infra::clickhouse::client(config);
    client.query(sql).fetch_one::<u64>().await.unwrap_or(0)
}

/// Issue 13, point 5: decisions never wait for ClickHouse or webhooks. With the alerter's
/// ClickHouse down, a Slack webhook that answers slowly and more audit rows and notifications than
/// the effect queues hold (capacity 2), a total over its cap is still blocked on the control topic
/// while ClickHouse is down; once ClickHouse is back, every decision and alert is in the audit
/// tables and every notification reached Slack and PagerDuty.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_block_goes_out_while_clickhouse_is_down_and_slack_is_slow_and_every_effect_follows() {
    let logs = logs::Logs::global();
    let receivers = Receivers::start_slow_slack(Duration::from_millis(500)).await;
    let mut config = config("alerter_outage", CAP_PER_KEY, &receivers);
    config.alert.effect_queue_capacity = 2;
    let (proxy, direct) = clickhouse_behind_proxy(&mut config).await;
    // Migrations need ClickHouse: it goes down once the alerter is ready.
    let alerter = start(&config).await;
    proxy.set_down(true);

    let keys: Vec<String> = (0..FILL).map(|i| format!("fill-{i:02}")).collect();

    // The first block, then wait until the audit task is stuck retrying its write.
    produce_totals(&config.kafka, &[over_cap(&keys[0])]).await;
    testkit::eventually(Duration::from_secs(60), "a failed audit write", || async {
        logs.text()
            .contains("audit write failed; retrying")
            .then_some(())
    })
    .await;
    // More effects than the queues hold, then the probe.
    let fill: Vec<_> = keys[1..].iter().map(|key| over_cap(key)).collect();
    produce_totals(&config.kafka, &fill).await;
    produce_totals(&config.kafka, &[over_cap("probe")]).await;

    let log = wait_control(
        &config.kafka,
        "the probe's block while ClickHouse is down",
        |log| {
            log.iter().any(|decision| {
                decision.scope.get("api_key_id").map(String::as_str) == Some("probe")
                    && decision.action == DecisionAction::Block
            })
        },
    )
    .await;
    assert!(proxy.is_down());
    let blocked: BTreeSet<&str> = log
        .iter()
        .filter(|decision| decision.action == DecisionAction::Block)
        .filter_map(|decision| decision.scope.get("api_key_id").map(String::as_str))
        .collect();
    let mut expected: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    expected.insert("probe");
    assert_eq!(blocked, expected);
    // The queues did overflow, and nothing was audited yet.
    assert!(
        logs.text().contains("effects kept in the overflow buffer"),
        "the effect queues never filled"
    );
    assert_eq!(count(&direct, "SELECT count() FROM decisions").await, 0);

    // ClickHouse back: every audit row and every notification arrives.
    proxy.set_down(false);
    let expected_rows = expected.len() as u64;
    testkit::eventually(
        Duration::from_secs(120),
        "every decision and alert audited",
        || {
            let direct = direct.clone();
            async move {
                let decisions = count(&direct, "SELECT count() FROM decisions FINAL").await;
                let hard_caps = count(
                    &direct,
                    "SELECT count() FROM alerts FINAL WHERE kind = 'hard_cap'",
                )
                .await;
                (decisions == expected_rows && hard_caps == expected_rows).then_some(())
            }
        },
    )
    .await;
    let mentions = |bodies: Vec<serde_json::Value>, key: &str| {
        bodies.iter().any(|body| body.to_string().contains(key))
    };
    testkit::eventually(Duration::from_secs(120), "every notification", || {
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|key| {
                !mentions(receivers.slack(), key)
                    || !mentions(
                        receivers
                            .pagerduty()
                            .into_iter()
                            .filter(|body| body["event_action"] == "trigger")
                            .collect(),
                        key,
                    )
            })
            .collect();
        async move { missing.is_empty().then_some(()) }
    })
    .await;

    alerter.stop().await.unwrap();
    testkit::drop_database(&direct).await.unwrap();
}

/// Issue 13, point 5 (notifications): a slow webhook holds back only its own messages. Slack
/// answers after 2 s each; the PagerDuty pages of the same alerts all arrive while most Slack
/// messages are still waiting, and the Slack messages follow.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_slow_slack_webhook_does_not_hold_back_pagerduty() {
    let receivers = Receivers::start_slow_slack(Duration::from_secs(2)).await;
    let config = config("alerter_slow_slack", CAP_PER_KEY, &receivers);
    let alerter = start(&config).await;
    let keys: Vec<String> = (0..5).map(|i| format!("slow-{i:02}")).collect();
    let totals: Vec<_> = keys.iter().map(|key| over_cap(key)).collect();
    produce_totals(&config.kafka, &totals).await;

    let want = keys.len();
    let mentioned = |bodies: &[serde_json::Value]| {
        keys.iter()
            .filter(|key| {
                bodies
                    .iter()
                    .any(|body| body.to_string().contains(key.as_str()))
            })
            .count()
    };
    testkit::eventually(Duration::from_secs(60), "a page per key", || {
        let triggers: Vec<_> = receivers
            .pagerduty()
            .into_iter()
            .filter(|body| body["event_action"] == "trigger")
            .collect();
        let paged = mentioned(&triggers);
        async move { (paged == want).then_some(()) }
    })
    .await;
    let on_slack = mentioned(&receivers.slack());
    assert!(
        on_slack < keys.len(),
        "every Slack message was answered before the last page: pages waited behind Slack"
    );
    testkit::eventually(Duration::from_secs(120), "a Slack message per key", || {
        let on_slack = mentioned(&receivers.slack());
        async move { (on_slack == want).then_some(()) }
    })
    .await;

    alerter.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
