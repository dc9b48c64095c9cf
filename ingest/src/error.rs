//! The ingest service's error type; each variant says whether retrying can help.

use std::net::SocketAddr;

/// Why [`crate::run`] stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
    Migrations(#[source] infra::Error),
    /// The pipeline topics could not be created at startup.
    #[error("creating kafka topics failed")]
    Topics(#[source] infra::Error),
    /// The config breaks a rule serde cannot check (see `ApiConfig::validate`).
    #[error("invalid config: {0}")]
    Config(String),
    /// The price catalog could not be loaded.
    #[error("loading the price catalog failed")]
    Pricing(#[source] crate::pricer::PricerError),
    /// The Kafka producer behind the API could not be created.
    #[error("creating the kafka producer failed")]
    Recorder(#[source] crate::recorder::RecordError),
}

impl Error {
    /// Whether starting again later may succeed (a server was down) rather than fail the same way
    /// (a bad address, a rejected migration).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Bind { .. } => false,
            Error::Http(_) => true,
            Error::Migrations(error) | Error::Topics(error) => error.is_retryable(),
            Error::Config(_) => false,
            Error::Pricing(error) => error.is_retryable(),
            Error::Recorder(error) => error.is_retryable(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
