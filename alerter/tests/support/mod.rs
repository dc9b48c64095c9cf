//! Shared by the alerter's stack tests: local Slack and PagerDuty receivers that check every
//! payload against the documented formats, isolated configs, the alerter in process or as a
//! child process, and readers of the control topic.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use alerter::receiver::{Receiver, TlsListener};
use alerter::Config;
use chrono::{DateTime, TimeDelta, Utc};
use infra::config::{HttpConfig, KafkaConfig};
use infra::secret::Secret;
use infra::shutdown::Shutdown;
use infra::testkit;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use rust_decimal::Decimal;
use schemas::{ControlDecision, WindowTotal};
use serde_json::Value;

pub const ROUTING_KEY: &str = "R0ut1ngK3y0fTh3T3stS3rv1c3000000";

/// Slack (`/slack`) and PagerDuty (`/pagerduty`) on one local server that checks every payload
/// ([`alerter::receiver`]).
pub struct Receivers {
    pub base_url: String,
    receiver: Receiver,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receivers {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receivers {
    /// Plain HTTP on a free port.
    pub async fn start() -> Receivers {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        Receivers::serve(listener, base_url)
    }

    /// Plain HTTP on a free port, with `receiver`'s settings (a webhook secret, an outage).
    pub async fn start_with(receiver: Receiver) -> Receivers {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        Receivers::serve_with(listener, base_url, receiver)
    }

    /// Plain HTTP on a free port, answering each Slack post only after `slack_delay`.
    pub async fn start_slow_slack(slack_delay: Duration) -> Receivers {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let receiver = Receiver::new(ROUTING_KEY).with_slack_delay(slack_delay);
        Receivers::serve_with(listener, base_url, receiver)
    }

    /// HTTPS with `certificate_pem` (valid for 127.0.0.1) and `key_pem`, on `port` (0: a free one).
    pub async fn start_https(certificate_pem: &str, key_pem: &str, port: u16) -> Receivers {
        let tcp = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let base_url = format!("https://{}", tcp.local_addr().unwrap());
        let listener =
            TlsListener::new(tcp, certificate_pem.as_bytes(), key_pem.as_bytes()).unwrap();
        Receivers::serve(listener, base_url)
    }

    fn serve<L>(listener: L, base_url: String) -> Receivers
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        Receivers::serve_with(listener, base_url, Receiver::new(ROUTING_KEY))
    }

    fn serve_with<L>(listener: L, base_url: String, receiver: Receiver) -> Receivers
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let app = receiver.router();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receivers {
            base_url,
            receiver,
            server,
        }
    }

    /// Stops serving and frees the port.
    pub async fn stop(mut self) {
        self.server.abort();
        let _ = (&mut self.server).await;
    }

    /// The port served on.
    pub fn port(&self) -> u16 {
        self.base_url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Slack messages accepted so far.
    pub fn slack(&self) -> Vec<Value> {
        self.accepted("/slack")
    }

    /// Generic webhook bodies accepted so far (signature, delivery id and schema checked).
    pub fn webhook(&self) -> Vec<Value> {
        self.accepted("/webhook")
    }

    /// PagerDuty events accepted so far.
    pub fn pagerduty(&self) -> Vec<Value> {
        self.accepted("/pagerduty")
    }

    fn accepted(&self, path: &str) -> Vec<Value> {
        let captured = self.receiver.captured();
        assert!(
            captured.refused.is_empty(),
            "receivers refused payloads: {:?}",
            captured.refused
        );
        captured.bodies(path).into_iter().cloned().collect()
    }

    /// Slack messages whose text contains `needle`.
    pub fn slack_containing(&self, needle: &str) -> usize {
        self.slack()
            .iter()
            .filter(|body| body["text"].as_str().unwrap_or("").contains(needle))
            .count()
    }

    /// PagerDuty events with this action.
    pub fn pagerduty_actions(&self, action: &str) -> Vec<String> {
        self.pagerduty()
            .iter()
            .filter(|body| body["event_action"] == action)
            .map(|body| body["dedup_key"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A directory holding `policies` (YAML).
pub fn policies_dir(policies: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(testkit::unique_name("alerter_policies"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("policies.yaml"), policies).unwrap();
    dir
}

/// A config with its own topics, database and group, notifying `receivers`.
pub fn config(test: &str, policies: &str, receivers: &Receivers) -> Config {
    let mut config = Config {
        kafka: testkit::kafka_config(test),
        clickhouse: testkit::clickhouse_config(test),
        http: HttpConfig::with_port(0),
        group_id: testkit::unique_name(&format!("t_{test}")),
        ..Config::default()
    };
    config.alert.policies_dir = policies_dir(policies);
    config.alert.tick_interval_ms = 50;
    config.alert.reload_interval_ms = 200;
    config.alert.anomaly.min_history = 5;
    config.notify.slack.fallback_webhook =
        Some(Secret::new(format!("{}/slack", receivers.base_url)));
    config.notify.pagerduty.events_url = format!("{}/pagerduty", receivers.base_url);
    config.notify.pagerduty.fallback_routing_key = Some(Secret::new(ROUTING_KEY.to_owned()));
    config
}

/// A cap of 10 USD per API key and day that blocks (policy `t-cap`), paging `search-quota`.
pub const CAP_PER_KEY: &str = r#"
id: t-cap
description: A test cap per API key and day.
owner: {team: search, contact: search-oncall@example.com, pagerduty_service: search-quota}
environment: prod
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: 10
action: {kind: block}
"#;

/// A `t-cap` total of `api_key_id=key` over its cap, in a window that ends in an hour.
pub fn over_cap(key: &str) -> WindowTotal {
    let start = now_s() - TimeDelta::seconds(60);
    let end = now_s() + TimeDelta::hours(1);
    policy_total("t-cap", &format!("api_key_id={key}"), start, end, "11", 1)
}

/// Puts `config`'s ClickHouse behind a [`testkit::FaultProxy`] the test can take down; returns
/// it and the direct ClickHouse config (to check the audit tables while the proxy is down).
pub async fn clickhouse_behind_proxy(
    config: &mut Config,
) -> (testkit::FaultProxy, infra::config::ClickHouseConfig) {
    testkit::clickhouse_behind_proxy(&mut config.clickhouse)
        .await
        .unwrap()
}

/// An in-process alerter.
pub struct Running {
    pub shutdown: Shutdown,
    pub handle: tokio::task::JoinHandle<alerter::Result<()>>,
    pub base_url: String,
}

/// Starts the alerter in this process and waits until it is ready (restored).
pub async fn start(config: &Config) -> Running {
    if std::env::var_os("QUOTAFLOW_LOG").is_some() {
        infra::telemetry::init_tracing();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(alerter::run_with_listener(
        config.clone(),
        listener,
        shutdown.clone(),
    ));
    let url = format!("{base_url}/readyz");
    testkit::eventually(Duration::from_secs(60), "the alerter is ready", || {
        assert!(
            !handle.is_finished(),
            "the alerter stopped while starting (see its log)"
        );
        let url = url.clone();
        async move {
            match reqwest::get(&url).await {
                Ok(response) if response.status().is_success() => Some(()),
                _ => None,
            }
        }
    })
    .await;
    Running {
        shutdown,
        handle,
        base_url,
    }
}

/// Polls `/readyz` until it answers 200.
pub async fn wait_ready(base_url: &str) {
    let url = format!("{base_url}/readyz");
    testkit::eventually(Duration::from_secs(60), "the alerter is ready", || {
        let url = url.clone();
        async move {
            match reqwest::get(&url).await {
                Ok(response) if response.status().is_success() => Some(()),
                _ => None,
            }
        }
    })
    .await
}

impl Running {
    pub async fn stop(self) -> alerter::Result<()> {
        self.shutdown.cancel();
        self.handle.await.unwrap()
    }
}

/// The alerter binary as a child process, so it can crash for real.
pub struct Process {
    child: std::process::Child,
}

/// Secrets go through the environment, as in production (a config file never holds them: they
/// serialize redacted).
pub fn spawn_process(config: &Config, failpoint: Option<&str>) -> Process {
    let path = std::env::temp_dir().join(format!("{}.toml", testkit::unique_name("alerter")));
    let mut file_config = config.clone();
    let webhook = file_config.notify.slack.fallback_webhook.take();
    let routing_key = file_config.notify.pagerduty.fallback_routing_key.take();
    std::fs::write(&path, toml::to_string(&file_config).unwrap()).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_quotaflow-alerter"));
    command.arg("--config").arg(&path);
    for (name, _) in std::env::vars() {
        if name.starts_with("QUOTAFLOW_") {
            command.env_remove(name);
        }
    }
    command.env("QUOTAFLOW_LOG", "warn");
    if let Some(webhook) = webhook {
        command.env(
            "QUOTAFLOW_NOTIFY__SLACK__FALLBACK_WEBHOOK",
            webhook.expose(),
        );
    }
    if let Some(routing_key) = routing_key {
        command.env(
            "QUOTAFLOW_NOTIFY__PAGERDUTY__FALLBACK_ROUTING_KEY",
            routing_key.expose(),
        );
    }
    match failpoint {
        Some(failpoint) => command.env("ALERTER_FAILPOINT", failpoint),
        None => command.env_remove("ALERTER_FAILPOINT"),
    };
    Process {
        child: command.spawn().unwrap(),
    }
}

impl Process {
    /// Waits until it exits by itself; true if a signal ended it (the failpoint's abort).
    pub async fn wait_aborted(mut self, deadline: Duration) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.signal().is_some();
            }
            assert!(
                started.elapsed() < deadline,
                "the failpoint was never reached"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM: a clean shutdown.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits until it has exited; true if it exited with status 0 within `deadline`.
    pub async fn wait_exited(mut self, deadline: Duration) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A total of a policy scope: `cost_usd` in a window `[start, end)`, from `partition`.
pub fn policy_total(
    policy_id: &str,
    scope_key: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    cost: &str,
    version: u64,
) -> WindowTotal {
    WindowTotal {
        window_end: end,
        cost_usd: cost.parse::<Decimal>().unwrap(),
        version,
        written_at: Utc::now(),
        ..schemas::fixtures::empty_day_total(&format!("policy:{policy_id}"), scope_key, start)
    }
}

/// Publishes totals on the totals topic as the aggregator does (compaction key, Avro).
pub async fn produce_totals(kafka: &KafkaConfig, totals: &[WindowTotal]) {
    infra::kafka::ensure_topics(kafka, &infra::kafka::pipeline_topics(kafka))
        .await
        .unwrap();
    let producer: FutureProducer = infra::kafka::producer_config(kafka, "alerter-test")
        .create()
        .unwrap();
    for total in totals {
        let payload = schemas::codec::encode(total).unwrap();
        let key = total.compaction_key();
        producer
            .send(
                FutureRecord::to(&kafka.topics.totals)
                    .key(&key)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(error, _)| error)
            .unwrap();
    }
}

/// Every decision of the control topic, in offset order per partition (the log, not compacted
/// away yet: the active segment is never compacted); tombstones are left out.
pub fn control_log(kafka: &KafkaConfig) -> Vec<ControlDecision> {
    control_records(kafka)
        .into_iter()
        .filter_map(|(_, decision)| decision)
        .collect()
}

/// Every record of the control topic as (key, decision), `None` for a tombstone, in offset
/// order per partition.
pub fn control_records(kafka: &KafkaConfig) -> Vec<(String, Option<ControlDecision>)> {
    let consumer: BaseConsumer = infra::kafka::consumer_config(
        kafka,
        "alerter-test-reader",
        &testkit::unique_name("reader"),
    )
    .create()
    .unwrap();
    let topic = &kafka.topics.control;
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in 0..kafka.topics.partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap();
        if high > low {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
            ends.insert(partition, high);
        }
    }
    let mut decisions = Vec::new();
    if ends.is_empty() {
        return decisions;
    }
    consumer.assign(&assignment).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                decisions.push((
                    key,
                    message
                        .payload()
                        .map(|payload| schemas::codec::decode::<ControlDecision>(payload).unwrap()),
                ));
                if ends
                    .get(&message.partition())
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    ends.remove(&message.partition());
                }
            }
            Some(Err(_)) => {}
            // Decisions are committed in transactions: the end offset can be a commit marker,
            // which is never delivered; the position moves past it.
            None => {
                if let Ok(positions) = consumer.position() {
                    for element in positions.elements() {
                        if let Offset::Offset(position) = element.offset() {
                            if ends
                                .get(&element.partition())
                                .is_some_and(|end| position >= *end)
                            {
                                ends.remove(&element.partition());
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(ends.is_empty(), "control topic not read to its end");
    decisions
}

/// Waits until the control log satisfies `check`, returning it.
pub async fn wait_control(
    kafka: &KafkaConfig,
    what: &str,
    check: impl Fn(&[ControlDecision]) -> bool,
) -> Vec<ControlDecision> {
    let check = &check;
    testkit::eventually(Duration::from_secs(30), what, || {
        let kafka = kafka.clone();
        async move {
            let log = tokio::task::spawn_blocking(move || control_log(&kafka))
                .await
                .unwrap();
            check(&log).then_some(log)
        }
    })
    .await
}

/// Waits until the receivers satisfy `check`.
pub async fn wait_receivers(receivers: &Receivers, what: &str, check: impl Fn(&Receivers) -> bool) {
    let check = &check;
    testkit::eventually(Duration::from_secs(30), what, || async move {
        check(receivers).then_some(())
    })
    .await
}

/// A gateway client following the control topic, ready.
pub async fn gateway(kafka: &KafkaConfig) -> gateway::Gateway {
    let gateway = gateway::Gateway::start(gateway::GatewayConfig {
        kafka: kafka.clone(),
        client_id: testkit::unique_name("gw"),
        ..Default::default()
    })
    .unwrap();
    testkit::eventually(Duration::from_secs(30), "the gateway is ready", || {
        let ready = gateway.is_ready();
        async move { ready.then_some(()) }
    })
    .await;
    gateway
}

/// A request of `api_key_id` in `environment`.
pub fn request<'a>(
    api_key_id: &'a str,
    environment: &'a str,
    model: &'a str,
) -> gateway::RequestAttributes<'a> {
    gateway::RequestAttributes {
        api_key_id,
        team: "search",
        user_id: None,
        customer_id: None,
        workflow: "answer",
        environment,
        provider: "openai",
        model,
        endpoint: "chat_completions",
        modality: "text",
        labels: &[],
    }
}

/// Now, to the second (windows in tests start on whole seconds).
pub fn now_s() -> DateTime<Utc> {
    let now = Utc::now();
    now - TimeDelta::nanoseconds(i64::from(now.timestamp_subsec_nanos()))
}

/// Produces usage events as ingest does (Avro, keyed by `partition_key`).
pub async fn produce_events(kafka: &KafkaConfig, events: &[schemas::UsageEvent]) {
    infra::kafka::ensure_topics(kafka, &infra::kafka::pipeline_topics(kafka))
        .await
        .unwrap();
    let producer: FutureProducer = infra::kafka::producer_config(kafka, "alerter-test-events")
        .create()
        .unwrap();
    for event in events {
        let payload = schemas::encode(event).unwrap();
        producer
            .send(
                FutureRecord::to(&kafka.topics.usage)
                    .key(schemas::usage_event::partition_key(event))
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(error, _)| error)
            .unwrap();
    }
}

/// A marker through the alerter's ordered path: a 50 % total of `api_key_id=k2` for `policy_id`,
/// and its Slack message. Once it is out, anything the alerter would have repeated before it (a
/// decision, a page) would be out too.
pub async fn send_marker(
    kafka: &KafkaConfig,
    receivers: &Receivers,
    policy_id: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) {
    produce_totals(
        kafka,
        &[policy_total(policy_id, "api_key_id=k2", start, end, "5", 1)],
    )
    .await;
    wait_receivers(receivers, "the marker alert for k2", |r| {
        r.slack_containing("api_key_id=k2") == 1
    })
    .await;
}

/// An approver's key pair made from a fixed seed (tests only: a real key comes from `keygen`).
pub fn signing_key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

/// The policy form of `key`'s public half (`ed25519:<base64>`).
pub fn public_key(key: &ed25519_dalek::SigningKey) -> String {
    policy::ApproverKey(key.verifying_key()).to_string()
}

/// A raise of `scope` in `policy_id` to `limit` until `until`, by `by`, signed with `key`, with
/// the writer's own `requested_at` (which the alerter does not use).
#[allow(clippy::too_many_arguments)]
pub fn signed_approval(
    policy_id: &str,
    scope: &str,
    limit: &str,
    until: DateTime<Utc>,
    by: &str,
    requested_at: DateTime<Utc>,
    key: &ed25519_dalek::SigningKey,
) -> schemas::Approval {
    let approval = alerter::approve::build(
        policy_id,
        alerter::approve::parse_scope(scope).unwrap(),
        limit.parse().unwrap(),
        until,
        "launch day",
        by,
        requested_at,
    );
    alerter::approve::sign(approval, key).unwrap()
}

/// `(approval_id, status, check_reason)` of every row of `approval_checks` (latest check per
/// record).
pub async fn approval_checks(config: &Config) -> Vec<(String, String, String)> {
    infra::clickhouse::client(&config.clickhouse)
        .query(
            "SELECT approval_id, status, check_reason FROM approval_checks FINAL \
             ORDER BY approval_id, status",
        )
        .fetch_all()
        .await
        .unwrap_or_default()
}

/// Waits until `approval_checks` holds `status` rows for each of `ids`; returns their reasons
/// by id.
pub async fn wait_checks(config: &Config, status: &str, ids: &[&str]) -> BTreeMap<String, String> {
    let what = format!("{} approvals audited as {status}", ids.len());
    // The audit is batched (500 ms) and retried: generous, for a loaded shared stack.
    testkit::eventually(Duration::from_secs(60), &what, || {
        let config = config.clone();
        async move {
            let rows = approval_checks(&config).await;
            let reasons: BTreeMap<String, String> = rows
                .into_iter()
                .filter(|(id, row_status, _)| row_status == status && ids.contains(&id.as_str()))
                .map(|(id, _, reason)| (id, reason))
                .collect();
            (reasons.len() == ids.len()).then_some(reasons)
        }
    })
    .await
}
