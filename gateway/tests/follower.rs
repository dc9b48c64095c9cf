//! The gateway on the real Kafka (`dev/stack up`): starts from the compacted state, follows new
//! decisions, and applies its failure mode when the brokers are unreachable.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use gateway::{FailureMode, Gateway, GatewayConfig, RequestAttributes, Verdict};
use infra::config::KafkaConfig;
use infra::kafka::{ensure_topics, producer_config, Retention, TopicSpec};
use infra::testkit::{eventually, kafka_config, unique_name};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;
use schemas::{ControlDecision, DecisionAction};

const DEADLINE: Duration = Duration::from_secs(30);

fn decision(team: &str, action: DecisionAction, version: u64) -> ControlDecision {
    let scope = BTreeMap::from([("team".to_string(), team.to_string())]);
    let now = Utc::now();
    ControlDecision {
        decision_id: unique_name("decision"),
        key: ControlDecision::compaction_key("team-daily", &scope),
        policy_id: "team-daily".to_string(),
        scope,
        action,
        degrade_to: (action == DecisionAction::Degrade).then(|| "gpt-4o-mini".to_string()),
        reason: format!("team {team} spent its daily budget (v{version})"),
        unit: "usd".to_string(),
        observed: Decimal::new(101, 0),
        limit: Decimal::new(100, 0),
        window: "day".to_string(),
        window_start: now,
        window_end: now,
        issued_at: now,
        expires_at: None,
        version,
    }
}

fn request(team: &str) -> RequestAttributes<'_> {
    RequestAttributes {
        team,
        model: "gpt-4o",
        environment: "prod",
        ..Default::default()
    }
}

async fn publish(producer: &FutureProducer, topic: &str, decision: &ControlDecision) {
    let payload = schemas::encode(decision).expect("encodable decision");
    producer
        .send(
            FutureRecord::to(topic).key(&decision.key).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("delivered");
}

async fn publish_tombstone(producer: &FutureProducer, topic: &str, key: &str) {
    producer
        .send(
            FutureRecord::<str, [u8]>::to(topic).key(key),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("delivered");
}

fn gateway_config(kafka: KafkaConfig, failure_mode: FailureMode) -> GatewayConfig {
    GatewayConfig {
        kafka,
        client_id: unique_name("gateway"),
        failure_mode,
        max_staleness_ms: 5_000,
        probe_interval_ms: 500,
    }
}

#[tokio::test]
async fn starts_from_the_compacted_state_then_follows_blocks_and_allows() {
    let kafka = kafka_config("gateway");
    let topic = kafka.topics.control.clone();
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: 3,
        retention: Retention::Compacted,
        extra_config: Vec::new(),
    };
    ensure_topics(&kafka, &[spec]).await.expect("topic created");
    let producer: FutureProducer = producer_config(&kafka, "gateway-test")
        .create()
        .expect("producer");

    // State before the gateway starts: search blocked, ads degraded, old blocked then lifted,
    // gone blocked then tombstoned.
    publish(
        &producer,
        &topic,
        &decision("search", DecisionAction::Block, 1),
    )
    .await;
    publish(
        &producer,
        &topic,
        &decision("ads", DecisionAction::Degrade, 1),
    )
    .await;
    publish(
        &producer,
        &topic,
        &decision("old", DecisionAction::Block, 1),
    )
    .await;
    publish(
        &producer,
        &topic,
        &decision("old", DecisionAction::Allow, 2),
    )
    .await;
    let gone = decision("gone", DecisionAction::Block, 1);
    publish(&producer, &topic, &gone).await;
    publish_tombstone(&producer, &topic, &gone.key).await;

    // Failing closed, so a gateway that answered before catching up would block everything.
    let gateway = Gateway::start(gateway_config(kafka, FailureMode::Closed)).expect("started");
    eventually(DEADLINE, "the gateway to catch up", || async {
        gateway.is_ready().then_some(())
    })
    .await;

    match gateway.check(&request("search")) {
        Verdict::Block {
            reason, policy_id, ..
        } => {
            assert_eq!(&*reason, "team search spent its daily budget (v1)");
            assert_eq!(&*policy_id, "team-daily");
        }
        other => panic!("search should be blocked, got {other:?}"),
    }
    assert!(matches!(
        gateway.check(&request("ads")),
        Verdict::Degrade { to, .. } if &*to == "gpt-4o-mini"
    ));
    assert_eq!(gateway.check(&request("old")), Verdict::Allow);
    assert_eq!(gateway.check(&request("gone")), Verdict::Allow);
    assert_eq!(gateway.check(&request("other")), Verdict::Allow);

    // A new block is obeyed with its reason; an allow lifts it.
    publish(
        &producer,
        &topic,
        &decision("fresh", DecisionAction::Block, 1),
    )
    .await;
    let reason = eventually(DEADLINE, "the new block to apply", || async {
        gateway.check(&request("fresh")).reason().map(str::to_owned)
    })
    .await;
    assert_eq!(reason, "team fresh spent its daily budget (v1)");

    publish(
        &producer,
        &topic,
        &decision("search", DecisionAction::Allow, 2),
    )
    .await;
    eventually(DEADLINE, "the allow to lift the search block", || async {
        (gateway.check(&request("search")) == Verdict::Allow).then_some(())
    })
    .await;
    assert!(!gateway.check(&request("fresh")).may_proceed());
    gateway.shutdown();
}

#[tokio::test]
async fn unreachable_brokers_fail_closed_or_open_by_configuration() {
    let mut kafka = kafka_config("gateway_down");
    kafka.brokers = "127.0.0.1:1".to_string();

    let closed =
        Gateway::start(gateway_config(kafka.clone(), FailureMode::Closed)).expect("started");
    let verdict = closed.check(&request("search"));
    assert!(
        !verdict.may_proceed(),
        "fail closed must block, got {verdict:?}"
    );
    assert!(verdict.reason().expect("a reason").contains("fail closed"));
    assert!(!closed.is_ready());

    let open = Gateway::start(gateway_config(kafka, FailureMode::Open)).expect("started");
    assert_eq!(open.check(&request("search")), Verdict::Allow);
    assert!(!open.is_ready());

    closed.shutdown();
    open.shutdown();
}

#[test]
fn config_rejects_a_staleness_shorter_than_two_probes() {
    let config = GatewayConfig {
        max_staleness_ms: 1_000,
        probe_interval_ms: 800,
        ..Default::default()
    };
    let error = Gateway::start(config).err().expect("invalid config");
    assert!(!error.is_retryable());
}
