//! The Slack and PagerDuty notifiers over HTTPS, against the payload-checking receiver
//! ([`alerter::receiver`]) serving TLS on 127.0.0.1 with certificates made at run time by a
//! throwaway CA. The notifiers use the production client ([`NotifyConfig::http_client`]): built-in
//! webpki roots plus `ca_file`. The last test runs the whole alerter on the local stack.

mod support;

#[path = "support/logs.rs"]
mod logs;
#[path = "support/notices.rs"]
mod notices;

use std::path::PathBuf;
use std::time::Duration;

use alerter::notify::pagerduty::PagerDutyNotifier;
use alerter::notify::slack::SlackNotifier;
use alerter::notify::{NotifyConfig, NotifyError, RedeliveryPolicy, RetryPolicy};
use infra::secret::Secret;
use infra::testkit;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tracing::Instrument;

use logs::{case, Logs};
use notices::{fast_retries, notice};
use support::{Receivers, ROUTING_KEY};

const SLACK_TOKEN: &str = "XoXbTlsW3bh00kS3cr3t";

/// A certificate authority made for one test; nothing outside the test trusts it.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    /// A server certificate for `localhost` and `127.0.0.1`: (certificate PEM, key PEM).
    fn server_certificate(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (certificate.pem(), key.serialize_pem())
    }

    /// The CA certificate in a PEM file of its own, as `ca_file` takes it.
    fn pem_file(&self) -> PathBuf {
        let path = std::env::temp_dir().join(format!("{}.pem", testkit::unique_name("test_ca")));
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }
}

/// The receivers (`/slack`, `/pagerduty`) over HTTPS with a certificate of `ca`, on `port`
/// (0: a free one).
async fn https_receivers(ca: &TestCa, port: u16) -> Receivers {
    let (certificate, key) = ca.server_certificate();
    Receivers::start_https(&certificate, &key, port).await
}

/// The Slack webhook of `receivers`, by host name, with its secret token in the query (the
/// receiver routes on the path).
fn slack_webhook(receivers: &Receivers) -> Secret {
    let base_url = receivers.base_url.replace("127.0.0.1", "localhost");
    Secret::new(format!("{base_url}/slack?token={SLACK_TOKEN}"))
}

/// The production client, trusting `ca` besides the built-in roots.
fn client_trusting(ca: &TestCa) -> reqwest::Client {
    let config = NotifyConfig {
        ca_file: Some(ca.pem_file()),
        ..NotifyConfig::default()
    };
    config.http_client().unwrap()
}

/// Retries without the production waits, `max_attempts` in all.
fn fast_retries_of(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        ..fast_retries()
    }
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(SLACK_TOKEN), "webhook token leaked: {text}");
    assert!(!text.contains("/slack?token"), "webhook URL leaked: {text}");
    assert!(!text.contains(ROUTING_KEY), "routing key leaked: {text}");
}

/// The value of the counter `name` with these labels in this process (0 when unseen).
fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    let labels: Vec<String> = labels
        .iter()
        .map(|(label, value)| format!("{label}=\"{value}\""))
        .collect();
    infra::telemetry::prometheus()
        .render()
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label.as_str())))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn notify_failures(service: &str, reason: &str) -> u64 {
    counter(
        "quotaflow_alerter_notify_failures_total",
        &[("service", service), ("reason", reason)],
    )
}

#[tokio::test]
async fn slack_and_pagerduty_deliver_over_https_to_a_receiver_signed_by_the_ca_file() {
    let logs = Logs::global();
    let ca = TestCa::new("quotaflow test CA");
    let receivers = https_receivers(&ca, 0).await;
    let http = client_trusting(&ca);
    let slack = SlackNotifier::new(slack_webhook(&receivers), http.clone())
        .with_retry_policy(fast_retries_of(1));
    let pagerduty = PagerDutyNotifier::new(format!("{}/pagerduty", receivers.base_url), http)
        .with_retry_policy(fast_retries_of(1));
    let routing_key = Secret::new(ROUTING_KEY);

    // One attempt each: a delivery that needed a retry would fail here.
    async {
        slack.send(&notice()).await.unwrap();
        let dedup_key = pagerduty.trigger(&routing_key, &notice()).await.unwrap();
        pagerduty.resolve(&routing_key, &dedup_key).await.unwrap();
    }
    .instrument(case("https_delivered"))
    .await;

    // Every payload passed the receiver's checks (`slack()` and `pagerduty()` assert it).
    let slack_messages = receivers.slack();
    assert_eq!(slack_messages.len(), 1, "{slack_messages:?}");
    assert_eq!(slack_messages[0]["blocks"][0]["type"], "header");
    assert!(slack_messages[0]["text"]
        .as_str()
        .unwrap()
        .contains("925.50 / 1000 USD (92.6%)"));
    let events = receivers.pagerduty();
    let actions: Vec<&str> = events
        .iter()
        .map(|event| event["event_action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["trigger", "resolve"]);
    assert_eq!(events[0]["dedup_key"], events[1]["dedup_key"]);
    assert_eq!(events[0]["payload"]["severity"], "warning");
    assert_no_secret(&logs.lines_of("https_delivered").join("\n"));
}

#[tokio::test]
async fn an_untrusted_certificate_fails_as_tls_is_retried_counted_and_never_logs_the_webhook() {
    let logs = Logs::global();
    let tls_failures_before = notify_failures("slack", "tls");
    let trusted = TestCa::new("the CA the alerter was given");
    let unknown = TestCa::new("a CA nobody told the alerter about");
    let receivers = https_receivers(&unknown, 0).await;
    let slack = SlackNotifier::new(slack_webhook(&receivers), client_trusting(&trusted))
        .with_retry_policy(fast_retries_of(3));

    let error = slack
        .send(&notice())
        .instrument(case("untrusted_certificate"))
        .await
        .unwrap_err();

    // A TLS failure that names its cause, kept retryable so the caller keeps the notice.
    assert!(
        matches!(error, NotifyError::Tls { attempts: 3, .. }),
        "{error:?}"
    );
    assert!(error.is_retryable(), "{error}");
    assert_eq!(error.reason(), "tls");
    let message = error.to_string();
    assert!(
        message.contains("TLS") && message.contains("certificate"),
        "{message}"
    );
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert_no_secret(&format!("{message} {error:?}"));

    // Every attempt was made, and counted.
    assert_eq!(notify_failures("slack", "tls") - tls_failures_before, 3);

    // Logged with the cause, on every retry and when the attempts ran out; never the webhook.
    let lines = logs.lines_of("untrusted_certificate");
    let retries = lines
        .iter()
        .filter(|line| line.contains("retrying") && line.contains("UnknownIssuer"))
        .count();
    assert_eq!(retries, 2, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|line| line.contains("attempts exhausted") && line.contains("certificate")),
        "{lines:#?}"
    );
    assert_no_secret(&logs.text());

    // The handshake failed, so no request reached the receiver.
    assert!(receivers.slack().is_empty() && receivers.pagerduty().is_empty());
}

#[tokio::test]
async fn an_https_url_to_a_plain_http_receiver_is_a_tls_failure_with_the_default_roots() {
    let receivers = Receivers::start().await;
    let url = receivers.base_url.replace("http://", "https://");
    let http = NotifyConfig::default().http_client().unwrap();
    let pagerduty = PagerDutyNotifier::new(format!("{url}/pagerduty"), http)
        .with_retry_policy(fast_retries_of(1));

    let error = pagerduty
        .trigger(&Secret::new(ROUTING_KEY), &notice())
        .await
        .unwrap_err();

    assert!(
        matches!(error, NotifyError::Tls { attempts: 1, .. }),
        "{error:?}"
    );
    assert_no_secret(&format!("{error} {error:?}"));
    assert!(receivers.pagerduty().is_empty());
}

const HARD_CAP: &str = r#"
id: t-tls-cap
description: A test cap per API key and day, paging.
owner: {team: search, contact: search-oncall@example.com, pagerduty_service: search-quota}
environment: prod
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: 10
action: {kind: block}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn the_alerter_keeps_notifications_an_untrusted_receiver_refused_and_delivers_them_once_trusted(
) {
    let logs = Logs::global();
    let given = TestCa::new("the CA in notify.ca_file");
    let unknown = TestCa::new("a CA the alerter does not know");
    let untrusted = https_receivers(&unknown, 0).await;
    let port = untrusted.port();
    let mut config = support::config("notify_tls", HARD_CAP, &untrusted);
    config.notify.ca_file = Some(given.pem_file());
    config.notify.slack.fallback_webhook = Some(slack_webhook(&untrusted));
    config.notify.retry = fast_retries_of(2);
    config.notify.redelivery = RedeliveryPolicy {
        capacity: 100,
        initial_delay_ms: 100,
        max_delay_ms: 400,
    };
    let kept_pages = || {
        counter(
            "quotaflow_alerter_notifications_total",
            &[("service", "pagerduty"), ("outcome", "pending")],
        )
    };
    let pages_kept_before = kept_pages();
    let tls_failures_before = notify_failures("pagerduty", "tls");
    let alerter = support::start(&config).await;

    // The cap is reached: the alerter pages and posts, the handshakes fail.
    let start_at = support::now_s() - chrono::TimeDelta::seconds(60);
    let end_at = support::now_s() + chrono::TimeDelta::hours(1);
    support::produce_totals(
        &config.kafka,
        &[support::policy_total(
            "t-tls-cap",
            "api_key_id=k1",
            start_at,
            end_at,
            "10",
            1,
        )],
    )
    .await;

    // Kept, and sent again in a later round that failed too: retried, not dropped.
    testkit::eventually(
        Duration::from_secs(30),
        "two failed rounds of the page",
        || async { (kept_pages() - pages_kept_before >= 2).then_some(()) },
    )
    .await;
    assert!(notify_failures("pagerduty", "tls") - tls_failures_before >= 4);
    assert!(untrusted.slack().is_empty() && untrusted.pagerduty().is_empty());

    // The receiver now presents a certificate of the CA the alerter was given, on the same port.
    untrusted.stop().await;
    let trusted = https_receivers(&given, port).await;
    support::wait_receivers(&trusted, "the kept page and message", |receivers| {
        receivers.pagerduty_actions("trigger").len() == 1
            && receivers.slack_containing("hard cap reached") == 1
    })
    .await;

    let text = logs.text();
    assert!(
        text.lines()
            .any(|line| line.contains("kept to be sent again") && line.contains("UnknownIssuer")),
        "the kept notification and its TLS cause were logged"
    );
    assert_no_secret(&text);
    alerter.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
