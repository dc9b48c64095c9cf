//! ClickHouse side of the archive: writing one [`Segment`], reading where each partition resumes,
//! and classifying failures (retry, dead-letter, or stop).

use infra::clickhouse::ClickHouseFailure;
use std::collections::BTreeMap;
use std::time::Duration;

use schemas::DeadLetter;
use serde::Deserialize;

use super::batch::{Outcome, Record, Segment};
use super::row::RawRow;
use infra::dead_letter::{DeadLetterError, DeadLetterWriter};

/// The archive's table.
pub const RAW_TABLE: &str = "usage_events_raw";

/// How long one INSERT may take to send and to be acknowledged. Far below the consumer's
/// `max.poll.interval.ms` (5 minutes), since the consumer is not polled during an INSERT.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
const END_TIMEOUT: Duration = Duration::from_secs(60);

/// What to do about a failed write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// ClickHouse or Kafka unreachable, overloaded or slow: the same write may succeed later.
    #[error("transient: {0}")]
    Transient(String),
    /// ClickHouse refused the rows' values (a data error, e.g. codes 53, 117): retrying gives the
    /// same answer. The segment is bisected down to the rows at fault, which are dead-lettered.
    #[error("rows rejected: {0}")]
    Rejected(String),
    /// Anything else (unknown table, missing column, authentication): a deployment problem that
    /// no retry or dead letter fixes. The archive stops; nothing is lost, it resumes from
    /// ClickHouse once fixed.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// Classifies a clickhouse crate error (the rule lives in `infra::clickhouse::classify_error`).
pub fn classify(error: &clickhouse::error::Error) -> SinkError {
    let message = error.to_string();
    match infra::clickhouse::classify_error(error) {
        ClickHouseFailure::Transient => SinkError::Transient(message),
        ClickHouseFailure::Data => SinkError::Rejected(message),
        ClickHouseFailure::Fatal => SinkError::Fatal(message),
    }
}

fn classify_dead_letter_error(error: DeadLetterError) -> SinkError {
    match error {
        DeadLetterError::ClickHouse(error) => classify(&error),
        error if error.is_retryable() => SinkError::Transient(error.to_string()),
        error => SinkError::Fatal(error.to_string()),
    }
}

/// Writes segments and reads resume offsets.
#[derive(Clone)]
pub struct Sink {
    /// Client of the archive's database.
    client: clickhouse::Client,
    /// Dead letters: Kafka topic and `dead_letters` table.
    dead_letters: DeadLetterWriter,
    /// Source topic (the resume rule is per topic and partition).
    topic: String,
    /// `DeadLetter::service` of this archive, to find its own dead letters when resuming.
    service: String,
}

/// The next offset to read per partition of `topic`: the highest offset archived **or**
/// dead-lettered by `service`, plus one. Partitions never written are absent (start from the
/// beginning of the topic).
pub async fn resume_offsets(
    client: &clickhouse::Client,
    topic: &str,
    service: &str,
) -> Result<BTreeMap<i32, i64>, clickhouse::error::Error> {
    let rows = client
        .query(
            "SELECT toInt32(partition) AS partition, toInt64(max(next_offset)) AS next_offset \
             FROM ( \
               SELECT kafka_partition AS partition, max(kafka_offset) + 1 AS next_offset \
               FROM usage_events_raw WHERE kafka_topic = ? GROUP BY kafka_partition \
               UNION ALL \
               SELECT source_partition AS partition, max(source_offset) + 1 AS next_offset \
               FROM dead_letters WHERE service = ? AND source_topic = ? \
               GROUP BY source_partition \
             ) GROUP BY partition ORDER BY partition",
        )
        .bind(topic)
        .bind(service)
        .bind(topic)
        .fetch_all::<ResumeRow>()
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.partition, row.next_offset))
        .collect())
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ResumeRow {
    partition: i32,
    next_offset: i64,
}

impl Sink {
    /// A sink for `topic`, dead-lettering as `service`.
    pub fn new(
        client: clickhouse::Client,
        dead_letters: DeadLetterWriter,
        topic: &str,
        service: &str,
    ) -> Self {
        Self {
            client,
            dead_letters,
            topic: topic.to_owned(),
            service: service.to_owned(),
        }
    }

    /// The next offset to read per partition: the highest offset archived **or** dead-lettered,
    /// plus one. Partitions never written are absent (start from the beginning of the topic).
    pub async fn resume_offsets(&self) -> Result<BTreeMap<i32, i64>, clickhouse::error::Error> {
        resume_offsets(&self.client, &self.topic, &self.service).await
    }

    /// Writes one segment with one INSERT (plus, for dead letters, the acknowledged produce to the
    /// dead-letter topic first). Returns the number of rows archived.
    pub async fn write(&self, segment: &mut Segment) -> Result<usize, SinkError> {
        match segment {
            Segment::Rows { records, .. } => {
                self.insert_rows(records).await?;
                Ok(records.len())
            }
            Segment::DeadLetters { letters, published } => {
                if !*published {
                    self.dead_letters
                        .publish(letters)
                        .await
                        .map_err(classify_dead_letter_error)?;
                    *published = true;
                }
                self.dead_letters
                    .record(letters)
                    .await
                    .map_err(classify_dead_letter_error)?;
                Ok(0)
            }
        }
    }

    async fn insert_rows(&self, records: &[Record]) -> Result<(), SinkError> {
        let mut insert = self
            .client
            .insert::<RawRow>(RAW_TABLE)
            .await
            .map_err(|error| classify(&error))?
            .with_timeouts(Some(SEND_TIMEOUT), Some(END_TIMEOUT));
        for record in records {
            if let Outcome::Row { row, .. } = &record.outcome {
                insert.write(row).await.map_err(|error| classify(&error))?;
            }
        }
        insert.end().await.map_err(|error| classify(&error))
    }

    /// A rejected single row becomes a `sink_rejected` dead letter with its original bytes.
    pub fn rejected_dead_letter(&self, record: &Record, reason: &str) -> Option<DeadLetter> {
        let Outcome::Row { payload, key, .. } = &record.outcome else {
            return None;
        };
        let source = schemas::dead_letter::SourceRecord {
            topic: &self.topic,
            partition: match &record.outcome {
                Outcome::Row { row, .. } => row.kafka_partition,
                Outcome::DeadLetter(letter) => letter.source_partition,
            },
            offset: record.offset,
            payload,
            key: key.as_deref(),
        };
        Some(schemas::dead_letter::dead_letter(
            source,
            &self.service,
            schemas::dead_letter::kind::SINK_REJECTED,
            reason.to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_codes_are_classified() {
        let bad = |text: &str| classify(&clickhouse::error::Error::BadResponse(text.to_owned()));
        assert!(matches!(
            bad("Code: 53, e.displayText() = DB::Exception: Type mismatch"),
            SinkError::Rejected(_)
        ));
        assert!(matches!(
            bad("Code: 252. DB::Exception: Too many parts"),
            SinkError::Transient(_)
        ));
        assert!(matches!(
            bad("Code: 60. DB::Exception: Table x.usage_events_raw doesn't exist"),
            SinkError::Fatal(_)
        ));
        assert!(matches!(bad("502 Bad Gateway"), SinkError::Transient(_)));
        assert!(matches!(
            classify(&clickhouse::error::Error::TimedOut),
            SinkError::Transient(_)
        ));
    }
}
