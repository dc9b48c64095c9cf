//! `ingest/openapi.yaml` against real responses: for each scenario, the status is documented for the
//! path and method, the content type is one the document lists for it, documented required headers
//! are present, and the body validates against the documented schema (JSON Schema 2020-12, which is
//! what OpenAPI 3.1 schemas are). Negative cases show the check can fail.

mod http_support;

use std::time::Duration;

use http_support::*;
use infra::shutdown::Shutdown;
use ingest::api::{self, ApiConfig, ApiState};
use ingest::pricer::{Pricer, PricingConfig};
use ingest::recorder::{Recorder, RecorderConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The document as the service serves it at `/openapi.json`.
fn document() -> Value {
    ingest::api::openapi::document().clone()
}

/// `~` and `/` escaped for a JSON pointer token (RFC 6901).
fn pointer_token(text: &str) -> String {
    text.replace('~', "~0").replace('/', "~1")
}

/// Validates `instance` against the schema at `pointer` (a JSON pointer into the document), with
/// `$ref`s resolved inside the document.
fn validate_at(document: &Value, pointer: &str, instance: &Value) -> Result<(), String> {
    if document.pointer(pointer).is_none() {
        return Err(format!("no schema at {pointer}"));
    }
    let mut schema = document.clone();
    let root = schema.as_object_mut().unwrap();
    root.insert("$ref".to_owned(), json!(format!("#{pointer}")));
    let validator = jsonschema::draft202012::new(&schema).map_err(|error| error.to_string())?;
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{instance} does not match {pointer}: {errors:?}"))
    }
}

/// Checks a real answer of `method path` against the document.
fn check(document: &Value, method: &str, path: &str, answer: &Answer) -> Result<(), String> {
    let operation_pointer = format!("/paths/{}/{method}", pointer_token(path));
    let status = answer.status.as_u16().to_string();
    let response_pointer = format!("{operation_pointer}/responses/{status}");
    let response = document
        .pointer(&response_pointer)
        .ok_or_else(|| format!("{method} {path} answered {status}, which is not documented"))?;
    let essence = answer
        .content_type()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    if response["content"].get(&essence).is_none() {
        return Err(format!(
            "{method} {path} {status}: content type {essence:?} is not documented"
        ));
    }
    if let Some(headers) = response["headers"].as_object() {
        for (name, header) in headers {
            if header["required"] == true && !answer.headers.contains_key(name.as_str()) {
                return Err(format!(
                    "{method} {path} {status}: header {name} is missing"
                ));
            }
        }
    }
    let schema_pointer = format!(
        "{response_pointer}/content/{}/schema",
        pointer_token(&essence)
    );
    validate_at(document, &schema_pointer, &answer.body)
}

fn assert_documented(document: &Value, method: &str, path: &str, answer: &Answer) {
    if let Err(error) = check(document, method, path, answer) {
        panic!("{error}");
    }
}

async fn api_alone(router: axum::Router) -> (String, Shutdown) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    tokio::spawn(infra::telemetry::serve(listener, router, shutdown.clone()));
    (base_url, shutdown)
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn responses_match_the_openapi_document() {
    let document = document();
    let service = Service::start("http_openapi", |config| config.api.max_batch_events = 3).await;
    let good = || event_json(&event(PRODUCER_EU, &unique_id("doc")));
    let mut invalid = good();
    invalid["modality"] = json!("hologram");
    let json_body = |events: Value| serde_json::to_vec(&events).unwrap();

    let scenarios: Vec<(&str, Answer)> = vec![
        (
            "200",
            service.post_json(&json!([good(), invalid.clone()])).await,
        ),
        ("200 avro", {
            let record = schemas::encode(&event(PRODUCER_EU, &unique_id("doc"))).unwrap();
            service.post(AVRO, Some(TOKEN_EU), record).await
        }),
        ("401", service.post(JSON, None, json_body(good())).await),
        (
            "403",
            service.post(JSON, Some(TOKEN_US), json_body(good())).await,
        ),
        (
            "413",
            service
                .post_json(&json!([good(), good(), good(), good()]))
                .await,
        ),
        (
            "415",
            service
                .post("text/csv", Some(TOKEN_EU), b"a,b".to_vec())
                .await,
        ),
        (
            "422 batch",
            service.post_json(&json!([invalid.clone()])).await,
        ),
        (
            "422 body",
            service.post(JSON, Some(TOKEN_EU), b"{oops".to_vec()).await,
        ),
    ];
    for (name, answer) in &scenarios {
        assert!(
            answer.status.as_str() == &name[..3],
            "{name}: {} {}",
            answer.status,
            answer.body
        );
        assert_documented(&document, "post", "/v1/events", answer);
    }
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/openapi.yaml",
    ] {
        let answer = service.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_documented(&document, "get", path, &answer);
    }
    assert_eq!(service.get("/openapi.json").await.body, document);

    // Negative cases: the check fails on a body, a status or a content type the document lacks.
    let mut wrong_body = service.post_json(&json!([good()])).await;
    assert_documented(&document, "post", "/v1/events", &wrong_body);
    wrong_body.body.as_object_mut().unwrap().remove("accepted");
    let error = check(&document, "post", "/v1/events", &wrong_body).unwrap_err();
    assert!(error.contains("accepted"), "{error}");
    wrong_body.body = json!({"accepted": 1, "rejected": 0, "results": [{"status": "maybe"}]});
    assert!(check(&document, "post", "/v1/events", &wrong_body).is_err());
    let method_not_allowed = service.get("/v1/events").await;
    assert_eq!(method_not_allowed.status, StatusCode::METHOD_NOT_ALLOWED);
    let error = check(&document, "get", "/v1/events", &method_not_allowed).unwrap_err();
    assert!(error.contains("not documented"), "{error}");
    let mut wrong_type = service.get("/healthz").await;
    wrong_type
        .headers
        .insert("content-type", "application/json".parse().unwrap());
    assert!(check(&document, "get", "/healthz", &wrong_type).is_err());
    service.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn unavailable_answers_match_the_openapi_document() {
    let document = document();
    let config = ApiConfig {
        tokens: tokens(),
        ..ApiConfig::default()
    };
    let body =
        serde_json::to_vec(&json!([event_json(&event(PRODUCER_EU, &unique_id("u")))])).unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Not started yet: 503 not_ready with Retry-After.
    let (base_url, starting) = api_alone(api::router(ApiState::starting(&config))).await;
    let answer = post(&client, &base_url, JSON, Some(TOKEN_EU), body.clone()).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body["error"], "not_ready");
    assert_documented(&document, "post", "/v1/events", &answer);
    starting.cancel();

    // Kafka unreachable: 503 kafka_unavailable listing the events in an unknown state.
    let mut kafka = infra::testkit::kafka_config("http_openapi_dead");
    kafka.brokers = "127.0.0.1:1".to_owned();
    let recorder_config = RecorderConfig {
        delivery_timeout_ms: 1_000,
        ..RecorderConfig::default()
    };
    let pricer = Pricer::from_config(&PricingConfig::default()).unwrap();
    let recorder = Recorder::new(&kafka, &recorder_config, pricer, Default::default()).unwrap();
    let (base_url, dead) = api_alone(api::router(ApiState::new(&config, recorder))).await;
    let answer = post(&client, &base_url, JSON, Some(TOKEN_EU), body).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body["error"], "kafka_unavailable");
    assert_documented(&document, "post", "/v1/events", &answer);
    dead.cancel();
}

#[test]
fn request_bodies_match_the_documented_event_schema() {
    let document = document();
    let pointer = "/components/schemas/UsageEvent";
    let event = event_json(&event(PRODUCER_EU, "e-1"));
    validate_at(&document, pointer, &event).unwrap();
    let mut unknown_field = event.clone();
    unknown_field["colour"] = json!("red");
    assert!(validate_at(&document, pointer, &unknown_field).is_err());
    let mut missing = event;
    missing.as_object_mut().unwrap().remove("team");
    assert!(validate_at(&document, pointer, &missing).is_err());
}
