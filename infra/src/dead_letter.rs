//! The dead-letter writer: produces [`DeadLetter`]s to the dead-letter topic and records them in
//! the ClickHouse `dead_letters` table.
//!
//! Shared by every consumer that reads from Kafka (the archiver, the aggregator); the letters
//! themselves are built in `schemas::dead_letter` (pure), the writer lives here because it needs
//! both a Kafka producer and a ClickHouse client.
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

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::DeadLetter;
use serde::Serialize;

use crate::config::{ClickHouseConfig, KafkaConfig};

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
                crate::error::clickhouse_error_is_retryable(error)
            }
        }
    }
}

/// Produces dead letters to the dead-letter topic (acknowledged) and records them in ClickHouse.
#[derive(Clone)]
pub struct DeadLetterWriter {
    /// Idempotent `acks=all` producer (`crate::kafka::producer_config`).
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
        let producer = crate::kafka::producer_config(kafka, client_id)
            .create()
            .map_err(DeadLetterError::Producer)?;
        Ok(Self {
            producer,
            topic: kafka.topics.dead_letter.clone(),
            clickhouse: crate::clickhouse::client(clickhouse),
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
            // `DateTime` is seconds since 1970 in a `UInt32`: out of range becomes 0, not a panic.
            failed_at: u32::try_from(letter.failed_at.timestamp()).unwrap_or_default(),
        }
    }
}
