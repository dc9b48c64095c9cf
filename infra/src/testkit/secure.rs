//! The SASL_SSL listener of `dev/stack up --secure`, for tests of Kafka security on the real broker.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{KafkaConfig, KafkaSecurity, SaslMechanism, SecurityProtocol};
use crate::secret::Secret;

/// Where `dev/stack up --secure` listens for SASL_SSL by default.
pub const DEFAULT_SECURE_BROKERS: &str = "127.0.0.1:9094";
/// The SCRAM user `dev/stack up --secure` creates by default.
pub const DEFAULT_SECURE_USER: &str = "quotaflow";
/// Its password (a development secret, same default as `dev/stack`'s `KAFKA_SECURE_PASSWORD`).
pub const DEFAULT_SECURE_PASSWORD: &str = "qf-dev-scram-S3cret";

/// How a test reaches the secure listener.
#[derive(Debug, Clone)]
pub struct SecureListener {
    /// `host:port` of the SASL_SSL listener (`QUOTAFLOW_TEST_KAFKA_SECURE`).
    pub brokers: String,
    /// The CA that signed the broker's certificate (`QUOTAFLOW_TEST_KAFKA_CA`, default
    /// `.stack/secure/ca.pem` in the repository).
    pub ca_file: PathBuf,
    /// SCRAM-SHA-512 user (`QUOTAFLOW_TEST_KAFKA_USER`).
    pub username: String,
    /// Its password (`QUOTAFLOW_TEST_KAFKA_PASSWORD`).
    pub password: Secret,
}

impl SecureListener {
    /// The listener named by the environment (or `dev/stack up --secure`'s defaults). Panics with
    /// what to run when nothing listens there or the CA file is missing, so a test never passes or
    /// fails for the wrong reason.
    pub fn from_env() -> Self {
        let repo_root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let listener = SecureListener {
            brokers: std::env::var("QUOTAFLOW_TEST_KAFKA_SECURE")
                .unwrap_or_else(|_| DEFAULT_SECURE_BROKERS.to_owned()),
            ca_file: std::env::var_os("QUOTAFLOW_TEST_KAFKA_CA")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root.join(".stack/secure/ca.pem")),
            username: std::env::var("QUOTAFLOW_TEST_KAFKA_USER")
                .unwrap_or_else(|_| DEFAULT_SECURE_USER.to_owned()),
            password: Secret::new(
                std::env::var("QUOTAFLOW_TEST_KAFKA_PASSWORD")
                    .unwrap_or_else(|_| DEFAULT_SECURE_PASSWORD.to_owned()),
            ),
        };
        let reachable = listener
            .brokers
            .to_socket_addrs()
            .ok()
            .and_then(|mut addresses| addresses.next())
            .is_some_and(|address| {
                TcpStream::connect_timeout(&address, Duration::from_secs(5)).is_ok()
            });
        assert!(
            reachable,
            "no SASL_SSL Kafka listener at {} (QUOTAFLOW_TEST_KAFKA_SECURE): start it with \
             `dev/stack up --secure`",
            listener.brokers
        );
        assert!(
            listener.ca_file.is_file(),
            "no CA file at {} (QUOTAFLOW_TEST_KAFKA_CA): `dev/stack up --secure` writes it",
            listener.ca_file.display()
        );
        listener
    }

    /// The `[kafka.security]` that logs in as this listener's user.
    pub fn security(&self) -> KafkaSecurity {
        KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: SaslMechanism::ScramSha512,
            username: self.username.clone(),
            password: self.password.clone(),
            ca_file: Some(self.ca_file.clone()),
            cert_file: None,
            key_file: None,
        }
    }
}

/// Kafka config for a test on the secure listener: its own topics (as [`super::kafka_config`]),
/// SASL_SSL with SCRAM-SHA-512 and the stack's CA.
pub fn secure_kafka_config(test: &str) -> KafkaConfig {
    let listener = SecureListener::from_env();
    KafkaConfig {
        brokers: listener.brokers.clone(),
        security: listener.security(),
        ..super::kafka_config(test)
    }
}
