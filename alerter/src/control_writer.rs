//! [`ControlWriter`]: the one effective writer of the control topic.
//!
//! Decisions are published with a transactional producer whose `transactional.id` is derived from
//! the alerter's `group_id` (`<group_id>.control`), the same for every instance of one pipeline.
//! Opening the writer (`init_transactions`) fences every older producer with that id: a zombie
//! (an instance that lost its lease in a rolling update, or was paused and came back) can no
//! longer commit, its next publish fails with a fatal "fenced" error, and it stops with
//! [`Error::Fenced`] instead of numbering decisions of its own. Gateways and the restore read the
//! control topic with `isolation.level=read_committed`, so a decision is seen only once committed.
//!
//! # Guarantees
//! - Each decision is committed in its own transaction, after its delivery report: at most one
//!   alerter's decisions become visible from the moment a newer one opened its writer.
//! - The writer is opened **before** the restore reads the control topic, so the state restored
//!   includes every decision the fenced instance could still commit.
//! - A retryable failure (broker unavailable, a transaction that must be aborted) aborts and
//!   retries with backoff until shutdown; a fatal one (fenced) is returned at once.

use std::time::Duration;

use infra::config::KafkaConfig;
use infra::shutdown::Shutdown;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tracing::{info, warn};

use crate::{Error, Result};

/// How long a transaction call (init, commit, abort) may take before it is retried.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A transactional producer of control decisions (see the module docs).
#[derive(Clone)]
pub struct ControlWriter {
    producer: FutureProducer,
    topic: String,
    transactional_id: String,
}

/// What a failed attempt means.
enum Failure {
    /// Another writer took over: stop.
    Fenced(String),
    /// May pass: abort (done) and try again.
    Retry(KafkaError),
    /// Sending the same record again cannot help.
    Fail(KafkaError),
}

impl ControlWriter {
    /// Creates the producer and fences every older writer of this pipeline.
    pub async fn open(kafka: &KafkaConfig, group_id: &str) -> Result<ControlWriter> {
        let transactional_id = format!("{group_id}.control");
        let producer: FutureProducer =
            infra::kafka::producer_config(kafka, "quotaflow-alerter-control")
                // No linger: a decision is one record and every millisecond counts.
                .set("linger.ms", "0")
                .set("transactional.id", &transactional_id)
                .set("transaction.timeout.ms", "60000")
                .create()?;
        let writer = ControlWriter {
            producer,
            topic: kafka.topics.control.clone(),
            transactional_id,
        };
        let producer = writer.producer.clone();
        tokio::task::spawn_blocking(move || producer.init_transactions(TRANSACTION_TIMEOUT))
            .await
            .map_err(|error| Error::Restore(format!("init_transactions panicked: {error}")))??;
        info!(transactional_id = %writer.transactional_id, "control writer open; older writers fenced");
        Ok(writer)
    }

    /// Publishes one decision record (or, without `payload`, a tombstone of `key`) in a
    /// transaction of its own, retrying what may pass.
    pub async fn publish(
        &self,
        key: &str,
        payload: Option<&[u8]>,
        shutdown: &Shutdown,
    ) -> Result<()> {
        let mut retries = infra::external_offsets::WRITE_RETRY.attempts();
        loop {
            match self.attempt(key, payload).await {
                Ok(()) => return Ok(()),
                Err(Failure::Fenced(reason)) => {
                    return Err(Error::Fenced(format!(
                        "{} ({reason})",
                        self.transactional_id
                    )))
                }
                Err(Failure::Fail(error)) => return Err(Error::Kafka(error)),
                Err(Failure::Retry(error)) => {
                    warn!(%error, topic = %self.topic, "publish failed; retrying");
                    metrics::counter!(crate::service::metric::RETRIES, "target" => "kafka")
                        .increment(1);
                    tokio::select! {
                        () = shutdown.cancelled() => return Err(Error::Kafka(error)),
                        () = tokio::time::sleep(retries.next_delay()) => {}
                    }
                }
            }
        }
    }

    async fn attempt(&self, key: &str, payload: Option<&[u8]>) -> std::result::Result<(), Failure> {
        self.producer
            .begin_transaction()
            .map_err(|error| self.classify(error))?;
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic).key(key);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Err((error, _)) = self.producer.send(record, TRANSACTION_TIMEOUT).await {
            let failure = self.classify(error);
            self.abort().await;
            return Err(failure);
        }
        let producer = self.producer.clone();
        let committed =
            tokio::task::spawn_blocking(move || producer.commit_transaction(TRANSACTION_TIMEOUT))
                .await
                .unwrap_or(Err(KafkaError::Canceled));
        if let Err(error) = committed {
            let failure = self.classify(error);
            self.abort().await;
            return Err(failure);
        }
        Ok(())
    }

    /// Aborts the open transaction, if any (best effort: a fenced producer cannot).
    async fn abort(&self) {
        let producer = self.producer.clone();
        let aborted =
            tokio::task::spawn_blocking(move || producer.abort_transaction(TRANSACTION_TIMEOUT))
                .await;
        if let Ok(Err(error)) = aborted {
            warn!(%error, "abort_transaction failed");
        }
    }

    fn classify(&self, error: KafkaError) -> Failure {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            return Failure::Fenced(format!("{code:?}: {reason}"));
        }
        match &error {
            KafkaError::Transaction(transaction) if transaction.is_fatal() => {
                Failure::Fenced(transaction.to_string())
            }
            KafkaError::Transaction(_) => Failure::Retry(error),
            _ if infra::kafka::error_is_retryable(&error) => Failure::Retry(error),
            _ => Failure::Fail(error),
        }
    }
}
