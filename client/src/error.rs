//! One error type for the client layer; each variant says whether retrying can help.

/// Errors from the Kafka clients and their settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid, or the brokers refused it (credentials, TLS): fix it, do not
    /// retry.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Kafka refused or failed an operation.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// An operation did not finish before its deadline.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    /// Whether the same operation may succeed if tried again later (a broker down, a timeout),
    /// as opposed to a data or configuration error that will fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Config(_) => false,
            Error::Kafka(error) => crate::kafka::error_is_retryable(error),
            Error::Timeout(_) => true,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
