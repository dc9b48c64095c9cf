//! Shutdown: every service's `run(config, shutdown)` takes a [`Shutdown`] token. Binaries cancel it on
//! SIGINT/SIGTERM; tests cancel it directly. Services stop in a fixed order on cancellation: stop intake,
//! flush, store offsets, wait for tasks (CONVENTIONS.md §8).

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// A token cancelled when the process gets SIGINT or SIGTERM.
pub fn on_signal() -> Shutdown {
    let token = Shutdown::new();
    let child = token.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutdown signal received");
        child.cancel();
    });
    token
}
