//! Issue 13, point 10 (every reader of the usage topic): the alerter prices and validates the
//! usage events it reads (per-action rules, job gauges) with the same admission step as the
//! archiver and the aggregator, so a producer's cost envelope is recomputed, never trusted.

mod support;

use std::time::Duration;

use infra::testkit;
use rust_decimal::Decimal;
use support::*;

const FALLBACK_BUDGET: &str = r#"
id: t-fallback-budget
description: Fallback spend per action for the search team.
owner: {team: search, contact: search@example.com}
selector: {team: search}
unit: requests
window: {kind: day}
hard_cap: 1000000
action: {kind: alert_only}
retry_policy:
  max_attempts_per_action: 10
  max_fallback_cost_usd: 0.50
"#;

/// A fallback attempt of `action` written straight to Kafka with its own cost envelope.
fn fallback(action: &str, envelope: &str, reported: Option<&str>) -> schemas::UsageEvent {
    let mut event = schemas::fixtures::text_event(
        &format!("{action}-2-{}", testkit::unique_name("e")),
        chrono::Utc::now(),
    );
    event.action_id = action.to_owned();
    event.attempt = 2;
    event.fallback_from_model = Some("gpt-4o-mini".to_owned());
    event.cost_usd = Some(envelope.parse::<Decimal>().unwrap());
    event.cost_source = Some(schemas::CostSource::Priced);
    event.catalog_version = Some("forged".to_owned());
    event.reported_cost_usd = reported.map(|cost| cost.parse().unwrap());
    event
}

/// Issue 13, point 10: a fallback whose envelope claims 999 USD but whose tokens cost a fraction
/// of a cent stays under the 0.50 USD fallback budget; one whose envelope claims 0 but whose
/// reported cost is 0.60 USD breaks it (a reported cost wins). Before, the alerter summed the
/// envelope: the first paged and the second did not.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn fallback_budgets_add_up_admitted_costs_not_producer_envelopes() {
    let receivers = Receivers::start().await;
    let config = config("alerter_admission", FALLBACK_BUDGET, &receivers);
    let alerter = start(&config).await;
    // Same API key, so one partition, in this order.
    let inflated = fallback("act-inflated", "999", None);
    let hidden = fallback("act-hidden", "0", Some("0.60"));
    produce_events(&config.kafka, &[inflated, hidden]).await;

    let alerts = testkit::eventually(Duration::from_secs(60), "the fallback budget alert", || {
        let config = config.clone();
        async move {
            let rows: Vec<(String, String)> = infra::clickhouse::client(&config.clickhouse)
                .query("SELECT kind, message FROM alerts FINAL ORDER BY message")
                .fetch_all()
                .await
                .unwrap_or_default();
            (!rows.is_empty()).then_some(rows)
        }
    })
    .await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].0, "fallback_budget", "{alerts:?}");
    assert!(alerts[0].1.contains("act-hidden"), "{alerts:?}");
    assert!(!alerts[0].1.contains("act-inflated"), "{alerts:?}");
    alerter.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
