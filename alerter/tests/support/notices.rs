//! A notice and retry settings shared by the notifier tests. Included with
//! `#[path = "support/notices.rs"] mod notices;`.

use alerter::notify::{Notice, NoticeKind, NoticeWindow, Owner, RetryPolicy};
use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;

/// Retries without the production waits, so only `Retry-After` takes real time.
pub fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff_ms: 1,
        max_backoff_ms: 10,
        max_retry_after_secs: 5,
        attempt_timeout_ms: 5_000,
    }
}

/// A soft alert at 90% of a monthly USD quota.
pub fn notice() -> Notice {
    Notice {
        policy_id: "search-monthly".to_string(),
        owner: Owner {
            team: "search".to_string(),
            contact: "@search-oncall".to_string(),
        },
        scope: "team=search|model=gpt-4o".to_string(),
        window: NoticeWindow {
            kind: "monthly".to_string(),
            tz: "UTC".to_string(),
            start: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
        },
        unit: "USD".to_string(),
        spent: Decimal::new(92_550, 2),
        limit: Decimal::new(1000, 0),
        threshold_percent: 90,
        kind: NoticeKind::SoftAlert,
        burn_rate_per_hour: Some(Decimal::new(1875, 2)),
        projected_cap_at: Some(Utc.with_ymd_and_hms(2026, 11, 27, 23, 0, 0).unwrap()),
        approval_command: Some(
            "quotaflow approve --policy search-monthly --scope 'team=search|model=gpt-4o' --add 500"
                .to_string(),
        ),
        slack_channel: Some("#search-alerts".to_string()),
        pagerduty_service: Some("search".to_string()),
        detail: None,
        threshold_amount: None,
    }
}
