//! Kafka clients with the delivery settings the pipeline relies on.
//!
//! - Producers are idempotent with `acks=all`: an acknowledged record is on every in-sync replica and
//!   a retried send never duplicates it inside the broker. Callers await each delivery report.
//! - Consumers never auto-commit and never auto-store offsets: a service stores an offset only after
//!   the record's effect is durable (CONVENTIONS.md §2), so a crash replays, never skips.
//! - Every client (producer, consumer, admin, [`client_config`] for the rest) carries the
//!   configured [`KafkaSecurity`]: TLS with host-name verification, SASL credentials. A client
//!   cannot be built without it, so no service, CLI or library talks to a secured cluster in
//!   plaintext by accident.
//! - Topics are created with the configured [`Replication`]; with factor 3 and
//!   `min.insync.replicas` 2, an acknowledged record survives the loss of one broker.
//! - [`ensure_topics`] (every service's first Kafka call at startup) checks the connection first
//!   and fails with the cause when the brokers refuse the credentials or are not trusted.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{KafkaConfig, KafkaSecurity, Replication};
use crate::{Error, Result};

mod connection;

pub use connection::check_connection;

/// How long [`ensure_topics`] waits for a first answer from the brokers.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

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

/// Settings every client shares: brokers, `client.id` and [`KafkaSecurity`] (TLS, SASL). Every
/// client of every service, the CLI, the gateway library and the test helpers start from here, so a
/// secured cluster needs nothing but `[kafka.security]`. Admin clients and plain readers use it as
/// it is; [`producer_config`] and [`consumer_config`] add the delivery settings.
pub fn client_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut config = base_config(kafka, client_id);
    apply_user_properties(&mut config, kafka);
    config
}

fn base_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", client_id)
        // Fail fast on a wrong address instead of retrying silently forever at debug level.
        .set("socket.connection.setup.timeout.ms", "10000");
    apply_security(&mut config, &kafka.security);
    config
}

fn apply_security(config: &mut ClientConfig, security: &KafkaSecurity) {
    config.set("security.protocol", security.protocol.as_librdkafka());
    if security.protocol.uses_sasl() {
        config
            .set("sasl.mechanisms", security.sasl_mechanism.as_librdkafka())
            .set("sasl.username", &security.username)
            .set("sasl.password", security.password.expose());
    }
    if security.protocol.uses_tls() {
        // Verify that the broker's certificate names the host we dialled, not only that a trusted
        // CA signed it (librdkafka's default since 2.0; set so no property can turn it off).
        config.set("ssl.endpoint.identification.algorithm", "https");
        let path = |path: &std::path::Path| path.to_string_lossy().into_owned();
        if let Some(ca_file) = &security.ca_file {
            config.set("ssl.ca.location", path(ca_file));
        }
        if let (Some(cert_file), Some(key_file)) = (&security.cert_file, &security.key_file) {
            config
                .set("ssl.certificate.location", path(cert_file))
                .set("ssl.key.location", path(key_file));
        }
    }
}

fn apply_user_properties(config: &mut ClientConfig, kafka: &KafkaConfig) {
    for (key, value) in kafka.properties.expose() {
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
    /// Replication factor and `min.insync.replicas` it is created with.
    pub replication: Replication,
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
        client_config(kafka, "quotaflow-admin").create()?;
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

/// The topic-level settings a [`TopicSpec`] is created with, as (name, value) pairs: replication,
/// retention, then the spec's own `extra_config`.
fn topic_settings(topic: &TopicSpec) -> Vec<(String, String)> {
    let mut settings = vec![(
        "min.insync.replicas".to_owned(),
        topic.replication.min_insync_replicas.to_string(),
    )];
    let mut set = |name: &str, value: String| settings.push((name.to_owned(), value));
    match topic.retention {
        Retention::Time(duration) => {
            set("cleanup.policy", "delete".to_owned());
            set("retention.ms", duration.as_millis().to_string());
        }
        Retention::Compacted => {
            set("cleanup.policy", "compact".to_owned());
            set("min.compaction.lag.ms", "0".to_owned());
            set("segment.ms", "600000".to_owned());
        }
    }
    settings.extend(topic.extra_config.iter().cloned());
    settings
}

/// The admin request that creates `topic` (borrowing `settings`, from [`topic_settings`]).
fn new_topic<'a>(topic: &'a TopicSpec, settings: &'a [(String, String)]) -> NewTopic<'a> {
    let replication = TopicReplication::Fixed(topic.replication.factor);
    settings.iter().fold(
        NewTopic::new(&topic.name, topic.partitions, replication),
        |new_topic, (name, value)| new_topic.set(name, value),
    )
}

/// Creates the topics that do not exist yet, with their partitions, retention and replication;
/// existing topics are left as they are. Checks the connection first ([`check_connection`]), so a
/// wrong password or an untrusted certificate fails here with its cause instead of a timeout.
pub async fn ensure_topics(kafka: &KafkaConfig, topics: &[TopicSpec]) -> Result<()> {
    check_connection(kafka, CONNECTION_DEADLINE).await?;
    let admin: AdminClient<DefaultClientContext> =
        client_config(kafka, "quotaflow-admin").create()?;
    let settings: Vec<Vec<(String, String)>> = topics.iter().map(topic_settings).collect();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&settings)
        .map(|(topic, settings)| new_topic(topic, settings))
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

/// The standard topic set for a [`KafkaConfig`]: usage, dead letters and alerts kept by time, the
/// rest compacted; each with its configured replication (`kafka.topics.replication`).
pub fn pipeline_topics(kafka: &KafkaConfig) -> Vec<TopicSpec> {
    let week = Duration::from_secs(7 * 24 * 3600);
    let topics = &kafka.topics;
    let replication = &topics.replication;
    let spec = |name: &str, retention, replication| TopicSpec {
        name: name.to_string(),
        partitions: topics.partitions,
        retention,
        replication,
        extra_config: Vec::new(),
    };
    vec![
        // The broker stamps each usage record with its own append time: the readers refuse an
        // event whose `occurred_at` is ahead of it (`ingest::admission`), so a producer whose
        // clock runs fast cannot move a partition's watermark by stamping its records itself.
        TopicSpec {
            extra_config: vec![(
                "message.timestamp.type".to_owned(),
                "LogAppendTime".to_owned(),
            )],
            // A month and a day: a policy added or changed mid-month is seeded from this topic
            // over its whole current window, up to a month (`docs/aggregator.md`, Policy reloads).
            ..spec(
                &topics.usage,
                Retention::Time(Duration::from_secs(32 * 24 * 3600)),
                replication.usage,
            )
        },
        spec(
            &topics.dead_letter,
            Retention::Time(4 * week),
            replication.dead_letter,
        ),
        spec(&topics.totals, Retention::Compacted, replication.totals),
        spec(&topics.control, Retention::Compacted, replication.control),
        spec(
            &topics.alerts,
            Retention::Time(4 * week),
            replication.alerts,
        ),
        // The broker stamps each approval with its own append time: the alerter measures a
        // raise's max_duration from it, never from a time the writer chose.
        TopicSpec {
            extra_config: vec![(
                "message.timestamp.type".to_owned(),
                "LogAppendTime".to_owned(),
            )],
            ..spec(
                &topics.approvals,
                Retention::Compacted,
                replication.approvals,
            )
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{SaslMechanism, SecurityProtocol, TopicsReplication};
    use crate::secret::Secret;

    #[test]
    fn new_topics_carry_the_configured_replication() {
        let mut kafka = KafkaConfig::default();
        kafka.topics.replication = TopicsReplication::all(Replication {
            factor: 3,
            min_insync_replicas: 2,
        });
        kafka.topics.replication.dead_letter = Replication {
            factor: 5,
            min_insync_replicas: 3,
        };
        let topics = pipeline_topics(&kafka);
        for topic in &topics {
            let settings = topic_settings(topic);
            let request = new_topic(topic, &settings);
            let (factor, min_insync) = if topic.name == kafka.topics.dead_letter {
                (5, "3")
            } else {
                (3, "2")
            };
            assert!(
                matches!(request.replication, TopicReplication::Fixed(f) if f == factor),
                "{}",
                topic.name
            );
            assert!(
                request
                    .config
                    .contains(&("min.insync.replicas", min_insync)),
                "{}: {:?}",
                topic.name,
                request.config
            );
        }
        let defaults = pipeline_topics(&KafkaConfig::default());
        for topic in &defaults {
            let settings = topic_settings(topic);
            let request = new_topic(topic, &settings);
            assert!(matches!(request.replication, TopicReplication::Fixed(1)));
            assert!(request.config.contains(&("min.insync.replicas", "1")));
        }
    }

    #[test]
    fn every_client_gets_the_security_settings_and_properties_cannot_drop_them() {
        let mut kafka = KafkaConfig {
            security: KafkaSecurity {
                protocol: SecurityProtocol::SaslSsl,
                sasl_mechanism: SaslMechanism::ScramSha256,
                username: "svc".to_owned(),
                password: Secret::new("pa55-w0rd"),
                ca_file: Some(PathBuf::from("/etc/kafka/ca.pem")),
                cert_file: Some(PathBuf::from("/etc/kafka/client.pem")),
                key_file: Some(PathBuf::from("/etc/kafka/client.key")),
            },
            ..KafkaConfig::default()
        };
        kafka
            .properties
            .insert("ssl.key.password".to_owned(), "key-pa55".to_owned());
        let clients = [
            producer_config(&kafka, "p"),
            consumer_config(&kafka, "c", "g"),
            client_config(&kafka, "a"),
        ];
        for client in clients {
            let expected = [
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanisms", "SCRAM-SHA-256"),
                ("sasl.username", "svc"),
                ("sasl.password", "pa55-w0rd"),
                ("ssl.ca.location", "/etc/kafka/ca.pem"),
                ("ssl.certificate.location", "/etc/kafka/client.pem"),
                ("ssl.key.location", "/etc/kafka/client.key"),
                ("ssl.endpoint.identification.algorithm", "https"),
                ("ssl.key.password", "key-pa55"),
            ];
            for (key, value) in expected {
                assert_eq!(client.get(key), Some(value), "{key}");
            }
            let debug = format!("{client:?}");
            assert!(!debug.contains("pa55"), "{debug}");
        }
        let debug = format!("{kafka:?}");
        assert!(!debug.contains("pa55"), "{debug}");
    }

    #[test]
    fn plaintext_clients_set_no_sasl_or_tls() {
        let client = producer_config(&KafkaConfig::default(), "p");
        assert_eq!(client.get("security.protocol"), Some("plaintext"));
        assert_eq!(client.get("sasl.password"), None);
        assert_eq!(client.get("ssl.ca.location"), None);
    }
}
