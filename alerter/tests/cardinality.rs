//! Issue 13 point 7, "Unbounded state from external cardinality", on the real stack: what the
//! alerter holds for a window goes when the window closes, a job with no terminal event ages out
//! with a page, and the aggregator's overflow bucket raises an alert and is capped like any
//! scope (its block reaches a gateway for a user nobody tracks).

mod support;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use gateway::RequestAttributes;
use infra::testkit;
use schemas::DecisionAction;
use support::*;

/// The value of `quotaflow_alerter_state_entries{map="<map>"}` on the alerter's `/metrics`.
async fn state_entries(base_url: &str, map: &str) -> Option<f64> {
    metric(
        base_url,
        &format!("quotaflow_alerter_state_entries{{map=\"{map}\"}}"),
    )
    .await
}

/// The value of the series `series` (name and labels as `/metrics` prints them) on the
/// alerter's `/metrics`.
async fn metric(base_url: &str, series: &str) -> Option<f64> {
    let body = reqwest::get(format!("{base_url}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("{series} ");
    body.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim().parse().ok())
}

const PER_MINUTE: &str = r#"
id: t-minute
description: A small spend cap per API key and minute.
owner: {team: search, contact: search@example.com}
unit: cost_usd
group_by: [api_key_id]
window: {kind: minute}
hard_cap: 10
soft_alerts: [50]
action: {kind: alert_only}
"#;

/// Starts an alerter with `policies` (a minute window, `alert.ended_window_keep_secs = 1`) and
/// publishes `cost` for `api_key_id=k1` in a minute still open when it is evaluated (a loaded
/// machine may take seconds): the next minute when this one ends within 20 s.
async fn minute_total_of_k1(
    test: &str,
    policies: &str,
    policy_id: &str,
    cost: &str,
) -> (Receivers, alerter::Config, Running) {
    let receivers = Receivers::start().await;
    let mut config = config(test, policies, &receivers);
    config.alert.ended_window_keep_secs = 1;
    let alerter = start(&config).await;
    let now = now_s();
    let second = i64::from(now.timestamp() as u32 % 60);
    let minute = now - TimeDelta::seconds(second) + TimeDelta::minutes(i64::from(second > 40));
    produce_totals(
        &config.kafka,
        &[policy_total(
            policy_id,
            "api_key_id=k1",
            minute,
            minute + TimeDelta::minutes(1),
            cost,
            1,
        )],
    )
    .await;
    (receivers, config, alerter)
}

/// Issue 13 point 7: the totals and alert dedup keys of a window are dropped once it has
/// closed (here one second after its end, `alert.ended_window_keep_secs = 1`); today's main
/// keeps every dedup key forever.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn alerter_state_of_a_window_is_dropped_after_it_closes() {
    let (receivers, config, alerter) =
        minute_total_of_k1("alerter_prune", PER_MINUTE, "t-minute", "6").await;
    wait_receivers(&receivers, "the soft alert", |r| {
        r.slack_containing("api_key_id=k1") == 1
    })
    .await;
    let base_url = alerter.base_url.clone();
    testkit::eventually(Duration::from_secs(20), "the alert's key held", || {
        let base_url = base_url.clone();
        async move {
            let fired = state_entries(&base_url, "fired").await?;
            let totals = state_entries(&base_url, "totals").await?;
            (fired >= 1.0 && totals >= 1.0).then_some(())
        }
    })
    .await;
    // The minute ends within 80 s; its state goes 1 s (totals) and 2 s (keys) later.
    testkit::eventually(
        Duration::from_secs(90),
        "the window's state dropped",
        || {
            let base_url = base_url.clone();
            async move {
                let fired = state_entries(&base_url, "fired").await?;
                let totals = state_entries(&base_url, "totals").await?;
                (fired == 0.0 && totals == 0.0).then_some(())
            }
        },
    )
    .await;
    assert_eq!(receivers.slack_containing("api_key_id=k1"), 1);
    alerter.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

const JOBS: &str = r#"
id: t-jobs-age
description: Two video jobs at once per customer.
owner: {team: media, contact: media@example.com, pagerduty_service: media}
selector: {modality: video}
unit: concurrent_jobs
group_by: [customer_id]
hard_cap: 1
action: {kind: block}
"#;

/// Issue 13 point 7: a job whose terminal event never comes leaves its gauge after
/// `alert.job_max_age_secs` with a page (PagerDuty and Slack) naming the job, its scope and
/// owner, and the block it caused is lifted; today's main keeps it (and the block) forever.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_job_without_a_terminal_event_ages_out_with_a_page() {
    let receivers = Receivers::start().await;
    let mut config = config("alerter_job_age", JOBS, &receivers);
    config.alert.job_max_age_secs = 3;
    let alerter = start(&config).await;
    let mut event = schemas::fixtures::text_event(&testkit::unique_name("job"), Utc::now());
    event.modality = schemas::Modality::Video;
    event.endpoint = "video".to_owned();
    event.customer_id = Some("c-9".to_owned());
    event.job_id = Some("job-lost".to_owned());
    event.job_state = Some(schemas::JobState::Submitted);
    produce_events(&config.kafka, &[event]).await;
    let log = wait_control(&config.kafka, "the concurrency block", |log| {
        !log.is_empty()
    })
    .await;
    assert_eq!(log[0].action, DecisionAction::Block);
    wait_receivers(&receivers, "the age-out page", |r| {
        r.slack_containing("job job-lost of customer_id=c-9 (owner media)") == 1
            && r.pagerduty().iter().any(|page| {
                page["event_action"] == "trigger"
                    && page["payload"]["custom_details"]["rule"]
                        .as_str()
                        .is_some_and(|text| text.contains("job-lost"))
            })
    })
    .await;
    let log = wait_control(&config.kafka, "the lift", |log| log.len() == 2).await;
    assert_eq!(log[1].action, DecisionAction::Allow);
    let base_url = alerter.base_url.clone();
    testkit::eventually(Duration::from_secs(10), "no job held", || {
        let base_url = base_url.clone();
        async move {
            let jobs = state_entries(&base_url, "jobs_in_flight").await?;
            let scopes = state_entries(&base_url, "job_scopes").await?;
            (jobs == 0.0 && scopes == 0.0).then_some(())
        }
    })
    .await;
    alerter.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

const PER_USER: &str = r#"
id: t-per-user
description: Daily spend per user.
owner: {team: growth, contact: growth@example.com, pagerduty_service: growth}
environment: prod
unit: cost_usd
group_by: [user_id]
window: {kind: day}
hard_cap: 10
action: {kind: block}
"#;

/// Issue 13 point 7: a total of a policy's overflow bucket (`user_id=__overflow__`, the values
/// past the aggregator's `max_scopes_per_kind`) pages "overflow bucket in use", and over the cap
/// it is blocked like any scope: a gateway applies the block to a user the aggregator never gave
/// totals of its own, and not to requests without a `user_id`.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn an_overflow_bucket_raises_an_alert_and_its_cap_blocks_untracked_users() {
    let receivers = Receivers::start().await;
    let config = config("alerter_overflow", PER_USER, &receivers);
    let alerter = start(&config).await;
    let gateway = gateway(&config.kafka).await;
    let now = now_s();
    let day = now - TimeDelta::seconds(i64::from(now.timestamp() as u32 % 86_400));
    let overflow = format!("user_id={}", policy::OVERFLOW_VALUE);
    produce_totals(
        &config.kafka,
        &[policy_total(
            "t-per-user",
            &overflow,
            day,
            day + TimeDelta::days(1),
            "12",
            1,
        )],
    )
    .await;
    wait_receivers(&receivers, "the overflow alert and its page", |r| {
        r.slack_containing("overflow bucket in use for policy:t-per-user") == 1
            && r.pagerduty().iter().any(|page| {
                page["event_action"] == "trigger"
                    && page.to_string().contains("overflow bucket in use")
            })
    })
    .await;
    let log = wait_control(&config.kafka, "the overflow bucket's block", |log| {
        !log.is_empty()
    })
    .await;
    assert_eq!(log[0].action, DecisionAction::Block);
    assert_eq!(
        log[0].scope.get("user_id").map(String::as_str),
        Some(policy::OVERFLOW_VALUE)
    );
    let untracked = RequestAttributes {
        user_id: Some("user-never-counted-alone"),
        ..request("k1", "prod", "gpt-4o")
    };
    testkit::eventually(
        Duration::from_secs(10),
        "the untracked user refused",
        || {
            let verdict = gateway.check(&untracked);
            async move { (!verdict.may_proceed()).then_some(()) }
        },
    )
    .await;
    assert!(gateway
        .check(&request("k1", "prod", "gpt-4o"))
        .may_proceed());
    assert!(gateway
        .check(&RequestAttributes {
            user_id: Some("user-never-counted-alone"),
            ..request("k1", "staging", "gpt-4o")
        })
        .may_proceed());
    alerter.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

const BLOCK_PER_MINUTE: &str = r#"
id: t-minute-block
description: A spend cap per API key and minute that blocks.
owner: {team: search, contact: search@example.com}
unit: cost_usd
group_by: [api_key_id]
window: {kind: minute}
hard_cap: 10
action: {kind: block}
"#;

/// Issue 13 point 7, decisions: a block lifted at its window's end is held as an allow for
/// `2 × alert.ended_window_keep_secs`, then forgotten with a tombstone of its control key (so
/// compaction removes it from the topic and every gateway drops it); a restart reads the
/// tombstone and publishes nothing.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_lifted_block_is_forgotten_with_a_control_tombstone() {
    let (receivers, config, alerter) =
        minute_total_of_k1("alerter_forget", BLOCK_PER_MINUTE, "t-minute-block", "11").await;
    let log = wait_control(&config.kafka, "the block", |log| !log.is_empty()).await;
    let block = log[0].clone();
    assert_eq!(block.action, DecisionAction::Block);
    // The minute ends within 80 s: the allow, then 2 s later the tombstone.
    let records = testkit::eventually(Duration::from_secs(90), "the tombstone", || {
        let kafka = config.kafka.clone();
        let block_key = block.key.clone();
        async move {
            let records = tokio::task::spawn_blocking(move || control_records(&kafka))
                .await
                .unwrap();
            let k1: Vec<_> = records
                .into_iter()
                .filter(|(key, _)| *key == block_key)
                .collect();
            (k1.len() == 3).then_some(k1)
        }
    })
    .await;
    let allow = records[1].1.clone().expect("the allow");
    assert_eq!(allow.action, DecisionAction::Allow);
    assert_eq!(allow.version, block.version + 1);
    assert_eq!(records[2], (block.key.clone(), None));
    let base_url = alerter.base_url.clone();
    testkit::eventually(Duration::from_secs(10), "no decision held", || {
        let base_url = base_url.clone();
        async move {
            let held = state_entries(&base_url, "decisions").await?;
            (held == 0.0).then_some(())
        }
    })
    .await;
    assert_eq!(
        metric(
            &alerter.base_url,
            "quotaflow_alerter_decisions_forgotten_total"
        )
        .await,
        Some(1.0)
    );
    alerter.stop().await.unwrap();

    // A restart reads block, allow and tombstone and holds nothing: an allow held again would be
    // forgotten again at the first tick (a second tombstone). A new block of k2 shows the
    // restarted alerter deciding; the gauge (set every tick) then counts k2's block alone.
    let pages = receivers.pagerduty().len();
    let alerter = start(&config).await;
    let now = now_s();
    produce_totals(
        &config.kafka,
        &[policy_total(
            "t-minute-block",
            "api_key_id=k2",
            now - TimeDelta::seconds(1),
            now + TimeDelta::minutes(1),
            "11",
            1,
        )],
    )
    .await;
    let base_url = alerter.base_url.clone();
    testkit::eventually(Duration::from_secs(30), "k2 blocked, alone", || {
        let base_url = base_url.clone();
        async move {
            let held = state_entries(&base_url, "decisions").await?;
            (held == 1.0).then_some(())
        }
    })
    .await;
    alerter.stop().await.unwrap();
    let records = control_records(&config.kafka);
    assert_eq!(records.len(), 4, "{records:?}");
    // Records of other keys may sit in other partitions: k1's three in order, k2's block.
    let (k1, others): (Vec<_>, Vec<_>) =
        records.into_iter().partition(|(key, _)| *key == block.key);
    assert_eq!(k1.len(), 3, "{k1:?}");
    let k2 = others[0].1.as_ref().expect("k2's block");
    assert_eq!(k2.action, DecisionAction::Block);
    assert_eq!(k2.scope.get("api_key_id").map(String::as_str), Some("k2"));
    assert!(
        receivers
            .pagerduty()
            .iter()
            .skip(pages)
            .all(|page| !page.to_string().contains("api_key_id=k1")),
        "k1 paged again: {:?}",
        receivers.pagerduty()
    );
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
