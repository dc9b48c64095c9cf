//! `POST /v1/events`: authenticate, read, parse, check the producer, validate and price each event,
//! produce the valid ones and answer once Kafka acknowledged them.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_LENGTH, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::{debug, warn};

use super::formats::{self, Format, SplitError};
use super::response::{BatchResponse, EventResult, RequestError};
use super::{telemetry, ApiState};
use crate::recorder::{Delivery, RecordError};
use crate::validation::Violation;

/// The handler: every outcome is a response, request-level errors included.
pub async fn post_events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match ingest(&state, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn ingest(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RequestError> {
    let shared = &state.shared;
    let producer =
        shared
            .tokens
            .authenticate(headers)
            .map_err(|error| RequestError::Unauthorized {
                kind: error.kind(),
                message: error.message(),
            })?;
    let format = Format::from_headers(headers)
        .map_err(|found| RequestError::UnsupportedMediaType { found })?;
    let recorder = shared.recorder.get().ok_or(RequestError::NotReady {
        retry_after_seconds: shared.config.retry_after_seconds,
    })?;
    // Its share of `api.max_buffered_body_bytes` is held until the answer: the parsed events take
    // about as much memory as the body.
    let (body, _buffered) = read_body(body, headers, shared).await?;
    let parsed =
        formats::parse_body(format, &body, shared.config.max_batch_events).map_err(|error| {
            match error {
                SplitError::Malformed(message) => RequestError::MalformedBody {
                    kind: "malformed_body",
                    message,
                },
                SplitError::Empty => RequestError::MalformedBody {
                    kind: "empty_batch",
                    message: "the request carries no event".to_owned(),
                },
                SplitError::TooManyEvents { count } => RequestError::TooManyEvents {
                    count,
                    limit: shared.config.max_batch_events,
                },
            }
        })?;
    drop(body);

    // A producer never writes as another: one such event refuses the whole request.
    let mismatched: Vec<usize> = parsed
        .iter()
        .enumerate()
        .filter(|(_, parsed)| matches!(&parsed.event, Ok(event) if event.producer != producer))
        .map(|(index, _)| index)
        .collect();
    if !mismatched.is_empty() {
        return Err(RequestError::ProducerMismatch {
            producer: producer.to_owned(),
            indexes: mismatched,
        });
    }

    // Only now, with the work ready, wait for a permit: a client that sends slowly never holds
    // one, so it cannot keep ready requests waiting.
    let _permit = shared
        .concurrency
        .acquire()
        .await
        .expect("the semaphore is never closed");

    let now = Utc::now();
    let mut results: Vec<Option<EventResult>> = Vec::with_capacity(parsed.len());
    let mut to_send = Vec::new();
    let mut sent_indexes = Vec::new();
    for (index, parsed) in parsed.into_iter().enumerate() {
        match parsed.event.and_then(|event| recorder.prepare(event, now)) {
            Ok(prepared) => {
                sent_indexes.push(index);
                to_send.push(prepared);
                results.push(None);
            }
            Err(errors) => results.push(Some(EventResult::Rejected {
                index,
                event_id: parsed.event_id,
                errors,
            })),
        }
    }
    let sent_event_ids: Vec<String> = to_send
        .iter()
        .map(|prepared| prepared.event_id().to_owned())
        .collect();
    let deliveries = if to_send.is_empty() {
        Vec::new()
    } else {
        recorder.send_all(to_send).await
    };
    debug_assert_eq!(deliveries.len(), sent_indexes.len());

    let mut kafka_failure_retryable = None;
    for ((index, event_id), delivery) in
        sent_indexes.into_iter().zip(sent_event_ids).zip(deliveries)
    {
        results[index] = Some(result_of(
            index,
            event_id,
            delivery,
            &mut kafka_failure_retryable,
        ));
    }
    let results: Vec<EventResult> = results
        .into_iter()
        .map(|result| result.expect("every event has a result"))
        .collect();
    Ok(respond(
        state,
        producer,
        format,
        results,
        kafka_failure_retryable,
    ))
}

fn result_of(
    index: usize,
    event_id: String,
    delivery: Result<Delivery, RecordError>,
    kafka_failure_retryable: &mut Option<bool>,
) -> EventResult {
    match delivery {
        Ok(Delivery { partition, offset }) => EventResult::Accepted {
            index,
            event_id,
            partition,
            offset,
        },
        Err(RecordError::Kafka { retryable, message }) => {
            // One permanent failure makes the answer permanent (500): retrying will not help it.
            *kafka_failure_retryable = Some(kafka_failure_retryable.unwrap_or(true) && retryable);
            EventResult::Unknown {
                index,
                event_id,
                reason: message,
            }
        }
        Err(error) => {
            let errors = error
                .violations()
                .map(<[Violation]>::to_vec)
                .unwrap_or_else(|| vec![Violation::new("(event)", "encode", error.to_string())]);
            EventResult::Rejected {
                index,
                event_id: Some(event_id),
                errors,
            }
        }
    }
}

fn respond(
    state: &ApiState,
    producer: &str,
    format: Format,
    results: Vec<EventResult>,
    kafka_failure_retryable: Option<bool>,
) -> Response {
    let count = |wanted: fn(&EventResult) -> bool| results.iter().filter(|r| wanted(r)).count();
    let accepted = count(|result| matches!(result, EventResult::Accepted { .. }));
    let rejected = count(|result| matches!(result, EventResult::Rejected { .. }));
    let unknown = count(|result| matches!(result, EventResult::Unknown { .. }));
    telemetry::record_events(accepted, rejected, unknown);
    debug!(
        producer,
        format = format.as_str(),
        accepted,
        rejected,
        unknown,
        "events ingested"
    );

    let mut batch = BatchResponse {
        error: None,
        message: None,
        accepted,
        rejected,
        unknown,
        results,
    };
    let Some(retryable) = kafka_failure_retryable else {
        let status = if accepted > 0 {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        return (status, Json(batch)).into_response();
    };
    warn!(
        producer,
        accepted, unknown, retryable, "kafka did not acknowledge every event"
    );
    let retry_advice =
        "Kafka did not acknowledge the events with status `unknown`: they may or may \
                        not be stored. Retry the whole batch with the same event_ids; consumers \
                        count each event_id once, so the retry cannot double count";
    if retryable {
        batch.error = Some("kafka_unavailable");
        batch.message = Some(format!("{retry_advice}, after the Retry-After delay."));
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(batch)).into_response();
        response.headers_mut().insert(
            RETRY_AFTER,
            HeaderValue::from(state.shared.config.retry_after_seconds),
        );
        response
    } else {
        batch.error = Some("kafka_error");
        batch.message = Some(format!(
            "{retry_advice}. Kafka reported a permanent error: retrying unchanged may fail again."
        ));
        (StatusCode::INTERNAL_SERVER_ERROR, Json(batch)).into_response()
    }
}

/// The body and its share of `api.max_buffered_body_bytes`, read within
/// `api.body_read_timeout_seconds` (else 408), refused with 503 when there is no room for it, and
/// with 413 as soon as it is known to exceed `api.max_body_bytes` (from `Content-Length`,
/// or while streaming) rather than after buffering it.
async fn read_body<'a>(
    body: Body,
    headers: &HeaderMap,
    shared: &'a super::Shared,
) -> Result<(Vec<u8>, BodyRoom<'a>), RequestError> {
    let config = &shared.config;
    let limit = config.max_body_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(RequestError::BodyTooLarge { limit });
    }
    let deadline = Duration::from_secs(config.body_read_timeout_seconds);
    let read = read_chunks(body, limit, &shared.body_buffer, config.retry_after_seconds);
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(RequestError::BodyReadTimeout {
            seconds: config.body_read_timeout_seconds,
        }))
}

/// The body's chunks, each admitted to `buffer` (bytes of bodies held at once) before it is kept:
/// a client holds room only for what it has actually sent. A chunk that finds no room refuses the
/// request (503) at once: shedding load keeps memory bounded without queueing bodies, which the
/// clients holding the room (slow ones included) could keep waiting until their deadline.
async fn read_chunks<'a>(
    body: Body,
    limit: usize,
    buffer: &'a Semaphore,
    retry_after_seconds: u64,
) -> Result<(Vec<u8>, BodyRoom<'a>), RequestError> {
    let mut bytes = Vec::new();
    let mut room = BodyRoom::default();
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| RequestError::BodyRead {
            message: format!("reading the body failed: {error}"),
        })?;
        if bytes.len() + chunk.len() > limit {
            return Err(RequestError::BodyTooLarge { limit });
        }
        // At most `limit` bytes, which `ApiConfig::validate` keeps within u32.
        let wanted = u32::try_from(chunk.len()).expect("a chunk within the body limit");
        let more = buffer.try_acquire_many(wanted).map_err(|_| {
            // Counted by `quotaflow_ingest_http_requests_total{status="503"}`; one line per
            // refusal would flood the log exactly when the service is overloaded.
            debug!(
                bytes = chunk.len(),
                "no room among the request bodies held in memory: answering 503"
            );
            RequestError::BodyBufferFull {
                retry_after_seconds,
            }
        })?;
        room.add(more, chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, room))
}

/// The room one request's body holds in `api.max_buffered_body_bytes`; freed, and the
/// `quotaflow_ingest_http_buffered_body_bytes` gauge lowered, when dropped.
#[derive(Default)]
struct BodyRoom<'a> {
    permit: Option<SemaphorePermit<'a>>,
    bytes: usize,
}

impl<'a> BodyRoom<'a> {
    fn add(&mut self, more: SemaphorePermit<'a>, bytes: usize) {
        match self.permit.as_mut() {
            Some(permit) => permit.merge(more),
            None => self.permit = Some(more),
        }
        self.bytes += bytes;
        telemetry::buffered_body_bytes_changed(bytes as f64);
    }
}

impl Drop for BodyRoom<'_> {
    fn drop(&mut self) {
        telemetry::buffered_body_bytes_changed(-(self.bytes as f64));
    }
}
