//! A connection check at startup that names why Kafka cannot be used.
//!
//! librdkafka retries a failed login or TLS handshake forever and reports the cause only to the
//! client's error callback; the request that waited just times out. A service that creates its
//! topics with a wrong password would so hang at start with "timed out". [`check_connection`] asks
//! for metadata while watching that callback, and stops at the first authentication or TLS failure
//! with an error that says which it was and which setting to check. Neither librdkafka's messages
//! nor ours contain the password.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tracing::warn;

use crate::config::KafkaConfig;
use crate::{Error, Result};

/// How long one metadata request may wait before the error callback is looked at again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long each round serves the client's queued events (errors, log lines).
const DRAIN_TIMEOUT: Duration = Duration::from_millis(100);

/// Why the brokers could not be used, when the reason is certain.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// SASL login refused: wrong username, password or mechanism.
    Authentication(String),
    /// The TLS handshake failed: the broker's certificate is not trusted or names another host,
    /// or the broker refused our client certificate.
    Tls(String),
}

/// Client context that keeps the last error librdkafka reported.
#[derive(Default)]
struct ErrorRecorder {
    /// Set by librdkafka's error callback (on the thread that polls).
    refusal: Mutex<Option<Refusal>>,
    /// The last error of any kind, for the timeout message.
    last_error: Mutex<Option<String>>,
}

impl ClientContext for ErrorRecorder {
    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %error, reason, "kafka client error during connection check");
        let code = error.rdkafka_error_code();
        let refusal = if code == Some(RDKafkaErrorCode::Authentication)
            || reason.contains("SASL authentication error")
        {
            Some(Refusal::Authentication(reason.to_owned()))
        } else if code == Some(RDKafkaErrorCode::SSL)
            || reason.contains("certificate verify failed")
            || reason.contains("SSL handshake failed")
        {
            Some(Refusal::Tls(reason.to_owned()))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(refusal);
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
    }
}

impl ProducerContext for ErrorRecorder {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Fetches cluster metadata within `deadline`. Fails at once, as a configuration error that is
/// not worth retrying, when the brokers refuse the credentials or the TLS handshake fails; fails
/// as a (retryable) timeout when no broker answered in time.
pub async fn check_connection(kafka: &KafkaConfig, deadline: Duration) -> Result<()> {
    let config = super::client_config(kafka, "quotaflow-connection-check");
    let brokers = kafka.brokers.clone();
    tokio::task::spawn_blocking(move || probe(&config, &brokers, deadline))
        .await
        .map_err(|error| {
            Error::Timeout(format!("kafka connection check did not finish: {error}"))
        })?
}

fn probe(config: &ClientConfig, brokers: &str, deadline: Duration) -> Result<()> {
    let producer: BaseProducer<ErrorRecorder> =
        config.create_with_context(ErrorRecorder::default())?;
    let started = Instant::now();
    loop {
        let fetched = producer
            .client()
            .fetch_metadata(None, ATTEMPT_TIMEOUT)
            .is_ok();
        // Serves the error callback, and the log lines queued ahead of it: each `poll` call
        // handles events until its timeout, so a zero timeout would take one event per attempt.
        producer.poll(DRAIN_TIMEOUT);
        let context = producer.context();
        if let Some(refusal) = context
            .refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(Error::Config(describe(brokers, &refusal)));
        }
        if fetched {
            return Ok(());
        }
        if started.elapsed() >= deadline {
            let last_error = context
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| "no error reported".to_owned());
            return Err(Error::Timeout(format!(
                "no kafka broker at {brokers} answered within {deadline:?}; last error: {last_error}"
            )));
        }
    }
}

fn describe(brokers: &str, refusal: &Refusal) -> String {
    match refusal {
        Refusal::Authentication(reason) => format!(
            "kafka at {brokers}: authentication failed; check kafka.security.username, \
             kafka.security.password (QUOTAFLOW_KAFKA__SECURITY__PASSWORD) and \
             kafka.security.sasl_mechanism ({reason})"
        ),
        Refusal::Tls(reason) => {
            let cause = if reason.contains("certificate verify failed") {
                "certificate verify failed: the broker's certificate is not signed by a CA in \
                 kafka.security.ca_file (or the system trust store) or does not name the host"
            } else {
                "TLS handshake failed; check kafka.security.ca_file, cert_file and key_file"
            };
            format!("kafka at {brokers}: {cause} ({reason})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_their_cause_and_the_settings_to_check() {
        let authentication = describe(
            "b:9094",
            &Refusal::Authentication("SASL authentication error: invalid credentials".into()),
        );
        assert!(
            authentication.contains("authentication failed"),
            "{authentication}"
        );
        assert!(
            authentication.contains("kafka.security.password"),
            "{authentication}"
        );
        let tls = describe(
            "b:9094",
            &Refusal::Tls("SSL handshake failed: certificate verify failed".into()),
        );
        assert!(tls.contains("certificate verify failed"), "{tls}");
        assert!(tls.contains("kafka.security.ca_file"), "{tls}");
    }
}
