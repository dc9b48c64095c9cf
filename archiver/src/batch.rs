//! The in-memory batch: records read since the last flush, per Kafka partition, in offset order,
//! and how a partition's records are cut into [`Segment`]s — the unit of one atomic write.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use schemas::DeadLetter;

use super::row::RawRow;

/// What became of one Kafka record.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A valid event, to be archived. The original bytes are kept in case ClickHouse refuses the
    /// row as a data error and it must be dead-lettered byte for byte.
    Row {
        /// The row to insert.
        row: Box<RawRow>,
        /// The record value as read.
        payload: Vec<u8>,
        /// The record key as read.
        key: Option<Vec<u8>>,
    },
    /// A record that could not be decoded, validated or represented.
    DeadLetter(Box<DeadLetter>),
}

/// One Kafka record with its offset.
#[derive(Debug, Clone)]
pub struct Record {
    /// The record's offset in its partition.
    pub offset: i64,
    /// What it became.
    pub outcome: Outcome,
}

/// A run of consecutive offsets written by one INSERT, hence atomically: either valid rows of one
/// month (one `usage_events_raw` partition, one part) or dead letters.
#[derive(Debug, Clone)]
pub enum Segment {
    /// Rows for `usage_events_raw`, all in month `month`.
    Rows {
        /// `toYYYYMM(occurred_at)` of every row.
        month: u32,
        /// The rows with their original bytes, in offset order.
        records: Vec<Record>,
    },
    /// Dead letters, in offset order.
    DeadLetters {
        /// The letters.
        letters: Vec<DeadLetter>,
        /// Whether they were already acknowledged by Kafka (a retry then only re-inserts them
        /// into ClickHouse instead of publishing them twice).
        published: bool,
    },
}

impl Segment {
    /// The highest source offset the segment covers.
    pub fn last_offset(&self) -> i64 {
        match self {
            Segment::Rows { records, .. } => records.last().map_or(-1, |record| record.offset),
            Segment::DeadLetters { letters, .. } => {
                letters.last().map_or(-1, |letter| letter.source_offset)
            }
        }
    }

    /// Number of records the segment covers.
    pub fn len(&self) -> usize {
        match self {
            Segment::Rows { records, .. } => records.len(),
            Segment::DeadLetters { letters, .. } => letters.len(),
        }
    }

    /// Whether the segment covers no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Cuts a partition's records (in offset order) into maximal runs of the same kind: rows of one
/// month, or dead letters. Writing the runs one after the other, in order, keeps the invariant
/// the resume rule needs: whatever committed, every offset below the highest committed one is
/// committed too.
pub fn segments(records: Vec<Record>) -> Vec<Segment> {
    debug_assert!(records
        .windows(2)
        .all(|pair| pair[0].offset < pair[1].offset));
    let mut segments: Vec<Segment> = Vec::new();
    for record in records {
        match record.outcome {
            Outcome::DeadLetter(letter) => match segments.last_mut() {
                Some(Segment::DeadLetters { letters, .. }) => letters.push(*letter),
                _ => segments.push(Segment::DeadLetters {
                    letters: vec![*letter],
                    published: false,
                }),
            },
            Outcome::Row { ref row, .. } => {
                let month = row.month();
                match segments.last_mut() {
                    Some(Segment::Rows {
                        month: last_month,
                        records,
                    }) if *last_month == month => records.push(record),
                    _ => segments.push(Segment::Rows {
                        month,
                        records: vec![record],
                    }),
                }
            }
        }
    }
    segments
}

impl Record {
    /// What the record holds in memory, for the batch's byte bound.
    fn approximate_bytes(&self) -> usize {
        match &self.outcome {
            Outcome::Row { row, payload, key } => {
                row.approximate_bytes() + payload.len() + key.as_ref().map_or(0, Vec::len)
            }
            Outcome::DeadLetter(letter) => {
                std::mem::size_of::<DeadLetter>()
                    + letter.payload.len()
                    + letter.error_message.len()
                    + letter.key.as_ref().map_or(0, Vec::len)
            }
        }
    }
}

/// Records read since the last flush.
#[derive(Debug, Default)]
pub struct Batch {
    /// Per Kafka partition, in offset order.
    pub partitions: BTreeMap<i32, Vec<Record>>,
    /// Records buffered (rows and dead letters).
    pub records: usize,
    /// Approximate bytes buffered.
    pub bytes: usize,
    /// When the first record of this batch arrived (the age bound counts from it).
    pub started: Option<Instant>,
}

impl Batch {
    /// Adds a record of `partition`; offsets must grow within a partition.
    pub fn push(&mut self, partition: i32, record: Record) {
        self.bytes += record.approximate_bytes();
        self.records += 1;
        self.started.get_or_insert_with(Instant::now);
        let records = self.partitions.entry(partition).or_default();
        debug_assert!(records
            .last()
            .is_none_or(|last| last.offset < record.offset));
        records.push(record);
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Whether the row or byte bound is reached.
    pub fn is_full(&self, max_records: usize, max_bytes: usize) -> bool {
        self.records >= max_records || self.bytes >= max_bytes
    }

    /// When the age bound expires, if anything is buffered.
    pub fn deadline(&self, max_age: Duration) -> Option<Instant> {
        self.started.map(|started| started + max_age)
    }

    /// Drops everything buffered for `partition` (revoked: the next owner re-reads it).
    pub fn discard_partition(&mut self, partition: i32) {
        if let Some(records) = self.partitions.remove(&partition) {
            self.records -= records.len();
            self.bytes -= records.iter().map(Record::approximate_bytes).sum::<usize>();
            if self.records == 0 {
                self.bytes = 0;
                self.started = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::{KafkaCoordinates, RawRow};
    use chrono::{TimeZone, Utc};

    fn row(offset: i64, month: u32) -> Record {
        let occurred_at = Utc
            .with_ymd_and_hms(2024, month, 15, 0, 0, 0)
            .single()
            .expect("valid date");
        let event = schemas::fixtures::text_event(&format!("e{offset}"), occurred_at);
        let source = KafkaCoordinates {
            topic: "usage",
            partition: 0,
            offset,
        };
        let row = RawRow::from_event(event, source, Utc::now()).expect("representable");
        Record {
            offset,
            outcome: Outcome::Row {
                row: Box::new(row),
                payload: Vec::new(),
                key: None,
            },
        }
    }

    fn dead(offset: i64) -> Record {
        let source = schemas::dead_letter::SourceRecord {
            topic: "usage",
            partition: 0,
            offset,
            payload: b"{}",
            key: None,
        };
        Record {
            offset,
            outcome: Outcome::DeadLetter(Box::new(schemas::dead_letter::dead_letter(
                source,
                "ingest",
                "bad_magic",
                "bad".into(),
            ))),
        }
    }

    fn shape(segments: &[Segment]) -> Vec<(String, i64, usize)> {
        segments
            .iter()
            .map(|segment| {
                let kind = match segment {
                    Segment::Rows { month, .. } => format!("rows {month}"),
                    Segment::DeadLetters { .. } => "dead".to_owned(),
                };
                (kind, segment.last_offset(), segment.len())
            })
            .collect()
    }

    #[test]
    fn runs_split_on_month_and_kind_in_offset_order() {
        let records = vec![
            row(10, 1),
            row(11, 1),
            dead(12),
            dead(13),
            row(14, 1),
            row(15, 2),
            row(16, 1),
        ];
        let segments = segments(records);
        assert_eq!(
            shape(&segments),
            vec![
                ("rows 202401".to_owned(), 11, 2),
                ("dead".to_owned(), 13, 2),
                ("rows 202401".to_owned(), 14, 1),
                ("rows 202402".to_owned(), 15, 1),
                ("rows 202401".to_owned(), 16, 1),
            ]
        );
    }

    #[test]
    fn committed_prefix_invariant_holds_for_every_crash_point() {
        // Whatever prefix of the segments committed, max(committed offset) + 1 is never past an
        // uncommitted offset: the resume rule never skips a record.
        let records: Vec<Record> = (0..40)
            .map(|offset| match offset % 7 {
                3 => dead(offset),
                5 | 6 => row(offset, 2),
                _ => row(offset, 1),
            })
            .collect();
        let segments = segments(records);
        let mut committed: Vec<i64> = Vec::new();
        for segment in &segments {
            let first = committed.len() as i64;
            committed.extend(first..=segment.last_offset());
            let resume = committed.iter().max().map_or(0, |max| max + 1);
            assert_eq!(
                resume,
                committed.len() as i64,
                "no gap below the resume offset"
            );
        }
        assert_eq!(committed.len(), 40);
    }

    #[test]
    fn batch_bounds_and_discard() {
        let mut batch = Batch::default();
        batch.push(0, row(1, 1));
        batch.push(1, row(1, 1));
        assert!(batch.is_full(2, usize::MAX));
        assert!(!batch.is_full(3, usize::MAX));
        assert!(batch.is_full(3, 1));
        let one_record = batch.bytes / 2;
        batch.discard_partition(0);
        assert_eq!(batch.records, 1);
        // The bytes of a revoked partition leave the byte bound too, not only its records.
        assert_eq!(batch.bytes, one_record);
        batch.discard_partition(1);
        assert_eq!(batch.bytes, 0);
        assert!(batch.is_empty() && batch.started.is_none());
    }
}
