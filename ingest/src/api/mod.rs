//! The HTTP event API: `POST /v1/events`, and the OpenAPI document that describes it
//! (`ingest/openapi.yaml`, served at `/openapi.json` and `/openapi.yaml`).
//!
//! - [`config`]: [`ApiConfig`], tokens and limits.
//! - [`auth`]: bearer token → producer, compared in constant time.
//! - [`formats`]: JSON, NDJSON and Avro bodies → events, each parsed on its own
//!   (`json_diagnosis` words the errors serde_json words misleadingly).
//! - [`events`]: the handler.
//! - [`response`]: the per-event results and the request-level errors.
//! - [`server`]: the HTTP server and its limits on connections and slow clients.
//! - [`telemetry`]: the API's metrics.
//! - [`openapi`]: the embedded document.
//!
//! # What a caller is promised
//! - **Acknowledged means stored.** A response is sent only after Kafka acknowledged (`acks=all`,
//!   idempotent producer) every event reported `accepted`, with its partition and offset.
//! - **Partial acceptance**, identical for every format: the valid events of a batch are produced,
//!   the invalid ones are rejected with per-event errors (`index`, `field`, `kind`, `reason`).
//!   200 when at least one event is accepted, 422 with the same body when none is.
//! - **Nothing is half-accepted silently.** When Kafka does not acknowledge some events (broker
//!   down, delivery timeout) the answer is 503 with `Retry-After` (500 for a permanent Kafka
//!   error), listing each event as `accepted`, `rejected` or `unknown`. The caller retries the whole
//!   batch with the same `event_id`s: every copy of an `event_id` goes to the same partition and
//!   consumers count each `event_id` once, so a retry never double counts.
//! - **A producer writes only as itself.** The token names the producer; an event naming another
//!   refuses the whole request (403), nothing produced.
//! - Request-level refusals (401, 403, 408 for a body not sent in time, 413, 415, 422 for an
//!   unsplittable body, 503 while starting or when too many bodies are held) produce nothing.
//! - **A slow client cannot stall the others**: headers and bodies have deadlines, connections
//!   are limited, and a request takes one of the `api.max_concurrent_requests` permits only once
//!   its body is read and parsed ([`server`] states the limits).
//!
//! Delivery is therefore at least once: an event may be stored twice (a retry after `unknown`, a
//! client that gave up waiting), never lost after `accepted`.

pub mod auth;
pub mod config;
pub mod events;
pub mod formats;
mod json_diagnosis;
pub mod openapi;
pub mod response;
pub mod server;
pub mod telemetry;

use std::sync::{Arc, OnceLock};

use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

pub use config::ApiConfig;

use crate::recorder::Recorder;

/// What the handlers share; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    shared: Arc<Shared>,
}

struct Shared {
    /// Limits and the `Retry-After` value.
    config: ApiConfig,
    /// Digests of the producers' tokens.
    tokens: auth::Tokens,
    /// Set once the service has started; until then `POST /v1/events` answers 503.
    recorder: OnceLock<Recorder>,
    /// `api.max_concurrent_requests` permits, taken once a request's body is read and parsed.
    concurrency: Semaphore,
    /// `api.max_buffered_body_bytes` permits, one per byte of request body held in memory.
    body_buffer: Semaphore,
}

impl ApiState {
    /// A state whose API answers 503 until [`ApiState::set_recorder`] is called.
    pub fn starting(config: &ApiConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config: config.clone(),
                tokens: auth::Tokens::new(&config.tokens),
                recorder: OnceLock::new(),
                concurrency: Semaphore::new(config.max_concurrent_requests),
                body_buffer: Semaphore::new(config.max_buffered_body_bytes),
            }),
        }
    }

    /// A state ready to take events through `recorder`.
    pub fn new(config: &ApiConfig, recorder: Recorder) -> Self {
        let state = Self::starting(config);
        state.set_recorder(recorder);
        state
    }

    /// Opens the API; later calls are ignored (the first recorder stays).
    pub fn set_recorder(&self, recorder: Recorder) {
        let _ = self.shared.recorder.set(recorder);
    }

    /// The recorder, once set.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.shared.recorder.get()
    }
}

/// `POST /v1/events`, `GET /openapi.json` and `GET /openapi.yaml`. The service merges it with the
/// ops endpoints; tests may serve it alone (e.g. with a recorder pointing at a dead broker).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/events", post(events::post_events))
        .route_layer(axum::middleware::from_fn(telemetry::track_requests))
        .with_state(state)
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/openapi.yaml", get(openapi::openapi_yaml))
}
