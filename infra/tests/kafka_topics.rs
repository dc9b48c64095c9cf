//! `ensure_topics` on the real local broker (`dev/stack up`; address from `QUOTAFLOW_TEST_KAFKA`):
//! topics get the replication factor and `min.insync.replicas` of `kafka.topics.replication`.

use std::time::Duration;

use infra::config::{KafkaConfig, Replication};
use infra::kafka::{client_config, ensure_topics, pipeline_topics};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

fn admin(kafka: &KafkaConfig) -> AdminClient<DefaultClientContext> {
    client_config(kafka, "kafka-topics-test").create().unwrap()
}

/// `name` of `topic`'s config as the broker reports it; set on the topic, not a broker default.
async fn topic_setting(kafka: &KafkaConfig, topic: &str, name: &str) -> String {
    let results = admin(kafka)
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = results.into_iter().next().unwrap().unwrap();
    let entry = resource
        .get(name)
        .unwrap_or_else(|| panic!("{topic} has no {name}"));
    assert!(
        !entry.is_default,
        "{topic}: {name} is the broker default, not set"
    );
    entry.value.clone().unwrap()
}

/// `min.insync.replicas` of `topic` as the broker reports it.
async fn min_insync_replicas(kafka: &KafkaConfig, topic: &str) -> String {
    topic_setting(kafka, topic, "min.insync.replicas").await
}

/// Replicas of each partition of `topic`.
fn replica_counts(kafka: &KafkaConfig, topic: &str) -> Vec<usize> {
    let metadata = admin(kafka)
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|partition| partition.replicas().len())
        .collect()
}

async fn delete(kafka: &KafkaConfig) {
    let names: Vec<String> = pipeline_topics(kafka).into_iter().map(|t| t.name).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    admin(kafka)
        .delete_topics(&names, &AdminOptions::new())
        .await
        .unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn topics_are_created_with_the_configured_min_insync_replicas_and_factor() {
    let kafka = infra::testkit::kafka_config("replication");
    ensure_topics(&kafka, &pipeline_topics(&kafka))
        .await
        .unwrap();
    for topic in pipeline_topics(&kafka) {
        assert_eq!(
            min_insync_replicas(&kafka, &topic.name).await,
            "1",
            "{}",
            topic.name
        );
        let replicas = replica_counts(&kafka, &topic.name);
        assert_eq!(
            replicas,
            vec![1; kafka.topics.partitions as usize],
            "{}",
            topic.name
        );
    }
    // The usage topic holds a month and a day: a policy added or changed mid-month is seeded
    // from it over its whole window (issue 13 point 3).
    assert_eq!(
        topic_setting(&kafka, &kafka.topics.usage, "retention.ms").await,
        (32u64 * 24 * 3600 * 1000).to_string()
    );
    delete(&kafka).await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_factor_the_cluster_cannot_hold_is_refused_by_the_broker_naming_the_topic() {
    // A single-node stack: three replicas cannot be placed, which proves the factor reaches the
    // broker instead of a hard-coded 1.
    let mut kafka = infra::testkit::kafka_config("replication3");
    kafka.topics.replication.control = Replication {
        factor: 3,
        min_insync_replicas: 2,
    };
    let control: Vec<_> = pipeline_topics(&kafka)
        .into_iter()
        .filter(|topic| topic.name == kafka.topics.control)
        .collect();
    let error = ensure_topics(&kafka, &control)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(&kafka.topics.control), "{error}");
    assert!(error.contains("replication factor"), "{error}");
}
