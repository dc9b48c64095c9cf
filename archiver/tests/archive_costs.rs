//! Exact costs and every contract field round-trip through the archive (real Kafka + ClickHouse).

mod archive_support;

use std::time::Duration;

use archive_support::{text_event, World};
use chrono::{SubsecRound, Utc};
use quotaflow_archiver::row::{KafkaCoordinates, RawRow};
use rust_decimal::Decimal;
use schemas::{ImageTier, JobState, Modality};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn archived_rows_carry_exact_costs_and_every_field() {
    let world = World::new("archive_costs").await;
    let recorder = world.recorder();
    let now = Utc::now().trunc_subsecs(6) - chrono::Duration::minutes(1);

    // (event, hand-computed cost from docs/pricing.md and pricing/fixtures/catalog_sample.json)
    let mut cases = Vec::new();

    // Text with cache reads and writes, claude-sonnet-4-5:
    // 6000 × 0.000003 + 4000 × 0.0000003 + 1000 × 0.00000375 + 500 × 0.000015 = 0.03045
    let mut text = text_event("cost-text", now);
    text.provider = "anthropic".into();
    text.model = "claude-sonnet-4-5".into();
    text.endpoint = "messages".into();
    text.input_tokens = 10_000;
    text.cached_input_tokens = 4_000;
    text.cache_write_tokens = 1_000;
    text.output_tokens = 500;
    text.labels.insert("feature".into(), "search".into());
    text.labels.insert("tier".into(), "gold".into());
    text.user_id = Some("user-7".into());
    text.customer_id = Some("acme".into());
    text.estimated_cost_usd = Some("0.031".parse().expect("decimal"));
    text.accepted = Some(true);
    text.retry_after_ms = Some(0);
    text.attempt = 2;
    text.fallback_from_model = Some("gpt-4o".into());
    cases.push((text, "0.03045"));

    // The same call through the batch endpoint, `_batches` prices:
    // 6000 × 0.0000015 + 4000 × 0.00000015 + 1000 × 0.000001875 + 500 × 0.0000075 = 0.015225
    let mut batch = text_event("cost-batch", now);
    batch.provider = "anthropic".into();
    batch.model = "claude-sonnet-4-5".into();
    batch.endpoint = "batch".into();
    batch.modality = Modality::Batch;
    batch.input_tokens = 10_000;
    batch.cached_input_tokens = 4_000;
    batch.cache_write_tokens = 1_000;
    batch.output_tokens = 500;
    batch.job_id = Some("batch-1".into());
    batch.job_state = Some(JobState::Succeeded);
    cases.push((batch, "0.015225"));

    // Image, tier final → high/1024-x-1024/gpt-image-1.5 at 0.133 per image, plus 100 prompt
    // tokens at 0.000005: 2 × 0.133 + 100 × 0.000005 = 0.2665
    let mut image = text_event("cost-image", now);
    image.model = "gpt-image-1.5".into();
    image.endpoint = "images".into();
    image.modality = Modality::Image;
    image.images = 2;
    image.image_tier = Some(ImageTier::Final);
    image.input_tokens = 100;
    image.output_tokens = 0;
    cases.push((image, "0.2665"));

    // Video, gemini/veo-3.1-fast-generate-preview, 6 s at 1920x1080 (1080p): 6 × 0.12 = 0.72
    let mut video = text_event("cost-video", now);
    video.provider = "gemini".into();
    video.model = "gemini/veo-3.1-fast-generate-preview".into();
    video.endpoint = "video".into();
    video.modality = Modality::Video;
    video.input_tokens = 0;
    video.output_tokens = 0;
    video.video_duration_ms = 6_000;
    video.video_resolution = Some("1920x1080".into());
    video.job_id = Some("video-1".into());
    video.job_state = Some(JobState::Succeeded);
    cases.push((video, "0.72"));

    // Audio, whisper-1, 61.5 s at 0.0001 per second: 0.00615
    let mut audio = text_event("cost-audio", now);
    audio.model = "whisper-1".into();
    audio.endpoint = "audio".into();
    audio.modality = Modality::Audio;
    audio.input_tokens = 0;
    audio.output_tokens = 0;
    audio.audio_duration_ms = 61_500;
    cases.push((audio, "0.00615"));

    // Produce with the recorder (validates, prices, encodes), remembering what it sent.
    let mut expected_rows = Vec::new();
    for (event, cost) in &cases {
        let prepared = recorder
            .prepare(event.clone(), Utc::now())
            .unwrap_or_else(|violations| panic!("{}: {violations:?}", event.event_id));
        let priced = prepared.event().clone();
        assert_eq!(
            priced.cost_usd,
            Some(cost.parse::<Decimal>().expect("decimal")),
            "{}: recorder price",
            event.event_id
        );
        let delivery = recorder.send(prepared).await.expect("delivered");
        expected_rows.push((priced, delivery, *cost));
    }

    let archive = world.start_archive();
    infra::testkit::eventually(Duration::from_secs(60), "five archived rows", || async {
        (world.count("SELECT count() FROM usage_events").await == 5).then_some(())
    })
    .await;

    let catalog_version = recorder.pricer().catalog().version().to_owned();
    for (priced, delivery, cost) in &expected_rows {
        let event_id = &priced.event_id;
        // Exact decimal text, as ClickHouse prints Decimal(38, 12).
        let stored_cost = world
            .text(&format!(
                "SELECT toString(assumeNotNull(cost_usd)) FROM usage_events \
                 WHERE event_id = '{event_id}'"
            ))
            .await;
        let expected_text = format!("{:.12}", cost.parse::<Decimal>().expect("decimal"));
        assert_eq!(stored_cost, expected_text, "{event_id}: cost_usd");
        assert_eq!(
            priced.catalog_version.as_deref(),
            Some(catalog_version.as_str())
        );

        let stored: RawRow = world
            .client
            .query("SELECT ?fields FROM usage_events_raw WHERE event_id = ?")
            .bind(event_id)
            .fetch_one()
            .await
            .expect("row");
        let coordinates = KafkaCoordinates {
            topic: &world.config.kafka.topics.usage,
            partition: delivery.partition,
            offset: delivery.offset,
        };
        let mut expected =
            RawRow::from_event(priced.clone(), coordinates, Utc::now()).expect("representable");
        // Set by the archive when it wrote the row.
        expected.ingested_at = stored.ingested_at;
        expected.version = stored.version;
        assert_eq!(stored, expected, "{event_id}: every column round-trips");
        assert_eq!(stored.catalog_version, catalog_version);
        assert_eq!(stored.cost_source, "priced");
        assert_eq!(stored.priced_cost_usd, stored.cost_usd);
    }
    assert_eq!(archive.stats.processed(), 5);
    assert_eq!(world.count("SELECT count() FROM dead_letters").await, 0);
    archive.stop().await;
    world.drop().await;
}
