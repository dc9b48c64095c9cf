//! What `POST /v1/events` answers: the per-event results of a batch, and the request-level errors.
//! Every body here is described in `ingest/openapi.yaml` (and checked against it by
//! `ingest/tests/http_openapi.rs`).

use axum::http::header::{CONNECTION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::validation::Violation;

/// The outcome of one event of a request, at its `index` in the request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EventResult {
    /// Acknowledged by Kafka (`acks=all`) at this partition and offset of the usage topic.
    Accepted {
        index: usize,
        event_id: String,
        partition: i32,
        offset: i64,
    },
    /// Not produced, and sending it again unchanged fails the same way.
    Rejected {
        index: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        errors: Vec<Violation>,
    },
    /// Handed to Kafka but not acknowledged: it may or may not be stored. Only in a 503/500 body.
    Unknown {
        index: usize,
        event_id: String,
        reason: String,
    },
}

/// The body of 200 and of a 422 where every event was rejected; with `error` and `message` set, of
/// a 503 (500) where Kafka failed to acknowledge some events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchResponse {
    /// Set only when Kafka failed: `kafka_unavailable` (503) or `kafka_error` (500).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// Set with `error`: what the caller should do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Events acknowledged by Kafka.
    pub accepted: usize,
    /// Events refused with per-event errors.
    pub rejected: usize,
    /// Events in an unknown state (present only when Kafka failed).
    #[serde(skip_serializing_if = "is_zero")]
    pub unknown: usize,
    /// One entry per event of the request, in request order.
    pub results: Vec<EventResult>,
}

fn is_zero(count: &usize) -> bool {
    *count == 0
}

/// A request-level refusal: nothing of the request was produced.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestError {
    /// 401: no valid bearer token.
    Unauthorized {
        kind: &'static str,
        message: &'static str,
    },
    /// 403: events whose `producer` is not the authenticated producer.
    ProducerMismatch {
        producer: String,
        indexes: Vec<usize>,
    },
    /// 413: the body is larger than `api.max_body_bytes`.
    BodyTooLarge { limit: usize },
    /// 413: more events than `api.max_batch_events`.
    TooManyEvents { count: usize, limit: usize },
    /// 415: a `Content-Type` we do not read.
    UnsupportedMediaType { found: String },
    /// 422: the body cannot be split into events, or has none.
    MalformedBody { kind: &'static str, message: String },
    /// 400: the body could not be read (the client went away, a broken chunked encoding).
    BodyRead { message: String },
    /// 503: the service has not finished starting.
    NotReady { retry_after_seconds: u64 },
    /// 408: the body did not arrive within `api.body_read_timeout_seconds`; the connection is
    /// closed (what is left of the body would be read as the next request).
    BodyReadTimeout { seconds: u64 },
    /// 503: no room for the body among the bodies held at once (`api.max_buffered_body_bytes`);
    /// the connection is closed.
    BodyBufferFull { retry_after_seconds: u64 },
}

/// The body of every request-level error.
#[derive(Debug, Serialize)]
struct ErrorBody {
    /// Stable machine-readable kind.
    error: &'static str,
    /// What happened and what to do, for a human.
    message: String,
    /// For `producer_mismatch`: the indexes of the events naming another producer.
    #[serde(skip_serializing_if = "Option::is_none")]
    indexes: Option<Vec<usize>>,
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            RequestError::ProducerMismatch { .. } => StatusCode::FORBIDDEN,
            RequestError::BodyTooLarge { .. } | RequestError::TooManyEvents { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            RequestError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestError::MalformedBody { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            RequestError::BodyRead { .. } => StatusCode::BAD_REQUEST,
            RequestError::NotReady { .. } | RequestError::BodyBufferFull { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RequestError::BodyReadTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn body(self) -> ErrorBody {
        let (error, message, indexes) = match self {
            RequestError::Unauthorized { kind, message } => (kind, message.to_owned(), None),
            RequestError::ProducerMismatch { producer, indexes } => (
                "producer_mismatch",
                format!(
                    "the token is the token of producer {producer:?}; every event must have \
                     `producer` = {producer:?}. Nothing of this request was produced"
                ),
                Some(indexes),
            ),
            RequestError::BodyTooLarge { limit } => (
                "body_too_large",
                format!("the body is larger than {limit} bytes; split the batch"),
                None,
            ),
            RequestError::TooManyEvents { count, limit } => (
                "too_many_events",
                format!("{count} events in one request, at most {limit}; split the batch"),
                None,
            ),
            RequestError::UnsupportedMediaType { found } => (
                "unsupported_media_type",
                format!(
                    "{found}: send application/json, application/x-ndjson, \
                     application/vnd.apache.avro or avro/binary"
                ),
                None,
            ),
            RequestError::MalformedBody { kind, message } => (kind, message, None),
            RequestError::BodyRead { message } => ("body_read_failed", message, None),
            RequestError::NotReady { .. } => (
                "not_ready",
                "the service is starting; retry after the Retry-After delay".to_owned(),
                None,
            ),
            RequestError::BodyReadTimeout { seconds } => (
                "body_read_timeout",
                format!(
                    "the body did not arrive within {seconds} s (api.body_read_timeout_seconds); \
                     nothing of this request was produced"
                ),
                None,
            ),
            RequestError::BodyBufferFull { .. } => (
                "overloaded",
                "too many request bodies are held at once (api.max_buffered_body_bytes); retry \
                 after the Retry-After delay"
                    .to_owned(),
                None,
            ),
        };
        ErrorBody {
            error,
            message,
            indexes,
        }
    }
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let extra_header = match &self {
            RequestError::Unauthorized { .. } => {
                Some((WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")))
            }
            RequestError::NotReady {
                retry_after_seconds,
            }
            | RequestError::BodyBufferFull {
                retry_after_seconds,
            } => Some((RETRY_AFTER, HeaderValue::from(*retry_after_seconds))),
            _ => None,
        };
        // The body was not read to its end: the connection cannot carry another request.
        let close = matches!(
            self,
            RequestError::BodyReadTimeout { .. } | RequestError::BodyBufferFull { .. }
        );
        let mut response = (status, Json(self.body())).into_response();
        if let Some((name, value)) = extra_header {
            response.headers_mut().insert(name, value);
        }
        if close {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
