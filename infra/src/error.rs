//! One error type for the service plumbing; each variant says whether retrying can help.

/// Errors from config loading, the Kafka clients (the client layer's [`quotaflow_client::Error`])
/// and the ClickHouse client and migrations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An invalid configuration, a Kafka failure or a timeout, as the client layer reports it.
    #[error(transparent)]
    Client(#[from] quotaflow_client::Error),
    /// ClickHouse refused or failed an operation.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] ::clickhouse::error::Error),
    /// A schema migration failed; the message names the migration.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: u32,
        name: &'static str,
        #[source]
        source: ::clickhouse::error::Error,
    },
    /// Binding or serving an HTTP listener failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the same operation may succeed if tried again later (a server down, a timeout),
    /// as opposed to a data or configuration error that will fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Client(error) => error.is_retryable(),
            Error::ClickHouse(error) | Error::Migration { source: error, .. } => {
                clickhouse_error_is_retryable(error)
            }
            Error::Io(_) => true,
        }
    }
}

/// Whether a ClickHouse failure may go away by itself (see `clickhouse::classify_error`): transport
/// errors, timeouts, load and restarts do; data and deployment errors fail again on retry.
pub fn clickhouse_error_is_retryable(error: &::clickhouse::error::Error) -> bool {
    crate::clickhouse::classify_error(error) == crate::clickhouse::ClickHouseFailure::Transient
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
