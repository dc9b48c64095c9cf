//! Metrics of the event API, in one place (CONVENTIONS.md §10): recorded once per request, never per
//! event, with bounded labels (`status` is one of the few codes the API answers, `outcome` one of
//! three words).
//!
//! - `quotaflow_ingest_http_requests_total{status}`: requests to `POST /v1/events` by status code.
//! - `quotaflow_ingest_http_request_duration_seconds`: time from the request to the response,
//!   Kafka acknowledgements included.
//! - `quotaflow_ingest_http_events_total{outcome}`: events by `accepted`, `rejected` or `unknown`
//!   (Kafka did not acknowledge them).
//! - `quotaflow_ingest_http_buffered_body_bytes`: bytes of request bodies held in memory now
//!   (bounded by `api.max_buffered_body_bytes`), updated per chunk read and per request answered.
//! - `quotaflow_ingest_http_connections`: connections open now (bounded by `api.max_connections`).

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Middleware recording the status and duration of every request it wraps, each in its own
/// span (`http_request{method, path, status}`), so every log line of a request is attributable.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let span = tracing::info_span!(
        "http_request",
        method = %request.method(),
        path = %request.uri().path(),
        status = tracing::field::Empty,
    );
    let response = next.run(request).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    metrics::counter!(
        "quotaflow_ingest_http_requests_total",
        "status" => response.status().as_str().to_owned()
    )
    .increment(1);
    metrics::histogram!("quotaflow_ingest_http_request_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    response
}

/// Counts the events of one request by outcome.
pub fn record_events(accepted: usize, rejected: usize, unknown: usize) {
    for (outcome, count) in [
        ("accepted", accepted),
        ("rejected", rejected),
        ("unknown", unknown),
    ] {
        if count > 0 {
            metrics::counter!("quotaflow_ingest_http_events_total", "outcome" => outcome)
                .increment(count as u64);
        }
    }
}

/// `bytes` more (or, negative, fewer) request body bytes held in memory.
pub fn buffered_body_bytes_changed(bytes: f64) {
    metrics::gauge!("quotaflow_ingest_http_buffered_body_bytes").increment(bytes);
}

/// One more (or, negative, one fewer) open connection.
pub fn connections_changed(connections: f64) {
    metrics::gauge!("quotaflow_ingest_http_connections").increment(connections);
}
