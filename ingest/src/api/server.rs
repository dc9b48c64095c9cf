//! The ingest service's HTTP server: the API and the ops endpoints behind limits that hold against
//! slow or hostile clients (axum::serve has neither a header deadline nor a connection limit).
//!
//! # What it guarantees
//! - **At most `api.max_connections` connections** are served at once. Past that, the server stops
//!   accepting and new connections wait in the kernel's accept queue until one closes.
//! - **Headers within `api.header_read_timeout_seconds`**, counted from when the server is ready
//!   for a request (a new connection, or the end of the previous response): a client that trickles
//!   its headers, or an idle keep-alive connection, is closed at the deadline. Headers hold no
//!   request permit and no body memory while they arrive.
//! - **The body within `api.body_read_timeout_seconds`** (`events::read_body`): 408 and the
//!   connection closed. Bodies are read before the handler takes one of the
//!   `api.max_concurrent_requests` permits, so slow bodies cannot hold the permits that ready work
//!   needs; the memory of bodies being read is bounded by `api.max_buffered_body_bytes`.
//! - HTTP/1.1 only (what gateways and load balancers speak to a backend; HTTP/2 would need its own
//!   stream and keep-alive limits).
//! - **Shutdown**: stop accepting, let in-flight requests finish (each bounded by the deadlines and
//!   its Kafka acknowledgements), close idle connections, then return.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use infra::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// The server-level limits, from [`super::ApiConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest wait for a request's headers, idle keep-alive time included.
    pub header_read_timeout: Duration,
}

impl From<&super::ApiConfig> for ConnectionLimits {
    fn from(config: &super::ApiConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            header_read_timeout: Duration::from_secs(config.header_read_timeout_seconds),
        }
    }
}

/// After a failed `accept` (out of file descriptors, most often), wait this long before the next
/// one instead of spinning; connections being closed meanwhile free descriptors.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` within `limits` until `shutdown` is cancelled, then waits for the
/// connections to finish (see the module docs).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    warn!(error = %error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        super::telemetry::connections_changed(1.0);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // A header deadline, a client that went away: the client's problem, not ours.
                debug!(error = %error, "connection ended with an error");
            }
            super::telemetry::connections_changed(-1.0);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
