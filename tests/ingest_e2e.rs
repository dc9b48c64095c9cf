//! End to end on the real stack, as an external producer sees it: a JSON batch POSTed to the ingest
//! API → Kafka → the raw archive → ClickHouse, with exact costs checked against prices computed by
//! hand from the fixture catalog (`pricing/fixtures/catalog_sample.json`, see `docs/pricing.md`).

use std::time::Duration;

use infra::secret::Secret;
use serde_json::{json, Value};

/// One billable attempt as a gateway would send it, with the fields that differ per case.
fn event(event_id: &str, occurred_at: &str, route: Value) -> Value {
    let mut event = json!({
        "event_id": event_id,
        "occurred_at": occurred_at,
        "producer": "gw_e2e",
        "request_id": format!("req-{event_id}"),
        "action_id": format!("act-{event_id}"),
        "attempt": 1,
        "api_key_id": "key_e2e",
        "team": "search",
        "workflow": "answers",
        "environment": "prod",
        "status": "ok",
        "labels": {"feature": "e2e"}
    });
    let fields = event.as_object_mut().expect("object");
    for (key, value) in route.as_object().expect("route object") {
        fields.insert(key.clone(), value.clone());
    }
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn http_batch_reaches_clickhouse_with_exact_costs() {
    let mut config = ingest::Config {
        kafka: infra::testkit::kafka_config("e2e"),
        clickhouse: infra::testkit::clickhouse_config("e2e"),
        ..ingest::Config::default()
    };
    config
        .api
        .tokens
        .insert("gw_e2e".to_owned(), Secret::new("e2e-token"));
    let shutdown = infra::shutdown::Shutdown::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let service = tokio::spawn(ingest::run_with_listener(
        config.clone(),
        listener,
        shutdown.clone(),
    ));
    let http = reqwest::Client::new();
    infra::testkit::eventually(Duration::from_secs(60), "ingest ready", || async {
        let response = http.get(format!("{base}/readyz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    let archive_config = quotaflow_archiver::Config {
        kafka: config.kafka.clone(),
        clickhouse: config.clickhouse.clone(),
        validation: config.validation.clone(),
        pricing: config.pricing.clone(),
        ..quotaflow_archiver::Config::default()
    };
    let archive_shutdown = shutdown.clone();
    let archive =
        tokio::spawn(
            async move { quotaflow_archiver::run(&archive_config, archive_shutdown).await },
        );

    let now = chrono::Utc::now() - chrono::Duration::minutes(1);
    let at = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // (event, cost computed by hand)
    let cases = [
        // claude-sonnet-4-5: 6000 × 0.000003 + 4000 × 0.0000003 (cache read) + 1000 × 0.00000375
        // (cache write) + 500 × 0.000015 = 0.03045
        (
            event(
                "e2e-text",
                &at,
                json!({"provider": "anthropic", "model": "claude-sonnet-4-5", "endpoint": "messages",
                "modality": "text", "input_tokens": 10000, "cached_input_tokens": 4000, "cache_write_tokens": 1000, "output_tokens": 500}),
            ),
            "0.030450000000",
        ),
        // The same usage through the batch endpoint at the `_batches` prices:
        // 6000 × 0.0000015 + 4000 × 0.00000015 + 1000 × 0.000001875 + 500 × 0.0000075 = 0.015225
        (
            event(
                "e2e-batch",
                &at,
                json!({"provider": "anthropic", "model": "claude-sonnet-4-5", "endpoint": "batch",
                "modality": "batch", "input_tokens": 10000, "cached_input_tokens": 4000, "cache_write_tokens": 1000,
                "output_tokens": 500, "job_id": "batch-e2e", "job_state": "succeeded"}),
            ),
            "0.015225000000",
        ),
        // gpt-image-1.5, tier final → high quality row 0.133 per image, plus 100 prompt tokens at
        // 0.000005: 2 × 0.133 + 100 × 0.000005 = 0.2665
        (
            event(
                "e2e-image",
                &at,
                json!({"provider": "openai", "model": "gpt-image-1.5", "endpoint": "images",
                "modality": "image", "images": 2, "image_tier": "final", "input_tokens": 100}),
            ),
            "0.266500000000",
        ),
        // gemini/veo-3.1-fast-generate-preview, 6 s at 1080p × 0.12 per second = 0.72
        (
            event(
                "e2e-video",
                &at,
                json!({"provider": "gemini", "model": "gemini/veo-3.1-fast-generate-preview",
                "endpoint": "video", "modality": "video", "video_duration_ms": 6000, "video_resolution": "1920x1080",
                "job_id": "video-e2e", "job_state": "succeeded"}),
            ),
            "0.720000000000",
        ),
        // whisper-1, 61.5 s × 0.0001 per second = 0.00615
        (
            event(
                "e2e-audio",
                &at,
                json!({"provider": "openai", "model": "whisper-1", "endpoint": "audio",
                "modality": "audio", "audio_duration_ms": 61500}),
            ),
            "0.006150000000",
        ),
    ];
    let batch: Vec<&Value> = cases.iter().map(|(event, _)| event).collect();
    let response = http
        .post(format!("{base}/v1/events"))
        .bearer_auth("e2e-token")
        .json(&batch)
        .send()
        .await
        .expect("POST /v1/events");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json body");
    assert_eq!(body["accepted"], 5, "{body}");
    assert_eq!(body["rejected"], 0, "{body}");

    let clickhouse = infra::clickhouse::client(&config.clickhouse);
    let rows: Vec<(String, String, String, String)> = infra::testkit::eventually(
        Duration::from_secs(60),
        "five archived rows",
        || async {
            let rows: Vec<(String, String, String, String)> = clickhouse
                .query(
                    "SELECT event_id, toString(assumeNotNull(cost_usd)), cost_source, catalog_version \
                     FROM usage_events ORDER BY event_id",
                )
                .fetch_all()
                .await
                .ok()?;
            (rows.len() == cases.len()).then_some(rows)
        },
    )
    .await;
    for (event, expected_cost) in &cases {
        let event_id = event["event_id"].as_str().expect("id");
        let (_, cost, source, catalog_version) = rows
            .iter()
            .find(|row| row.0 == event_id)
            .unwrap_or_else(|| panic!("{event_id} archived"));
        // 18.16 prints all 12 fractional digits; modern servers drop trailing zeros.
        let cost: rust_decimal::Decimal = cost.parse().expect("decimal text");
        assert_eq!(
            cost,
            expected_cost
                .parse::<rust_decimal::Decimal>()
                .expect("decimal"),
            "{event_id}"
        );
        assert_eq!(source, "priced", "{event_id}");
        assert!(
            catalog_version.starts_with("sha256:"),
            "{event_id}: {catalog_version}"
        );
    }

    shutdown.cancel();
    service
        .await
        .expect("service task")
        .expect("service stops cleanly");
    archive
        .await
        .expect("archive task")
        .expect("archive stops cleanly");
    infra::testkit::drop_database(&config.clickhouse)
        .await
        .expect("drop test database");
}
