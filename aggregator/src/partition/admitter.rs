//! [`Admitter`]: the first step of a partition's records (decode, validation, pricing), apart
//! from the partition's state so that a worker can run it on another thread
//! ([`crate::workers`]). Delivery guarantees are the partition's ([`super`]): this step only
//! turns a record into an event or the dead letter that says why it cannot be counted.

use std::sync::Arc;

use quotaflow_admission::Admission;
use schemas::dead_letter::{self, SourceRecord};
use schemas::{DeadLetter, UsageEvent};

use super::{kind, SERVICE};

/// The decoding and admission of a partition's records (see [`PartitionAggregator::admitter`]):
/// pure, it holds no state of the partition, so it can run ahead of the counting on another
/// thread.
#[derive(Debug, Clone)]
pub struct Admitter {
    topic: Arc<str>,
    partition: i32,
    admission: Admission,
}

impl Admitter {
    /// Admits the records of `partition` of `topic` with `admission`.
    pub(super) fn new(topic: Arc<str>, partition: i32, admission: Admission) -> Self {
        Self {
            topic,
            partition,
            admission,
        }
    }

    /// Decodes a record and admits it ([`quotaflow_admission`], the step the raw archive applies
    /// too: validated at its Kafka timestamp, priced with our catalog); the dead letter when it
    /// cannot be counted.
    /// `kept` is an event no longer needed: the record is decoded into its string buffers.
    pub fn admit(
        &self,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        kept: Option<Box<UsageEvent>>,
    ) -> Result<Box<UsageEvent>, Box<DeadLetter>> {
        let source = SourceRecord {
            topic: &self.topic,
            partition: self.partition,
            offset,
            payload: payload.unwrap_or_default(),
            key,
        };
        if source.payload.is_empty() {
            return Err(Box::new(dead_letter::dead_letter(
                source,
                SERVICE,
                kind::EMPTY,
                "record has no value".to_owned(),
            )));
        }
        // Current-schema records are read borrowed and written into the kept event's buffers
        // (no allocation per string once they have grown); older versions, and any record the
        // borrowed reader refuses, take the owned decode, whose error the dead letter carries.
        let decoded = match schemas::UsageEventRef::decode_current(source.payload) {
            Ok(Some(borrowed)) => Ok(match kept {
                Some(mut event) => {
                    borrowed.write_into(&mut event);
                    event
                }
                None => Box::new(borrowed.to_owned()),
            }),
            _ => schemas::decode(source.payload).map(Box::new),
        };
        let mut event =
            decoded.map_err(|error| Box::new(dead_letter::undecodable(source, SERVICE, &error)))?;
        let record_timestamp = quotaflow_admission::record_timestamp(timestamp_ms);
        match self.admission.admit_in_place(&mut event, record_timestamp) {
            Ok(()) => Ok(event),
            Err(rejection) => Err(Box::new(dead_letter::dead_letter(
                source,
                SERVICE,
                rejection.dead_letter_kind(),
                rejection.message(),
            ))),
        }
    }
}
