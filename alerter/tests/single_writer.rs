//! Issue 13, point 8: two alerters of one pipeline (a rolling update, a zombie that comes back)
//! make one decision stream on the control topic. Each used to number its decisions from what it
//! held (held + 1) and publish them: gateways kept whichever arrived first, compaction the other.

mod support;

use std::time::Duration;

use chrono::TimeDelta;
use infra::testkit;
use schemas::DecisionAction;
use support::*;

const KEY_DAILY: &str = r#"
id: t-one-writer
description: A test cap per API key and day.
owner: {team: search, contact: search-oncall@example.com}
environment: prod
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: 10
soft_alerts: []
action: {kind: block}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_second_alerter_fences_the_first_and_the_control_topic_has_one_decision_stream() {
    let receivers = Receivers::start().await;
    let config = config("alerter_one_writer", KEY_DAILY, &receivers);
    let old = start(&config).await;
    // The same pipeline (same group id) started again: it opens the control writer and fences
    // the older instance, which is still running and reading the same totals.
    let new = start(&config).await;

    let start_at = now_s() - TimeDelta::seconds(60);
    let end_at = now_s() + TimeDelta::hours(1);
    produce_totals(
        &config.kafka,
        &[policy_total(
            "t-one-writer",
            "api_key_id=k1",
            start_at,
            end_at,
            "12",
            1,
        )],
    )
    .await;
    let log = wait_control(&config.kafka, "the block", |log| !log.is_empty()).await;

    // The fenced instance tried to publish the same block and stopped instead.
    let stopped = tokio::time::timeout(Duration::from_secs(60), old.handle)
        .await
        .expect("the fenced alerter stopped")
        .unwrap();
    let error = stopped.expect_err("a fenced alerter stops with an error");
    assert!(
        matches!(error, alerter::Error::Fenced(_)),
        "stopped with {error}"
    );
    assert!(!error.is_retryable());

    // One stream: exactly one block, from the new instance, and it keeps deciding.
    let log_after = control_log(&config.kafka);
    assert_eq!(log_after.len(), 1, "one decision only: {log_after:?}");
    assert_eq!(log[0].action, DecisionAction::Block);
    assert_eq!(
        log[0].version,
        u64::try_from(log[0].issued_at.timestamp_millis()).unwrap()
    );
    produce_totals(
        &config.kafka,
        &[policy_total(
            "t-one-writer",
            "api_key_id=k2",
            start_at,
            end_at,
            "11",
            1,
        )],
    )
    .await;
    let log = wait_control(&config.kafka, "the new instance's next block", |log| {
        log.len() == 2
    })
    .await;
    assert!(
        log.iter()
            .any(|decision| decision.scope.get("api_key_id").map(String::as_str) == Some("k2")),
        "{log:?}"
    );
    new.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
