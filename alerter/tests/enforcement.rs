//! The alerter on the real stack (`dev/stack up`): totals in, decisions on the control topic, a
//! gateway client obeying them, Slack and PagerDuty receivers checking every payload, audit rows in
//! ClickHouse. Each test has its own topics, database and receivers.

mod support;

use std::time::Duration;

use chrono::TimeDelta;
use gateway::Verdict;
use infra::testkit;
use schemas::DecisionAction;
use support::*;

const KEY_DAILY: &str = r#"
id: t-key-daily
description: A test cap per API key and day.
owner: {team: search, contact: search-oncall@example.com, pagerduty_service: search-quota}
environment: prod
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: 10
action: {kind: block}
"#;

/// A cap budget owners may raise: alice, whose key is `signing_key(1)`.
fn with_approval() -> String {
    format!(
        r#"
id: t-approvable
description: A test cap that budget owners may raise.
owner: {{team: search, contact: search-oncall@example.com, pagerduty_service: search-quota}}
environment: prod
unit: cost_usd
group_by: [api_key_id]
window: {{kind: day}}
hard_cap: 10
action: {{kind: block}}
approval:
  approvers: [{{name: alice, public_key: "{}"}}]
  max_raise: 100%
  max_duration: 1h
"#,
        public_key(&signing_key(1))
    )
}

async fn audit_count(config: &alerter::Config, sql: &str) -> u64 {
    let client = infra::clickhouse::client(&config.clickhouse);
    client.query(sql).fetch_one::<u64>().await.unwrap_or(0)
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn ladder_fires_once_each_cap_blocks_restart_repeats_nothing_and_reset_allows() {
    let receivers = Receivers::start().await;
    let config = config("alerter_ladder", KEY_DAILY, &receivers);
    let alerter = start(&config).await;
    let gateway = gateway(&config.kafka).await;
    let start_at = now_s() - TimeDelta::seconds(60);
    let end_at = now_s() + TimeDelta::seconds(25);
    let scope = "api_key_id=k1";

    // The ladder: each step's message arrives before the next total is sent.
    for (version, (cost, percent)) in [("5", 50), ("7.5", 75), ("9", 90)].into_iter().enumerate() {
        produce_totals(
            &config.kafka,
            &[policy_total(
                "t-key-daily",
                scope,
                start_at,
                end_at,
                cost,
                version as u64 + 1,
            )],
        )
        .await;
        let needle = format!("{percent}% of quota used");
        wait_receivers(&receivers, &needle, |r| r.slack_containing(&needle) == 1).await;
    }
    produce_totals(
        &config.kafka,
        &[policy_total(
            "t-key-daily",
            scope,
            start_at,
            end_at,
            "10",
            4,
        )],
    )
    .await;
    let log = wait_control(&config.kafka, "a block decision", |log| !log.is_empty()).await;
    assert_eq!(log.len(), 1, "{log:?}");
    let block = &log[0];
    assert_eq!(block.action, DecisionAction::Block);
    assert_eq!(
        block.version,
        u64::try_from(block.issued_at.timestamp_millis()).unwrap(),
        "a key's first version is its issue time in ms"
    );
    assert_eq!(
        block.scope.get("api_key_id").map(String::as_str),
        Some("k1")
    );
    assert_eq!(
        block.scope.get("environment").map(String::as_str),
        Some("prod")
    );
    assert_eq!(block.expires_at, Some(end_at));
    assert!(block.reason.contains("blocked until"), "{}", block.reason);

    // The gateway refuses the next request of that key in prod, with the reason; others pass.
    testkit::eventually(Duration::from_secs(10), "the gateway blocks k1", || {
        let verdict = gateway.check(&request("k1", "prod", "gpt-4o"));
        async move { matches!(verdict, Verdict::Block { .. }).then_some(verdict) }
    })
    .await;
    let verdict = gateway.check(&request("k1", "prod", "gpt-4o"));
    assert!(verdict.reason().unwrap().contains("t-key-daily"));
    assert_eq!(
        gateway.check(&request("k1", "staging", "gpt-4o")),
        Verdict::Allow
    );
    assert_eq!(
        gateway.check(&request("k2", "prod", "gpt-4o")),
        Verdict::Allow
    );

    wait_receivers(&receivers, "the page and the 100% alert", |r| {
        r.pagerduty_actions("trigger").len() == 1 && r.slack_containing("100% of quota used") == 1
    })
    .await;
    let incident = receivers.pagerduty_actions("trigger")[0].clone();
    let page = &receivers.pagerduty()[0];
    assert_eq!(page["payload"]["severity"], "critical");
    assert_eq!(
        page["payload"]["custom_details"]["policy_id"],
        "t-key-daily"
    );

    // More spend and a restart change nothing: no second decision, alert or page.
    produce_totals(
        &config.kafka,
        &[policy_total(
            "t-key-daily",
            scope,
            start_at,
            end_at,
            "12",
            5,
        )],
    )
    .await;
    alerter.stop().await.unwrap();
    let alerter = start(&config).await;
    // A marker through the same path: once it is out, anything repeated would be out too.
    send_marker(&config.kafka, &receivers, "t-key-daily", start_at, end_at).await;
    for percent in [50, 75, 90, 100] {
        let needle = format!("{percent}% of quota used: api_key_id=k1");
        assert_eq!(receivers.slack_containing(&needle), 1, "{needle}");
    }
    assert_eq!(
        receivers.pagerduty_actions("trigger"),
        vec![incident.clone()]
    );
    assert_eq!(control_log(&config.kafka).len(), 1);

    // The window ends: an allow decision, the page resolved, the gateway lets k1 through.
    let log = wait_control(&config.kafka, "the reset's allow", |log| log.len() == 2).await;
    assert_eq!(log[1].action, DecisionAction::Allow);
    assert_eq!(log[1].version, block.version + 1);
    assert_eq!(log[1].key, block.key);
    wait_receivers(&receivers, "the resolve", |r| {
        r.pagerduty_actions("resolve") == vec![incident.clone()]
    })
    .await;
    testkit::eventually(
        Duration::from_secs(10),
        "the gateway allows k1 again",
        || {
            let verdict = gateway.check(&request("k1", "prod", "gpt-4o"));
            async move { (verdict == Verdict::Allow).then_some(()) }
        },
    )
    .await;

    // Audit: both decisions and the alerts are in ClickHouse.
    testkit::eventually(Duration::from_secs(20), "audit rows", || {
        let config = config.clone();
        async move {
            let decisions = audit_count(&config, "SELECT count() FROM decisions FINAL").await;
            let alerts = audit_count(
                &config,
                "SELECT count() FROM alerts FINAL WHERE kind = 'soft_threshold'",
            )
            .await;
            (decisions == 2 && alerts == 5).then_some(())
        }
    })
    .await;
    alerter.stop().await.unwrap();
    gateway.shutdown();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn approval_lifts_a_block_until_it_expires_and_bad_approvals_are_rejected() {
    let receivers = Receivers::start().await;
    let config = config("alerter_approval", &with_approval(), &receivers);
    let alerter = start(&config).await;
    let start_at = now_s() - TimeDelta::seconds(60);
    let end_at = now_s() + TimeDelta::hours(1);
    produce_totals(
        &config.kafka,
        &[policy_total(
            "t-approvable",
            "api_key_id=k1",
            start_at,
            end_at,
            "10",
            1,
        )],
    )
    .await;
    wait_control(&config.kafka, "the block", |log| log.len() == 1).await;

    let policies = policy::PolicySet::load_dir(&config.alert.policies_dir).unwrap();
    let now = chrono::Utc::now();
    let alice = signing_key(1);
    // Not an approver, and a raise above the maximum: refused by the command's own check...
    let by_mallory = signed_approval(
        "t-approvable",
        "api_key_id=k1",
        "15",
        now + TimeDelta::minutes(5),
        "mallory",
        now,
        &signing_key(2),
    );
    let refusal = alerter::approve::check(&policies, &by_mallory, now).unwrap_err();
    assert!(refusal.contains("not an approver"), "{refusal}");
    let too_much = signed_approval(
        "t-approvable",
        "api_key_id=k1",
        "25",
        now + TimeDelta::minutes(5),
        "alice",
        now,
        &alice,
    );
    let refusal = alerter::approve::check(&policies, &too_much, now).unwrap_err();
    assert!(refusal.contains("above the most"), "{refusal}");
    // ...and by the alerter, when written anyway.
    alerter::approve::publish(&config.kafka, &by_mallory)
        .await
        .unwrap();
    testkit::eventually(Duration::from_secs(20), "the rejection audited", || {
        let config = config.clone();
        async move {
            (audit_count(
                &config,
                "SELECT count() FROM approvals FINAL WHERE status = 'rejected'",
            )
            .await
                == 1)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        control_log(&config.kafka).len(),
        1,
        "a rejected approval changes nothing"
    );

    // Alice raises it to 15 for a few seconds: allowed, then blocked again when it expires.
    let gateway = gateway(&config.kafka).await;
    let raise = signed_approval(
        "t-approvable",
        "api_key_id=k1",
        "15",
        chrono::Utc::now() + TimeDelta::seconds(6),
        "alice",
        chrono::Utc::now(),
        &alice,
    );
    alerter::approve::check(&policies, &raise, chrono::Utc::now()).unwrap();
    alerter::approve::publish(&config.kafka, &raise)
        .await
        .unwrap();
    let log = wait_control(&config.kafka, "the approval's allow", |log| log.len() == 2).await;
    assert_eq!(log[1].action, DecisionAction::Allow);
    assert!(
        log[1].reason.contains("alice approved a raise to 15"),
        "{}",
        log[1].reason
    );
    testkit::eventually(
        Duration::from_secs(10),
        "the gateway lets k1 through",
        || {
            let verdict = gateway.check(&request("k1", "prod", "gpt-4o"));
            async move { verdict.may_proceed().then_some(()) }
        },
    )
    .await;
    let log = wait_control(&config.kafka, "the block after expiry", |log| {
        log.len() == 3
    })
    .await;
    assert_eq!(log[2].action, DecisionAction::Block);
    assert_eq!(log[2].version, log[0].version + 2);
    testkit::eventually(
        Duration::from_secs(10),
        "the gateway blocks k1 again",
        || {
            let verdict = gateway.check(&request("k1", "prod", "gpt-4o"));
            async move { (!verdict.may_proceed()).then_some(()) }
        },
    )
    .await;
    wait_receivers(&receivers, "page, resolve, page", |r| {
        r.pagerduty_actions("trigger").len() == 2 && r.pagerduty_actions("resolve").len() == 1
    })
    .await;
    testkit::eventually(
        Duration::from_secs(20),
        "applied and expired audited",
        || {
            let config = config.clone();
            async move {
                let applied = audit_count(
                    &config,
                    "SELECT count() FROM approvals FINAL WHERE status = 'expired'",
                )
                .await;
                (applied == 1).then_some(())
            }
        },
    )
    .await;
    alerter.stop().await.unwrap();
    gateway.shutdown();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_crash_before_or_after_publishing_leaves_one_decision_and_one_page() {
    for (round, failpoint) in [
        "before_publish:1",
        "after_publish:1",
        "after_publish:1",
        "before_publish:1",
    ]
    .into_iter()
    .enumerate()
    {
        let receivers = Receivers::start().await;
        let config = config(&format!("alerter_crash{round}"), KEY_DAILY, &receivers);
        let start_at = now_s() - TimeDelta::seconds(60);
        let end_at = now_s() + TimeDelta::hours(1);
        let crashing = spawn_process(&config, Some(failpoint));
        produce_totals(
            &config.kafka,
            &[policy_total(
                "t-key-daily",
                "api_key_id=k1",
                start_at,
                end_at,
                "11",
                1,
            )],
        )
        .await;
        assert!(
            crashing.wait_aborted(Duration::from_secs(60)).await,
            "{failpoint}"
        );
        let _restarted = spawn_process(&config, None);
        wait_control(&config.kafka, "the block", |log| !log.is_empty()).await;
        // The marker: once k2's alert is out, a repeated k1 decision or page would be too.
        send_marker(&config.kafka, &receivers, "t-key-daily", start_at, end_at).await;
        wait_receivers(&receivers, "the page", |r| {
            !r.pagerduty_actions("trigger").is_empty()
        })
        .await;
        let log = control_log(&config.kafka);
        assert_eq!(
            log.len(),
            1,
            "{failpoint}: one decision for the key: {log:?}"
        );
        assert_eq!(log[0].action, DecisionAction::Block);
        let mut incidents = receivers.pagerduty_actions("trigger");
        incidents.dedup();
        assert_eq!(incidents.len(), 1, "{failpoint}: one incident");
        testkit::drop_database(&config.clickhouse).await.unwrap();
    }
}

/// [`KEY_DAILY`] with a soft alert at 50 % and one at 6 USD.
fn key_daily_amounts() -> String {
    KEY_DAILY
        .replace("id: t-key-daily", "id: t-key-amounts")
        .replace(
            "action: {kind: block}",
            "soft_alerts: [50, \"$6\"]\naction: {kind: block}",
        )
}

/// Issue 17, points 3 and 7, on the real stack: an amount threshold fires once, at its amount,
/// naming it; every message has its next action; the hard cap's message says why.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn amount_thresholds_fire_once_and_messages_say_what_to_do() {
    let receivers = Receivers::start().await;
    let config = config("alerter_amounts", &key_daily_amounts(), &receivers);
    let alerter = start(&config).await;
    let start_at = now_s() - TimeDelta::seconds(60);
    let end_at = now_s() + TimeDelta::seconds(600);
    let scope = "api_key_id=k1";
    let total = |cost: &str, version: u64| {
        policy_total("t-key-amounts", scope, start_at, end_at, cost, version)
    };
    produce_totals(&config.kafka, &[total("5.99", 1)]).await;
    wait_receivers(&receivers, "the 50% alert", |r| {
        r.slack_containing("50% of quota used") == 1
    })
    .await;
    produce_totals(&config.kafka, &[total("6", 2)]).await;
    let needle = "6 cost_usd reached (60% of quota)";
    wait_receivers(&receivers, "the amount alert", |r| {
        r.slack_containing(needle) == 1
    })
    .await;
    // More spend below the cap, then the cap: the amount does not fire again.
    produce_totals(&config.kafka, &[total("8", 3), total("10", 4)]).await;
    wait_receivers(&receivers, "the hard cap message and page", |r| {
        r.slack_containing("hard cap reached") == 1 && r.pagerduty_actions("trigger").len() == 1
    })
    .await;
    assert_eq!(receivers.slack_containing(needle), 1);
    let slack = receivers.slack();
    let amount = slack
        .iter()
        .find(|body| body["text"].as_str().unwrap_or("").contains(needle))
        .unwrap()
        .to_string();
    assert!(amount.contains("*Next action*"), "{amount}");
    assert!(amount.contains("threshold 6 cost_usd"), "{amount}");
    let cap = slack
        .iter()
        .find(|body| {
            body["text"]
                .as_str()
                .unwrap_or("")
                .contains("hard cap reached")
        })
        .unwrap()
        .to_string();
    assert!(cap.contains("*Why*"), "{cap}");
    assert!(
        cap.contains("Gateways now apply the policy's cap action"),
        "{cap}"
    );
    let page = receivers
        .pagerduty()
        .into_iter()
        .find(|body| body["event_action"] == "trigger")
        .expect("the hard cap pages");
    let details = &page["payload"]["custom_details"];
    assert!(details["next_action"]
        .as_str()
        .unwrap()
        .contains("Gateways now apply"));
    assert!(
        details["detail"]
            .as_str()
            .unwrap()
            .contains("blocked until"),
        "{details}"
    );
    alerter.stop().await.unwrap();
}
