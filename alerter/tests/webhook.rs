//! The generic signed webhook (issue 17 point 5) on the real stack: every notice of a hard cap,
//! triggered and resolved, reaches a receiver that checks the HMAC signature, the delivery id and
//! the JSON Schema; a receiver outage is retried in a later round; each round's outcome is in the
//! `webhook_deliveries` audit table.

mod support;

use std::time::Duration;

use alerter::receiver::Receiver;
use chrono::TimeDelta;
use infra::secret::Secret;
use infra::testkit;
use support::*;

const SIGNING_SECRET: &str = "whsec-test-0123456789abcdef";

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct DeliveryRow {
    delivery_id: String,
    event: String,
    status: String,
    round: u32,
    http_status: u16,
}

async fn deliveries(config: &alerter::Config) -> Vec<DeliveryRow> {
    infra::clickhouse::client(&config.clickhouse)
        .query(
            "SELECT delivery_id, event, status, round, http_status FROM webhook_deliveries FINAL \
             ORDER BY at_us, round",
        )
        .fetch_all::<DeliveryRow>()
        .await
        .unwrap_or_default()
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_signed_webhook_gets_the_trigger_and_the_resolve_through_an_outage_and_each_round_is_audited(
) {
    let receiver = Receiver::new(ROUTING_KEY).with_webhook_secret(SIGNING_SECRET);
    // The receiver is down for the whole first round: its attempts all get 503.
    let mut config = config("alerter_webhook", CAP_PER_KEY, &Receivers::start().await);
    let attempts = config.notify.retry.max_attempts;
    let receivers = Receivers::start_with(receiver.with_webhook_failures(attempts)).await;
    config.notify.slack.fallback_webhook =
        Some(Secret::new(format!("{}/slack", receivers.base_url)));
    config.notify.pagerduty.events_url = format!("{}/pagerduty", receivers.base_url);
    config.notify.webhook.url = Some(Secret::new(format!("{}/webhook", receivers.base_url)));
    config.notify.webhook.signing_secret = Some(Secret::new(SIGNING_SECRET));
    config.notify.retry.initial_backoff_ms = 10;
    config.notify.redelivery.initial_delay_ms = 200;
    let alerter = start(&config).await;

    // Over the cap in a window that ends in four seconds: a block, then its lift.
    let start_at = now_s() - TimeDelta::seconds(60);
    let end_at = now_s() + TimeDelta::seconds(4);
    produce_totals(
        &config.kafka,
        &[policy_total(
            "t-cap",
            "api_key_id=k-hook",
            start_at,
            end_at,
            "11",
            1,
        )],
    )
    .await;

    wait_receivers(
        &receivers,
        "the trigger and the resolve on the webhook",
        |r| {
            let bodies = r.webhook();
            bodies
                .iter()
                .any(|body| body["event"] == "alert.triggered" && body["kind"] == "hard_cap")
                && bodies.iter().any(|body| body["event"] == "alert.resolved")
        },
    )
    .await;
    // Accepted only with a valid signature, delivery id and schema (the receiver refuses others,
    // and reading them asserts none was refused).
    let bodies = receivers.webhook();
    let trigger = bodies
        .iter()
        .find(|body| body["kind"] == "hard_cap")
        .unwrap()
        .clone();
    assert_eq!(trigger["policy_id"], "t-cap");
    assert_eq!(trigger["scope"], "api_key_id=k-hook, environment=prod");
    assert_eq!(trigger["owner"]["team"], "search");
    assert_eq!(trigger["spent"], "11");
    assert_eq!(trigger["limit"], "10");
    assert!(trigger["next_action"]
        .as_str()
        .unwrap()
        .contains("Gateways"));

    // The audit: the first notice's first round pending (503), a later round sent (200); every
    // notice, the trigger and the resolve among them, ends sent.
    let trigger_id = trigger["delivery_id"].as_str().unwrap().to_owned();
    testkit::eventually(Duration::from_secs(30), "the rounds audited", || {
        let config = config.clone();
        let trigger_id = trigger_id.clone();
        async move {
            let rows = deliveries(&config).await;
            let mut rounds: std::collections::BTreeMap<&str, Vec<(&str, u32, u16)>> =
                std::collections::BTreeMap::new();
            for row in &rows {
                rounds.entry(row.delivery_id.as_str()).or_default().push((
                    row.status.as_str(),
                    row.round,
                    row.http_status,
                ));
            }
            let retried = rounds.values().any(|rounds| {
                rounds.first() == Some(&("pending", 1, 503))
                    && rounds.last().is_some_and(|(status, round, http)| {
                        *status == "sent" && *round >= 2 && *http == 200
                    })
            });
            let all_sent = rounds
                .values()
                .all(|rounds| rounds.last().is_some_and(|(status, ..)| *status == "sent"));
            let resolved_sent = rows
                .iter()
                .any(|row| row.event == "alert.resolved" && row.status == "sent");
            (retried && all_sent && resolved_sent && rounds.contains_key(trigger_id.as_str()))
                .then_some(())
        }
    })
    .await;
    alerter.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
