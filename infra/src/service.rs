//! The lifecycle every quotaflow service shares (mini-redis style: binaries and tests call the same
//! `run_with_listener`).
//!
//! 1. The HTTP listener serves `/metrics`, `/healthz` and `/readyz` (plus the service's own routes)
//!    from the start, so while the service prepares an orchestrator sees it alive but not ready.
//! 2. The service's `start` future runs (migrations, topics, clients). A shutdown during startup
//!    stops waiting on a server that may never answer.
//! 3. On success the service's `on_ready` hook runs, `/readyz` turns 200, and it waits for shutdown.
//! 4. On shutdown (or a failed start): report not ready, stop the HTTP server (in-flight requests
//!    finish), and return what `start` produced so the caller can flush it.
//!
//! Two entry points share it. [`serve_until_shutdown`] is for a service whose work is serving
//! requests (ingest): its `start` returns what the requests need, and the service waits for
//! shutdown. [`run_worker`] is for a service whose work is one loop that owns its queues (the
//! archiver, the aggregator, the alerter): the loop gets the [`Readiness`] to set once it is set
//! up, sees `shutdown` itself, and returns only after draining what it holds, so the shutdown
//! drains by construction; then readiness goes back to false and the ops server stops.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tracing::info;

use crate::config::{ClickHouseConfig, KafkaConfig};
use crate::shutdown::Shutdown;
use crate::telemetry::{ops_router, serve, Readiness};

/// Why a service could not start or keep serving; each variant says whether retrying can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The HTTP listener could not be bound (address in use, not permitted).
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed while serving.
    #[error("http server failed")]
    Http(#[source] std::io::Error),
    /// The ClickHouse migrations failed at startup.
    #[error("clickhouse migrations failed")]
    Migrations(#[source] crate::Error),
    /// The pipeline topics could not be created at startup.
    #[error("creating kafka topics failed")]
    Topics(#[source] crate::Error),
}

impl ServiceError {
    /// Whether starting again later may succeed (a server was down) rather than fail the same way
    /// (a bad address, a rejected migration).
    pub fn is_retryable(&self) -> bool {
        match self {
            ServiceError::Bind { .. } => false,
            ServiceError::Http(_) => true,
            ServiceError::Migrations(error) | ServiceError::Topics(error) => error.is_retryable(),
        }
    }
}

/// Binds the service's configured address.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ServiceError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServiceError::Bind { address, source })
}

/// What every service needs before it is ready: the ClickHouse tables and the Kafka topics.
pub async fn prepare_pipeline(
    kafka: &KafkaConfig,
    clickhouse: &ClickHouseConfig,
) -> Result<(), ServiceError> {
    crate::migrations::migrate(clickhouse)
        .await
        .map_err(ServiceError::Migrations)?;
    let topics = crate::kafka::pipeline_topics(kafka);
    crate::kafka::ensure_topics(kafka, &topics)
        .await
        .map_err(|error| ServiceError::Topics(error.into()))
}

/// Runs the lifecycle described in the module docs on `listener` with the service's own `routes`.
/// Returns `Ok(Some(started))` after a clean shutdown of a started service, `Ok(None)` when shutdown
/// came before startup finished, or the startup error.
pub async fn serve_until_shutdown<Started, Error, Start>(
    listener: TcpListener,
    routes: Router,
    shutdown: Shutdown,
    start: Start,
    on_ready: impl FnOnce(&Started),
) -> Result<Option<Started>, Error>
where
    Start: Future<Output = Result<Started, Error>>,
    Error: From<ServiceError>,
{
    serve_until_shutdown_with(listener, routes, shutdown, start, on_ready, serve).await
}

/// [`serve_until_shutdown`] with the service's own HTTP server in place of [`serve`]: `server` is
/// called once with the listener, the whole router and the token that stops it, and must return
/// once every in-flight request has been answered (ingest's limits connections and slow clients).
pub async fn serve_until_shutdown_with<Started, Error, Start, Server, Served>(
    listener: TcpListener,
    routes: Router,
    shutdown: Shutdown,
    start: Start,
    on_ready: impl FnOnce(&Started),
    server: Server,
) -> Result<Option<Started>, Error>
where
    Start: Future<Output = Result<Started, Error>>,
    Error: From<ServiceError>,
    Server: FnOnce(TcpListener, Router, Shutdown) -> Served,
    Served: Future<Output = std::io::Result<()>>,
{
    let listen = listener.local_addr().map_err(ServiceError::Http)?;
    info!(listen = %listen, "service starting");
    let readiness = Readiness::default();
    let router = ops_router(readiness.clone()).merge(routes);
    // Its own token, so that a failed startup can stop the server without cancelling the caller's.
    let stop_http = shutdown.child_token();
    let http = server(listener, router, stop_http.clone());

    let lifecycle = async {
        let started = tokio::select! {
            () = shutdown.cancelled() => Ok(None),
            started = start => started.map(Some),
        };
        if let Ok(Some(started)) = &started {
            if !shutdown.is_cancelled() {
                on_ready(started);
                readiness.set_ready(true);
                info!(listen = %listen, "service started");
                shutdown.cancelled().await;
                info!("service stopping");
            }
        }
        readiness.set_ready(false);
        stop_http.cancel();
        started
    };
    // `serve` returns once every in-flight request has been answered.
    let (served, started) = tokio::join!(http, lifecycle);
    let started = started?;
    served.map_err(ServiceError::Http)?;
    Ok(started)
}

/// The worker lifecycle (module docs): serves the ops routes on `listener` (none: no ops server)
/// from the start, runs `work` with the readiness it must set once set up, and when `work` has
/// returned (after `shutdown`, drained, or failed) reports not ready and stops the ops server.
/// `name` is the service's name in the start and stop log lines.
pub async fn run_worker<E, Work, Fut>(
    name: &'static str,
    listener: Option<TcpListener>,
    shutdown: &Shutdown,
    work: Work,
) -> Result<(), E>
where
    Work: FnOnce(Readiness) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: From<ServiceError> + std::fmt::Display,
{
    let readiness = Readiness::default();
    let stop_http = shutdown.child_token();
    let http = match listener {
        Some(listener) => {
            let listen = listener.local_addr().map_err(ServiceError::Http)?;
            info!(service = name, %listen, "service starting");
            Some(tokio::spawn(serve(
                listener,
                ops_router(readiness.clone()),
                stop_http.clone(),
            )))
        }
        None => {
            info!(service = name, "service starting (no ops listener)");
            None
        }
    };
    let result = work(readiness.clone()).await;
    readiness.set_ready(false);
    stop_http.cancel();
    if let Some(http) = http {
        let _ = http.await;
    }
    match &result {
        Ok(()) => info!(service = name, "service stopped"),
        Err(error) => tracing::error!(service = name, %error, "service failed"),
    }
    result
}
