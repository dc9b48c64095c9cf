//! Ingest and the archiver on the SASL_SSL listener of `dev/stack up --secure` (SCRAM-SHA-512 over
//! TLS, the stack's own CA): with good credentials the HTTP service produces and the archiver
//! consumes; with a wrong password or an untrusted CA the service fails at start with an error that
//! names the cause and never reports ready. No password reaches a log line or a `Debug` output.
//!
//! The listener comes from `QUOTAFLOW_TEST_KAFKA_SECURE` (default 127.0.0.1:9094) and
//! `QUOTAFLOW_TEST_KAFKA_CA` (default `.stack/secure/ca.pem`); see `infra::testkit::SecureListener`.

mod http_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http_support::{event, event_json, unique_id, Service, PRODUCER_EU};
use infra::secret::Secret;
use infra::shutdown::Shutdown;
use infra::testkit::{self, CapturedLogs, SecureListener};
use reqwest::StatusCode;
use tokio::net::TcpListener;

/// How long a service may take to give up on brokers that refuse it.
const FAILURE_DEADLINE: Duration = Duration::from_secs(60);

/// Fails if `secret` appears in anything logged so far by this test process.
#[track_caller]
fn assert_not_logged(logs: &CapturedLogs, secret: &str) {
    let text = logs.text();
    assert!(
        !text.is_empty(),
        "the log capture saw nothing, so it proves nothing"
    );
    let leaks: Vec<&str> = text.lines().filter(|line| line.contains(secret)).collect();
    assert!(
        leaks.is_empty(),
        "a secret was logged:\n{}",
        leaks.join("\n")
    );
}

/// The error and its sources, as an operator reads them.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn ingest_produces_and_the_archiver_consumes_over_sasl_ssl() {
    let logs = testkit::capture_logs();
    let listener = SecureListener::from_env();
    let test = "sasl_ok";
    let kafka = testkit::secure_kafka_config(test);
    let service = Service::start(test, |config| config.kafka = kafka.clone()).await;

    let sent = event(PRODUCER_EU, &unique_id("secure"));
    let answer = service
        .post_json(&serde_json::json!([event_json(&sent)]))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body["accepted"], 1);

    // The archiver (its own consumer group) reads the usage topic over SASL_SSL into ClickHouse.
    let mut archive_config = quotaflow_archiver::Config {
        kafka: service.config.kafka.clone(),
        clickhouse: service.config.clickhouse.clone(),
        validation: service.config.validation.clone(),
        pricing: service.config.pricing.clone(),
        ..quotaflow_archiver::Config::default()
    };
    archive_config.archive.group_id = testkit::unique_name("secure-archive");
    archive_config.archive.batch_max_age_ms = 100;
    let shutdown = Shutdown::new();
    let archiver = tokio::spawn({
        let config = archive_config.clone();
        let shutdown = shutdown.clone();
        async move { quotaflow_archiver::run(&config, shutdown).await }
    });
    let client = infra::clickhouse::client(&archive_config.clickhouse);
    let sql = format!(
        "SELECT count() FROM usage_events WHERE event_id = '{}'",
        sent.event_id
    );
    testkit::eventually(
        Duration::from_secs(60),
        "the archiver to store the event",
        || async {
            let count: u64 = client.query(&sql).fetch_one().await.ok()?;
            (count == 1).then_some(())
        },
    )
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), archiver)
        .await
        .expect("archiver stops")
        .expect("archiver task")
        .expect("archiver ran without error");

    let consumed = http_support::consume_usage(&kafka, 1).await;
    assert_eq!(consumed[0].event_id, sent.event_id);

    assert!(!format!("{:?}", service.config).contains(listener.password.expose()));
    service.stop().await;
    assert_not_logged(&logs, listener.password.expose());
}

/// Starts ingest with `kafka` and expects it to fail at start, `/readyz` never 200 meanwhile;
/// returns the error as text.
async fn start_fails(test: &str, kafka: infra::config::KafkaConfig) -> String {
    let mut config = ingest::Config {
        kafka,
        clickhouse: testkit::clickhouse_config(test),
        ..ingest::Config::default()
    };
    config.api.tokens = http_support::tokens();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let readyz = format!("http://{}/readyz", listener.local_addr().unwrap());
    let service = tokio::spawn(ingest::run_with_listener(
        config.clone(),
        listener,
        Shutdown::new(),
    ));
    let client = reqwest::Client::new();
    let mut probes_answered = 0;
    let started = tokio::time::Instant::now();
    while !service.is_finished() {
        assert!(
            started.elapsed() < FAILURE_DEADLINE,
            "the service neither started nor failed within {FAILURE_DEADLINE:?}"
        );
        // Refused once the service has given up and closed its listener.
        if let Ok(response) = client.get(&readyz).send().await {
            assert_ne!(
                response.status(),
                StatusCode::OK,
                "ready with bad credentials"
            );
            probes_answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        probes_answered > 0,
        "/readyz was never asked before the failure"
    );
    let error = service
        .await
        .expect("service task did not panic")
        .expect_err("the service must not start");
    testkit::drop_database(&config.clickhouse).await.unwrap();
    let text = error_chain(&error);
    let debug = format!("{error:?} {config:?}");
    assert!(
        !text.contains(config.kafka.security.password.expose()),
        "{text}"
    );
    assert!(
        !debug.contains(config.kafka.security.password.expose()),
        "{debug}"
    );
    text
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_wrong_password_fails_at_start_naming_authentication() {
    let logs = testkit::capture_logs();
    let wrong_password = "wrong-pa55word-4c1d";
    let mut kafka = testkit::secure_kafka_config("sasl_wrong_password");
    kafka.security.password = Secret::new(wrong_password);

    let error = start_fails("sasl_wrong_password", kafka).await;
    assert!(error.contains("authentication failed"), "{error}");
    assert!(error.contains("kafka.security.password"), "{error}");
    assert_not_logged(&logs, wrong_password);
    assert_not_logged(&logs, SecureListener::from_env().password.expose());
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn an_untrusted_ca_fails_at_start_naming_certificate_verification() {
    let logs = testkit::capture_logs();
    let directory = std::env::temp_dir().join(testkit::unique_name("untrusted-ca"));
    std::fs::create_dir_all(&directory).unwrap();
    let untrusted_ca = make_ca(&directory);
    let mut kafka = testkit::secure_kafka_config("sasl_untrusted_ca");
    kafka.security.ca_file = Some(untrusted_ca);

    let error = start_fails("sasl_untrusted_ca", kafka).await;
    std::fs::remove_dir_all(&directory).unwrap();
    assert!(error.contains("certificate verify failed"), "{error}");
    assert!(error.contains("kafka.security.ca_file"), "{error}");
    assert_not_logged(&logs, SecureListener::from_env().password.expose());
}

/// A self-signed CA that signed nothing the broker presents (openssl, from `dev/setup`).
fn make_ca(directory: &Path) -> PathBuf {
    let ca = directory.join("ca.pem");
    let output = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=untrusted test CA", "-keyout"])
        .arg(directory.join("ca.key"))
        .arg("-out")
        .arg(&ca)
        .output()
        .expect("openssl runs (dev/setup installs it)");
    assert!(output.status.success(), "openssl: {output:?}");
    ca
}
