//! Notification settings: where notices go (Slack webhooks per channel, PagerDuty routing keys per
//! service), how failed deliveries are retried, and how storms are grouped. Webhook URLs and routing
//! keys are [`Secret`]s, so a config dump shows `<redacted>`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use infra::secret::Secret;
use serde::{Deserialize, Serialize};

use super::pagerduty::DEFAULT_EVENTS_URL;
use super::pending::RedeliveryPolicy;
use super::retry::RetryPolicy;
use super::NotifyError;

/// Everything the notifiers need; unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Storm grouping interval: at most one notification per policy, scope, window and kind per
    /// interval (see [`super::grouping`]). Five minutes: long enough that a burst of evaluations
    /// becomes one message, short enough that a changed situation is reported promptly.
    pub group_interval_secs: u64,
    /// Retries shared by Slack and PagerDuty.
    pub retry: RetryPolicy,
    /// How notifications whose retries ran out on a failure that may pass later are kept and sent
    /// again (see [`super::pending`]).
    pub redelivery: RedeliveryPolicy,
    /// Slack webhooks.
    pub slack: SlackConfig,
    /// PagerDuty Events API.
    pub pagerduty: PagerDutyConfig,
    /// The generic signed webhook ([`super::webhook`]); off unless `url` is set.
    pub webhook: WebhookConfig,
    /// PEM file of extra CA certificates that webhook receivers' certificates may chain to, in
    /// addition to the built-in webpki (Mozilla) roots: for private receivers signed by a private
    /// CA. Unset = the built-in roots only. Read once at startup; a file that cannot be read or
    /// parsed stops the alerter (see [`super::client`]).
    pub ca_file: Option<PathBuf>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            group_interval_secs: 300,
            retry: RetryPolicy::default(),
            redelivery: RedeliveryPolicy::default(),
            slack: SlackConfig::default(),
            pagerduty: PagerDutyConfig::default(),
            webhook: WebhookConfig::default(),
            ca_file: None,
        }
    }
}

/// Slack incoming webhooks; each is bound to one channel when created, so the map is per channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// Channel used for notices that name none; must be a key of `webhooks` when set.
    pub default_channel: Option<String>,
    /// Channel name (as policies name it, e.g. `#search-alerts`) → webhook URL.
    pub webhooks: BTreeMap<String, Secret>,
    /// Webhook for every channel without one of its own; set it from the environment
    /// (`QUOTAFLOW_NOTIFY__SLACK__FALLBACK_WEBHOOK`), never in a file. Empty = none.
    pub fallback_webhook: Option<Secret>,
}

/// The generic signed webhook: every notice (triggers and resolves) as signed JSON to one URL.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Where to POST; set it from the environment (`QUOTAFLOW_NOTIFY__WEBHOOK__URL`). Unset or
    /// empty = the channel is off.
    pub url: Option<Secret>,
    /// The HMAC-SHA256 key the receiver shares (`QUOTAFLOW_NOTIFY__WEBHOOK__SIGNING_SECRET`), at
    /// least 16 bytes; required with `url`.
    pub signing_secret: Option<Secret>,
}

impl WebhookConfig {
    /// The URL and the key, when the channel is on.
    pub fn endpoint(&self) -> Option<(&Secret, &Secret)> {
        let url = self.url.as_ref().filter(|url| !url.is_empty())?;
        Some((url, self.signing_secret.as_ref()?))
    }
}

/// PagerDuty Events API v2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagerDutyConfig {
    /// Events endpoint; the public one unless testing.
    pub events_url: String,
    /// PagerDuty service (as policies name it) → its Events API v2 integration (routing) key.
    pub routing_keys: BTreeMap<String, Secret>,
    /// Routing key for every service without one of its own; set it from the environment
    /// (`QUOTAFLOW_NOTIFY__PAGERDUTY__FALLBACK_ROUTING_KEY`), never in a file. Empty = none.
    pub fallback_routing_key: Option<Secret>,
}

impl Default for PagerDutyConfig {
    fn default() -> Self {
        Self {
            events_url: DEFAULT_EVENTS_URL.to_string(),
            routing_keys: BTreeMap::new(),
            fallback_routing_key: None,
        }
    }
}

impl NotifyConfig {
    /// Checks the settings at load time; messages name the setting, never a secret.
    pub fn validate(&self) -> Result<(), NotifyError> {
        self.retry.validate()?;
        self.redelivery.validate()?;
        if self.group_interval_secs == 0 {
            return Err(NotifyError::Config(
                "group_interval_secs must be positive".to_string(),
            ));
        }
        for (channel, webhook) in &self.slack.webhooks {
            if !is_http_url(webhook.expose()) {
                return Err(NotifyError::Config(format!(
                    "slack.webhooks.{channel} is not an http(s) URL"
                )));
            }
        }
        if let Some(webhook) = self
            .slack
            .fallback_webhook
            .as_ref()
            .filter(|w| !w.is_empty())
        {
            if !is_http_url(webhook.expose()) {
                return Err(NotifyError::Config(
                    "slack.fallback_webhook is not an http(s) URL".to_string(),
                ));
            }
        }
        if let Some(channel) = &self.slack.default_channel {
            if !self.slack.webhooks.contains_key(channel) {
                return Err(NotifyError::Config(format!(
                    "slack.default_channel {channel} has no webhook"
                )));
            }
        }
        if let Some(url) = self.webhook.url.as_ref().filter(|url| !url.is_empty()) {
            if !is_http_url(url.expose()) {
                return Err(NotifyError::Config(
                    "webhook.url is not an http(s) URL".to_string(),
                ));
            }
            if self
                .webhook
                .signing_secret
                .as_ref()
                .is_none_or(|secret| secret.expose().len() < 16)
            {
                return Err(NotifyError::Config(
                    "webhook.signing_secret must be set (at least 16 bytes) when webhook.url is"
                        .to_string(),
                ));
            }
        }
        if !is_http_url(&self.pagerduty.events_url) {
            return Err(NotifyError::Config(
                "pagerduty.events_url is not an http(s) URL".to_string(),
            ));
        }
        if let Some((service, _)) = self
            .pagerduty
            .routing_keys
            .iter()
            .find(|(_, key)| key.is_empty())
        {
            return Err(NotifyError::Config(format!(
                "pagerduty.routing_keys.{service} is empty"
            )));
        }
        Ok(())
    }

    /// The HTTP client every webhook is sent with (see [`super::client`]); fails when
    /// [`NotifyConfig::ca_file`] cannot be read or parsed.
    pub fn http_client(&self) -> Result<reqwest::Client, NotifyError> {
        super::client::http_client(self)
    }

    /// The grouping interval as a duration.
    pub fn group_interval(&self) -> Duration {
        Duration::from_secs(self.group_interval_secs)
    }

    /// The webhook for `channel`, or for the default channel when `None`.
    pub fn slack_webhook(&self, channel: Option<&str>) -> Option<&Secret> {
        channel
            .or(self.slack.default_channel.as_deref())
            .and_then(|channel| self.slack.webhooks.get(channel))
            .or(self
                .slack
                .fallback_webhook
                .as_ref()
                .filter(|w| !w.is_empty()))
    }

    /// The routing key of PagerDuty `service`.
    pub fn routing_key(&self, service: &str) -> Option<&Secret> {
        self.pagerduty.routing_keys.get(service).or(self
            .pagerduty
            .fallback_routing_key
            .as_ref()
            .filter(|key| !key.is_empty()))
    }
}

fn is_http_url(text: &str) -> bool {
    reqwest::Url::parse(text).is_ok_and(|url| matches!(url.scheme(), "http" | "https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEBHOOK: &str = "https://hooks.slack.com/services/T0/B0/S3CRET";

    fn config() -> NotifyConfig {
        let mut config = NotifyConfig::default();
        config
            .slack
            .webhooks
            .insert("#search".to_string(), Secret::new(WEBHOOK));
        config.slack.default_channel = Some("#search".to_string());
        config
            .pagerduty
            .routing_keys
            .insert("search".to_string(), Secret::new("R0UTINGKEY"));
        config
    }

    #[test]
    fn loads_from_toml_and_rejects_unknown_keys() {
        let text = r##"
            group_interval_secs = 60
            ca_file = "/etc/quotaflow/webhook-ca.pem"
            [retry]
            max_attempts = 3
            [slack]
            default_channel = "#search"
            webhooks = { "#search" = "https://hooks.slack.com/services/T0/B0/S3CRET" }
            [pagerduty.routing_keys]
            search = "R0UTINGKEY"
        "##;
        let config: NotifyConfig = toml::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.retry.max_attempts, 3);
        assert_eq!(config.retry.initial_backoff_ms, 200);
        assert_eq!(config.slack_webhook(None).unwrap().expose(), WEBHOOK);
        assert_eq!(config.routing_key("search").unwrap().expose(), "R0UTINGKEY");
        assert_eq!(
            config.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/quotaflow/webhook-ca.pem"))
        );
        assert!(toml::from_str::<NotifyConfig>("ca_files = \"/x.pem\"").is_err());
        assert!(toml::from_str::<NotifyConfig>("[slack]\nwebhok = {}").is_err());
    }

    #[test]
    fn secrets_never_show_in_dumps_or_validation_errors() {
        let mut config = config();
        let dump = format!("{config:?} {}", toml::to_string(&config).unwrap());
        assert!(
            !dump.contains("S3CRET") && !dump.contains("R0UTINGKEY"),
            "{dump}"
        );
        config
            .slack
            .webhooks
            .insert("#bad".to_string(), Secret::new("not a url S3CRET"));
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("slack.webhooks.#bad"), "{error}");
        assert!(!error.contains("S3CRET"), "{error}");
    }

    #[test]
    fn default_channel_needs_a_webhook() {
        let mut config = config();
        config.slack.default_channel = Some("#nowhere".to_string());
        assert!(config.validate().is_err());
    }
}
