//! Telemetry: structured `tracing` logs and the Prometheus endpoint.
//!
//! Metric names follow `quotaflow_<service>_<name>_<unit>[_total]` with bounded label values, recorded
//! once per batch rather than per event where a batch exists (CONVENTIONS.md §10).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber: JSON lines when `QUOTAFLOW_LOG_FORMAT=json`, human-readable
/// otherwise; the filter comes from `QUOTAFLOW_LOG` (default `info`). Safe to call more than once.
pub fn init_tracing() {
    let filter =
        EnvFilter::try_from_env("QUOTAFLOW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("QUOTAFLOW_LOG_FORMAT").is_ok_and(|format| format == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by a test harness); ours still renders
            // what it sees, so a failure here is not fatal.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Whether the service is ready to take work (connected, migrated, caught up on its state).
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct OpsState {
    prometheus: PrometheusHandle,
    readiness: Readiness,
}

/// `/metrics` (Prometheus text format), `/healthz` (the process answers) and `/readyz`
/// (503 until [`Readiness::set_ready`]). Services merge this router into their own.
pub fn ops_router(readiness: Readiness) -> Router {
    let state = OpsState {
        prometheus: prometheus(),
        readiness,
    };
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

async fn render_metrics(State(state): State<OpsState>) -> String {
    state.prometheus.render()
}

async fn ready(State(state): State<OpsState>) -> (StatusCode, &'static str) {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
