//! `quotactl` on the real stack (`dev/stack up`): status and decisions against a fresh database
//! with known totals and decisions, and the binary's exit codes and JSON.

mod support;

use chrono::Utc;
use infra::testkit;
use rust_decimal::Decimal;
use support::{policies_dir, quotactl};

const POLICY: &str = r#"
id: t-status
description: Ten dollars per API key and day.
owner: {team: search, contact: search@example.com}
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: 10
action: {kind: block}
"#;

/// A config with its own topics and database, `policies` in its policy directory.
fn config_for(test: &str, policies: &str) -> alerter::Config {
    let mut config = alerter::Config {
        kafka: testkit::kafka_config(test),
        clickhouse: testkit::clickhouse_config(test),
        ..Default::default()
    };
    config.alert.policies_dir = policies_dir(policies);
    config
}

/// Inserts a `policy:t-status` day partial of `scope_key` for the day starting at `day`.
async fn insert_partial(
    client: &clickhouse::Client,
    scope_key: &str,
    partition: i32,
    cost: &str,
    day: i64,
) {
    client
        .query(&format!(
            "INSERT INTO window_partials (scope_kind, scope_key, window_kind, window_tz, source_topic, \
             source_partition, window_start, window_end, requests, cost_usd, version, updated_at) VALUES \
             ('policy:t-status', '{scope_key}', 'day', 'UTC', 'usage', {partition}, {day}, {}, 3, {cost}, 7, {day})",
            day + 86_400
        ))
        .execute()
        .await
        .unwrap();
}

async fn seeded(test: &str) -> (alerter::Config, clickhouse::Client) {
    let config = config_for(test, POLICY);
    infra::migrations::migrate(&config.clickhouse)
        .await
        .unwrap();
    let client = infra::clickhouse::client(&config.clickhouse);
    let now = Utc::now();
    let day = now.timestamp() - now.timestamp().rem_euclid(86_400);
    for (key, cost, partition) in [("k1", "5.5", 0), ("k1", "2", 1), ("k2", "2", 0)] {
        insert_partial(&client, &format!("api_key_id={key}"), partition, cost, day).await;
    }
    let decision = |key: &str, action: &str, version: u64, at: i64| {
        format!(
            "('{key}@{version}', '{key}', 't-status', ['api_key_id'], ['x'], '{action}', NULL, '{action} {key}', \
             'cost_usd', 1, 10, 'day', {day}, {}, {at}, {}, NULL, {version})",
            day + 86_400,
            at * 1_000_000
        )
    };
    client
        .query(&format!(
            "INSERT INTO decisions (decision_id, key, policy_id, scope_keys, scope_values, action, degrade_to, \
             reason, unit, observed, limit_value, window_kind, window_start, window_end, issued_at, issued_at_us, \
             expires_at, version) VALUES {}, {}, {}",
            decision("a", "block", 1, day + 10),
            decision("a", "allow", 2, day + 20),
            decision("b", "block", 1, day + 30)
        ))
        .execute()
        .await
        .unwrap();
    (config, client)
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn status_ranks_scopes_by_percent_of_cap_with_burn_rate_and_projection() {
    let (config, client) = seeded("quotactl_status").await;
    let policies = policy::PolicySet::load_dir(&config.alert.policies_dir).unwrap();
    let now = Utc::now();
    let statuses = quotactl::status(&client, &policies, None, now)
        .await
        .unwrap();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    let k1 = &statuses[0];
    assert_eq!(k1.scope, "api_key_id=k1");
    // 5.5 + 2 over two partitions, exactly.
    assert_eq!(k1.amount, "7.5".parse::<Decimal>().unwrap());
    assert_eq!(k1.percent_of_cap, Decimal::from(75));
    assert_eq!(statuses[1].percent_of_cap, Decimal::from(20));
    assert!(k1.burn_per_hour > Decimal::ZERO);
    let day_end = k1.window_end;
    if let Some(at) = k1.projected_cap_at {
        assert!(at > now && at < day_end);
    }
    assert!(quotactl::status(&client, &policies, Some("other"), now)
        .await
        .unwrap()
        .is_empty());
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn decisions_in_force_leave_out_lifted_keys_and_history_lists_all() {
    let (config, client) = seeded("quotactl_decisions").await;
    let in_force = quotactl::decisions(&client, false, 100).await.unwrap();
    assert_eq!(in_force.len(), 1, "{in_force:?}");
    assert_eq!(in_force[0].key, "b");
    let history = quotactl::decisions(&client, true, 100).await.unwrap();
    assert_eq!(
        history.iter().map(|d| d.version).collect::<Vec<_>>(),
        vec![1, 2, 1]
    );
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

/// Issue 17 point 2: alert state is queryable. A hard cap lifted by its reset is resolved, one
/// still in force is open, a soft alert whose window ended has ended.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn alerts_list_newest_first_with_their_state() {
    let (config, client) = seeded("quotactl_alerts").await;
    let now = Utc::now();
    let day = now.timestamp() - now.timestamp().rem_euclid(86_400);
    let alert = |id: &str, key: &str, kind: &str, window_end: i64, at: i64| {
        format!(
            "('{id}', '{id}', 't-status', ['api_key_id'], ['{key}'], '{kind}', 'warning', 50, 'cost_usd', \
             5.5, 10, 'day', {day}, {window_end}, 'search', '{kind} {key}', {at}, {})",
            at * 1_000_000
        )
    };
    client
        .query(&format!(
            "INSERT INTO alerts (alert_id, dedup_key, policy_id, scope_keys, scope_values, kind, severity, \
             threshold_percent, unit, observed, limit_value, window_kind, window_start, window_end, owner, \
             message, raised_at, raised_at_us) VALUES {}, {}, {}, {}",
            alert("a1", "k1", "hard_cap", day + 86_400, day + 10),
            alert("a2", "k1", "cap_reset", day + 86_400, day + 20),
            alert("a3", "k2", "hard_cap", day + 86_400, day + 30),
            alert("a4", "k3", "soft_threshold", day - 1, day - 100),
        ))
        .execute()
        .await
        .unwrap();
    let all = quotactl::alerts(&client, None, false, 100, now)
        .await
        .unwrap();
    let states: Vec<(String, quotactl::AlertState)> = all
        .iter()
        .map(|status| (status.alert.alert_id.clone(), status.state))
        .collect();
    use quotactl::AlertState::*;
    assert_eq!(
        states,
        vec![
            ("a3".to_owned(), Open),
            ("a2".to_owned(), Notice),
            ("a1".to_owned(), Resolved),
            ("a4".to_owned(), Ended),
        ]
    );
    assert_eq!(
        all[0].alert.observed.parse::<Decimal>().unwrap(),
        Decimal::new(55, 1)
    );
    let open = quotactl::alerts(&client, None, true, 100, now)
        .await
        .unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].alert.scope(), "api_key_id=k2");
    assert!(quotactl::alerts(&client, Some("other"), false, 100, now)
        .await
        .unwrap()
        .is_empty());
    assert!(quotactl::alerts_table(&all).contains("5.5 / 10 cost_usd"));
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

const APPROVABLE: &str = r#"
id: t-approve
description: Ten dollars per API key and day; alice may double it for a day.
owner: {team: search, contact: search@example.com}
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: 10
action: {kind: block}
approval: {approvers: [{name: alice, public_key: "ALICE_PUBLIC_KEY"}], max_raise: 100%, max_duration: 24h}
"#;

/// Every approval record on `topic`, read to its end.
fn approvals_on(kafka: &infra::config::KafkaConfig) -> Vec<schemas::Approval> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer =
        infra::kafka::consumer_config(kafka, "quotactl-test", &testkit::unique_name("reader"))
            .create()
            .unwrap();
    let topic = &kafka.topics.approvals;
    let metadata = consumer
        .fetch_metadata(Some(topic), std::time::Duration::from_secs(10))
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    for partition in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), std::time::Duration::from_secs(10))
            .unwrap();
        if high > low {
            assignment
                .add_partition_offset(topic, partition.id(), rdkafka::Offset::Beginning)
                .unwrap();
            ends.insert(partition.id(), high);
        }
    }
    let mut approvals = Vec::new();
    if ends.is_empty() {
        return approvals;
    }
    consumer.assign(&assignment).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(std::time::Duration::from_millis(100)) {
            approvals.push(schemas::codec::decode(message.payload().unwrap()).unwrap());
            if ends
                .get(&message.partition())
                .is_some_and(|end| message.offset() + 1 >= *end)
            {
                ends.remove(&message.partition());
            }
        }
    }
    approvals
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn approve_writes_a_checked_raise_and_refuses_one_outside_the_policy() {
    let mut config = alerter::Config {
        kafka: testkit::kafka_config("quotactl_approve"),
        clickhouse: testkit::clickhouse_config("quotactl_approve"),
        ..Default::default()
    };
    // Alice and bob make their keys with the binary; only alice is in the policy.
    let keys = std::env::temp_dir().join(testkit::unique_name("quotactl_keys"));
    std::fs::create_dir_all(&keys).unwrap();
    let keygen = |name: &str| {
        let out = keys.join(format!("{name}.key"));
        let output = quotactl(
            &config,
            &["keygen", "--name", name, "--out", out.to_str().unwrap()],
        );
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let public_key = stdout
            .lines()
            .find_map(|line| line.strip_prefix("public key: "))
            .expect("the public key is printed")
            .to_owned();
        let private_key = std::fs::read_to_string(&out).unwrap();
        assert!(
            !stdout.contains(private_key.trim()),
            "keygen printed the private key"
        );
        (out, public_key)
    };
    let (alice_key, alice_public) = keygen("alice");
    let (bob_key, _) = keygen("bob");
    config.alert.policies_dir =
        policies_dir(&APPROVABLE.replace("ALICE_PUBLIC_KEY", &alice_public));
    infra::kafka::ensure_topics(&config.kafka, &infra::kafka::pipeline_topics(&config.kafka))
        .await
        .unwrap();
    let until = (Utc::now() + chrono::TimeDelta::hours(2)).to_rfc3339();
    let approve_with = |by: &str, limit: &str, key: &std::path::Path| {
        quotactl(
            &config,
            &[
                "approve",
                "--key-file",
                key.to_str().unwrap(),
                "--policy",
                "t-approve",
                "--scope",
                "api_key_id=k1",
                "--limit",
                limit,
                "--until",
                &until,
                "--reason",
                "launch day",
                "--by",
                by,
            ],
        )
    };
    // Bob is not an approver; 25 is more than double the cap; bob's key cannot sign for alice:
    // each refused, nothing written.
    for (by, limit, key, why) in [
        ("bob", "15", &bob_key, "bob"),
        ("alice", "25", &alice_key, "25"),
        ("alice", "15", &bob_key, "forged"),
    ] {
        let output = approve_with(by, limit, key);
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("approval refused") && stderr.contains(why),
            "{stderr}"
        );
    }
    let output = approve_with("alice", "15", &alice_key);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("written"));
    let written = approvals_on(&config.kafka);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0].approved_by, "alice");
    assert_eq!(written[0].signature.len(), 64, "the record is signed");
    assert_eq!(written[0].new_limit, Decimal::from(15));
    assert_eq!(
        written[0].scope.get("api_key_id").map(String::as_str),
        Some("k1")
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn the_binary_prints_json_and_fails_a_broken_policy_directory() {
    let (config, _client) = seeded("quotactl_binary").await;
    let output = quotactl(&config, &["status", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let statuses: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(statuses[0]["scope"], "api_key_id=k1");
    assert_eq!(statuses[0]["percent_of_cap"], "75");

    let output = quotactl(&config, &["decisions"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("block b"));

    let output = quotactl(&config, &["policy", "check"]);
    assert!(output.status.success());
    let broken = policies_dir("id: t\nunit: cost_usd\n");
    let output = quotactl(&config, &["policy", "check", broken.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("p.yaml:1:1:"), "{printed}");
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

/// Issue 13, point 2: the bucket of events without `user_id` shows as `no user_id`, apart from
/// the users' scopes (it rendered as `(all)`, as if it were the whole policy).
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn status_names_the_bucket_without_a_dimension() {
    let config = config_for("quotactl_absent", &POLICY.replace("api_key_id", "user_id"));
    infra::migrations::migrate(&config.clickhouse)
        .await
        .unwrap();
    let client = infra::clickhouse::client(&config.clickhouse);
    let now = Utc::now();
    let day = now.timestamp() - now.timestamp().rem_euclid(86_400);
    for (scope_key, cost) in [("user_id", "9"), ("user_id=u1", "1")] {
        insert_partial(&client, scope_key, 0, cost, day).await;
    }
    let policies = policy::PolicySet::load_dir(&config.alert.policies_dir).unwrap();
    let statuses = quotactl::status(&client, &policies, None, now)
        .await
        .unwrap();
    let scopes: Vec<&str> = statuses
        .iter()
        .map(|status| status.scope.as_str())
        .collect();
    assert_eq!(scopes, ["no user_id", "user_id=u1"], "{statuses:?}");
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

/// Issue 15 point 2: `quotactl scopes` answers what the sidecar's `GET /v1/scopes` does, from
/// ClickHouse: spent (partials summed), the limit in force (an applied raise), what remains, the
/// reset, the decision in force.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn scopes_answer_the_remaining_quota_with_the_decision_and_raise_in_force() {
    let (config, client) = seeded("quotactl_scopes").await;
    let now = Utc::now();
    let day = now.timestamp() - now.timestamp().rem_euclid(86_400);
    client
        .query(&format!(
            "INSERT INTO decisions (decision_id, key, policy_id, scope_keys, scope_values, action, degrade_to, \
             reason, unit, observed, limit_value, window_kind, window_start, window_end, issued_at, issued_at_us, \
             expires_at, version) VALUES ('t-status/api_key_id=k1@1', 't-status/api_key_id=k1', 't-status', \
             ['api_key_id'], ['k1'], 'block', NULL, 'k1 reached its cap', 'cost_usd', 10, 10, 'day', {day}, {}, \
             {day}, {}, NULL, 1)",
            day + 86_400,
            day * 1_000_000
        ))
        .execute()
        .await
        .unwrap();
    client
        .query(&format!(
            "INSERT INTO approvals (approval_id, policy_id, scope_keys, scope_values, new_limit, valid_until, \
             reason, approved_by, requested_at, status, decided_at) VALUES \
             ('ap1', 't-status', ['api_key_id'], ['k2'], 20, {}, 'launch week', 'alice', {day}, 'applied', {day}), \
             ('ap0', 't-status', ['api_key_id'], ['k2'], 50, {}, 'expired raise', 'bob', {day}, 'applied', {day})",
            now.timestamp() + 3_600,
            now.timestamp() - 60,
        ))
        .execute()
        .await
        .unwrap();
    let policies = policy::PolicySet::load_dir(&config.alert.policies_dir).unwrap();
    let filter = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    };
    let k1 = quotactl::scopes::scopes(&client, &policies, &filter(&[("api_key_id", "k1")]), now)
        .await
        .unwrap();
    assert_eq!(k1.len(), 1, "{k1:?}");
    assert_eq!(k1[0].spent, "7.5".parse::<Decimal>().unwrap());
    assert_eq!(k1[0].limit, Decimal::from(10));
    assert_eq!(k1[0].remaining, "2.5".parse::<Decimal>().unwrap());
    assert_eq!(k1[0].decision.as_ref().unwrap().action, "block");
    assert!(k1[0].approval.is_none());
    assert_eq!(k1[0].resets_at.timestamp(), day + 86_400);

    let k2 = quotactl::scopes::scopes(&client, &policies, &filter(&[("api_key_id", "k2")]), now)
        .await
        .unwrap();
    assert_eq!(
        k2[0].limit,
        Decimal::from(20),
        "the expired raise is not in force"
    );
    assert_eq!(k2[0].remaining, Decimal::from(18));
    assert_eq!(k2[0].approval.as_ref().unwrap().approved_by, "alice");
    assert!(k2[0].decision.is_none());

    let all = quotactl::scopes::scopes(&client, &policies, &filter(&[]), now)
        .await
        .unwrap();
    assert_eq!(
        all.iter()
            .map(|quota| quota.scope.as_str())
            .collect::<Vec<_>>(),
        ["api_key_id=k1", "api_key_id=k2"],
        "tightest first"
    );
    assert!(quotactl::scopes::table(&all).contains("raise to 20 by alice"));
    assert!(
        quotactl::scopes::scopes(&client, &policies, &filter(&[("team", "ads")]), now)
            .await
            .unwrap()
            .is_empty()
    );
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

/// Issue 17 point 6: `quotactl review` sums up a policy's period for its owner: spend against
/// cap per scope, alerts by kind, blocks, and a raise with its post-run review (who, how much,
/// how long, what the scope spent in that window and how much of it above the cap).
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn review_sums_up_spend_alerts_blocks_and_each_raise_with_what_was_spent_under_it() {
    let (config, client) = seeded("quotactl_review").await;
    let now = Utc::now();
    let day = now.timestamp() - now.timestamp().rem_euclid(86_400);
    client
        .query(&format!(
            "INSERT INTO alerts (alert_id, dedup_key, policy_id, scope_keys, scope_values, kind, severity, \
             threshold_percent, unit, observed, limit_value, window_kind, window_start, window_end, owner, \
             message, raised_at, raised_at_us) VALUES \
             ('r1', 'r1', 't-status', ['api_key_id'], ['k1'], 'soft_threshold', 'info', 50, 'cost_usd', 5.5, 10, 'day', {day}, {end}, 'search', 'half', {day}, 0), \
             ('r2', 'r2', 't-status', ['api_key_id'], ['k1'], 'hard_cap', 'critical', 100, 'cost_usd', 10, 10, 'day', {day}, {end}, 'search', 'cap', {day}, 0), \
             ('r3', 'r3', 't-other', ['api_key_id'], ['k1'], 'hard_cap', 'critical', 100, 'cost_usd', 10, 10, 'day', {day}, {end}, 'search', 'other policy', {day}, 0), \
             ('r4', 'r4', 't-status', ['api_key_id'], ['k1'], 'hard_cap', 'critical', 100, 'cost_usd', 10, 10, 'day', {old}, {old}, 'search', 'before the period', {old}, 0)",
            end = day + 86_400,
            old = day - 30 * 86_400,
        ))
        .execute()
        .await
        .unwrap();
    client
        .query(&format!(
            "INSERT INTO approvals (approval_id, policy_id, scope_keys, scope_values, new_limit, valid_until, \
             reason, approved_by, requested_at, status, decided_at) VALUES \
             ('ap-1', 't-status', ['api_key_id'], ['k1'], 15, {until}, 'launch week', 'alice', {at}, 'applied', {at})",
            at = day + 40,
            until = day + 40 + 6 * 3600,
        ))
        .execute()
        .await
        .unwrap();
    let policies = policy::PolicySet::load_dir(&config.alert.policies_dir).unwrap();
    let review = quotactl::review::review(&client, &policies, "t-status", None, now)
        .await
        .unwrap();
    assert_eq!(review.owner, "search");
    assert_eq!(
        review.from,
        now - chrono::TimeDelta::days(7),
        "weekly by default"
    );
    let spend: Vec<(&str, String)> = review
        .spend
        .iter()
        .map(|scope| (scope.scope.as_str(), scope.amount.to_string()))
        .collect();
    assert_eq!(
        spend,
        vec![
            ("api_key_id=k1", "7.5".to_owned()),
            ("api_key_id=k2", "2".to_owned())
        ]
    );
    let alerts: Vec<(&str, u64)> = review
        .alerts
        .iter()
        .map(|kind| (kind.kind.as_str(), kind.count))
        .collect();
    assert_eq!(alerts, vec![("hard_cap", 1), ("soft_threshold", 1)]);
    assert_eq!(review.blocks.len(), 1);
    assert_eq!(
        (
            review.blocks[0].action.as_str(),
            review.blocks[0].count,
            review.blocks[0].scopes
        ),
        ("block", 2, 2)
    );
    let raise = &review.raises[0];
    assert_eq!(raise.approved_by, "alice");
    assert_eq!(raise.raised_by, Decimal::from(5));
    assert_eq!(raise.hours, Decimal::from(6));
    assert_eq!(raise.spent_in_window, Some(Decimal::new(75, 1)));
    assert_eq!(raise.spent_above_cap, Some(Decimal::ZERO));
    let text = quotactl::review::text(&review);
    assert!(
        text.contains("ap-1 api_key_id=k1: applied by alice to 15 (+5) for 6 h"),
        "{text}"
    );
    assert!(
        text.contains("spent 7.5 cost_usd in that window, 0 above the cap"),
        "{text}"
    );
    // A policy that is not in the directory is an error that names it.
    let missing = quotactl::review::review(&client, &policies, "nope", None, now).await;
    assert!(missing.unwrap_err().to_string().contains("no policy nope"));
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
