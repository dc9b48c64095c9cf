//! The Slack and PagerDuty notifiers against a local receiver on 127.0.0.1 that scripts its answers
//! and records every request with its arrival time. Nothing leaves the machine; waits are measured
//! with the receiver's timestamps, and nothing sleeps to synchronise.

#[path = "support/logs.rs"]
mod logs;
#[path = "support/notices.rs"]
mod notices;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alerter::notify::pagerduty::{self, PagerDutyNotifier};
use alerter::notify::slack::SlackNotifier;
use alerter::notify::{IncidentKind, NoticeKind, NotifyError, RetryPolicy};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use infra::secret::Secret;
use serde_json::Value;
use tracing::Instrument;

use logs::{case, Logs};
use notices::{fast_retries, notice};

const SLACK_TOKEN: &str = "XoXbS3cr3tW3bh00kT0k3n";
const ROUTING_KEY: &str = "R0ut1ngK3yN3v3rL0gg3d0000000000";

/// One scripted answer; when the script is exhausted the receiver answers its default status.
struct Answer {
    status: u16,
    retry_after: Option<&'static str>,
    body: String,
}

impl Answer {
    fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            body: String::new(),
        }
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Request {
    at: Instant,
    path: String,
    body: Value,
}

struct ReceiverState {
    script: VecDeque<Answer>,
    default_status: u16,
    requests: Vec<Request>,
}

/// A local HTTP receiver; the server task stops when it is dropped.
struct Receiver {
    base_url: String,
    state: Arc<Mutex<ReceiverState>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(default_status: u16, script: Vec<Answer>) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState {
            script: script.into(),
            default_status,
            requests: Vec::new(),
        }));
        let app = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base_url,
            state,
            server,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(State(state): State<Arc<Mutex<ReceiverState>>>, uri: Uri, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    state.requests.push(Request {
        at: Instant::now(),
        path: uri.path().to_string(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let answer = state
        .script
        .pop_front()
        .unwrap_or_else(|| Answer::status(state.default_status));
    let status = StatusCode::from_u16(answer.status).unwrap();
    match answer.retry_after {
        Some(seconds) => (status, [("retry-after", seconds)], answer.body).into_response(),
        None => (status, answer.body).into_response(),
    }
}

/// Local traffic only, whatever proxy the environment names.
fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn slack(receiver: &Receiver) -> SlackNotifier {
    let webhook = Secret::new(format!(
        "{}/services/T000/B000/{SLACK_TOKEN}",
        receiver.base_url
    ));
    SlackNotifier::new(webhook, http()).with_retry_policy(fast_retries())
}

fn pagerduty(receiver: &Receiver) -> PagerDutyNotifier {
    PagerDutyNotifier::new(format!("{}/v2/enqueue", receiver.base_url), http())
        .with_retry_policy(fast_retries())
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(SLACK_TOKEN), "webhook token leaked: {text}");
    assert!(!text.contains(ROUTING_KEY), "routing key leaked: {text}");
}

fn assert_error_has_no_secret(error: &NotifyError) {
    assert_no_secret(&format!("{error} {error:?}"));
}

#[tokio::test]
async fn slack_posts_block_kit_with_the_figures_and_never_logs_the_webhook() {
    let logs = Logs::global();
    let receiver = Receiver::start(200, vec![Answer::status(503)]).await;

    slack(&receiver)
        .send(&notice())
        .instrument(case("slack_block_kit"))
        .await
        .unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "the 503 was retried");
    assert_eq!(
        requests[0].path,
        format!("/services/T000/B000/{SLACK_TOKEN}")
    );
    assert_eq!(
        requests[0].body, requests[1].body,
        "a retry sends the same body"
    );
    let body = &requests[1].body;
    assert!(body["text"]
        .as_str()
        .unwrap()
        .contains("925.50 / 1000 USD (92.6%)"));
    let blocks = body["blocks"].as_array().expect("blocks present");
    assert_eq!(blocks[0]["type"], "header");
    let header = blocks[0]["text"]["text"].as_str().unwrap();
    assert!(header.contains("90% of quota used") && header.chars().count() <= 150);
    let fields: Vec<&str> = blocks[1]["fields"]
        .as_array()
        .expect("a section with fields")
        .iter()
        .map(|field| {
            assert_eq!(field["type"], "mrkdwn");
            field["text"].as_str().unwrap()
        })
        .collect();
    for expected in [
        "*Owner*\nsearch (@search-oncall)",
        "*Scope*\n`team=search|model=gpt-4o`",
        "*Spent / limit*\n925.50 / 1000 USD (92.6%)",
        "*Burn rate*\n18.75 USD/h",
        "*Projected time to cap*\n2026-11-27 23:00 UTC (before the window ends)",
    ] {
        assert!(fields.contains(&expected), "{expected:?} not in {fields:?}");
    }
    assert!(fields
        .iter()
        .any(|field| field.starts_with("*Window*\nmonthly (UTC)")));
    let rendered = body.to_string();
    assert!(rendered.contains("`quotaflow approve --policy search-monthly"));

    let retries = logs.lines_of("slack_block_kit");
    assert!(
        retries.iter().any(|line| line.contains("retrying")),
        "the retry was logged: {retries:?}"
    );
    assert_no_secret(&logs.text());
}

#[tokio::test]
async fn pagerduty_trigger_then_resolve_with_one_stable_dedup_key() {
    let logs = Logs::global();
    let receiver = Receiver::start(202, vec![Answer::status(502)]).await;
    let notifier = pagerduty(&receiver);
    let routing_key = Secret::new(ROUTING_KEY);
    let notice = notice();

    let key = notifier
        .trigger(&routing_key, &notice)
        .instrument(case("pagerduty_trigger"))
        .await
        .unwrap();
    let again = notifier.trigger(&routing_key, &notice).await.unwrap();
    notifier.resolve(&routing_key, &key).await.unwrap();

    let expected_key = pagerduty::dedup_key(
        "search-monthly",
        "team=search|model=gpt-4o",
        notice.window.start,
        IncidentKind::SoftAlert,
    );
    assert_eq!(key, expected_key);
    assert_eq!(again, expected_key, "a repeat trigger reuses the incident");
    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        4,
        "502 retried, then a repeat and a resolve"
    );
    assert!(requests.iter().all(|request| request.path == "/v2/enqueue"));
    for trigger in &requests[..3] {
        assert_eq!(
            trigger.body, requests[0].body,
            "same body on retry and repeat"
        );
    }
    let trigger = &requests[0].body;
    assert_eq!(trigger["routing_key"], ROUTING_KEY);
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], expected_key.as_str());
    let payload = &trigger["payload"];
    assert!(payload["summary"].as_str().unwrap().chars().count() <= 1024);
    assert!(payload["summary"]
        .as_str()
        .unwrap()
        .contains("925.50 / 1000 USD"));
    assert_eq!(payload["source"], "team=search|model=gpt-4o");
    assert_eq!(payload["severity"], "warning", "90% maps to warning");
    assert_eq!(payload["component"], "search-monthly");
    assert_eq!(payload["group"], "search");
    assert_eq!(payload["class"], "soft_alert");
    let details = &payload["custom_details"];
    assert_eq!(details["spent"], "925.50");
    assert_eq!(details["limit"], "1000");
    assert_eq!(details["burn_rate_per_hour"], "18.75");
    assert_eq!(details["window_start"], "2026-11-01T00:00:00Z");

    let resolve = &requests[3].body;
    assert_eq!(resolve["routing_key"], ROUTING_KEY);
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], expected_key.as_str());
    assert!(resolve.get("payload").is_none());

    let retries = logs.lines_of("pagerduty_trigger");
    assert!(
        retries.iter().any(|line| line.contains("retrying")),
        "the retry was logged: {retries:?}"
    );
    assert_no_secret(&logs.text());
}

#[tokio::test]
async fn a_resolved_notice_resolves_the_incident_it_names() {
    Logs::global();
    let receiver = Receiver::start(202, vec![]).await;
    let notifier = pagerduty(&receiver);
    let routing_key = Secret::new(ROUTING_KEY);
    let mut hard_cap = notice();
    hard_cap.kind = NoticeKind::HardCap;
    let opened = notifier.send(&routing_key, &hard_cap).await.unwrap();
    let mut resolved = hard_cap.clone();
    resolved.kind = NoticeKind::Resolved {
        of: IncidentKind::HardCap,
    };
    let closed = notifier.send(&routing_key, &resolved).await.unwrap();

    assert_eq!(opened, closed);
    let requests = receiver.requests();
    assert_eq!(requests[0].body["payload"]["severity"], "critical");
    assert_eq!(requests[1].body["event_action"], "resolve");
    let error = notifier.trigger(&routing_key, &resolved).await.unwrap_err();
    assert!(matches!(error, NotifyError::InvalidNotice(_)));
    assert_eq!(
        receiver.requests().len(),
        2,
        "nothing sent for an invalid notice"
    );
}

#[tokio::test]
async fn rate_limited_429_waits_for_retry_after_then_succeeds() {
    Logs::global();
    let receiver = Receiver::start(
        200,
        vec![Answer {
            status: 429,
            retry_after: Some("1"),
            body: "rate_limited".to_string(),
        }],
    )
    .await;

    slack(&receiver).send(&notice()).await.unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at - requests[0].at;
    // The backoff alone would be 1 ms: the second attempt came only after Retry-After.
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    assert!(waited < Duration::from_secs(5), "retried after {waited:?}");
}

#[tokio::test]
async fn retry_after_longer_than_allowed_is_not_waited_for() {
    Logs::global();
    let receiver = Receiver::start(
        200,
        vec![Answer {
            status: 429,
            retry_after: Some("3600"),
            body: String::new(),
        }],
    )
    .await;

    let error = slack(&receiver).send(&notice()).await.unwrap_err();

    assert!(
        matches!(error, NotifyError::RateLimited { attempts: 1, retry_after: Some(wait), .. }
            if wait == Duration::from_secs(3600)),
        "{error:?}"
    );
    assert!(error.is_retryable(), "the caller may try later");
    assert_eq!(receiver.requests().len(), 1);
}

#[tokio::test]
async fn bad_request_400_is_not_retried_and_the_error_hides_the_webhook() {
    let logs = Logs::global();
    let receiver = Receiver::start(
        200,
        vec![Answer {
            status: 400,
            retry_after: None,
            // A receiver echoing the path it was called on must not leak it through our error.
            body: format!("invalid_payload at /services/T000/B000/{SLACK_TOKEN}"),
        }],
    )
    .await;

    let error = slack(&receiver).send(&notice()).await.unwrap_err();

    assert_eq!(receiver.requests().len(), 1, "a 400 is not retried");
    assert!(
        matches!(&error, NotifyError::Rejected { status: 400, detail, .. } if detail.contains("invalid_payload")),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("400"), "says why: {error}");
    assert_error_has_no_secret(&error);
    assert_no_secret(&logs.text());
}

#[tokio::test]
async fn server_error_500_then_202_is_retried() {
    Logs::global();
    let receiver = Receiver::start(202, vec![Answer::status(500)]).await;

    pagerduty(&receiver)
        .trigger(&Secret::new(ROUTING_KEY), &notice())
        .await
        .unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body["dedup_key"], requests[1].body["dedup_key"]);
}

#[tokio::test]
async fn persistent_server_errors_end_retryable_after_max_attempts() {
    Logs::global();
    let receiver = Receiver::start(500, vec![]).await;
    let retries = RetryPolicy {
        max_attempts: 3,
        ..fast_retries()
    };

    let error = pagerduty(&receiver)
        .with_retry_policy(retries)
        .trigger(&Secret::new(ROUTING_KEY), &notice())
        .await
        .unwrap_err();

    assert!(
        matches!(
            error,
            NotifyError::Unavailable {
                status: 500,
                attempts: 3,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(receiver.requests().len(), 3);
    assert_error_has_no_secret(&error);
}

#[tokio::test]
async fn unreachable_receiver_is_retryable_and_the_error_hides_the_webhook() {
    let logs = Logs::global();
    // A port nobody listens on: bind, read the port, close.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let webhook = Secret::new(format!("http://{address}/services/T000/B000/{SLACK_TOKEN}"));
    let notifier = SlackNotifier::new(webhook, http()).with_retry_policy(RetryPolicy {
        max_attempts: 2,
        ..fast_retries()
    });

    let error = notifier.send(&notice()).await.unwrap_err();

    assert!(
        matches!(error, NotifyError::Transport { attempts: 2, .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_error_has_no_secret(&error);
    assert_no_secret(&format!("{notifier:?}"));
    assert_no_secret(&logs.text());
}
