//! [`ApiConfig`]: who may call the event API and how much one request may carry.

use std::collections::{BTreeMap, BTreeSet};

use infra::secret::Secret;
use serde::{Deserialize, Serialize};

/// Auth and limits of the HTTP API (`[api]` in `config/ingest.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer token of each producer, keyed by producer name: a request authenticated with a token may
    /// only carry events whose `producer` field is that name. Set from the environment, never in a
    /// file in the repo: `QUOTAFLOW_API__TOKENS__GATEWAY_EU=<token>` (figment lowercases the key, so
    /// the producer is `gateway_eu`), or, for names an environment variable cannot spell,
    /// `QUOTAFLOW_API__TOKENS='{gw-eu-1="<token>"}'`. Empty: every request is refused with 401.
    pub tokens: BTreeMap<String, Secret>,
    /// Largest request body, in bytes; a larger one is refused with 413 before it is parsed.
    /// 8 MiB holds a full batch of `max_batch_events` typical JSON events (~600 bytes each) with room
    /// for long labels.
    pub max_body_bytes: usize,
    /// Most events in one request; more is refused with 413. 10,000 keeps one request's Kafka
    /// round trip around a second and its response body small enough to log.
    pub max_batch_events: usize,
    /// Requests processed at once: parsed, validated, priced and produced. A request takes its
    /// permit only once its body is read and parsed, so clients that send slowly never hold one;
    /// more wait, holding their parsed body. Bounds the CPU work and the records one process has in
    /// flight to Kafka.
    pub max_concurrent_requests: usize,
    /// Bytes of request bodies held in memory at once, across all connections, while they are read
    /// and until their request is answered. A body that finds no room is refused at once with 503
    /// and `Retry-After`, so memory stays bounded however many clients send at once. 256 MiB: 32
    /// bodies of the largest size. At least `max_body_bytes`.
    pub max_buffered_body_bytes: usize,
    /// Connections served at once; past this the server stops accepting and new connections wait
    /// in the kernel's accept queue. Each connection costs a task and buffers, not a body (see
    /// `max_buffered_body_bytes`). 1024: a fleet of gateways with keep-alive connections, with room.
    pub max_connections: usize,
    /// Longest time, in seconds, a client may take to send a request's headers (from the moment
    /// the server is ready for the request); past it the connection is closed. It is also how long
    /// an idle keep-alive connection stays open. 30 s: headers are a few hundred bytes, so only a
    /// client that trickles them (or has nothing to send) takes that long.
    pub header_read_timeout_seconds: u64,
    /// Longest time, in seconds, a client may take to send a request's body, counted once its
    /// headers are read; past it the answer is 408 and the connection is closed. 30 s: a full
    /// `max_body_bytes` body at about 2 Mbit/s.
    pub body_read_timeout_seconds: u64,
    /// The `Retry-After` value, in seconds, of a 503 (Kafka unavailable or the service not ready):
    /// long enough for a broker failover, short enough that gateways do not buffer for long.
    pub retry_after_seconds: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            tokens: BTreeMap::new(),
            max_body_bytes: 8 * 1024 * 1024,
            max_batch_events: 10_000,
            max_concurrent_requests: 64,
            max_buffered_body_bytes: 256 * 1024 * 1024,
            max_connections: 1024,
            header_read_timeout_seconds: 30,
            body_read_timeout_seconds: 30,
            retry_after_seconds: 5,
        }
    }
}

impl ApiConfig {
    /// Checks what serde cannot: limits above zero, room for one largest body, no empty token, no
    /// token shared by two producers (a shared token could not say which producer is calling).
    pub fn validate(&self) -> Result<(), String> {
        let limits = [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_batch_events", self.max_batch_events as u64),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests as u64,
            ),
            ("max_connections", self.max_connections as u64),
            (
                "header_read_timeout_seconds",
                self.header_read_timeout_seconds,
            ),
            ("body_read_timeout_seconds", self.body_read_timeout_seconds),
        ];
        if let Some((name, _)) = limits.iter().find(|(_, value)| *value == 0) {
            return Err(format!("api.{name} must be > 0"));
        }
        // The semaphore counting buffered bytes takes at most u32::MAX at once.
        if self.max_body_bytes > u32::MAX as usize {
            return Err(format!("api.max_body_bytes must be at most {}", u32::MAX));
        }
        if self.max_buffered_body_bytes < self.max_body_bytes
            || self.max_buffered_body_bytes > tokio::sync::Semaphore::MAX_PERMITS
        {
            return Err(format!(
                "api.max_buffered_body_bytes ({}) must be at least api.max_body_bytes ({}), or a \
                 body of the largest size could never be read",
                self.max_buffered_body_bytes, self.max_body_bytes
            ));
        }
        let mut distinct = BTreeSet::new();
        for (producer, token) in &self.tokens {
            if token.is_empty() {
                return Err(format!("api.tokens.{producer} is empty"));
            }
            if !distinct.insert(token.expose()) {
                return Err(format!(
                    "api.tokens.{producer} is the token of another producer; every producer needs its own"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_empty_and_shared_tokens() {
        let mut config = ApiConfig::default();
        assert_eq!(config.validate(), Ok(()));
        config.body_read_timeout_seconds = 0;
        assert_eq!(
            config.validate(),
            Err("api.body_read_timeout_seconds must be > 0".to_owned())
        );
        config.body_read_timeout_seconds = 30;
        config.max_buffered_body_bytes = config.max_body_bytes - 1;
        assert!(config
            .validate()
            .unwrap_err()
            .contains("at least api.max_body_bytes"));
        config.max_buffered_body_bytes = config.max_body_bytes;
        config.tokens.insert("a".into(), Secret::new("same"));
        config.tokens.insert("b".into(), Secret::new("same"));
        assert!(config.validate().unwrap_err().contains("api.tokens.b"));
        config.tokens.insert("b".into(), Secret::new(""));
        assert!(config.validate().unwrap_err().contains("empty"));
    }

    #[test]
    fn debug_output_never_shows_a_token() {
        let mut config = ApiConfig::default();
        config
            .tokens
            .insert("a".into(), Secret::new("s3cr3t-token"));
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }
}
