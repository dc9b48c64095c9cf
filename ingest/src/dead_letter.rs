//! Dead letters: Kafka records a consumer gives up on, kept byte for byte with the reason.
//!
//! [`DeadLetterWriter`] is shared by every consumer that reads from Kafka (the raw archive here,
//! the aggregator later). A record becomes a [`DeadLetter`] when it cannot be decoded
//! (`error_kind` = [`schemas::DecodeError::kind`]), fails validation ([`kind::VALIDATION`]), cannot
//! be represented in the table ([`kind::UNREPRESENTABLE`]) or is refused by ClickHouse as a data
//! error ([`kind::SINK_REJECTED`]).
//!
//! # Guarantees
//! - [`DeadLetterWriter::publish`] produces every letter to the dead-letter topic with the
//!   idempotent `acks=all` producer and returns only when **every** delivery is acknowledged, so
//!   a caller that counts the source offset as processed afterwards never loses one.
//! - [`DeadLetterWriter::record`] inserts the same letters into ClickHouse `dead_letters` (for
//!   analysts; one INSERT, one part: the table is not partitioned).
//! - Both are at least once: a consumer that crashes after publishing and before its own
//!   checkpoint publishes the letter again. Readers of the topic deduplicate by
//!   `(service, source_topic, source_partition, source_offset)`; the table does it by itself
//!   (`ReplacingMergeTree` ordered by exactly those columns).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use infra::config::{ClickHouseConfig, KafkaConfig};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::{DeadLetter, DecodeError};
use serde::Serialize;

use crate::validation::Violation;

/// The `error_kind` values this crate adds to [`DecodeError::kind`]'s.
pub mod kind {
    /// The record decoded but broke a validation rule; the message lists the field paths.
    pub const VALIDATION: &str = crate::admission::dead_letter_kind::VALIDATION;
    /// ClickHouse refused the row as a data error (never retried).
    pub const SINK_REJECTED: &str = "sink_rejected";
    /// The record decoded and validated but a value does not fit the table's column type.
    pub const UNREPRESENTABLE: &str = "unrepresentable";
}

/// Where a dead letter came from: the source record's coordinates, value and key.
#[derive(Debug, Clone, Copy)]
pub struct SourceRecord<'a> {
    /// Topic read from.
    pub topic: &'a str,
    /// Partition read from.
    pub partition: i32,
    /// Offset read from.
    pub offset: i64,
    /// Value, byte for byte (empty for a tombstone).
    pub payload: &'a [u8],
    /// Key, if the record had one.
    pub key: Option<&'a [u8]>,
}

/// A dead letter for `source`, failed now by `service`.
pub fn dead_letter(
    source: SourceRecord<'_>,
    service: &str,
    error_kind: &str,
    error_message: String,
) -> DeadLetter {
    DeadLetter {
        source_topic: source.topic.to_owned(),
        source_partition: source.partition,
        source_offset: source.offset,
        error_kind: error_kind.to_owned(),
        error_message,
        payload: source.payload.to_vec(),
        key: source.key.map(<[u8]>::to_vec),
        failed_at: Utc::now(),
        service: service.to_owned(),
    }
}

/// A dead letter for a record the codec refused: `error_kind` is the codec's stable kind.
pub fn undecodable(source: SourceRecord<'_>, service: &str, error: &DecodeError) -> DeadLetter {
    dead_letter(source, service, error.kind(), error.to_string())
}

/// A dead letter for an event that broke validation rules; the message names every field path,
/// e.g. `team (missing): must not be empty; input_tokens (above_model_limit): …`.
pub fn invalid(source: SourceRecord<'_>, service: &str, violations: &[Violation]) -> DeadLetter {
    let message = violations
        .iter()
        .map(Violation::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    dead_letter(source, service, kind::VALIDATION, message)
}

/// Why dead letters could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// The producer could not be created (bad configuration).
    #[error("cannot create the dead-letter producer")]
    Producer(#[source] rdkafka::error::KafkaError),
    /// A dead letter was not acknowledged by Kafka.
    #[error("dead letter for {topic}[{partition}]@{offset} not delivered")]
    Delivery {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A dead letter could not be encoded (e.g. a `failed_at` out of range): a bug, not data.
    #[error("cannot encode a dead letter")]
    Encode(#[source] schemas::EncodeError),
    /// The `dead_letters` insert failed.
    #[error("inserting into dead_letters failed")]
    ClickHouse(#[source] clickhouse::error::Error),
}

impl DeadLetterError {
    /// Whether writing the same letters again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            DeadLetterError::Producer(_) | DeadLetterError::Encode(_) => false,
            DeadLetterError::Delivery { .. } => true,
            DeadLetterError::ClickHouse(error) => {
                infra::error::clickhouse_error_is_retryable(error)
            }
        }
    }
}

/// Produces dead letters to the dead-letter topic (acknowledged) and records them in ClickHouse.
#[derive(Clone)]
pub struct DeadLetterWriter {
    /// Idempotent `acks=all` producer (`infra::kafka::producer_config`).
    producer: FutureProducer,
    /// `kafka.topics.dead_letter`.
    topic: String,
    /// Client of the database holding `dead_letters`.
    clickhouse: clickhouse::Client,
}

impl DeadLetterWriter {
    /// A writer for `kafka.topics.dead_letter` and the `dead_letters` table of `clickhouse`.
    pub fn new(
        kafka: &KafkaConfig,
        clickhouse: &ClickHouseConfig,
        client_id: &str,
    ) -> Result<Self, DeadLetterError> {
        let producer = infra::kafka::producer_config(kafka, client_id)
            .create()
            .map_err(DeadLetterError::Producer)?;
        Ok(Self {
            producer,
            topic: kafka.topics.dead_letter.clone(),
            clickhouse: infra::clickhouse::client(clickhouse),
        })
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces every letter (keyed by the source record's key, or unkeyed) and waits until all
    /// are acknowledged; the first failure is returned after all sends settled.
    pub async fn publish(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        let mut encoded = Vec::with_capacity(letters.len());
        for letter in letters {
            encoded.push(schemas::encode(letter).map_err(DeadLetterError::Encode)?);
        }
        let deliveries = letters.iter().zip(&encoded).map(|(letter, payload)| {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(payload);
            if let Some(key) = &letter.key {
                record = record.key(key.as_slice());
            }
            async move {
                self.producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(source, _)| DeadLetterError::Delivery {
                        topic: letter.source_topic.clone(),
                        partition: letter.source_partition,
                        offset: letter.source_offset,
                        source,
                    })
            }
        });
        futures::future::join_all(deliveries)
            .await
            .into_iter()
            .collect()
    }

    /// Inserts every letter into `dead_letters` in one INSERT.
    pub async fn record(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .clickhouse
            .insert::<DeadLetterRow>("dead_letters")
            .await
            .map_err(DeadLetterError::ClickHouse)?;
        for letter in letters {
            insert
                .write(&DeadLetterRow::from(letter))
                .await
                .map_err(DeadLetterError::ClickHouse)?;
        }
        insert.end().await.map_err(DeadLetterError::ClickHouse)
    }

    /// [`publish`](Self::publish), then [`record`](Self::record): Kafka first, so that a crash
    /// between the two repeats the letter rather than losing it from the topic.
    pub async fn write(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        self.publish(letters).await?;
        self.record(letters).await
    }
}

/// A row of `dead_letters` (`schemas/sql/migrations/0005_dead_letters.sql`).
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
struct DeadLetterRow {
    service: String,
    source_topic: String,
    source_partition: i32,
    source_offset: i64,
    error_kind: String,
    error_message: String,
    payload_base64: String,
    key_base64: Option<String>,
    failed_at: u32,
}

impl From<&DeadLetter> for DeadLetterRow {
    fn from(letter: &DeadLetter) -> Self {
        Self {
            service: letter.service.clone(),
            source_topic: letter.source_topic.clone(),
            source_partition: letter.source_partition,
            source_offset: letter.source_offset,
            error_kind: letter.error_kind.clone(),
            error_message: letter.error_message.clone(),
            payload_base64: BASE64.encode(&letter.payload),
            key_base64: letter.key.as_deref().map(|key| BASE64.encode(key)),
            failed_at: datetime_seconds(letter.failed_at),
        }
    }
}

fn datetime_seconds(time: DateTime<Utc>) -> u32 {
    u32::try_from(time.timestamp()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_message_names_every_field_path() {
        let source = SourceRecord {
            topic: "usage",
            partition: 2,
            offset: 7,
            payload: b"x",
            key: None,
        };
        let violations = [
            Violation::new("team", "missing", "must not be empty"),
            Violation::new("labels.feature", "too_long", "at most 64 bytes"),
        ];
        let letter = invalid(source, "ingest", &violations);
        assert_eq!(letter.error_kind, "validation");
        assert_eq!(
            letter.error_message,
            "team (missing): must not be empty; labels.feature (too_long): at most 64 bytes"
        );
        assert_eq!((letter.source_partition, letter.source_offset), (2, 7));
    }
}
