//! The sidecar on the real Kafka (`dev/stack up`): it follows the control topic through the
//! gateway crate, so a block the alerter publishes refuses requests within moments, with the
//! block's own `Retry-After`, and an allow lets them go again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use gateway::{FailureMode, Gateway, GatewayConfig};
use infra::kafka::{ensure_topics, producer_config, Retention, TopicSpec};
use infra::shutdown::Shutdown;
use infra::testkit::{eventually, kafka_config, unique_name};
use rdkafka::producer::FutureProducer;
use schemas::{ControlDecision, DecisionAction};

const DEADLINE: Duration = Duration::from_secs(30);

async fn publish(producer: &FutureProducer, topic: &str, decision: &ControlDecision) {
    infra::testkit::publish_decision(producer, topic, decision).await;
}

/// The status and `retry-after` forward-auth answers for team `search`.
async fn forward_auth(http: &str) -> Option<(u16, Option<String>)> {
    let response = reqwest::Client::new()
        .get(format!("{http}/v1/authz"))
        .header("x-quotaflow-api-key", "k1")
        .header("x-quotaflow-team", "search")
        .send()
        .await
        .ok()?;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    Some((response.status().as_u16(), retry_after))
}

/// Compacted topics of `kafka` with `partitions` each, and a producer.
async fn topics_and_producer(
    kafka: &infra::config::KafkaConfig,
    names: &[&String],
    partitions: i32,
) -> FutureProducer {
    infra::testkit::require_listener("Kafka", &kafka.brokers);
    let specs: Vec<TopicSpec> = names
        .iter()
        .map(|name| TopicSpec {
            name: (*name).clone(),
            partitions,
            retention: Retention::Compacted,
            replication: Default::default(),
            extra_config: Vec::new(),
        })
        .collect();
    ensure_topics(kafka, &specs).await.expect("topics created");
    producer_config(kafka, "decide-live-test")
        .create()
        .expect("producer")
}

/// The sidecar on a gateway following `kafka`'s control topic (fail closed), served with
/// `config` until the returned shutdown; its base URL.
async fn start_sidecar(
    kafka: &infra::config::KafkaConfig,
    config: quotaflow_decide::Config,
) -> (
    String,
    Shutdown,
    tokio::task::JoinHandle<Result<(), quotaflow_decide::DecideError>>,
) {
    let gateway = Gateway::start(GatewayConfig {
        kafka: kafka.clone(),
        client_id: unique_name("decide"),
        failure_mode: FailureMode::Closed,
        max_staleness_ms: 5_000,
        probe_interval_ms: 500,
    })
    .expect("gateway started");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_url = format!("http://{}", http.local_addr().unwrap());
    let shutdown = Shutdown::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { quotaflow_decide::serve(Arc::new(gateway), &config, http, None, shutdown).await }
    });
    (http_url, shutdown, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_published_block_refuses_with_its_retry_after_and_an_allow_lifts_it() {
    let kafka = kafka_config("decide_live");
    let topic = kafka.topics.control.clone();
    let producer = topics_and_producer(&kafka, &[&topic], 1).await;
    let (http_url, shutdown, task) =
        start_sidecar(&kafka, quotaflow_decide::Config::default()).await;
    eventually(DEADLINE, "the sidecar to catch up (readyz)", || async {
        let status = reqwest::get(format!("{http_url}/readyz"))
            .await
            .ok()?
            .status();
        status.is_success().then_some(())
    })
    .await;
    assert_eq!(forward_auth(&http_url).await, Some((200, None)));

    let scope = BTreeMap::from([("team".to_owned(), "search".to_owned())]);
    let now = Utc::now();
    let block = ControlDecision {
        decision_id: unique_name("decision"),
        action: DecisionAction::Block,
        reason: "team search spent its daily budget".to_owned(),
        window_start: now - TimeDelta::hours(1),
        window_end: now + TimeDelta::hours(3),
        expires_at: Some(now + TimeDelta::minutes(10)),
        version: 1,
        ..schemas::fixtures::block_decision("team-daily", scope, Vec::new(), now)
    };
    publish(&producer, &topic, &block).await;
    let (_, retry_after) = eventually(DEADLINE, "the block to be obeyed", || async {
        forward_auth(&http_url)
            .await
            .filter(|(status, _)| *status == 429)
    })
    .await;
    let retry_after: u64 = retry_after
        .expect("a block with an expiry says when")
        .parse()
        .unwrap();
    assert!((590..=600).contains(&retry_after), "{retry_after}");

    let allow = ControlDecision {
        decision_id: unique_name("decision"),
        action: DecisionAction::Allow,
        version: 2,
        ..block
    };
    publish(&producer, &topic, &allow).await;
    eventually(DEADLINE, "the allow to lift the block", || async {
        forward_auth(&http_url)
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// 10 USD per API key and UTC day.
const KEY_DAILY: &str = r#"
id: key-daily
owner: {team: search, contact: search@example.com}
description: 10 USD per API key and UTC day
unit: cost_usd
group_by: [api_key_id]
window: {kind: day}
hard_cap: 10
action: {kind: block}
admission:
  estimated_cost: true
  hint: "ask for less output, or for a raise"
"#;

fn money(value: &serde_json::Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

/// Issue 15 points 1 and 2: the sidecar follows the totals topic; `GET /v1/scopes` answers what
/// a key spent today (the partials of two input partitions summed), its limit, what remains and
/// when it resets, with the decision in force and its raised limit; every check carries the
/// tightest quota as `RateLimit-*` headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn remaining_quota_comes_from_the_totals_and_control_topics() {
    let kafka = kafka_config("decide_scopes");
    let producer =
        topics_and_producer(&kafka, &[&kafka.topics.control, &kafka.topics.totals], 2).await;
    let policies_dir = std::env::temp_dir().join(unique_name("decide_scopes_policies"));
    std::fs::create_dir_all(&policies_dir).unwrap();
    std::fs::write(policies_dir.join("key-daily.yaml"), KEY_DAILY).unwrap();
    let policies = policy::PolicySet::load_dir(&policies_dir).unwrap();
    let policy = policies.get("key-daily").unwrap();

    // k1 spent 5 + 2.5 today, counted from two input partitions; k3 spent 9.9.
    let now = Utc::now();
    let today = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    for (key, partition, cost) in [("k1", 0, "5"), ("k1", 1, "2.5"), ("k3", 0, "9.9")] {
        let total = schemas::WindowTotal {
            source_partition: partition,
            cost_usd: cost.parse().unwrap(),
            version: 1,
            written_at: now,
            ..schemas::fixtures::empty_day_total(
                &policy.totals_scope_kind(),
                &format!("api_key_id={key}"),
                today,
            )
        };
        let payload = schemas::encode(&total).unwrap();
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&kafka.topics.totals)
                    .key(&total.compaction_key())
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| error)
            .expect("delivered");
    }
    // k2 is blocked at 12 USD, a raise approved over its 10.
    let block = ControlDecision {
        key: policy.control_key("api_key_id=k2"),
        decision_id: unique_name("decision"),
        reason: "api_key_id=k2 reached 12 cost_usd of 12".to_owned(),
        limit: "12".parse().unwrap(),
        window_start: today,
        window_end: today + TimeDelta::days(1),
        expires_at: Some(today + TimeDelta::days(1)),
        version: 1,
        ..schemas::fixtures::block_decision(
            "key-daily",
            BTreeMap::from([("api_key_id".to_owned(), "k2".to_owned())]),
            Vec::new(),
            now,
        )
    };
    assert_eq!(block.key, "key-daily/api_key_id=k2");
    publish(&producer, &kafka.topics.control, &block).await;

    let mut config = quotaflow_decide::Config::default();
    config.gateway.kafka = kafka.clone();
    config.gateway.probe_interval_ms = 500;
    config.policies_dir = Some(policies_dir);
    config.catalog_path =
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/catalog.json"));
    let (http_url, shutdown, task) = start_sidecar(&kafka, config).await;
    let client = reqwest::Client::new();
    let scopes = |query: &'static str| {
        let client = client.clone();
        let url = format!("{http_url}/v1/scopes?{query}");
        async move {
            client
                .get(url)
                .send()
                .await
                .ok()?
                .json::<serde_json::Value>()
                .await
                .ok()
        }
    };
    let answer = eventually(DEADLINE, "k1's spend in the sidecar", || async {
        scopes("api_key_id=k1").await.filter(|answer| {
            answer["ready"] == true && money(&answer["scopes"][0]["spent"]) == "7.5"
        })
    })
    .await;
    let quota = &answer["scopes"][0];
    assert_eq!(answer["scopes"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(quota["policy_id"], "key-daily");
    assert_eq!(quota["scope"], "api_key_id=k1");
    assert_eq!(quota["unit"], "cost_usd");
    assert_eq!(money(&quota["cap"]), "10");
    assert_eq!(money(&quota["limit"]), "10");
    assert_eq!(money(&quota["remaining"]), "2.5");
    let resets_at: chrono::DateTime<Utc> =
        serde_json::from_value(quota["resets_at"].clone()).unwrap();
    assert_eq!(resets_at, today + TimeDelta::days(1));
    let reset_seconds = quota["reset_seconds"].as_u64().unwrap();
    assert!((1..=86_400).contains(&reset_seconds), "{reset_seconds}");
    assert!(quota.get("decision").is_none(), "{quota}");

    // The same quota on every check, as RateLimit headers.
    let checked = eventually(DEADLINE, "the sidecar to be ready", || async {
        let response = client
            .get(format!("{http_url}/v1/authz"))
            .header("x-quotaflow-api-key", "k1")
            .send()
            .await
            .ok()?;
        (response.status() == 200 && response.headers().contains_key("ratelimit-remaining"))
            .then_some(response)
    })
    .await;
    let header = |name: &str| checked.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("ratelimit-limit"), "10");
    assert_eq!(header("ratelimit-remaining"), "2.5");
    assert_eq!(header("x-quotaflow-quota-policy"), "key-daily");
    assert_eq!(header("x-quotaflow-quota-unit"), "cost_usd");
    let reset: u64 = header("ratelimit-reset").parse().unwrap();
    assert!((1..=86_400).contains(&reset));

    // k2: the block in force, at the raised limit.
    let answer = eventually(DEADLINE, "k2's block in the sidecar", || async {
        scopes("api_key_id=k2")
            .await
            .filter(|answer| answer["scopes"][0]["decision"]["action"] == "block")
    })
    .await;
    let quota = &answer["scopes"][0];
    assert_eq!(money(&quota["limit"]), "12");
    assert_eq!(money(&quota["spent"]), "0");
    assert!(quota["decision"]["reason"]
        .as_str()
        .unwrap()
        .contains("reached 12"));

    // Issue 15 point 3, admission.estimated_cost: k3 has 0.1 USD left. gpt-4o at 2.5 and 10
    // USD per million input and output tokens: 10k in + 500 out may cost 0.03 and goes; 50k in
    // + 1k out may cost 0.135 and is refused before it is sent, until the window resets.
    let ask = |input: &'static str, output: &'static str| {
        client
            .get(format!("{http_url}/v1/authz"))
            .header("x-quotaflow-api-key", "k3")
            .header("x-quotaflow-provider", "openai")
            .header("x-quotaflow-model", "gpt-4o")
            .header("x-quotaflow-endpoint", "chat_completions")
            .header("x-quotaflow-modality", "text")
            .header("x-quotaflow-input-tokens", input)
            .header("x-quotaflow-max-output-tokens", output)
            .send()
    };
    eventually(DEADLINE, "k3's spend in the sidecar", || async {
        scopes("api_key_id=k3")
            .await
            .filter(|answer| money(&answer["scopes"][0]["remaining"]) == "0.1")
    })
    .await;
    assert_eq!(ask("10000", "500").await.unwrap().status(), 200);
    let refused = ask("50000", "1000").await.unwrap();
    assert_eq!(refused.status(), 429);
    let header = |name: &str| refused.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("x-quotaflow-rule"), "estimated_cost");
    assert_eq!(header("x-quotaflow-policy"), "key-daily");
    let reason = header("x-quotaflow-reason");
    assert!(
        reason.contains("up to 0.135 USD")
            && reason.contains("0.1 USD left")
            && reason.contains("ask for less output"),
        "{reason}"
    );
    let retry_after: u64 = header("retry-after").parse().unwrap();
    assert!((1..=86_400).contains(&retry_after));

    // A request no policy counts has no quota; a misspelled parameter is an error.
    let answer = scopes("teem=search").await;
    assert!(answer.is_some_and(|answer| answer["error"]["message"]
        .as_str()
        .is_some_and(|message| message.contains("teem"))));

    shutdown.cancel();
    task.await.unwrap().unwrap();
}
