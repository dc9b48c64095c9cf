//! Shared by the HTTP API tests (`http_api.rs`, `http_openapi.rs`): start the real service on the
//! local stack with its own topics and database, send requests, read the usage topic back.

#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use infra::config::{HttpConfig, KafkaConfig};
use infra::secret::Secret;
use infra::shutdown::Shutdown;
use infra::testkit;
use ingest::Config;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use schemas::UsageEvent;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The producer of [`TOKEN_EU`].
pub const PRODUCER_EU: &str = "gateway-eu";
pub const TOKEN_EU: &str = "test-token-gateway-eu-7f3a";
/// The producer of [`TOKEN_US`].
pub const PRODUCER_US: &str = "gateway-us";
pub const TOKEN_US: &str = "test-token-gateway-us-91c2";

pub const JSON: &str = "application/json";
pub const NDJSON: &str = "application/x-ndjson";
pub const AVRO: &str = "application/vnd.apache.avro";

const READY_DEADLINE: Duration = Duration::from_secs(60);
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(15);

/// The tokens every test service knows.
pub fn tokens() -> BTreeMap<String, Secret> {
    BTreeMap::from([
        (PRODUCER_EU.to_owned(), Secret::new(TOKEN_EU)),
        (PRODUCER_US.to_owned(), Secret::new(TOKEN_US)),
    ])
}

/// A service running on the local stack, with its own topics and database.
pub struct Service {
    pub base_url: String,
    pub config: Config,
    pub client: reqwest::Client,
    shutdown: Shutdown,
    task: JoinHandle<ingest::Result<()>>,
}

/// A response, its body parsed as JSON when it is JSON (else `Value::String` of the text).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

impl Answer {
    /// The `kind`s and `field`s of the per-event errors of result `index`.
    pub fn errors_of(&self, index: usize) -> Vec<(String, String)> {
        let result = &self.body["results"][index];
        assert_eq!(result["index"], index, "{result}");
        assert_eq!(result["status"], "rejected", "{result}");
        result["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|error| {
                (
                    error["field"].as_str().unwrap().to_owned(),
                    error["kind"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .map_or("", |value| value.to_str().unwrap())
    }
}

impl Service {
    /// Starts the service (tokens [`tokens`], `adjust` applied to its config) and waits until ready.
    pub async fn start(test: &str, adjust: impl FnOnce(&mut Config)) -> Service {
        let mut config = Config {
            kafka: testkit::kafka_config(test),
            clickhouse: testkit::clickhouse_config(test),
            http: HttpConfig::with_port(0),
            ..Config::default()
        };
        config.api.tokens = tokens();
        adjust(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = Shutdown::new();
        let task = tokio::spawn(ingest::run_with_listener(
            config.clone(),
            listener,
            shutdown.clone(),
        ));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        testkit::eventually(READY_DEADLINE, "/readyz to answer 200", || async {
            let response = client.get(format!("{base_url}/readyz")).send().await.ok()?;
            (response.status() == StatusCode::OK).then_some(())
        })
        .await;
        Service {
            base_url,
            config,
            client,
            shutdown,
            task,
        }
    }

    /// `POST /v1/events` with `body` as `content_type`, authenticated with `token` when given.
    pub async fn post(&self, content_type: &str, token: Option<&str>, body: Vec<u8>) -> Answer {
        post(&self.client, &self.base_url, content_type, token, body).await
    }

    /// `POST /v1/events` of JSON `events` (an array) as [`PRODUCER_EU`].
    pub async fn post_json(&self, events: &serde_json::Value) -> Answer {
        self.post(JSON, Some(TOKEN_EU), serde_json::to_vec(events).unwrap())
            .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let response = self
            .client
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    /// Checks the service still takes a good event (after a bad request) and that it is stored.
    pub async fn still_accepts_a_good_event(&self) {
        let event = event(PRODUCER_EU, &unique_id("after-bad"));
        let answer = self
            .post_json(&serde_json::json!([event_json(&event)]))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        assert_eq!(answer.body["accepted"], 1);
    }

    /// Cancels shutdown, expects a clean stop, then drops the database and topics.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(SHUTDOWN_DEADLINE, self.task)
            .await
            .expect("service stops within the deadline")
            .expect("service task did not panic")
            .expect("service stops without error");
        testkit::drop_database(&self.config.clickhouse)
            .await
            .unwrap();
        delete_topics(&self.config.kafka).await;
    }
}

pub async fn post(
    client: &reqwest::Client,
    base_url: &str,
    content_type: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    let mut request = client
        .post(format!("{base_url}/v1/events"))
        .header(CONTENT_TYPE, content_type)
        .body(body);
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    answer(request.send().await.unwrap()).await
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

/// An id no other test run uses.
pub fn unique_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// A realistic text event from `producer` that passes validation and prices from the catalog.
pub fn event(producer: &str, event_id: &str) -> UsageEvent {
    event_at(producer, event_id, Utc::now())
}

pub fn event_at(producer: &str, event_id: &str, occurred_at: DateTime<Utc>) -> UsageEvent {
    UsageEvent {
        producer: producer.to_owned(),
        api_key_id: "key-search-prod".to_owned(),
        workflow: "answer-question".to_owned(),
        user_id: Some("user-42".to_owned()),
        customer_id: Some("acme".to_owned()),
        input_tokens: 1_200,
        output_tokens: 350,
        cached_input_tokens: 200,
        accepted: Some(true),
        estimated_cost_usd: Some("0.0065".parse().unwrap()),
        latency_ms: Some(840),
        labels: BTreeMap::from([
            ("feature".to_owned(), "semantic-search".to_owned()),
            ("tier".to_owned(), "enterprise".to_owned()),
        ]),
        // Microseconds: what the wire keeps, so a consumed event compares equal.
        ..schemas::fixtures::text_event(
            event_id,
            DateTime::from_timestamp_micros(occurred_at.timestamp_micros()).unwrap(),
        )
    }
}

/// The event as the JSON a gateway sends.
pub fn event_json(event: &UsageEvent) -> serde_json::Value {
    serde_json::to_value(event).unwrap()
}

/// A batch of Avro single-object records, each preceded by its 4-byte big-endian length.
pub fn avro_batch(records: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for record in records {
        body.extend_from_slice(&u32::try_from(record.len()).unwrap().to_be_bytes());
        body.extend_from_slice(record);
    }
    body
}

/// Reads `count` records from the usage topic (from the beginning), decoded; fails after a deadline.
pub async fn consume_usage(kafka: &KafkaConfig, count: usize) -> Vec<UsageEvent> {
    let group = testkit::unique_name("http-test");
    let consumer: StreamConsumer = infra::kafka::consumer_config(kafka, "http-test", &group)
        .create()
        .unwrap();
    consumer.subscribe(&[&kafka.topics.usage]).unwrap();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while events.len() < count {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} records consumed", events.len()))
            .unwrap();
        let event: UsageEvent = schemas::decode(message.payload().unwrap()).unwrap();
        assert_eq!(
            message.key(),
            Some(schemas::usage_event::partition_key(&event).as_bytes()),
            "keyed by job_id, else event_id"
        );
        events.push(event);
    }
    events
}

/// Deletes the test's topics, so runs do not pile up on the local broker.
pub async fn delete_topics(kafka: &KafkaConfig) {
    let admin: AdminClient<DefaultClientContext> =
        infra::kafka::client_config(kafka, "quotaflow-test")
            .create()
            .unwrap();
    let names: Vec<String> = infra::kafka::pipeline_topics(kafka)
        .into_iter()
        .map(|topic| topic.name)
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    admin.delete_topics(&names, &options).await.unwrap();
}
