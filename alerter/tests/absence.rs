//! Absence is a value, on the real stack (`dev/stack up`): the decision for a policy's bucket of
//! requests without `user_id` names `user_id` as absent, and a gateway following the control topic
//! refuses only requests without `user_id`. Own topics, database and receivers.

mod support;

use std::time::Duration;

use chrono::TimeDelta;
use gateway::{RequestAttributes, Verdict};
use infra::testkit;
use schemas::{ControlDecision, DecisionAction};
use support::*;

const PER_USER: &str = r#"
id: t-per-user
description: A test cap per user and day; requests without a user share one bucket.
owner: {team: search, contact: search-oncall@example.com, pagerduty_service: search-quota}
environment: prod
unit: cost_usd
group_by: [user_id]
window: {kind: day}
hard_cap: 10
action: {kind: block}
"#;

fn as_user<'a>(user_id: Option<&'a str>) -> RequestAttributes<'a> {
    RequestAttributes {
        user_id,
        ..request("k1", "prod", "gpt-4o")
    }
}

/// Issue 13, point 2: with `group_by: [user_id]`, the bucket of requests without `user_id`
/// crossing its cap blocks only requests without `user_id` in the policy's environment; requests
/// with a user id (under their own cap) are allowed. The published decision keeps the dimension
/// (`absent: [user_id]`, its own compaction key), and so does its audit row's key. A user over the
/// cap is blocked alone, apart from the anonymous bucket.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn the_no_user_bucket_at_its_cap_blocks_only_requests_without_user_id() {
    let receivers = Receivers::start().await;
    let config = config("alerter_absence", PER_USER, &receivers);
    let alerter = start(&config).await;
    let gateway = gateway(&config.kafka).await;
    let start_at = now_s() - TimeDelta::seconds(60);
    let end_at = now_s() + TimeDelta::hours(1);

    produce_totals(
        &config.kafka,
        &[
            policy_total("t-per-user", "user_id=u1", start_at, end_at, "3", 1),
            policy_total("t-per-user", "user_id", start_at, end_at, "10", 1),
        ],
    )
    .await;
    let log = wait_control(&config.kafka, "the no-user bucket's block", |log| {
        !log.is_empty()
    })
    .await;
    assert_eq!(log.len(), 1, "{log:?}");
    let block = &log[0];
    assert_eq!(block.action, DecisionAction::Block);
    assert_eq!(block.absent, vec!["user_id".to_owned()], "{block:?}");
    assert_eq!(
        block.scope.get("environment").map(String::as_str),
        Some("prod")
    );
    assert!(!block.scope.contains_key("user_id"), "{block:?}");
    assert_eq!(block.key, "t-per-user/environment=prod/user_id");
    assert!(
        block.reason.starts_with("no user_id reached 10 cost_usd"),
        "{}",
        block.reason
    );
    assert_ne!(
        block.key,
        ControlDecision::compaction_key("t-per-user", &block.scope)
    );

    testkit::eventually(
        Duration::from_secs(10),
        "the gateway blocks requests without user_id",
        || {
            let verdict = gateway.check(&as_user(None));
            async move { matches!(verdict, Verdict::Block { .. }).then_some(()) }
        },
    )
    .await;
    for user in ["u1", "u2", ""] {
        assert_eq!(
            gateway.check(&as_user(Some(user))),
            Verdict::Allow,
            "user {user:?}"
        );
    }
    assert_eq!(
        gateway.check(&RequestAttributes {
            environment: "staging",
            ..as_user(None)
        }),
        Verdict::Allow
    );

    // u1 over its own cap: blocked alone, under its own key; the anonymous block is untouched.
    produce_totals(
        &config.kafka,
        &[policy_total(
            "t-per-user",
            "user_id=u1",
            start_at,
            end_at,
            "11",
            2,
        )],
    )
    .await;
    let log = wait_control(&config.kafka, "u1's block", |log| log.len() == 2).await;
    let u1 = &log[1];
    assert_eq!(u1.scope.get("user_id").map(String::as_str), Some("u1"));
    assert!(u1.absent.is_empty(), "{u1:?}");
    assert_eq!(u1.key, "t-per-user/environment=prod/user_id=u1");
    testkit::eventually(Duration::from_secs(10), "the gateway blocks u1", || {
        let verdict = gateway.check(&as_user(Some("u1")));
        async move { matches!(verdict, Verdict::Block { .. }).then_some(()) }
    })
    .await;
    assert_eq!(gateway.check(&as_user(Some("u2"))), Verdict::Allow);
    assert!(matches!(
        gateway.check(&as_user(None)),
        Verdict::Block { .. }
    ));

    // The audit row keeps the absence in its key.
    testkit::eventually(Duration::from_secs(20), "the audit rows", || {
        let config = config.clone();
        async move {
            let client = infra::clickhouse::client(&config.clickhouse);
            let keys = client
                .query("SELECT key FROM decisions FINAL ORDER BY key")
                .fetch_all::<String>()
                .await
                .unwrap_or_default();
            (keys.len() == 2).then_some(keys)
        }
    })
    .await
    .into_iter()
    .zip([
        "t-per-user/environment=prod/user_id",
        "t-per-user/environment=prod/user_id=u1",
    ])
    .for_each(|(key, expected)| assert_eq!(key, expected));

    alerter.stop().await.unwrap();
    gateway.shutdown();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
