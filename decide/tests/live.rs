//! The sidecar on the real Kafka (`dev/stack up`): it follows the control topic through the
//! gateway crate, so a block the alerter publishes refuses requests within moments, with the
//! block's own `Retry-After`, and an allow lets them go again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use gateway::{FailureMode, Gateway, GatewayConfig};
use infra::kafka::{ensure_topics, producer_config, Retention, TopicSpec};
use infra::shutdown::Shutdown;
use infra::testkit::{eventually, kafka_config, unique_name};
use rdkafka::producer::FutureProducer;
use schemas::{ControlDecision, DecisionAction};

const DEADLINE: Duration = Duration::from_secs(30);

async fn publish(producer: &FutureProducer, topic: &str, decision: &ControlDecision) {
    infra::testkit::publish_decision(producer, topic, decision).await;
}

/// The status and `retry-after` forward-auth answers for team `search`.
async fn forward_auth(http: &str) -> Option<(u16, Option<String>)> {
    let response = reqwest::Client::new()
        .get(format!("{http}/v1/authz"))
        .header("x-quotaflow-api-key", "k1")
        .header("x-quotaflow-team", "search")
        .send()
        .await
        .ok()?;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    Some((response.status().as_u16(), retry_after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_published_block_refuses_with_its_retry_after_and_an_allow_lifts_it() {
    let kafka = kafka_config("decide_live");
    infra::testkit::require_listener("Kafka", &kafka.brokers);
    let topic = kafka.topics.control.clone();
    ensure_topics(
        &kafka,
        &[TopicSpec {
            name: topic.clone(),
            partitions: 1,
            retention: Retention::Compacted,
            replication: Default::default(),
            extra_config: Vec::new(),
        }],
    )
    .await
    .expect("topic created");
    let producer: FutureProducer = producer_config(&kafka, "decide-live-test")
        .create()
        .expect("producer");

    let gateway = Gateway::start(GatewayConfig {
        kafka: kafka.clone(),
        client_id: unique_name("decide"),
        failure_mode: FailureMode::Closed,
        max_staleness_ms: 5_000,
        probe_interval_ms: 500,
    })
    .expect("gateway started");
    let config = quotaflow_decide::Config::default();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_url = format!("http://{}", http.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { quotaflow_decide::serve(Arc::new(gateway), &config, http, None, shutdown).await }
    });
    eventually(DEADLINE, "the sidecar to catch up (readyz)", || async {
        let status = reqwest::get(format!("{http_url}/readyz"))
            .await
            .ok()?
            .status();
        status.is_success().then_some(())
    })
    .await;
    assert_eq!(forward_auth(&http_url).await, Some((200, None)));

    let scope = BTreeMap::from([("team".to_owned(), "search".to_owned())]);
    let now = Utc::now();
    let block = ControlDecision {
        decision_id: unique_name("decision"),
        action: DecisionAction::Block,
        reason: "team search spent its daily budget".to_owned(),
        window_start: now - TimeDelta::hours(1),
        window_end: now + TimeDelta::hours(3),
        expires_at: Some(now + TimeDelta::minutes(10)),
        version: 1,
        ..schemas::fixtures::block_decision("team-daily", scope, Vec::new(), now)
    };
    publish(&producer, &topic, &block).await;
    let (_, retry_after) = eventually(DEADLINE, "the block to be obeyed", || async {
        forward_auth(&http_url)
            .await
            .filter(|(status, _)| *status == 429)
    })
    .await;
    let retry_after: u64 = retry_after
        .expect("a block with an expiry says when")
        .parse()
        .unwrap();
    assert!((590..=600).contains(&retry_after), "{retry_after}");

    let allow = ControlDecision {
        decision_id: unique_name("decision"),
        action: DecisionAction::Allow,
        version: 2,
        ..block
    };
    publish(&producer, &topic, &allow).await;
    eventually(DEADLINE, "the allow to lift the block", || async {
        forward_auth(&http_url)
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;

    shutdown.cancel();
    task.await.unwrap().unwrap();
}
