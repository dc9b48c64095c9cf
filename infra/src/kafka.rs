//! Kafka clients with the delivery settings the pipeline relies on.
//!
//! - Producers are idempotent with `acks=all`: an acknowledged record is on every in-sync replica and
//!   a retried send never duplicates it inside the broker. Callers await each delivery report.
//! - Consumers never auto-commit and never auto-store offsets: a service stores an offset only after
//!   the record's effect is durable (CONVENTIONS.md §2), so a crash replays, never skips.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::{Error, Result};

/// Settings for an idempotent, `acks=all` producer. `client_id` names the process in broker logs.
pub fn producer_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut config = base_config(kafka, client_id);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Small linger: batches form under load without adding visible latency when idle.
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // A send that cannot be delivered in this time fails with an error the caller sees.
        .set("message.timeout.ms", "30000");
    apply_user_properties(&mut config, kafka);
    // Re-assert the guarantees after user properties so they cannot be weakened by config.
    config.set("enable.idempotence", "true").set("acks", "all");
    config
}

/// Settings for a group consumer that stores offsets explicitly after durable writes.
pub fn consumer_config(kafka: &KafkaConfig, client_id: &str, group_id: &str) -> ClientConfig {
    let mut config = base_config(kafka, client_id);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Only committed records of transactional producers become visible.
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        // librdkafka waits this long before fetching again for a partition whose prefetch queue
        // was full; its 1000 ms default stalls a consumer that is briefly slower than the broker
        // (measured: raw consume 0.7 M/s with it, 1.25 M/s at 50 ms; docs/benchmarks.md).
        .set("fetch.queue.backoff.ms", "50");
    apply_user_properties(&mut config, kafka);
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    config
}

fn base_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", client_id)
        // Fail fast on a wrong address instead of retrying silently forever at debug level.
        .set("socket.connection.setup.timeout.ms", "10000");
    config
}

fn apply_user_properties(config: &mut ClientConfig, kafka: &KafkaConfig) {
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
}

/// How a topic is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep records for this long (event streams, dead letters, audit).
    Time(Duration),
    /// Keep the newest record per key forever (control decisions, totals, approvals).
    Compacted,
}

/// A topic this project needs.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub retention: Retention,
    /// Further topic configs set at creation, after the retention ones (e.g. the approvals
    /// topic's `message.timestamp.type=LogAppendTime`).
    pub extra_config: Vec<(String, String)>,
}

/// Deletes the topics whose names start with `prefix`, except those in `keep`; returns their
/// names. For housekeeping of per-run topics (the demo), never for a pipeline's own topics.
pub async fn delete_topics_with_prefix(
    kafka: &KafkaConfig,
    prefix: &str,
    keep: &[&str],
) -> Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> =
        base_config(kafka, "quotaflow-admin").create()?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?;
    let doomed: Vec<String> = metadata
        .topics()
        .iter()
        .map(|topic| topic.name().to_owned())
        .filter(|name| name.starts_with(prefix) && !keep.contains(&name.as_str()))
        .collect();
    if doomed.is_empty() {
        return Ok(doomed);
    }
    let names: Vec<&str> = doomed.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.delete_topics(&names, &options).await? {
        if let Err((name, code)) = result {
            if code != RDKafkaErrorCode::UnknownTopicOrPartition {
                return Err(Error::Config(format!("cannot delete topic {name}: {code}")));
            }
        }
    }
    Ok(doomed)
}

/// Creates the topics that do not exist yet; existing topics are left as they are.
pub async fn ensure_topics(kafka: &KafkaConfig, topics: &[TopicSpec]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        base_config(kafka, "quotaflow-admin").create()?;
    let retention_ms: Vec<String> = topics
        .iter()
        .map(|topic| match topic.retention {
            Retention::Time(duration) => duration.as_millis().to_string(),
            Retention::Compacted => String::new(),
        })
        .collect();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&retention_ms)
        .map(|(topic, retention_ms)| {
            let new_topic =
                NewTopic::new(&topic.name, topic.partitions, TopicReplication::Fixed(1));
            let new_topic = match topic.retention {
                Retention::Time(_) => new_topic
                    .set("cleanup.policy", "delete")
                    .set("retention.ms", retention_ms),
                Retention::Compacted => new_topic
                    .set("cleanup.policy", "compact")
                    .set("min.compaction.lag.ms", "0")
                    .set("segment.ms", "600000"),
            };
            topic
                .extra_config
                .iter()
                .fold(new_topic, |new_topic, (key, value)| {
                    new_topic.set(key, value)
                })
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Config(format!("cannot create topic {name}: {code}")));
            }
        }
    }
    Ok(())
}

/// The standard topic set for a [`KafkaConfig`]: usage and dead letters kept by time, the rest compacted.
pub fn pipeline_topics(kafka: &KafkaConfig) -> Vec<TopicSpec> {
    let week = Duration::from_secs(7 * 24 * 3600);
    let topics = &kafka.topics;
    let spec = |name: &str, retention| TopicSpec {
        name: name.to_string(),
        partitions: topics.partitions,
        retention,
        extra_config: Vec::new(),
    };
    vec![
        spec(&topics.usage, Retention::Time(week)),
        spec(&topics.dead_letter, Retention::Time(4 * week)),
        spec(&topics.totals, Retention::Compacted),
        spec(&topics.control, Retention::Compacted),
        spec(&topics.alerts, Retention::Time(4 * week)),
        // The broker stamps each approval with its own append time: the alerter measures a
        // raise's max_duration from it, never from a time the writer chose.
        TopicSpec {
            extra_config: vec![(
                "message.timestamp.type".to_owned(),
                "LogAppendTime".to_owned(),
            )],
            ..spec(&topics.approvals, Retention::Compacted)
        },
    ]
}

/// Errors that sending the same record again cannot fix: the record itself or our rights are
/// wrong. Everything else (timeouts, unreachable brokers, leader changes, a full queue) may pass.
pub fn error_is_retryable(error: &KafkaError) -> bool {
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => return false,
        other => match other.rdkafka_error_code() {
            Some(code) => code,
            None => return true,
        },
    };
    !matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidRequiredAcks
            | RDKafkaErrorCode::UnsupportedVersion
    )
}
