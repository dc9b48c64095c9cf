//! The whole enforcement path on the real stack: usage events → aggregator → totals topic →
//! alerter → control topic → a gateway client that refuses the runaway key, with the reason.

mod support;

use std::time::Duration;

use chrono::Utc;
use gateway::Verdict;
use infra::testkit;
use support::*;

const CAP: &str = r#"
id: t-pipeline
description: Ten dollars per API key and day in production.
owner: {team: search, contact: search@example.com, pagerduty_service: search-quota}
environment: prod
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: 10
action: {kind: block}
"#;

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn events_over_the_cap_make_the_gateway_refuse_the_key() {
    let receivers = Receivers::start().await;
    let config = config("alerter_pipeline", CAP, &receivers);
    let aggregator_config = aggregator::Config {
        kafka: config.kafka.clone(),
        clickhouse: config.clickhouse.clone(),
        http: infra::config::HttpConfig::with_port(0),
        group_id: testkit::unique_name("t_pipeline_agg"),
        aggregate: aggregator::config::AggregateConfig {
            policies_dir: Some(config.alert.policies_dir.clone()),
            flush_interval_ms: 50,
            ..Default::default()
        },
        ..aggregator::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop_aggregator = infra::shutdown::Shutdown::new();
    let aggregating = tokio::spawn(
        aggregator::Aggregator::new(aggregator_config).run(listener, stop_aggregator.clone()),
    );
    let alerter = start(&config).await;
    let gateway = gateway(&config.kafka).await;

    // Nine dollars: under the cap, nothing happens to k1.
    let now = Utc::now();
    let event = |index: usize, key: &str, cost: &str| {
        let mut event =
            schemas::fixtures::text_event(&testkit::unique_name(&format!("ev{index}")), now);
        event.api_key_id = key.to_owned();
        // A reported cost: the readers recompute any envelope a producer writes (a reported
        // cost wins), so this is how a test sets an exact cost.
        event.reported_cost_usd = Some(cost.parse().unwrap());
        event
    };
    let under: Vec<_> = (0..9).map(|index| event(index, "k1", "1.00")).collect();
    produce_events(&config.kafka, &under).await;
    wait_receivers(&receivers, "the 90% alert", |r| {
        r.slack_containing("90% of quota used") == 1
    })
    .await;
    assert_eq!(
        gateway.check(&request("k1", "prod", "gpt-4o")),
        Verdict::Allow
    );
    assert!(control_log(&config.kafka).is_empty());

    // The tenth dollar reaches the cap: the next request of k1 is refused.
    produce_events(
        &config.kafka,
        &[event(9, "k1", "1.00"), event(10, "k2", "3.00")],
    )
    .await;
    testkit::eventually(Duration::from_secs(30), "the gateway refuses k1", || {
        let verdict = gateway.check(&request("k1", "prod", "gpt-4o"));
        async move { (!verdict.may_proceed()).then_some(()) }
    })
    .await;
    let verdict = gateway.check(&request("k1", "prod", "gpt-4o"));
    let reason = verdict.reason().unwrap();
    assert!(
        reason.contains("reached 10 cost_usd of 10 cost_usd"),
        "{reason}"
    );
    assert_eq!(
        gateway.check(&request("k2", "prod", "gpt-4o")),
        Verdict::Allow
    );
    let log = control_log(&config.kafka);
    assert_eq!(log.len(), 1, "{log:?}");
    wait_receivers(&receivers, "the page", |r| {
        r.pagerduty_actions("trigger").len() == 1
    })
    .await;

    alerter.stop().await.unwrap();
    stop_aggregator.cancel();
    aggregating.await.unwrap().unwrap();
    gateway.shutdown();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
