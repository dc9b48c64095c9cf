//! Sending one JSON body with retries, shared by the Slack and PagerDuty notifiers.
//!
//! # Rule
//! - A 2xx is delivered.
//! - Connection errors, TLS handshake failures ([`NotifyError::Tls`]), attempt timeouts, HTTP 408
//!   and 5xx are retried after an exponential backoff:
//!   `initial_backoff_ms`, doubling, at most `max_backoff_ms`.
//! - HTTP 429 is retried after its `Retry-After` (in seconds) when given, else after the backoff. A
//!   `Retry-After` longer than `max_retry_after_secs` is not waited for: the error is returned
//!   (retryable) so the caller does not hold a worker that long. HTTP-date values are treated as absent.
//! - Any other status (400, 403, 404, 410, ...) is returned at once as [`NotifyError::Rejected`].
//! - After `max_attempts` attempts the last failure is returned.
//!
//! The body is serialized once and the same bytes are sent on every attempt, so a PagerDuty
//! `dedup_key` cannot change between retries.
//!
//! Every failed attempt is counted in `quotaflow_alerter_notify_failures_total{service, reason}` and logged
//! (`warn`) with its error.
//!
//! Nothing here logs or returns the URL: errors are built from the status, the reqwest error without
//! its URL, and response bodies with every secret occurrence replaced by `<redacted>`.

use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{NotifyError, Service};

/// How a notification is retried. Defaults: 5 attempts, 200 ms doubling up to 5 s, `Retry-After` up
/// to 60 s, 10 s per attempt — about a minute in the worst case without 429s, so a notifier should run
/// off the evaluation path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; at least 1.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles after each retry.
    pub initial_backoff_ms: u64,
    /// Upper bound of the doubling backoff.
    pub max_backoff_ms: u64,
    /// The longest `Retry-After` a 429 may ask for and still be waited for; longer ones end the
    /// attempts with [`NotifyError::RateLimited`].
    pub max_retry_after_secs: u64,
    /// Deadline of one attempt (connect, send, response headers and body).
    pub attempt_timeout_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff_ms: 200,
            max_backoff_ms: 5_000,
            max_retry_after_secs: 60,
            attempt_timeout_ms: 10_000,
        }
    }
}

impl RetryPolicy {
    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), NotifyError> {
        if self.max_attempts == 0 {
            return Err(NotifyError::Config(
                "retry.max_attempts must be at least 1".to_string(),
            ));
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            return Err(NotifyError::Config(format!(
                "retry.initial_backoff_ms ({}) exceeds retry.max_backoff_ms ({})",
                self.initial_backoff_ms, self.max_backoff_ms
            )));
        }
        if self.attempt_timeout_ms == 0 {
            return Err(NotifyError::Config(
                "retry.attempt_timeout_ms must be positive".to_string(),
            ));
        }
        Ok(())
    }

    /// The back-off rule: from `initial_backoff_ms` doubling to `max_backoff_ms`, with jitter.
    pub fn backoff_rule(&self) -> infra::retry::Backoff {
        infra::retry::Backoff::new(
            Duration::from_millis(self.initial_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
        )
    }

    /// Backoff before retry number `retry` (0 for the first retry), jittered between half its
    /// ceiling and the ceiling ([`infra::retry`]).
    pub fn backoff(&self, retry: u32) -> Duration {
        self.backoff_rule().delay(retry)
    }
}

/// Strings that must never appear in an error: the secret, and for URLs its path and query (where
/// Slack keeps the token), in case a receiver or library echoes only those. Its `Debug` does not
/// print them.
#[derive(Clone)]
pub(crate) struct Redactor {
    needles: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor(<redacted>)")
    }
}

impl Redactor {
    pub(crate) fn new(secret: &str) -> Self {
        let mut needles = vec![secret.to_string()];
        if let Ok(url) = reqwest::Url::parse(secret) {
            if url.path().len() > 1 {
                needles.push(url.path().to_string());
            }
            if let Some(query) = url.query() {
                needles.push(query.to_string());
            }
        }
        needles.retain(|needle| !needle.is_empty());
        Self { needles }
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        self.needles.iter().fold(text.to_string(), |text, needle| {
            text.replace(needle.as_str(), "<redacted>")
        })
    }
}

/// Longest response body excerpt kept in a [`NotifyError::Rejected`].
const MAX_DETAIL_CHARS: usize = 300;

/// POSTs `body` (JSON) to `url` following `policy`. Returns the number of attempts made.
pub(crate) async fn post_json(
    http: &reqwest::Client,
    service: Service,
    url: &str,
    body: &serde_json::Value,
    policy: &RetryPolicy,
    redactor: &Redactor,
) -> Result<u32, NotifyError> {
    let bytes = serde_json::to_vec(body).map_err(|error| NotifyError::InvalidRequest {
        service,
        detail: format!("cannot serialize the payload: {error}"),
    })?;
    post_bytes(http, service, url, bytes, &[], policy, redactor)
        .await
        .map(|(attempts, _status)| attempts)
}

/// [`post_json`] of a body already serialized, with extra `headers` (a signature): retried the
/// same way; returns the attempts it took and the HTTP status that accepted it.
pub(crate) async fn post_bytes(
    http: &reqwest::Client,
    service: Service,
    url: &str,
    bytes: Vec<u8>,
    headers: &[(&'static str, String)],
    policy: &RetryPolicy,
    redactor: &Redactor,
) -> Result<(u32, u16), NotifyError> {
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut request = http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .timeout(Duration::from_millis(policy.attempt_timeout_ms));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let sent = request.body(bytes.clone()).send().await;
        let (failure, wait) = match sent {
            Ok(response) if response.status().is_success() => {
                debug!(%service, attempt, status = response.status().as_u16(), "notification delivered");
                return Ok((attempt, response.status().as_u16()));
            }
            Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                let retry_after = retry_after(response.headers());
                let failure = NotifyError::RateLimited {
                    service,
                    attempts: attempt,
                    retry_after,
                };
                count_failure(service, &failure);
                if retry_after.is_some_and(|wait| wait.as_secs() > policy.max_retry_after_secs) {
                    warn!(%service, attempt, retry_after_secs = retry_after.map(|wait| wait.as_secs()),
                        "notification rate limited for longer than allowed; giving up for now");
                    return Err(failure);
                }
                (
                    failure,
                    retry_after.unwrap_or_else(|| policy.backoff(attempt - 1)),
                )
            }
            Ok(response)
                if response.status().is_server_error()
                    || response.status() == StatusCode::REQUEST_TIMEOUT =>
            {
                let failure = NotifyError::Unavailable {
                    service,
                    status: response.status().as_u16(),
                    attempts: attempt,
                };
                count_failure(service, &failure);
                (failure, policy.backoff(attempt - 1))
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                let detail = crate::notify::truncate_chars(
                    redactor.redact(text.trim()).as_str(),
                    MAX_DETAIL_CHARS,
                );
                warn!(%service, attempt, status, "notification refused; not retrying");
                let failure = NotifyError::Rejected {
                    service,
                    status,
                    detail,
                };
                count_failure(service, &failure);
                return Err(failure);
            }
            Err(error) if error.is_builder() => {
                let failure = NotifyError::InvalidRequest {
                    service,
                    detail: redactor.redact(&error_chain(error)),
                };
                count_failure(service, &failure);
                return Err(failure);
            }
            Err(error) => {
                let is_tls = is_tls_failure(&error);
                let detail = redactor.redact(&error_chain(error));
                let failure = if is_tls {
                    NotifyError::Tls {
                        service,
                        attempts: attempt,
                        detail,
                    }
                } else {
                    NotifyError::Transport {
                        service,
                        attempts: attempt,
                        detail,
                    }
                };
                count_failure(service, &failure);
                (failure, policy.backoff(attempt - 1))
            }
        };
        if attempt >= max_attempts {
            warn!(%service, attempts = attempt, error = %failure, "notification failed; attempts exhausted");
            return Err(failure);
        }
        warn!(%service, attempt, wait_ms = wait.as_millis() as u64, error = %failure,
            "notification attempt failed; retrying");
        tokio::time::sleep(wait).await;
    }
}

/// Counts one failed attempt by service and bounded reason.
fn count_failure(service: Service, failure: &NotifyError) {
    metrics::counter!(crate::service::metric::NOTIFY_FAILURES,
        "service" => service.as_str(), "reason" => failure.reason())
    .increment(1);
}

/// Whether rustls refused the connection (a certificate that does not verify, a handshake that
/// fails, a peer that does not speak TLS). rustls errors reach reqwest wrapped in `io::Error`s
/// (hyper-rustls wraps tokio-rustls' wrapper), whose `source()` skips the error they wrap, so every
/// `io::Error` met is opened too.
fn is_tls_failure(error: &reqwest::Error) -> bool {
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = vec![error];
    while let Some(current) = pending.pop() {
        if current.is::<rustls::Error>() {
            return true;
        }
        if let Some(wrapped) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            pending.push(wrapped);
        }
        pending.extend(current.source());
    }
    false
}

/// `Retry-After` in whole seconds; HTTP-date values and garbage count as absent.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The reqwest error and its sources, without the URL reqwest would print.
fn error_chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_bound() {
        let policy = RetryPolicy::default();
        let ceilings: Vec<u64> = (0..7)
            .map(|retry| policy.backoff_rule().ceiling(retry).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [200, 400, 800, 1600, 3200, 5000, 5000]);
        // Jittered between half the ceiling and the ceiling.
        for retry in [0, 3, 6, u32::MAX] {
            let ceiling = policy.backoff_rule().ceiling(retry);
            let wait = policy.backoff(retry);
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{retry}: {wait:?}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn redactor_removes_the_url_its_path_and_query() {
        let redactor = Redactor::new("https://hooks.slack.com/services/T1/B2/TOKEN?x=SECRETQ");
        let text = "bad: https://hooks.slack.com/services/T1/B2/TOKEN?x=SECRETQ and /services/T1/B2/TOKEN and x=SECRETQ";
        let redacted = redactor.redact(text);
        assert!(!redacted.contains("TOKEN"), "{redacted}");
        assert!(!redacted.contains("SECRETQ"), "{redacted}");
        let key = Redactor::new("R0UTINGKEY");
        assert_eq!(
            key.redact("key R0UTINGKEY is invalid"),
            "key <redacted> is invalid"
        );
    }

    #[test]
    fn invalid_settings_are_refused() {
        let zero_attempts = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(zero_attempts.validate().is_err());
        let inverted = RetryPolicy {
            initial_backoff_ms: 10_000,
            ..RetryPolicy::default()
        };
        assert!(inverted.validate().is_err());
        assert!(RetryPolicy::default().validate().is_ok());
    }
}
