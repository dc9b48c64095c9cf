//! Event ids re-sent by producers (same event, new offsets, minutes or a restart apart) are
//! archived as sent but appear once to analysts (`usage_events`, FINAL).

mod archive_support;

use std::time::Duration;

use archive_support::{text_event, World};
use chrono::{SubsecRound, Utc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn resent_event_ids_show_once_in_the_view() {
    let world = World::new("archive_duplicates").await;
    let recorder = world.recorder();
    let now = Utc::now().trunc_subsecs(6) - chrono::Duration::minutes(5);
    let events: Vec<_> = (0..20)
        .map(|index| text_event(&format!("dup-{index}"), now))
        .collect();
    for event in &events {
        recorder.record(event.clone()).await.expect("delivered");
    }
    // Re-send half of them at once (a producer retry after lost acknowledgements).
    for event in events.iter().take(10) {
        recorder.record(event.clone()).await.expect("delivered");
    }
    let archive = world.start_archive();
    // Counted by the archive, not in the raw table: background merges of the
    // ReplacingMergeTree may already have removed older copies there.
    let archived = |expected: u64| {
        let stats = archive.stats.clone();
        move || {
            let stats = stats.clone();
            async move { (stats.processed() == expected).then_some(()) }
        }
    };
    infra::testkit::eventually(Duration::from_secs(60), "30 copies archived", archived(30)).await;
    // Re-send a few again after the first copies were flushed (and merged or not).
    for event in events.iter().take(3) {
        recorder.record(event.clone()).await.expect("delivered");
    }
    infra::testkit::eventually(Duration::from_secs(60), "33 copies archived", archived(33)).await;

    assert_eq!(world.count("SELECT count() FROM usage_events").await, 20);
    assert_eq!(
        world
            .count("SELECT uniqExact(event_id) FROM usage_events")
            .await,
        20
    );
    assert_eq!(
        archive
            .stats
            .archived
            .load(std::sync::atomic::Ordering::Acquire),
        33,
        "every copy was archived: deduplication is the table's job, not the consumer's"
    );
    // The view's cost equals 20 distinct events, not 33 copies.
    let expected = events
        .iter()
        .map(|event| {
            recorder
                .prepare(event.clone(), Utc::now())
                .expect("valid")
                .event()
                .cost_usd
                .expect("priced")
        })
        .sum::<rust_decimal::Decimal>();
    let stored = world
        .text("SELECT toString(assumeNotNull(sum(cost_usd))) FROM usage_events")
        .await;
    assert_eq!(
        stored.parse::<rust_decimal::Decimal>().expect("decimal"),
        expected
    );
    // A forced merge keeps the answer (the view does not depend on merges having happened).
    world
        .client
        .query("OPTIMIZE TABLE usage_events_raw FINAL")
        .execute()
        .await
        .expect("optimize");
    assert_eq!(world.count("SELECT count() FROM usage_events").await, 20);
    archive.stop().await;
    world.drop().await;
}
