//! The Rust producer library for gateways ([`Recorder`]), also used by the HTTP API: validate,
//! price, encode and produce usage events to the usage topic with delivery confirmation.
//!
//! It depends on the lean client layer (`quotaflow-client`) and the pure `quotaflow-admission`
//! core, never on the service runtime `infra`: a gateway embedding it links no HTTP server,
//! ClickHouse client, metrics exporter or config loader (`gateway/tests/dependency_tree.rs`
//! checks it). `ingest` re-exports it as `ingest::recorder`.
//!
//! ```no_run
//! # async fn example(event: schemas::UsageEvent) -> Result<(), Box<dyn std::error::Error>> {
//! use quotaflow_admission::pricer::{Pricer, PricingConfig};
//! use quotaflow_recorder::{Recorder, RecorderConfig};
//!
//! let kafka = quotaflow_client::config::KafkaConfig::default();
//! let pricer = Pricer::from_config(&PricingConfig::default())?;
//! let recorder = Recorder::new(&kafka, &RecorderConfig::default(), pricer, Default::default())?;
//! match recorder.record(event).await {
//!     Ok(delivery) => println!("stored at {}:{}", delivery.partition, delivery.offset),
//!     Err(error) if error.is_retryable() => { /* retry later with the SAME event */ }
//!     Err(error) => eprintln!("fix the event: {error}"),
//! }
//! recorder.flush(std::time::Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```
//!
//! # Delivery guarantee
//! - `Ok(Delivery)` means the record is **acknowledged by all in-sync replicas** of its partition:
//!   the producer is idempotent with `acks=all` (`quotaflow_client::kafka::producer_config`), so librdkafka's
//!   internal retries never duplicate or reorder it inside the broker.
//! - `Err(RecordError::Kafka { .. })` means the record **may or may not** be in Kafka (a delivery
//!   timeout can fire after the broker wrote it but before the acknowledgement arrived). Callers
//!   retry with the **same event** (same `event_id`): downstream consumers count each `event_id`
//!   once. That is why `event_id` is the idempotency key and must identify the attempt, not the
//!   send.
//!
//! # Record key and partition
//! Records are keyed by [`schemas::usage_event::partition_key`]: the event's `job_id` when it has
//! one, else its `event_id`. Consumers partition their state by input partition, and the
//! aggregator must see a job's `submitted` and `succeeded`/`failed`/`cancelled` events in one
//! partition to know which jobs are pending; the `job_id` key puts every event of a job there.
//! A copy of an event (a retry, a duplicate) has the same fields, hence the same key and the
//! same partition, so deduplication by `event_id` stays partition-local.
//! - `Err(RecordError::Invalid | RecordError::Encode)` means nothing was sent and resending the
//!   same event will fail the same way.
//!
//! # Memory bound
//! Records handed to librdkafka and not yet acknowledged hold memory. Their total size (key +
//! Avro payload) is bounded by [`RecorderConfig::max_in_flight_bytes`] through a semaphore of
//! bytes: a send waits for acknowledgements to free room instead of growing the queue. A record
//! larger than the whole bound takes the whole bound (it is sent alone, never refused for it).
//!
//! # Shutdown
//! Stop calling `send`, then [`Recorder::flush`] with a deadline: it waits until every enqueued
//! record is acknowledged or failed, so no caller is left without an answer.
//!
//! # Telemetry
//! Metrics, recorded once per call or batch: `quotaflow_ingest_events_produced_total`,
//! `quotaflow_ingest_events_rejected_total{kind}` (kind = the first violation's kind, or
//! `encode`), `quotaflow_ingest_produce_errors_total`, and the gauge
//! `quotaflow_ingest_in_flight_bytes`.

/// The library's metric names (docs/operations.md): under `quotaflow_ingest_`, the service the
/// library was cut from and the one that embeds it first.
pub mod metric {
    /// Bytes of records handed to Kafka and not acknowledged yet (gauge).
    pub const IN_FLIGHT_BYTES: &str = "quotaflow_ingest_in_flight_bytes";
    /// Events refused before sending, by `kind` (counter).
    pub const EVENTS_REJECTED: &str = "quotaflow_ingest_events_rejected_total";
    /// Events acknowledged by Kafka (counter).
    pub const EVENTS_PRODUCED: &str = "quotaflow_ingest_events_produced_total";
    /// Events whose delivery failed (counter).
    pub const PRODUCE_ERRORS: &str = "quotaflow_ingest_produce_errors_total";
}

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use schemas::UsageEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use quotaflow_admission::pricer::{Pricer, PricingApplied};
use quotaflow_admission::validation::{validate_with_usage, ValidationConfig, Violation};

/// Producer-side limits of the [`Recorder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecorderConfig {
    /// Most bytes (key + payload) of records sent but not yet acknowledged. Bounds the memory a
    /// slow or unreachable broker can make us hold; 64 MiB is ~200k typical events, far more than
    /// a healthy broker ever leaves unacknowledged.
    pub max_in_flight_bytes: usize,
    /// How long librdkafka tries to deliver a record before failing it (`message.timeout.ms`):
    /// the longest a caller waits for an answer once the record is enqueued.
    pub delivery_timeout_ms: u64,
    /// `client.id` of the producer, to find this process in broker logs and quotas.
    pub client_id: String,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            max_in_flight_bytes: 64 * 1024 * 1024,
            delivery_timeout_ms: 30_000,
            client_id: "quotaflow-recorder".to_owned(),
        }
    }
}

/// Where an acknowledged record is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delivery {
    /// Partition of the usage topic: the same for every copy of an event and for every event of
    /// a job (see the module doc).
    pub partition: i32,
    /// Offset of the record in that partition.
    pub offset: i64,
}

/// Why an event was not recorded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The event breaks the contract or the limits; nothing was sent. Not retryable.
    #[error("invalid event: {}", summary(.0))]
    Invalid(Vec<Violation>),
    /// The event passed validation but cannot be encoded; nothing was sent. Not retryable.
    #[error("cannot encode event: {0}")]
    Encode(#[from] schemas::EncodeError),
    /// Kafka did not acknowledge the record. When `retryable` (queue full, broker unreachable,
    /// delivery timeout) the record may or may not be stored: retry with the same `event_id`.
    #[error("kafka: {message}")]
    Kafka {
        /// Whether sending the same event again may succeed.
        retryable: bool,
        /// What librdkafka reported.
        message: String,
    },
}

impl RecordError {
    /// Whether sending the same event again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RecordError::Invalid(_) | RecordError::Encode(_) => false,
            RecordError::Kafka { retryable, .. } => *retryable,
        }
    }

    /// The violations of an [`RecordError::Invalid`] event.
    pub fn violations(&self) -> Option<&[Violation]> {
        match self {
            RecordError::Invalid(violations) => Some(violations),
            _ => None,
        }
    }

    fn from_kafka(error: &KafkaError) -> Self {
        RecordError::Kafka {
            retryable: quotaflow_client::kafka::error_is_retryable(error),
            message: error.to_string(),
        }
    }
}

fn summary(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(Violation::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why [`Recorder::prepare`] refused an event (nothing was sent).
enum Rejected {
    Invalid(Vec<Violation>),
    Encode(schemas::EncodeError),
}

/// A validated, priced and encoded event, ready for [`Recorder::send`]. Building one does no IO.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedEvent {
    /// The event with its pricing envelope filled.
    event: UsageEvent,
    /// What pricing decided, for responses and diagnostics.
    pricing: PricingApplied,
    /// Avro single-object encoding of `event`: the record value.
    payload: Vec<u8>,
}

impl PreparedEvent {
    /// The priced event.
    pub fn event(&self) -> &UsageEvent {
        &self.event
    }

    /// The idempotency key.
    pub fn event_id(&self) -> &str {
        &self.event.event_id
    }

    /// The record key: the `job_id` of a job's event, else the `event_id`
    /// ([`schemas::usage_event::partition_key`]).
    pub fn key(&self) -> &str {
        schemas::usage_event::partition_key(&self.event)
    }

    /// What pricing decided.
    pub fn pricing(&self) -> &PricingApplied {
        &self.pricing
    }

    /// The record value (Avro single-object encoding).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Bytes this record holds while in flight (key + value).
    pub fn size_bytes(&self) -> usize {
        self.key().len() + self.payload.len()
    }

    /// The priced event and its encoding.
    pub fn into_parts(self) -> (UsageEvent, PricingApplied, Vec<u8>) {
        (self.event, self.pricing, self.payload)
    }
}

/// Produces usage events to the usage topic. Cheap to clone: clones share one producer and one
/// in-flight bound.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    /// Idempotent, `acks=all` producer; librdkafka batches and retries internally.
    producer: FutureProducer,
    /// `kafka.topics.usage`.
    topic: String,
    /// Fills the pricing envelope.
    pricer: Pricer,
    /// Limits checked before anything is sent.
    validation: ValidationConfig,
    /// One permit per in-flight byte (see the module doc).
    in_flight: Arc<Semaphore>,
    /// The semaphore's size: no record takes more.
    max_in_flight_permits: u32,
    /// Current in-flight bytes, for the gauge.
    in_flight_bytes: AtomicU64,
    /// `quotaflow_ingest_in_flight_bytes`, registered once: it is set as each record enters and
    /// leaves flight, so the per-record cost is one store, not a registry lookup. (Registered when
    /// the recorder is created: a process installs its metrics recorder before that.)
    in_flight_gauge: metrics::Gauge,
    /// How long a record may wait for room in librdkafka's own queue.
    delivery_timeout: Duration,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Recorder")
            .field("topic", &self.inner.topic)
            .field("max_in_flight_bytes", &self.inner.max_in_flight_permits)
            .field("in_flight_bytes", &self.inner.in_flight_bytes)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder producing to `kafka.topics.usage`. Connects lazily: a down broker shows up as
    /// retryable errors on send, not here. Fails only on an invalid producer config.
    pub fn new(
        kafka: &quotaflow_client::config::KafkaConfig,
        config: &RecorderConfig,
        pricer: Pricer,
        validation: ValidationConfig,
    ) -> Result<Recorder, RecordError> {
        let mut client_config = quotaflow_client::kafka::producer_config(kafka, &config.client_id);
        client_config.set("message.timeout.ms", config.delivery_timeout_ms.to_string());
        let producer: FutureProducer =
            client_config.create().map_err(|error| RecordError::Kafka {
                retryable: false,
                message: format!("creating producer: {error}"),
            })?;
        // Semaphore permits are counted in u32 per acquisition; 4 GiB of in-flight data is more
        // than any sane bound anyway.
        let max_in_flight_permits = u32::try_from(config.max_in_flight_bytes.max(1))
            .unwrap_or(u32::MAX)
            .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Ok(Recorder {
            inner: Arc::new(Inner {
                producer,
                topic: kafka.topics.usage.clone(),
                pricer,
                validation,
                in_flight: Arc::new(Semaphore::new(max_in_flight_permits as usize)),
                max_in_flight_permits,
                in_flight_bytes: AtomicU64::new(0),
                in_flight_gauge: metrics::gauge!(metric::IN_FLIGHT_BYTES),
                delivery_timeout: Duration::from_millis(config.delivery_timeout_ms),
            }),
        })
    }

    /// The topic records go to.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The pricer filling the envelope.
    pub fn pricer(&self) -> &Pricer {
        &self.inner.pricer
    }

    /// Bytes of records enqueued and not yet acknowledged or failed (the
    /// `quotaflow_ingest_in_flight_bytes` gauge), at most `max_in_flight_bytes`.
    pub fn in_flight_bytes(&self) -> u64 {
        self.inner.in_flight_bytes.load(Ordering::Relaxed)
    }

    /// The limits events are validated against.
    pub fn validation(&self) -> &ValidationConfig {
        &self.inner.validation
    }

    /// Validates (at time `now`), prices and encodes `event`. No IO; the HTTP API uses it to
    /// answer per event before producing anything. Returns every violation found; a pricing
    /// refusal (`fail_closed`) or an encoding failure is reported as a single violation.
    pub fn prepare(
        &self,
        event: UsageEvent,
        now: DateTime<Utc>,
    ) -> Result<PreparedEvent, Vec<Violation>> {
        self.prepare_event(event, now)
            .map_err(|rejected| match rejected {
                Rejected::Invalid(violations) => violations,
                Rejected::Encode(error) => vec![encode_violation(&error)],
            })
    }

    fn prepare_event(
        &self,
        mut event: UsageEvent,
        now: DateTime<Utc>,
    ) -> Result<PreparedEvent, Rejected> {
        let inner = &self.inner;
        // Built once: validation checks the model's limits with it, pricing prices it.
        let usage = quotaflow_admission::pricer::pricing_input(&event);
        let result = validate_with_usage(
            &event,
            &usage,
            inner.pricer.catalog(),
            &inner.validation,
            now,
        )
        .map_err(Rejected::Invalid)
        .and_then(|()| {
            inner
                .pricer
                .apply_with_usage(&mut event, &usage)
                .map_err(|violation| Rejected::Invalid(vec![violation]))
        })
        .and_then(|pricing| {
            let payload = schemas::encode(&event).map_err(Rejected::Encode)?;
            Ok((pricing, payload))
        });
        match result {
            Ok((pricing, payload)) => Ok(PreparedEvent {
                event,
                pricing,
                payload,
            }),
            Err(rejected) => {
                let kind = match &rejected {
                    Rejected::Invalid(violations) => violations
                        .first()
                        .map_or("invalid", |violation| violation.kind.as_str()),
                    Rejected::Encode(_) => "encode",
                };
                // Kinds come from the fixed set in `validation::kind`, so the label stays bounded.
                metrics::counter!(metric::EVENTS_REJECTED, "kind" => kind.to_owned()).increment(1);
                debug!(event_id = %event.event_id, kind, "event rejected");
                Err(rejected)
            }
        }
    }

    /// Produces `prepared` keyed by [`PreparedEvent::key`] and waits for the acknowledgement (see the
    /// module doc for what `Ok` and `Err` guarantee). Waits for room first if
    /// `max_in_flight_bytes` are in flight.
    pub async fn send(&self, prepared: PreparedEvent) -> Result<Delivery, RecordError> {
        self.send_all(vec![prepared])
            .await
            .pop()
            .unwrap_or_else(|| {
                Err(RecordError::Kafka {
                    retryable: true,
                    message: "no delivery result".to_owned(),
                })
            })
    }

    /// Produces every event, then waits for every acknowledgement: pipelined (librdkafka batches
    /// them), not one round trip each, and still bounded by `max_in_flight_bytes` — while the
    /// bound is reached, acknowledgements are collected before anything new is enqueued. The
    /// results are in the order of `prepared`.
    pub async fn send_all(
        &self,
        prepared: Vec<PreparedEvent>,
    ) -> Vec<Result<Delivery, RecordError>> {
        let inner = &self.inner;
        let count = prepared.len();
        let mut results: Vec<Option<Result<Delivery, RecordError>>> = vec![None; count];
        let mut pending = FuturesUnordered::new();
        for (index, event) in prepared.into_iter().enumerate() {
            let permits = inner.permits_for(event.size_bytes());
            // Acknowledgements first: they free the room the next record waits for.
            let permit = loop {
                tokio::select! {
                    biased;
                    Some((done, result)) = pending.next(), if !pending.is_empty() => {
                        results[done] = Some(result);
                    }
                    permit = inner.in_flight.clone().acquire_many_owned(permits) => {
                        break permit;
                    }
                }
            };
            let permit = match permit {
                Ok(permit) => InFlight::new(&self.inner, permit),
                // The semaphore is never closed; answer instead of panicking if it were.
                Err(_) => {
                    results[index] = Some(Err(RecordError::Kafka {
                        retryable: true,
                        message: "recorder is shutting down".to_owned(),
                    }));
                    continue;
                }
            };
            match self.enqueue(&event, &mut pending, &mut results).await {
                Ok(delivery) => pending.push(PendingDelivery {
                    index,
                    delivery: Some(delivery),
                    in_flight: Some(permit),
                }),
                Err(error) => results[index] = Some(Err(error)),
            }
        }
        while let Some((done, result)) = pending.next().await {
            results[done] = Some(result);
        }
        let results: Vec<Result<Delivery, RecordError>> = results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(RecordError::Kafka {
                        retryable: true,
                        message: "no delivery result".to_owned(),
                    })
                })
            })
            .collect();
        let produced = results.iter().filter(|result| result.is_ok()).count();
        let failed = count - produced;
        metrics::counter!(metric::EVENTS_PRODUCED).increment(produced as u64);
        if failed > 0 {
            metrics::counter!(metric::PRODUCE_ERRORS).increment(failed as u64);
            let first_error = results.iter().find_map(|result| result.as_ref().err());
            warn!(
                topic = %inner.topic,
                events = count,
                failed,
                error = ?first_error.map(ToString::to_string),
                "produce failed"
            );
        } else {
            debug!(topic = %inner.topic, events = count, "events produced");
        }
        results
    }

    /// Hands one record to librdkafka. When its queue is full, waits for one of our own
    /// acknowledgements (or briefly, if none is pending) and tries again, until the delivery
    /// timeout.
    async fn enqueue(
        &self,
        event: &PreparedEvent,
        pending: &mut FuturesUnordered<PendingDelivery>,
        results: &mut [Option<Result<Delivery, RecordError>>],
    ) -> Result<DeliveryFuture, RecordError> {
        let inner = &self.inner;
        let started = Instant::now();
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&inner.topic)
            .key(event.key())
            .payload(event.payload());
        loop {
            match inner.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if started.elapsed() < inner.delivery_timeout =>
                {
                    record = returned;
                    match pending.next().await {
                        Some((done, result)) => results[done] = Some(result),
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((error, _)) => return Err(RecordError::from_kafka(&error)),
            }
        }
    }

    /// Shorthand for [`Recorder::prepare`] (at the current time) then [`Recorder::send`].
    pub async fn record(&self, event: UsageEvent) -> Result<Delivery, RecordError> {
        let prepared =
            self.prepare_event(event, Utc::now())
                .map_err(|rejected| match rejected {
                    Rejected::Invalid(violations) => RecordError::Invalid(violations),
                    Rejected::Encode(error) => RecordError::Encode(error),
                })?;
        self.send(prepared).await
    }

    /// Waits until every enqueued record is acknowledged or failed, at most `timeout`. Call it
    /// on shutdown after the last send. Runs librdkafka's blocking flush off the async threads.
    pub async fn flush(&self, timeout: Duration) -> Result<(), RecordError> {
        let producer = self.inner.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|error| RecordError::Kafka {
                retryable: true,
                message: format!("flush task failed: {error}"),
            })?;
        flushed.map_err(|error| RecordError::from_kafka(&error))
    }
}

impl Inner {
    /// Permits a record of `size_bytes` takes: its size, capped by the whole bound so that an
    /// oversized record waits for an empty pipe instead of forever.
    fn permits_for(&self, size_bytes: usize) -> u32 {
        u32::try_from(size_bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_in_flight_permits)
    }
}

/// Bytes held by one in-flight record; released (and the gauge updated) when dropped, whatever
/// the outcome.
struct InFlight {
    inner: Arc<Inner>,
    permit: OwnedSemaphorePermit,
}

impl InFlight {
    fn new(inner: &Arc<Inner>, permit: OwnedSemaphorePermit) -> Self {
        let bytes = permit.num_permits() as u64;
        let now = inner.in_flight_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        inner.in_flight_gauge.set(now as f64);
        InFlight {
            inner: Arc::clone(inner),
            permit,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let bytes = self.permit.num_permits() as u64;
        let now = self
            .inner
            .in_flight_bytes
            .fetch_sub(bytes, Ordering::Relaxed)
            .saturating_sub(bytes);
        self.inner.in_flight_gauge.set(now as f64);
    }
}

/// One enqueued record awaiting its delivery report, holding its in-flight bytes until then.
struct PendingDelivery {
    /// Position of the record in the caller's batch.
    index: usize,
    /// `None` once the report arrived (or was handed to the drop task).
    delivery: Option<DeliveryFuture>,
    /// Released when the report arrives.
    in_flight: Option<InFlight>,
}

impl std::future::Future for PendingDelivery {
    type Output = (usize, Result<Delivery, RecordError>);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let Some(delivery) = this.delivery.as_mut() else {
            return std::task::Poll::Ready((
                this.index,
                Err(RecordError::Kafka {
                    retryable: true,
                    message: "delivery report already taken".to_owned(),
                }),
            ));
        };
        let outcome = std::task::ready!(std::pin::Pin::new(delivery).poll(context));
        this.delivery = None;
        this.in_flight = None;
        std::task::Poll::Ready((this.index, delivery_result(outcome)))
    }
}

impl Drop for PendingDelivery {
    /// A caller that stops waiting (an HTTP client hanging up) does not take the record back from
    /// librdkafka: its bytes stay counted until the report arrives, so the memory bound holds.
    fn drop(&mut self) {
        let (Some(delivery), Some(in_flight)) = (self.delivery.take(), self.in_flight.take())
        else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _report = delivery.await;
                drop(in_flight);
            });
        }
    }
}

fn delivery_result(
    outcome: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<Delivery, RecordError> {
    match outcome {
        Ok(Ok(delivery)) => Ok(Delivery {
            partition: delivery.partition,
            offset: delivery.offset,
        }),
        Ok(Err((error, _message))) => Err(RecordError::from_kafka(&error)),
        Err(_canceled) => Err(RecordError::Kafka {
            retryable: true,
            message: "producer dropped before the delivery report".to_owned(),
        }),
    }
}

fn encode_violation(error: &schemas::EncodeError) -> Violation {
    let field = match error {
        schemas::EncodeError::TooManyFractionalDigits { field, .. }
        | schemas::EncodeError::NegativeAmount { field, .. }
        | schemas::EncodeError::DecimalOutOfRange { field, .. }
        | schemas::EncodeError::TimestampOutOfRange { field, .. }
        | schemas::EncodeError::InvalidValue { field, .. } => *field,
        _ => "",
    };
    Violation::new(field, error.kind(), error.to_string())
}
