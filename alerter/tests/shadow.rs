//! Shadow mode on the real stack (issue 15 point 4): a policy with `shadow: true` publishes its
//! block on the control topic as a dry run (the gateway client lets traffic through and
//! `check_shadow` tells what it would do), audits it as `would_block`, says so in Slack and never
//! pages; the owner's edit to `shadow: false`, picked up by the reload while the total stands,
//! enforces the block and pages.

mod support;

use std::time::Duration;

use gateway::Verdict;
use infra::testkit;
use schemas::DecisionAction;
use support::*;

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_shadow_policy_is_decided_audited_and_announced_but_enforced_only_once_switched_off() {
    let receivers = Receivers::start().await;
    let shadow_policy = format!("{CAP_PER_KEY}shadow: true\n");
    let config = config("alerter_shadow", &shadow_policy, &receivers);
    let alerter = start(&config).await;
    let gateway = gateway(&config.kafka).await;

    produce_totals(&config.kafka, &[over_cap("k1")]).await;
    let log = wait_control(&config.kafka, "a shadow decision", |log| !log.is_empty()).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].shadow, "{:?}", log[0]);
    assert_eq!(log[0].action, DecisionAction::Block);

    // Never enforced; what it would do is known.
    testkit::eventually(
        Duration::from_secs(10),
        "the gateway sees the dry run",
        || {
            let shadow = gateway.check_shadow(&request("k1", "prod", "gpt-4o"));
            async move { matches!(shadow, Verdict::Block { .. }).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        gateway.check(&request("k1", "prod", "gpt-4o")),
        Verdict::Allow
    );

    // Said in Slack, audited as would_block, never paged.
    wait_receivers(&receivers, "the dry run in Slack", |r| {
        r.slack_containing("Shadow mode") == 1
    })
    .await;
    let client = infra::clickhouse::client(&config.clickhouse);
    testkit::eventually(Duration::from_secs(30), "the would_block audit row", || {
        let client = client.clone();
        async move {
            let rows: u64 = client
                .query("SELECT count() FROM decisions FINAL WHERE action = 'would_block' AND policy_id = 't-cap'")
                .fetch_one()
                .await
                .ok()?;
            (rows == 1).then_some(())
        }
    })
    .await;
    assert!(
        receivers.pagerduty().is_empty(),
        "a dry run paged: {:?}",
        receivers.pagerduty()
    );

    // The owner switches the dry run off: the same block, enforced, paged.
    std::fs::write(config.alert.policies_dir.join("policies.yaml"), CAP_PER_KEY).unwrap();
    let log = wait_control(&config.kafka, "the enforced block", |log| log.len() == 2).await;
    assert!(!log[1].shadow);
    assert_eq!(log[1].action, DecisionAction::Block);
    assert!(log[1].version > log[0].version);
    testkit::eventually(Duration::from_secs(10), "the gateway blocks k1", || {
        let verdict = gateway.check(&request("k1", "prod", "gpt-4o"));
        async move { matches!(verdict, Verdict::Block { .. }).then_some(()) }
    })
    .await;
    wait_receivers(&receivers, "the page", |r| {
        r.pagerduty_actions("trigger").len() == 1
    })
    .await;

    gateway.shutdown();
    alerter.stop().await.unwrap();
    receivers.stop().await;
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
