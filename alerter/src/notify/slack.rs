//! Slack incoming webhooks with Block Kit.
//!
//! One [`SlackNotifier`] per webhook (a webhook posts to one channel). The message has a plain `text`
//! fallback (notifications, old clients) and `blocks`:
//! 1. `header`: what happened and to which scope (plain text, at most 150 characters, Slack's limit);
//! 2. `section` with `fields` (mrkdwn): owner, scope, window, spent / limit with percent, burn rate,
//!    projected time to cap (each at most 2000 characters, Slack's limit);
//! 3. for an anomaly, a `section` with its description;
//! 4. when there is one, a `section` with the approval command in a code span;
//! 5. a `context` naming the policy and threshold, and "and N more" for a grouped notice.
//!
//! User supplied text is escaped for mrkdwn (`&`, `<`, `>`), so a scope or command cannot inject
//! mentions or links; backticks in the command are replaced by `ˋ` so the code span stays closed.
//!
//! Delivery: see [`crate::notify`]; Slack answers 200 `ok`, and 429 with `Retry-After` when a webhook
//! posts more than about one message per second.

use infra::secret::Secret;
use serde_json::{json, Value};

use super::grouping::Grouped;
use super::retry::{self, Redactor, RetryPolicy};
use super::{amount, timestamp, truncate_chars, Measure, Notice, NoticeKind, NotifyError, Service};

/// Slack's limit on `header` text.
pub const MAX_HEADER_CHARS: usize = 150;
/// Slack's limit on each `section` field text.
pub const MAX_FIELD_CHARS: usize = 2000;
/// Slack's limit on a `section`'s text.
pub const MAX_SECTION_CHARS: usize = 3000;

/// Posts notices to one Slack incoming webhook.
#[derive(Debug, Clone)]
pub struct SlackNotifier {
    /// The webhook URL; it is the credential, so it is only exposed to build the request.
    webhook_url: Secret,
    /// Shared HTTP client (connection pool); timeouts are set per attempt from `retry`.
    http: reqwest::Client,
    /// How failed posts are retried.
    retry: RetryPolicy,
    /// Removes the webhook URL from errors.
    redactor: Redactor,
}

impl SlackNotifier {
    /// A notifier for `webhook_url` with the default [`RetryPolicy`].
    pub fn new(webhook_url: Secret, http: reqwest::Client) -> Self {
        let redactor = Redactor::new(webhook_url.expose());
        Self {
            webhook_url,
            http,
            retry: RetryPolicy::default(),
            redactor,
        }
    }

    /// The same notifier with another retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Posts `notice`, retrying as described in [`crate::notify::retry`].
    pub async fn send(&self, notice: &Notice) -> Result<(), NotifyError> {
        self.post(&payload(notice)).await
    }

    /// Posts a grouped notice: the latest notice of its group, saying how many more it stands for.
    pub async fn send_grouped(&self, grouped: &Grouped) -> Result<(), NotifyError> {
        self.post(&grouped_payload(grouped)).await
    }

    async fn post(&self, body: &Value) -> Result<(), NotifyError> {
        retry::post_json(
            &self.http,
            Service::Slack,
            self.webhook_url.expose(),
            body,
            &self.retry,
            &self.redactor,
        )
        .await
        .map(|_attempts| ())
    }
}

/// The webhook body for `notice`.
pub fn payload(notice: &Notice) -> Value {
    build(notice, 0)
}

/// The webhook body for a grouped notice; adds "and N more" when notices were folded into it.
pub fn grouped_payload(grouped: &Grouped) -> Value {
    build(&grouped.notice, grouped.folded)
}

fn build(notice: &Notice, folded: u64) -> Value {
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": { "type": "plain_text", "text": header(notice), "emoji": true },
        }),
        json!({ "type": "section", "fields": fields(notice) }),
    ];
    if let NoticeKind::Anomaly { text } = &notice.kind {
        blocks.push(section(&format!("*Anomaly*\n{}", escape(text))));
    }
    if let NoticeKind::Rule { text } = &notice.kind {
        blocks.push(section(&format!("*What happened*\n{}", escape(text))));
    }
    if let Some(detail) = &notice.detail {
        blocks.push(section(&format!("*Why*\n{}", escape(detail))));
    }
    if let Some(command) = &notice.approval_command {
        let command = escape(command).replace('`', "ˋ");
        blocks.push(section(&format!("*To approve more budget*\n`{command}`")));
    }
    let threshold = match notice.threshold_amount {
        Some(threshold) => format!("{} {}", amount(threshold), escape(&notice.unit)),
        None => format!("{}%", notice.threshold_percent),
    };
    let mut context = format!(
        "policy `{}` · threshold {threshold} · {}",
        escape(&notice.policy_id).replace('`', "ˋ"),
        notice.kind.as_str()
    );
    if folded > 0 {
        context.push_str(&format!(
            " · *and {folded} more* like this since the last message"
        ));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [ { "type": "mrkdwn", "text": truncate_chars(&context, MAX_FIELD_CHARS) } ],
    }));
    let mut text = notice.summary();
    if folded > 0 {
        text.push_str(&format!(" (and {folded} more)"));
    }
    json!({ "text": escape(&text), "blocks": blocks })
}

fn header(notice: &Notice) -> String {
    let what = match &notice.kind {
        NoticeKind::SoftAlert => format!(
            ":warning: {}: {}",
            notice.threshold_label(),
            notice.scope_label()
        ),
        NoticeKind::HardCap => format!(":no_entry: Hard cap reached: {}", notice.scope_label()),
        NoticeKind::Resolved { of } => format!(
            ":white_check_mark: Resolved ({}): {}",
            of.as_str(),
            notice.scope_label()
        ),
        NoticeKind::Anomaly { .. } => format!(":mag: Unusual spend: {}", notice.scope_label()),
        NoticeKind::Rule { .. } => {
            format!(":octagonal_sign: Policy rule: {}", notice.scope_label())
        }
    };
    truncate_chars(&what, MAX_HEADER_CHARS)
}

fn fields(notice: &Notice) -> Vec<Value> {
    let window = &notice.window;
    let projected = match notice.projected_cap_at {
        Some(at) if at < window.end => format!("{} (before the window ends)", timestamp(at)),
        Some(at) => format!("{} (after the window ends)", timestamp(at)),
        None => "not projected".to_string(),
    };
    let burn_rate = match notice.burn_rate_per_hour {
        Some(rate) => format!("{} {}/h", amount(rate), escape(&notice.unit)),
        None => "unknown".to_string(),
    };
    [
        (
            "Owner",
            format!(
                "{} ({})",
                escape(&notice.owner.team),
                escape(&notice.owner.contact)
            ),
        ),
        (
            "Scope",
            format!("`{}`", escape(&notice.scope).replace('`', "ˋ")),
        ),
        ("Window", window_field(notice)),
        ("Spent / limit", escape(&notice.amounts())),
        ("Burn rate", burn_rate),
        ("Projected time to cap", projected),
        ("Next action", escape(&notice.next_action())),
    ]
    .into_iter()
    .map(|(label, value)| {
        json!({
            "type": "mrkdwn",
            "text": truncate_chars(&format!("*{label}*\n{value}"), MAX_FIELD_CHARS),
        })
    })
    .collect()
}

/// The window, on two lines for an accounting window; a gauge or a rule finding says it has none.
fn window_field(notice: &Notice) -> String {
    let window = &notice.window;
    match notice.measure() {
        Measure::Window => format!(
            "{} ({})\n{} → {}",
            escape(&window.kind),
            escape(&window.tz),
            timestamp(window.start),
            timestamp(window.end)
        ),
        _ => escape(&notice.window_label()),
    }
}

fn section(text: &str) -> Value {
    json!({
        "type": "section",
        "text": { "type": "mrkdwn", "text": truncate_chars(text, MAX_SECTION_CHARS) },
    })
}

/// Slack's mrkdwn escaping: only `&`, `<` and `>` are control characters.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::tests::sample_notice;
    use chrono::{DateTime, Utc};
    use rust_decimal::Decimal;

    fn field_texts(payload: &Value) -> Vec<String> {
        payload["blocks"][1]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|field| field["text"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn payload_has_header_fields_command_and_fallback() {
        let payload = payload(&sample_notice());
        assert_eq!(payload["blocks"][0]["type"], "header");
        assert_eq!(
            payload["blocks"][0]["text"]["text"],
            ":warning: 80% of quota used: team=search|model=gpt-4o"
        );
        let fields = field_texts(&payload);
        assert_eq!(fields.len(), 7);
        assert!(fields.contains(
            &"*Next action*\nNothing is blocked yet. Find who is spending (`quotactl top`), slow \
              the workload down, or approve a raise with the command below before the cap is \
              reached."
                .to_string()
        ));
        assert!(fields.contains(&"*Spent / limit*\n812.40 / 1000 USD (81.2%)".to_string()));
        assert!(fields.contains(&"*Burn rate*\n12.5 USD/h".to_string()));
        assert!(fields.contains(&"*Owner*\nsearch (@search-oncall)".to_string()));
        assert!(fields
            .iter()
            .any(|field| field.contains("2026-11-28 14:00 UTC (before the window ends)")));
        let command = payload["blocks"][2]["text"]["text"].as_str().unwrap();
        assert!(command.contains("`quotaflow approve --policy search-monthly"));
        assert!(payload["text"]
            .as_str()
            .unwrap()
            .contains("812.40 / 1000 USD (81.2%)"));
    }

    /// Issue 17 point 7: a rule finding has no spend, limit or window, and says so; a gauge
    /// says "now", not a window starting in 1970.
    #[test]
    fn findings_and_gauges_do_not_pretend_to_have_windows() {
        let mut finding = sample_notice();
        finding.kind = NoticeKind::Rule {
            text: "model gpt-3 is deprecated since 2025-01-01 (price catalog)".to_string(),
        };
        finding.window.kind = crate::notify::RULE_WINDOW.to_string();
        finding.unit = "model:deprecated".to_string();
        finding.spent = Decimal::ONE;
        finding.limit = Decimal::ZERO;
        let body = payload(&finding);
        let fields = field_texts(&body);
        assert!(
            fields.contains(&"*Spent / limit*\nnot a quota level: a rule finding".to_string()),
            "{fields:?}"
        );
        let text = body["text"].as_str().unwrap();
        assert!(!text.contains("1 / 0"), "{text}");
        assert!(!text.contains("(n/a)"), "{text}");
        assert!(text.contains("rule finding"), "{text}");

        let mut gauge = sample_notice();
        gauge.kind = NoticeKind::HardCap;
        gauge.window.kind = crate::engine::CONCURRENCY_WINDOW.to_string();
        gauge.window.start = DateTime::<Utc>::UNIX_EPOCH;
        gauge.unit = "concurrent_jobs".to_string();
        gauge.spent = Decimal::from(54);
        gauge.limit = Decimal::from(40);
        let body = payload(&gauge);
        let text = body["text"].as_str().unwrap();
        assert!(!text.contains("1970"), "{text}");
        assert!(
            text.contains("at 54 / 40 concurrent_jobs (135%) now"),
            "{text}"
        );
        let fields = field_texts(&body);
        assert!(
            fields.iter().all(|field| !field.contains("1970")),
            "{fields:?}"
        );
        assert!(
            fields
                .iter()
                .any(|field| field.contains("until fewer than 40 concurrent_jobs are in flight")),
            "{fields:?}"
        );
    }

    #[test]
    fn long_texts_stay_within_slack_limits() {
        let mut notice = sample_notice();
        notice.scope = "s".repeat(5000);
        notice.owner.contact = "c".repeat(5000);
        let payload = payload(&notice);
        let header = payload["blocks"][0]["text"]["text"].as_str().unwrap();
        assert_eq!(header.chars().count(), MAX_HEADER_CHARS);
        for field in field_texts(&payload) {
            assert!(field.chars().count() <= MAX_FIELD_CHARS);
        }
    }

    #[test]
    fn user_text_cannot_inject_mentions_or_close_the_code_span() {
        let mut notice = sample_notice();
        notice.approval_command = Some("approve `rm` <!channel> & co".to_string());
        let payload = payload(&notice);
        let command = payload["blocks"][2]["text"]["text"].as_str().unwrap();
        assert_eq!(
            command,
            "*To approve more budget*\n`approve ˋrmˋ &lt;!channel&gt; &amp; co`"
        );
    }

    #[test]
    fn grouped_payload_says_how_many_more() {
        let grouped = Grouped {
            notice: sample_notice(),
            folded: 4,
        };
        let payload = grouped_payload(&grouped);
        let blocks = payload["blocks"].as_array().unwrap();
        let context = blocks.last().unwrap()["elements"][0]["text"]
            .as_str()
            .unwrap();
        assert!(context.contains("and 4 more"), "{context}");
        assert!(payload["text"].as_str().unwrap().ends_with("(and 4 more)"));
    }
}
