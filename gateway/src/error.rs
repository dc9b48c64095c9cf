//! The gateway client's errors, each saying whether trying again may help.

use rdkafka::error::KafkaError;

/// Why the gateway client could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The configuration is invalid; fix it, retrying cannot help.
    #[error("invalid gateway config: {0}")]
    Config(String),
    /// The Kafka client could not be created or configured.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The control topic is missing or has no partitions (yet); it may be created later.
    #[error("control topic unavailable: {0}")]
    TopicUnavailable(String),
    /// The follower thread could not be spawned.
    #[error("cannot spawn the control follower thread: {0}")]
    Spawn(#[from] std::io::Error),
}

impl GatewayError {
    /// Whether starting again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            GatewayError::Config(_) => false,
            GatewayError::Kafka(error) => quotaflow_client::kafka::error_is_retryable(error),
            GatewayError::TopicUnavailable(_) | GatewayError::Spawn(_) => true,
        }
    }
}
