//! The sidecar's settings: a TOML file and `QUOTAFLOW_*` environment variables
//! (`infra::config::load`), every section with `deny_unknown_fields`.

use std::net::SocketAddr;

use gateway::GatewayConfig;
use infra::config::HttpConfig;
use serde::{Deserialize, Serialize};

/// Everything the sidecar needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The control topic to follow and what to answer while it cannot be trusted
    /// (`failure_mode`, `max_staleness_ms`).
    pub gateway: GatewayConfig,
    /// Forward-auth, the JSON API and `/metrics`, `/healthz`, `/readyz`.
    pub http: HttpConfig,
    /// Envoy ext_authz over gRPC.
    pub grpc: GrpcConfig,
    /// How answers look.
    pub answers: AnswerConfig,
    /// Remaining-quota answers (`GET /v1/scopes`, `RateLimit-*` headers).
    pub remaining: RemainingConfig,
    /// The policy directory whose admission rules (`admission:`) are checked before the
    /// decisions, and whose windows and caps answer remaining quota; absent: none. Read at
    /// start.
    pub policies_dir: Option<std::path::PathBuf>,
    /// The price catalog (LiteLLM's JSON format) that prices a request's declared maximum for
    /// the `admission.estimated_cost` rule; required when a policy has that rule.
    pub catalog_path: Option<std::path::PathBuf>,
    /// How often the policy directory is read again (an edit applies once its totals are read;
    /// a directory that no longer loads keeps the rules in force).
    pub reload_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gateway: GatewayConfig {
                client_id: "quotaflow-decide".to_owned(),
                ..GatewayConfig::default()
            },
            http: HttpConfig::with_port(8181),
            grpc: GrpcConfig::default(),
            answers: AnswerConfig::default(),
            remaining: RemainingConfig::default(),
            policies_dir: None,
            catalog_path: None,
            reload_interval_ms: 5_000,
        }
    }
}

impl Config {
    /// Checks what would make answers wrong rather than fail.
    pub fn validate(&self) -> Result<(), String> {
        self.gateway.validate().map_err(|error| error.to_string())?;
        self.answers.validate()
    }
}

/// The ext_authz listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Address to bind; absent: no gRPC listener.
    pub listen: Option<SocketAddr>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9191))),
        }
    }
}

/// How refusals are answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnswerConfig {
    /// HTTP status of a refusal (forward-auth and ext_authz): 429 by default; 403 behind NGINX,
    /// whose `auth_request` turns anything but 2xx, 401 and 403 into a 500.
    pub deny_status: u16,
    /// Whether a request without `x-quotaflow-api-key` (or `api_key_id` in JSON) is refused
    /// (`true`, the default: a misconfigured gateway must not bypass every key's quota) or
    /// checked with an empty key.
    pub require_api_key: bool,
    /// Whether answers carry the tightest quota of the request as `RateLimit-Limit`,
    /// `-Remaining` and `-Reset` headers (and `quota` in JSON); needs `remaining.follow_totals`.
    pub ratelimit_headers: bool,
}

impl Default for AnswerConfig {
    fn default() -> Self {
        Self {
            deny_status: 429,
            require_api_key: true,
            ratelimit_headers: true,
        }
    }
}

/// Where remaining quota comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemainingConfig {
    /// Follow the aggregator's totals topic (`gateway.kafka.topics.totals`) for the spend of
    /// the `policies_dir` policies' scopes (`true` by default; without policies nothing is
    /// followed).
    pub follow_totals: bool,
}

impl Default for RemainingConfig {
    fn default() -> Self {
        Self {
            follow_totals: true,
        }
    }
}

impl AnswerConfig {
    /// A refusal must look like one to every gateway: a 4xx or 5xx status.
    pub fn validate(&self) -> Result<(), String> {
        if !(400..=599).contains(&self.deny_status) {
            return Err(format!(
                "answers.deny_status {} is not an error status (400-599)",
                self.deny_status
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn example_config_file_loads_and_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/decide.toml");
        let config: Config = infra::config::load(Some(&path)).expect("config/decide.toml loads");
        assert_eq!(config.http.listen.port(), 8181);
        assert_eq!(config.gateway.kafka.topics.control, "quota.control.v1");
        assert_eq!(config.gateway.failure_mode, gateway::FailureMode::Closed);
        assert_eq!(config.answers.deny_status, 403);
        config.validate().unwrap();
    }
}
