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
    /// for long labels, and bounds memory at `max_concurrent_requests` × this.
    pub max_body_bytes: usize,
    /// Most events in one request; more is refused with 413. 10,000 keeps one request's Kafka
    /// round trip around a second and its response body small enough to log.
    pub max_batch_events: usize,
    /// Requests processed at once; more wait (before their body is read). Bounds memory and the
    /// records one process has in flight to Kafka.
    pub max_concurrent_requests: usize,
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
            retry_after_seconds: 5,
        }
    }
}

impl ApiConfig {
    /// Checks what serde cannot: limits above zero, no empty token, no token shared by two
    /// producers (a shared token could not say which producer is calling).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes == 0
            || self.max_batch_events == 0
            || self.max_concurrent_requests == 0
        {
            return Err(
                "api.max_body_bytes, api.max_batch_events and api.max_concurrent_requests must be > 0"
                    .to_owned(),
            );
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
