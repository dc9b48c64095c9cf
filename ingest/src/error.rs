//! The ingest service's error type; each variant says whether retrying can help.

/// Why [`crate::run`] stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding, serving, migrations or topics failed (the lifecycle every service shares).
    #[error(transparent)]
    Service(#[from] infra::service::ServiceError),
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
            Error::Service(error) => error.is_retryable(),
            Error::Config(_) => false,
            Error::Pricing(error) => error.is_retryable(),
            Error::Recorder(error) => error.is_retryable(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
