//! Policy rules beyond quota levels, on the real stack: model lifecycle and allow-lists, a
//! fallback storm (its spend cap blocks the fallback route, its mix is an anomaly), and retries
//! that should not have happened.

mod support;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use gateway::{RequestAttributes, Verdict};
use infra::testkit;
use schemas::{DecisionAction, Status};
use support::*;

const MODELS: &str = r#"
id: t-models
description: Vetted models only in production.
owner: {team: platform, contact: platform@example.com}
environment: prod
unit: requests
group_by: [provider, model]
window: {kind: hour}
hard_cap: 1000000
action: {kind: alert_only}
model_rules:
  deprecated: block
  preview: alert
  allow_list: ["gpt-4o*", "gpt-image-1*", "sora-2"]
"#;

fn attributes<'a>(
    environment: &'a str,
    workflow: &'a str,
    provider: &'a str,
    model: &'a str,
) -> RequestAttributes<'a> {
    RequestAttributes {
        workflow,
        provider,
        ..request("k1", environment, model)
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_deprecated_model_is_blocked_in_production_and_an_unlisted_one_once_seen() {
    let receivers = Receivers::start().await;
    let config = config("alerter_models", MODELS, &receivers);
    let alerter = start(&config).await;
    let gateway = gateway(&config.kafka).await;

    // gpt-image-1 is past its catalog deprecation date (2026-10-23): blocked from the start.
    testkit::eventually(
        Duration::from_secs(20),
        "gpt-image-1 blocked in prod",
        || {
            let verdict = gateway.check(&attributes("prod", "answer", "openai", "gpt-image-1"));
            async move { matches!(verdict, Verdict::Block { .. }).then_some(verdict) }
        },
    )
    .await;
    let verdict = gateway.check(&attributes("prod", "answer", "openai", "gpt-image-1"));
    assert!(
        verdict
            .reason()
            .unwrap()
            .contains("deprecated since 2026-10-23"),
        "{verdict:?}"
    );
    assert_eq!(
        gateway.check(&attributes("staging", "answer", "openai", "gpt-image-1")),
        Verdict::Allow
    );
    assert_eq!(
        gateway.check(&attributes("prod", "answer", "openai", "gpt-4o")),
        Verdict::Allow
    );

    // A model off the allow-list is blocked once traffic to it shows in the policy's totals.
    let hour = now_s() - TimeDelta::seconds(i64::from(now_s().timestamp() as u32 % 3600));
    produce_totals(
        &config.kafka,
        &[policy_total(
            "t-models",
            "provider=openai|model=gpt-3.5-turbo",
            hour,
            hour + TimeDelta::hours(1),
            "0",
            1,
        )],
    )
    .await;
    let log = wait_control(&config.kafka, "the allow-list block", |log| {
        log.iter()
            .any(|d| d.scope.get("model").map(String::as_str) == Some("gpt-3.5-turbo"))
    })
    .await;
    let block = log
        .iter()
        .find(|d| d.scope.get("model").map(String::as_str) == Some("gpt-3.5-turbo"))
        .unwrap();
    assert_eq!(block.action, DecisionAction::Block);
    assert!(
        block.reason.contains("not on the allow-list"),
        "{}",
        block.reason
    );
    assert_eq!(
        block.scope.get("environment").map(String::as_str),
        Some("prod")
    );
    wait_receivers(&receivers, "rule notices on Slack", |r| {
        r.slack_containing("deprecated since 2026-10-23") >= 1
            && r.slack_containing("not on the allow-list") == 1
    })
    .await;
    assert!(receivers.pagerduty().is_empty(), "model rules do not page");
    // A restart remembers the models seen: the block is neither lifted nor issued again (what
    // the restart publishes is published before it reports ready).
    alerter.stop().await.unwrap();
    let alerter = start(&config).await;
    let for_model = |log: &[schemas::ControlDecision]| {
        log.iter()
            .filter(|d| d.scope.get("model").map(String::as_str) == Some("gpt-3.5-turbo"))
            .count()
    };
    assert_eq!(for_model(&control_log(&config.kafka)), 1);
    alerter.stop().await.unwrap();
    gateway.shutdown();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

const FALLBACK: &str = r#"
id: t-fallback
description: Fallback spend per workflow; a storm blocks the fallback route.
owner: {team: support-bots, contact: support@example.com, pagerduty_service: support-bots}
environment: prod
route: {fallback_route: anthropic/claude-3-5-sonnet}
unit: fallback_cost_usd
group_by: [workflow]
window: {kind: day}
hard_cap: 5
action: {kind: block}
anomaly: {min_volume: 0, z_threshold: 4}
"#;

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_fallback_storm_blocks_the_fallback_route_and_is_an_anomaly() {
    let receivers = Receivers::start().await;
    let config = config("alerter_fallback", FALLBACK, &receivers);
    let alerter = start(&config).await;
    let gateway = gateway(&config.kafka).await;
    let day = now_s() - TimeDelta::seconds(i64::from(now_s().timestamp() as u32 % 86_400));
    let base = now_s() - TimeDelta::minutes(20);
    let mut totals = Vec::new();
    let (mut requests, mut fallbacks, mut cost) = (0u64, 0u64, rust_decimal::Decimal::ZERO);
    // Eight quiet minutes: 100 requests a minute, about 5 % fallbacks, 10 cents of fallback spend.
    for minute in 0..8u64 {
        requests += 100;
        fallbacks += 5 + minute % 3;
        cost += rust_decimal::Decimal::new(10, 2);
        totals.push((minute, requests, fallbacks, cost));
    }
    // The storm: 80 % of the next minute's requests fall back, and the spend passes the cap.
    totals.push((
        8,
        requests + 100,
        fallbacks + 80,
        cost + rust_decimal::Decimal::from(5),
    ));
    for (version, (minute, requests, fallbacks, cost)) in totals.into_iter().enumerate() {
        let mut total = policy_total(
            "t-fallback",
            "workflow=triage",
            day,
            day + TimeDelta::days(1),
            "0",
            version as u64 + 1,
        );
        total.requests = requests;
        total.billable_attempts = requests;
        total.accepted_outputs = requests - fallbacks;
        total.fallback_attempts = fallbacks;
        total.fallback_cost_usd = cost;
        total.written_at = base + TimeDelta::seconds(minute as i64 * 60 + 30);
        produce_totals(&config.kafka, &[total]).await;
    }
    let log = wait_control(&config.kafka, "the fallback block", |log| !log.is_empty()).await;
    assert_eq!(log.len(), 1);
    let block = &log[0];
    assert_eq!(block.action, DecisionAction::Block);
    assert_eq!(
        block.scope.get("model").map(String::as_str),
        Some("claude-3-5-sonnet")
    );
    assert_eq!(
        block.scope.get("provider").map(String::as_str),
        Some("anthropic")
    );
    assert_eq!(
        block.scope.get("workflow").map(String::as_str),
        Some("triage")
    );
    testkit::eventually(
        Duration::from_secs(10),
        "the fallback route refused",
        || {
            let verdict = gateway.check(&attributes(
                "prod",
                "triage",
                "anthropic",
                "claude-3-5-sonnet",
            ));
            async move { (!verdict.may_proceed()).then_some(()) }
        },
    )
    .await;
    // The primary route and other workflows still go.
    assert_eq!(
        gateway.check(&attributes("prod", "triage", "openai", "gpt-4o")),
        Verdict::Allow
    );
    assert_eq!(
        gateway.check(&attributes(
            "prod",
            "reply",
            "anthropic",
            "claude-3-5-sonnet"
        )),
        Verdict::Allow
    );
    // Fallback share and attempts per output both jump: one Slack message (grouped), one
    // PagerDuty incident for the anomaly and one for the cap.
    let class = |r: &Receivers, class: &str| -> Vec<String> {
        let mut keys: Vec<String> = r
            .pagerduty()
            .into_iter()
            .filter(|page| page["payload"]["class"] == class)
            .map(|page| page["dedup_key"].as_str().unwrap().to_owned())
            .collect();
        keys.dedup();
        keys
    };
    wait_receivers(&receivers, "the anomaly and the page", |r| {
        r.slack_containing("anomaly: ") == 1
            && class(r, "anomaly").len() == 1
            && class(r, "hard_cap").len() == 1
    })
    .await;
    let anomalies: Vec<String> = receivers
        .pagerduty()
        .into_iter()
        .filter(|page| page["payload"]["class"] == "anomaly")
        .map(|page| {
            page["payload"]["custom_details"]["anomaly"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        anomalies
            .iter()
            .any(|text| text.starts_with("fallback_share (fallback attempts per request) is 0.8 ")),
        "{anomalies:?}"
    );
    assert!(
        anomalies.iter().all(|text| text.contains("robust z")),
        "{anomalies:?}"
    );
    alerter.stop().await.unwrap();
    gateway.shutdown();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

const PROMPTS: &str = r#"
id: t-prompts
description: Prompt size and final renders per workflow against their own baseline.
owner: {team: studio, contact: studio@example.com, pagerduty_service: studio}
unit: requests
group_by: [workflow]
window: {kind: day}
hard_cap: 1000000
action: {kind: alert_only}
anomaly:
  min_volume: 0
  z_threshold: 4
  metrics: [input_tokens_per_success, final_images_per_output]
"#;

/// Issue 17: two review signals of the quota guide, each against the scope's own baseline.
/// `agent-loop`'s prompts grow ninefold (a loop appending its history) and `render` makes final
/// images before anyone chose: one anomaly each, with owner and scope, on Slack and PagerDuty.
/// `summarize` runs its usual mix and raises nothing.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn growing_prompts_and_early_final_renders_are_flagged_and_a_normal_mix_is_not() {
    let receivers = Receivers::start().await;
    let config = config("alerter_prompts", PROMPTS, &receivers);
    let alerter = start(&config).await;
    let day = now_s() - TimeDelta::seconds(i64::from(now_s().timestamp() as u32 % 86_400));
    let base = now_s() - TimeDelta::minutes(20);
    let mut version = 0u64;
    let mut totals = Vec::new();
    for workflow in ["agent-loop", "render", "summarize"] {
        let (mut requests, mut tokens, mut finals, mut accepted) = (0u64, 0u64, 0u64, 0u64);
        for minute in 0..9u64 {
            let storm = minute == 8;
            requests += 100;
            accepted += 50;
            // About 1,000 input tokens a request and 5 final images a minute, as usual...
            tokens += 100 * (1_000 + 20 * (minute % 3));
            finals += 5 + minute % 2;
            // ...until the last minute.
            if storm && workflow == "agent-loop" {
                tokens += 800_000;
            }
            if storm && workflow == "render" {
                finals += 55;
            }
            version += 1;
            let mut total = policy_total(
                "t-prompts",
                &format!("workflow={workflow}"),
                day,
                day + TimeDelta::days(1),
                "0",
                version,
            );
            total.requests = requests;
            total.billable_attempts = requests;
            total.accepted_outputs = accepted;
            total.input_tokens = tokens;
            total.output_tokens = requests * 10;
            total.images_final = finals;
            total.written_at = base + TimeDelta::seconds(minute as i64 * 60 + 30);
            totals.push(total);
        }
    }
    produce_totals(&config.kafka, &totals).await;
    let anomalies = |r: &Receivers| -> Vec<(String, String)> {
        r.pagerduty()
            .into_iter()
            .filter(|page| page["payload"]["class"] == "anomaly")
            .map(|page| {
                (
                    page["payload"]["source"].as_str().unwrap().to_owned(),
                    page["payload"]["custom_details"]["anomaly"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect()
    };
    wait_receivers(&receivers, "both anomalies paged", |r| {
        anomalies(r).len() == 2 && r.slack_containing("anomaly: ") == 2
    })
    .await;
    let found = anomalies(&receivers);
    assert!(
        found
            .iter()
            .any(|(scope, text)| scope == "workflow=agent-loop"
                && text.starts_with(
                    "input_tokens_per_success (average input tokens per successful request) is 9"
                )
                && text.contains("a loop appending its history")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|(scope, text)| scope == "workflow=render"
            && text
                .starts_with("final_images_per_output (final-quality images per accepted output)")),
        "{found:?}"
    );
    for page in receivers.pagerduty() {
        assert_eq!(page["payload"]["custom_details"]["owner_team"], "studio");
    }
    // The normal mix: nothing, on either channel.
    assert_eq!(receivers.slack_containing("workflow=summarize"), 0);
    assert!(found.iter().all(|(scope, _)| scope != "workflow=summarize"));
    alerter.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

const RETRIES: &str = r#"
id: t-retries
description: Retry discipline for the search team.
owner: {team: search, contact: search@example.com}
selector: {team: search}
unit: requests
window: {kind: day}
hard_cap: 1000000
action: {kind: alert_only}
retry_policy:
  max_attempts_per_action: 3
"#;

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_retry_of_a_quota_error_too_many_attempts_and_a_retry_before_retry_after_are_flagged() {
    let receivers = Receivers::start().await;
    let config = config("alerter_retries", RETRIES, &receivers);
    let alerter = start(&config).await;
    let now = Utc::now();
    let event = |action: &str, attempt: u32, status: Status| {
        let mut event = schemas::fixtures::text_event(
            &format!("{action}-{attempt}-{}", testkit::unique_name("e")),
            now,
        );
        event.action_id = action.to_owned();
        event.attempt = attempt;
        event.status = status;
        event
    };
    let quota_retry = [
        event("act-quota", 1, Status::QuotaExceeded),
        event("act-quota", 2, Status::Ok),
    ];
    let fine_retry = [
        event("act-timeout", 1, Status::Timeout),
        event("act-timeout", 2, Status::Ok),
    ];
    let many: Vec<_> = (1..=5)
        .map(|attempt| event("act-many", attempt, Status::ProviderError))
        .collect();
    // A 429 asking for 5 s, retried after 1 s (flagged); one asking for 1 s, retried after 2 s.
    let after_429 = |action: &str, wait_ms: u64, retry_after: i64| {
        let mut limited = event(action, 1, Status::RateLimited);
        limited.retry_after_ms = Some(wait_ms);
        let mut retry = event(action, 2, Status::Ok);
        retry.occurred_at = now + chrono::TimeDelta::milliseconds(retry_after);
        [limited, retry]
    };
    produce_events(&config.kafka, &after_429("act-hasty", 5_000, 1_000)).await;
    produce_events(&config.kafka, &after_429("act-patient", 1_000, 2_000)).await;
    produce_events(&config.kafka, &quota_retry).await;
    produce_events(&config.kafka, &fine_retry).await;
    produce_events(&config.kafka, &many).await;
    let kinds = testkit::eventually(
        Duration::from_secs(30),
        "the three findings audited",
        || {
            let config = config.clone();
            async move {
                let client = infra::clickhouse::client(&config.clickhouse);
                let kinds: Vec<(String, String)> = client
                    .query("SELECT kind, message FROM alerts FINAL ORDER BY kind")
                    .fetch_all()
                    .await
                    .unwrap_or_default();
                (kinds.len() == 3).then_some(kinds)
            }
        },
    )
    .await;
    let hasty: Vec<&(String, String)> = kinds
        .iter()
        .filter(|(_, message)| message.contains("Retry-After"))
        .collect();
    assert_eq!(hasty.len(), 1, "{kinds:?}");
    assert!(
        hasty[0].1.contains("act-hasty") && hasty[0].1.contains("4000 ms before"),
        "{kinds:?}"
    );
    let slack = receivers.slack();
    let texts: Vec<&str> = slack
        .iter()
        .map(|body| body["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("act-quota") && t.contains("quota_exceeded"))
            .count(),
        1,
        "{texts:?}"
    );
    assert!(
        !texts.iter().any(|t| t.contains("act-timeout")),
        "{texts:?}"
    );
    alerter.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn policies_reload_without_restart_and_a_broken_edit_keeps_the_last_good_set() {
    let receivers = Receivers::start().await;
    let generous = r#"
id: t-reload
description: A cap that an edit lowers.
owner: {team: search, contact: search@example.com}
environment: prod
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: 100
soft_alerts: []
action: {kind: block}
"#;
    let config = config("alerter_reload", generous, &receivers);
    let alerter = start(&config).await;
    let day = now_s() - TimeDelta::seconds(i64::from(now_s().timestamp() as u32 % 86_400));
    produce_totals(
        &config.kafka,
        &[policy_total(
            "t-reload",
            "api_key_id=k1",
            day,
            day + TimeDelta::days(1),
            "50",
            1,
        )],
    )
    .await;
    // A broken edit: logged, the running set stays (and nothing is blocked).
    let file = config.alert.policies_dir.join("policies.yaml");
    std::fs::write(&file, "id: [unclosed").unwrap();
    // A good edit lowers the cap under the amount: the block follows without a restart.
    let reload_metric = format!("{}/metrics", alerter.base_url);
    testkit::eventually(Duration::from_secs(20), "the failed reload counted", || {
        let url = reload_metric.clone();
        async move {
            let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
            body.contains("quotaflow_alerter_policy_reloads_total{outcome=\"failed\"}")
                .then_some(())
        }
    })
    .await;
    assert!(control_log(&config.kafka).is_empty());
    std::fs::write(&file, generous.replace("hard_cap: 100", "hard_cap: 40")).unwrap();
    let log = wait_control(&config.kafka, "the block after the edit", |log| {
        !log.is_empty()
    })
    .await;
    assert_eq!(log[0].action, DecisionAction::Block);
    assert_eq!(log[0].limit, rust_decimal::Decimal::from(40));
    alerter.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

const JOBS: &str = r#"
id: t-jobs
description: Two video jobs at once per customer.
owner: {team: media, contact: media@example.com, pagerduty_service: media}
selector: {modality: video}
unit: concurrent_jobs
group_by: [customer_id]
hard_cap: 2
soft_alerts: [100]
max_job_age: 1h
action: {kind: block}
"#;

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_concurrency_cap_blocks_new_jobs_until_one_finishes_and_survives_a_restart() {
    let receivers = Receivers::start().await;
    let config = config("alerter_jobs", JOBS, &receivers);
    let alerter = start(&config).await;
    let gateway = gateway(&config.kafka).await;
    let job = |job_id: &str, state: schemas::JobState, started: chrono::DateTime<Utc>| {
        let mut event = schemas::fixtures::text_event(&testkit::unique_name(job_id), started);
        event.modality = schemas::Modality::Video;
        event.endpoint = "video".to_owned();
        event.customer_id = Some("c-1".to_owned());
        event.job_id = Some(job_id.to_owned());
        event.job_state = Some(state);
        event
    };
    let video = RequestAttributes {
        customer_id: Some("c-1"),
        modality: "video",
        ..request("k1", "prod", "sora-2-pro")
    };
    let now = Utc::now();
    // job-old started two hours ago and never finished: a stop condition.
    produce_events(
        &config.kafka,
        &[
            job(
                "job-old",
                schemas::JobState::Submitted,
                now - TimeDelta::hours(2),
            ),
            job("job-1", schemas::JobState::Submitted, now),
        ],
    )
    .await;
    let log = wait_control(&config.kafka, "the concurrency block", |log| {
        !log.is_empty()
    })
    .await;
    assert_eq!(log[0].action, DecisionAction::Block);
    assert_eq!(
        log[0].scope.get("customer_id").map(String::as_str),
        Some("c-1")
    );
    assert_eq!(
        log[0].scope.get("modality").map(String::as_str),
        Some("video")
    );
    testkit::eventually(Duration::from_secs(10), "new video jobs refused", || {
        let verdict = gateway.check(&video);
        async move { (!verdict.may_proceed()).then_some(()) }
    })
    .await;
    wait_receivers(&receivers, "the stop-condition page", |r| {
        r.slack_containing("job job-old") == 1
            && r.pagerduty().iter().any(|page| {
                page["payload"]["custom_details"]["rule"]
                    .as_str()
                    .is_some_and(|t| t.contains("job-old"))
            })
    })
    .await;

    // A restart rebuilds the jobs in flight from the usage topic: no new decision...
    alerter.stop().await.unwrap();
    let alerter = start(&config).await;
    // ...and job-1 finishing lifts the block: the level was restored, not lost.
    produce_events(
        &config.kafka,
        &[job("job-1", schemas::JobState::Succeeded, Utc::now())],
    )
    .await;
    let log = wait_control(&config.kafka, "the lift", |log| log.len() == 2).await;
    assert_eq!(log[1].action, DecisionAction::Allow);
    assert_eq!(log[1].observed, rust_decimal::Decimal::ONE);
    testkit::eventually(Duration::from_secs(10), "video jobs allowed again", || {
        let verdict = gateway.check(&video);
        async move { verdict.may_proceed().then_some(()) }
    })
    .await;
    assert_eq!(
        receivers.slack_containing("job job-old"),
        1,
        "the stale job is reported once"
    );
    alerter.stop().await.unwrap();
    gateway.shutdown();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

const BACKLOG: &str = r#"
id: t-backlog
description: Video jobs should not queue up at the provider.
owner: {team: media, contact: media@example.com, pagerduty_service: media}
selector: {modality: video}
unit: concurrent_jobs
group_by: [customer_id]
hard_cap: 100
pending_backlog: {min_jobs: 3, older_than: 10m}
action: {kind: alert_only}
"#;

/// Issue 17: a backlog of pending video jobs (three pending for more than ten minutes) pages
/// once, names its owner and scope, and is resolved (Slack follow-up, PagerDuty resolve of the
/// same `dedup_key`) when it drains. A scope with fewer old jobs (a normal queue) pages nothing.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_pending_job_backlog_pages_once_and_resolves_when_it_drains() {
    let receivers = Receivers::start().await;
    let config = config("alerter_backlog", BACKLOG, &receivers);
    let alerter = start(&config).await;
    let job =
        |customer: &str, job_id: &str, state: schemas::JobState, at: chrono::DateTime<Utc>| {
            let mut event = schemas::fixtures::text_event(&testkit::unique_name(job_id), at);
            event.modality = schemas::Modality::Video;
            event.endpoint = "video".to_owned();
            event.customer_id = Some(customer.to_owned());
            event.job_id = Some(job_id.to_owned());
            event.job_state = Some(state);
            event
        };
    let now = Utc::now();
    let old = now - TimeDelta::minutes(20);
    use schemas::JobState::{Submitted, Succeeded};
    produce_events(
        &config.kafka,
        &[
            // c-1: three jobs waiting for 20 minutes, one just submitted: a backlog.
            job("c-1", "a1", Submitted, old),
            job("c-1", "a2", Submitted, old),
            job("c-1", "a3", Submitted, old),
            job("c-1", "a4", Submitted, now),
            // c-2: two old jobs and many recent ones: a normal queue.
            job("c-2", "b1", Submitted, old),
            job("c-2", "b2", Submitted, old),
            job("c-2", "b3", Submitted, now),
            job("c-2", "b4", Submitted, now),
            job("c-2", "b5", Submitted, now),
        ],
    )
    .await;
    wait_receivers(&receivers, "the backlog page", |r| {
        r.slack_containing("3 jobs pending") == 1 && r.pagerduty_actions("trigger").len() == 1
    })
    .await;
    let page = receivers
        .pagerduty()
        .into_iter()
        .find(|page| page["event_action"] == "trigger")
        .unwrap();
    let details = &page["payload"]["custom_details"];
    assert_eq!(details["owner_team"], "media", "{page}");
    assert!(
        page["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("customer_id=c-1"),
        "{page}"
    );
    assert!(
        details["next_action"]
            .as_str()
            .unwrap()
            .contains("job queue"),
        "{page}"
    );
    let trigger_key = page["dedup_key"].as_str().unwrap().to_owned();

    // Two of c-1's old jobs finish: one old job left, under min_jobs. The page resolves.
    produce_events(
        &config.kafka,
        &[
            job("c-1", "a1", Succeeded, Utc::now()),
            job("c-1", "a2", Succeeded, Utc::now()),
        ],
    )
    .await;
    wait_receivers(&receivers, "the backlog resolved", |r| {
        r.pagerduty_actions("resolve") == vec![trigger_key.clone()]
            && r.slack()
                .iter()
                .filter(|body| body.to_string().contains("has drained"))
                .count()
                == 1
    })
    .await;
    // c-2's normal queue never paged, and c-1 paged once.
    assert_eq!(receivers.slack_containing("customer_id=c-2"), 0);
    assert_eq!(receivers.pagerduty_actions("trigger").len(), 1);
    alerter.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

const SHARED: &str = r#"
id: t-shared
description: One production key per workflow.
owner: {team: platform, contact: platform@example.com}
environment: prod
unit: requests
window: {kind: day}
hard_cap: 1000000
action: {kind: alert_only}
shared_key: {max_workflows: 2}
"#;

/// Issue 17: a production key used by three workflows is flagged once (Slack, with the key and
/// the workflows); a key used by one workflow, however busy, is not.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_production_key_shared_by_three_workflows_is_flagged_once() {
    let receivers = Receivers::start().await;
    let config = config("alerter_shared", SHARED, &receivers);
    let alerter = start(&config).await;
    let now = Utc::now();
    let used = |key: &str, workflow: &str| {
        let mut event =
            schemas::fixtures::text_event(&testkit::unique_name(&format!("{key}-{workflow}")), now);
        event.api_key_id = key.to_owned();
        event.workflow = workflow.to_owned();
        event.environment = "prod".to_owned();
        event
    };
    let mut events = Vec::new();
    for round in 0..5 {
        events.push(used("k-shared", ["answer", "rerank", "digest"][round % 3]));
        events.push(used("k-own", "answer"));
    }
    produce_events(&config.kafka, &events).await;
    wait_receivers(&receivers, "the shared-key alert", |r| {
        r.slack_containing("key k-shared served 3 workflows") == 1
    })
    .await;
    let texts: Vec<String> = receivers
        .slack()
        .iter()
        .map(|body| body.to_string())
        .collect();
    assert!(
        texts
            .iter()
            .any(|text| text.contains("answer, digest, rerank") && text.contains("platform")),
        "{texts:?}"
    );
    assert!(
        !texts.iter().any(|text| text.contains("k-own")),
        "{texts:?}"
    );
    alerter.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

const LIFECYCLE: &str = r#"
id: t-lifecycle
description: No retired models in production.
owner: {team: platform, contact: platform@example.com}
environment: prod
unit: requests
group_by: [provider, model]
window: {kind: hour}
hard_cap: 1000000
action: {kind: alert_only}
model_rules:
  deprecated: block
  preview: alert
"#;

/// Issue 13, point 12: deprecated catalog rows are blocked before the first request whatever
/// their key form. `gemini/gemini-2.5-pro` (retired 2026-12-01 in the catalog) used to be blocked
/// only once production traffic to it had shown in the totals; rows without a prefix were
/// blocked at start. No traffic is sent here at all.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn deprecated_rows_with_a_provider_prefix_are_blocked_before_any_traffic() {
    let receivers = Receivers::start().await;
    let config = config("alerter_lifecycle", LIFECYCLE, &receivers);
    let alerter = start(&config).await;
    let gateway = gateway(&config.kafka).await;

    // Named as pricing finds the row: provider `gemini` with the bare model, or the full row name.
    for (provider, model) in [
        ("gemini", "gemini-2.5-pro"),
        ("gemini", "gemini/gemini-2.5-pro"),
        ("", "gemini/gemini-2.5-pro"),
    ] {
        let verdict = testkit::eventually(
            Duration::from_secs(20),
            "the prefixed deprecated row blocked in prod",
            || {
                let verdict = gateway.check(&attributes("prod", "answer", provider, model));
                async move { matches!(verdict, Verdict::Block { .. }).then_some(verdict) }
            },
        )
        .await;
        assert!(
            verdict
                .reason()
                .unwrap()
                .contains("deprecated since 2026-12-01"),
            "{provider}/{model}: {verdict:?}"
        );
    }
    // The unprefixed form still works as before.
    assert!(!gateway
        .check(&attributes("prod", "answer", "openai", "gpt-image-1"))
        .may_proceed());
    // The row is gemini's: another provider's model of the same name is not retired by it,
    // nor is the model outside production, nor a model not yet retired.
    for (environment, provider, model) in [
        ("prod", "openai", "gemini-2.5-pro"),
        ("staging", "gemini", "gemini-2.5-pro"),
        ("prod", "openai", "gpt-4o"),
    ] {
        assert_eq!(
            gateway.check(&attributes(environment, "answer", provider, model)),
            Verdict::Allow,
            "{environment} {provider}/{model}"
        );
    }
    alerter.stop().await.unwrap();
    gateway.shutdown();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
