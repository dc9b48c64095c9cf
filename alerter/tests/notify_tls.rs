//! The Slack and PagerDuty notifiers over HTTPS, against the payload-checking receiver
//! ([`alerter::receiver`]) serving TLS on 127.0.0.1 with certificates made at run time by a
//! throwaway CA. The notifiers use the production client ([`NotifyConfig::http_client`]): built-in
//! webpki roots plus `ca_file`.

#[path = "support/logs.rs"]
mod logs;
#[path = "support/notices.rs"]
mod notices;

use std::path::PathBuf;

use alerter::notify::pagerduty::PagerDutyNotifier;
use alerter::notify::slack::SlackNotifier;
use alerter::notify::{NotifyConfig, NotifyError, RetryPolicy};
use alerter::receiver::{Receiver, TlsListener};
use infra::secret::Secret;
use infra::testkit;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tracing::Instrument;

use logs::{case, Logs};
use notices::{fast_retries, notice};

const SLACK_TOKEN: &str = "XoXbTlsW3bh00kS3cr3t";
const ROUTING_KEY: &str = "R0ut1ngK3yTlsN3v3rL0gg3d00000000";

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

/// The receiver serving HTTPS with a certificate of `ca`; stops when dropped.
struct HttpsReceiver {
    port: u16,
    receiver: Receiver,
    server: tokio::task::JoinHandle<()>,
}

impl HttpsReceiver {
    async fn start(ca: &TestCa) -> HttpsReceiver {
        let (certificate, key) = ca.server_certificate();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let listener = TlsListener::new(tcp, certificate.as_bytes(), key.as_bytes()).unwrap();
        let receiver = Receiver::new(ROUTING_KEY);
        let router = receiver.router();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        HttpsReceiver {
            port,
            receiver,
            server,
        }
    }

    /// The Slack webhook, with its secret token in the query (the receiver routes on the path).
    fn slack_webhook(&self) -> Secret {
        Secret::new(format!(
            "https://localhost:{}/slack?token={SLACK_TOKEN}",
            self.port
        ))
    }

    fn pagerduty_url(&self) -> String {
        format!("https://127.0.0.1:{}/pagerduty", self.port)
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
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

/// The value of `alerter_notify_failures_total{service, reason}` in this process (0 when unseen).
fn notify_failures(service: &str, reason: &str) -> u64 {
    let service_label = format!("service=\"{service}\"");
    let reason_label = format!("reason=\"{reason}\"");
    infra::telemetry::prometheus()
        .render()
        .lines()
        .filter(|line| line.starts_with("alerter_notify_failures_total{"))
        .filter(|line| line.contains(&service_label) && line.contains(&reason_label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn slack_and_pagerduty_deliver_over_https_to_a_receiver_signed_by_the_ca_file() {
    let logs = Logs::global();
    let ca = TestCa::new("quotaflow test CA");
    let receiver = HttpsReceiver::start(&ca).await;
    let http = client_trusting(&ca);
    let slack = SlackNotifier::new(receiver.slack_webhook(), http.clone())
        .with_retry_policy(fast_retries_of(1));
    let pagerduty = PagerDutyNotifier::new(receiver.pagerduty_url(), http)
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

    let captured = receiver.receiver.captured();
    assert!(
        captured.refused.is_empty(),
        "the receiver refused payloads: {:?}",
        captured.refused
    );
    let slack_messages = captured.bodies("/slack");
    assert_eq!(slack_messages.len(), 1, "{slack_messages:?}");
    assert_eq!(slack_messages[0]["blocks"][0]["type"], "header");
    assert!(slack_messages[0]["text"]
        .as_str()
        .unwrap()
        .contains("925.50 / 1000 USD (92.6%)"));
    let events = captured.bodies("/pagerduty");
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
    let receiver = HttpsReceiver::start(&unknown).await;
    let slack = SlackNotifier::new(receiver.slack_webhook(), client_trusting(&trusted))
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
    assert_eq!(receiver.receiver.captured(), Default::default());
}
