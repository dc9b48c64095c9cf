//! `quotactl replay` on the real stack (`dev/stack up`): a history of archived events and an
//! approval in a fresh database, replayed against a policy directory; the decisions, the stopped
//! spend and the comparison with the live decisions are checked exactly.

mod support;

use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use infra::testkit;
use quotaflow_archiver::row::{KafkaCoordinates, RawRow};
use rust_decimal::Decimal;
use schemas::UsageEvent;
use support::{policies_dir, quotactl};

/// Alice's key (a fixed seed: tests only).
fn alice() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[1; 32])
}

/// One dollar per staging key and UTC day; alice may double it.
fn policy() -> String {
    POLICY.replace(
        "ALICE_PUBLIC_KEY",
        &policy::ApproverKey(alice().verifying_key()).to_string(),
    )
}

const POLICY: &str = r#"
id: t-replay
description: One dollar per staging API key and day.
owner: {team: platform, contact: platform@example.com}
environment: staging
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: "1"
soft_alerts: [50]
action: {kind: block}
approval:
  approvers: [{name: alice, public_key: "ALICE_PUBLIC_KEY"}]
  max_raise: 100%
  max_duration: 24h
"#;

fn event(id: &str, key: &str, at: DateTime<Utc>, cost: &str) -> UsageEvent {
    let mut event = schemas::fixtures::text_event(id, at);
    event.api_key_id = key.to_owned();
    event.environment = "staging".to_owned();
    event.cost_usd = Some(Decimal::from_str(cost).unwrap());
    event.cost_source = Some(schemas::CostSource::Priced);
    event
}

/// A fresh database with `events` archived (one twice, as a redelivery would) and one approval.
async fn history(test: &str, events: &[UsageEvent], approval_at: DateTime<Utc>) -> alerter::Config {
    let mut config = alerter::Config {
        kafka: testkit::kafka_config(test),
        clickhouse: testkit::clickhouse_config(test),
        ..Default::default()
    };
    config.alert.policies_dir = policies_dir(&policy());
    infra::migrations::migrate(&config.clickhouse)
        .await
        .unwrap();
    let client = infra::clickhouse::client(&config.clickhouse);
    let mut insert = client.insert::<RawRow>("usage_events_raw").await.unwrap();
    for (offset, event) in events.iter().chain(&events[..1]).enumerate() {
        let source = KafkaCoordinates {
            topic: "usage",
            partition: 0,
            offset: offset as i64,
        };
        let row = RawRow::from_event(event.clone(), source, Utc::now()).unwrap();
        insert.write(&row).await.unwrap();
    }
    insert.end().await.unwrap();
    // alice raises k1 to 2 USD for an hour: the signed record as the alerter audited it, first
    // seen by the broker at `approval_at`.
    let mut approval = alerter::approve::build(
        "t-replay",
        alerter::approve::parse_scope("api_key_id=k1").unwrap(),
        Decimal::from(2),
        approval_at + TimeDelta::hours(1),
        "load test",
        "alice",
        approval_at,
    );
    approval.approval_id = "apr-1".to_owned();
    let approval = alerter::approve::sign(approval, &alice()).unwrap();
    let record = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        schemas::codec::encode(&approval).unwrap(),
    );
    client
        .query(&format!(
            "INSERT INTO approval_checks (approval_id, record_sha256, policy_id, approved_by, status, \
             check_reason, first_seen_at, first_seen_at_us, record_base64, record_key, decided_at, \
             decided_at_us) VALUES ('apr-1', 'sha', 't-replay', 'alice', 'applied', 'raised', {0}, {1}, \
             '{record}', 'apr-1', {0}, {1})",
            approval_at.timestamp(),
            approval_at.timestamp_micros(),
        ))
        .execute()
        .await
        .unwrap();
    config
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn replay_blocks_at_the_crossing_stops_what_follows_and_applies_approvals() {
    // One event a minute: k1 spends 0.4 USD each time, k2 0.1 USD.
    // Yesterday 10:00 UTC: inside one UTC day whatever the time the test runs.
    let midnight = Utc::now().timestamp() - Utc::now().timestamp().rem_euclid(86_400);
    let start = DateTime::<Utc>::from_timestamp(midnight - 14 * 3600, 0).unwrap();
    let at = |minute: i64| start + TimeDelta::minutes(minute);
    let mut events = Vec::new();
    for minute in 0..10 {
        events.push(event(&format!("k1-{minute}"), "k1", at(minute), "0.4"));
        events.push(event(&format!("k2-{minute}"), "k2", at(minute), "0.1"));
    }
    // The approval lands between minute 4 and 5.
    let config = history("quotactl_replay", &events, at(4) + TimeDelta::seconds(30)).await;
    let from = (start - TimeDelta::minutes(1)).to_rfc3339();
    let to = (at(10)).to_rfc3339();
    // What-if: refused events would not have been made, so they are left out of the totals.
    let output = quotactl(
        &config,
        &[
            "--json",
            "replay",
            "--from",
            &from,
            "--to",
            &to,
            "--exclude-refused",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let report = &json["report"];
    // The duplicate row of k1-0 is read once.
    assert_eq!(report["events"], 20);
    let decisions: Vec<(String, String, u64)> = report["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["key"].as_str().unwrap().to_owned(),
                d["action"].as_str().unwrap().to_owned(),
                d["version"].as_u64().unwrap(),
            )
        })
        .collect();
    // The control keys as the engine writes them (policy and enforcement scope).
    let key_of = |needle: &str| {
        decisions
            .iter()
            .map(|(key, _, _)| key.clone())
            .find(|key| key.contains(needle))
            .unwrap_or_else(|| panic!("no decision for {needle}: {report:#}"))
    };
    let (k1, k2) = (key_of("api_key_id=k1"), key_of("api_key_id=k2"));
    let decision =
        |key: &str, action: &str, version: u64| (key.to_owned(), action.to_owned(), version);
    let millis = |minute: i64| u64::try_from(at(minute).timestamp_millis()).unwrap();
    assert_eq!(
        decisions,
        vec![
            // 0.4, 0.8, 1.2 ≥ 1: blocked at minute 2; minutes 3 and 4 are refused.
            // A key's first version is its issue time in ms, then one more per decision.
            decision(&k1, "block", millis(2)),
            // The approval (2 USD) lifts it: 1.2 < 2.
            decision(&k1, "allow", millis(2) + 1),
            // 1.6, 2.0 ≥ 2: blocked again at minute 6; 7, 8, 9 are refused.
            decision(&k1, "block", millis(2) + 2),
            // k2: 0.1 a minute reaches 1.0 exactly at minute 9.
            decision(&k2, "block", millis(9)),
        ],
        "{report:#}"
    );
    let at_of = |index: usize| {
        DateTime::parse_from_rfc3339(report["decisions"][index]["at"].as_str().unwrap()).unwrap()
    };
    assert_eq!(at_of(0), at(2));
    assert_eq!(at_of(1), at(4) + TimeDelta::seconds(30));
    assert_eq!(at_of(2), at(6));
    assert_eq!(at_of(3), at(9));
    let enforced = &report["enforced"]["t-replay"];
    assert_eq!(enforced["stopped_events"], 5);
    assert_eq!(
        Decimal::from_str(enforced["stopped_usd"].as_str().unwrap()).unwrap(),
        Decimal::new(20, 1)
    );
    assert_eq!(report["approvals"][0][1], "applied");
    let alerts = report["alerts"].as_array().unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a["kind"] == "soft_threshold"
                && a["dedup_key"].as_str().unwrap().contains("k2")),
        "{report:#}"
    );

    // As it happened (the default): every event counts, so at the approval k1 is at 2.0 of the
    // raised 2 and stays blocked; everything k1 sent after minute 2 is reported as stopped.
    let output = quotactl(&config, &["--json", "replay", "--from", &from, "--to", &to]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let report = &json["report"];
    let actions: Vec<(&str, &str)> = report["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["key"].as_str().unwrap(), d["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        vec![(k1.as_str(), "block"), (k2.as_str(), "block")],
        "{report:#}"
    );
    assert_eq!(report["counted"], 20);
    let enforced = &report["enforced"]["t-replay"];
    assert_eq!(enforced["stopped_events"], 7);
    assert_eq!(
        Decimal::from_str(enforced["stopped_usd"].as_str().unwrap()).unwrap(),
        Decimal::new(28, 1)
    );

    // Compared with live decisions that agree for k1 and miss one for k2: exit 1, named.
    let client = infra::clickhouse::client(&config.clickhouse);
    let live = |version: u64, action: &str, minute: i64| {
        let key = &k1;
        format!(
            "('{key}@{version}', '{key}', 't-replay', ['api_key_id'], ['k1'], '{action}', NULL, '', 'cost_usd', \
             1, 1, 'day', 0, 0, {s}, {us}, NULL, {version})",
            s = at(minute).timestamp(),
            us = at(minute).timestamp_micros()
        )
    };
    client
        .query(&format!(
            "INSERT INTO decisions (decision_id, key, policy_id, scope_keys, scope_values, action, degrade_to, \
             reason, unit, observed, limit_value, window_kind, window_start, window_end, issued_at, issued_at_us, \
             expires_at, version) VALUES {}",
            live(1, "block", 2)
        ))
        .execute()
        .await
        .unwrap();
    let output = quotactl(
        &config,
        &["replay", "--from", &from, "--to", &to, "--compare"],
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("{k2}: live [], replayed [\"block\"]")),
        "{text}"
    );
    assert!(
        text.contains("compared with the live alerter: 1 keys the same, 1 different"),
        "{text}"
    );
}
