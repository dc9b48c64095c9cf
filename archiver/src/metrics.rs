//! The archive's telemetry, in one place (CONVENTIONS §10). Recorded once per segment or per
//! flush, never per event. Label values are bounded: `kind` is a dead-letter kind (a fixed set of
//! codec, validation and sink kinds) and `partition` is a partition number of one topic.

use std::time::Duration;

/// Rows inserted into `usage_events_raw`.
pub const ROWS_WRITTEN: &str = "quotaflow_archiver_rows_written_total";
/// Wall time of one flush (every partition of a batch, retries included).
pub const FLUSH_DURATION: &str = "quotaflow_archiver_flush_duration_seconds";
/// Records (rows and dead letters) per flush.
pub const FLUSH_ROWS: &str = "quotaflow_archiver_flush_rows";
/// Dead letters written, by kind.
pub const DEAD_LETTERS: &str = "quotaflow_archiver_dead_letters_total";
/// High watermark minus the next offset to archive, per partition.
pub const CONSUMER_LAG: &str = "quotaflow_archiver_consumer_lag";
/// Failed writes that will be retried (ClickHouse or Kafka unavailable).
pub const RETRIES: &str = "quotaflow_archiver_write_retries_total";

pub fn rows_written(rows: usize) {
    metrics::counter!(ROWS_WRITTEN).increment(rows as u64);
}

pub fn flushed(records: usize, duration: Duration) {
    metrics::histogram!(FLUSH_DURATION).record(duration.as_secs_f64());
    metrics::histogram!(FLUSH_ROWS).record(records as f64);
}

pub fn dead_letters<'a>(kinds: impl Iterator<Item = &'a str>) {
    let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
    for kind in kinds {
        *counts.entry(kind).or_default() += 1;
    }
    for (kind, count) in counts {
        metrics::counter!(DEAD_LETTERS, "kind" => kind.to_owned()).increment(count);
    }
}

pub fn consumer_lag(partition: i32, lag: i64) {
    metrics::gauge!(CONSUMER_LAG, "partition" => partition.to_string()).set(lag.max(0) as f64);
}

pub fn retry() {
    metrics::counter!(RETRIES).increment(1);
}
