//! Issue 13, point 10: producers that write Avro straight to the usage topic (past the HTTP API)
//! get the same validation and pricing as HTTP, and the two readers of the topic, the raw archive
//! and the aggregator, run side by side on one topic and agree on every record: archived and
//! counted, or dead-lettered by both with the same kind. Real Kafka and ClickHouse.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use infra::shutdown::Shutdown;
use infra::testkit;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;
use schemas::fixtures::text_event;
use schemas::{CostSource, UsageEvent};
use support::{isolated_config, start, wait_caught_up};

/// What one reader did with the record at an offset of partition 0.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Archived (the archive) or counted (the aggregator).
    Kept,
    /// Dead-lettered with this kind.
    DeadLettered(String),
}

/// The archiver and the aggregator on the same topics and database.
struct Readers {
    aggregator_config: aggregator::Config,
    archive_config: quotaflow_archiver::Config,
    client: clickhouse::Client,
}

impl Readers {
    async fn new(test: &str) -> Readers {
        let aggregator_config = isolated_config(test);
        let mut archive_config = quotaflow_archiver::Config {
            kafka: aggregator_config.kafka.clone(),
            clickhouse: aggregator_config.clickhouse.clone(),
            // The same admission rules as the aggregator's: that is the contract.
            validation: aggregator_config.validation.clone(),
            pricing: aggregator_config.pricing.clone(),
            ..quotaflow_archiver::Config::default()
        };
        archive_config.archive.group_id = testkit::unique_name("archive");
        archive_config.archive.batch_max_age_ms = 100;
        infra::service::prepare_pipeline(&aggregator_config.kafka, &aggregator_config.clickhouse)
            .await
            .expect("topics and migrations");
        let client = infra::clickhouse::client(&aggregator_config.clickhouse);
        Readers {
            aggregator_config,
            archive_config,
            client,
        }
    }

    /// Writes `records` (event, explicit record timestamp) to partition 0 in order, Avro encoded
    /// with `schemas::encode` as a direct producer would; returns their offsets.
    async fn produce(&self, records: &[(UsageEvent, Option<DateTime<Utc>>)]) -> Vec<i64> {
        let producer: FutureProducer =
            infra::kafka::producer_config(&self.aggregator_config.kafka, "direct-producer")
                .create()
                .expect("producer");
        let topic = &self.aggregator_config.kafka.topics.usage;
        let mut offsets = Vec::new();
        for (event, timestamp) in records {
            let payload = schemas::encode(event).expect("encodes");
            let key = schemas::usage_event::partition_key(event);
            let mut record = FutureRecord::to(topic)
                .partition(0)
                .key(key)
                .payload(&payload);
            if let Some(timestamp) = timestamp {
                record = record.timestamp(timestamp.timestamp_millis());
            }
            let delivery = producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(error, _)| error)
                .expect("acknowledged");
            offsets.push(delivery.offset);
        }
        offsets
    }

    /// Runs the archiver and the aggregator until both have handled `records` records, then
    /// stops them.
    async fn run_both(&self, records: u64) {
        let archiver = quotaflow_archiver::Archiver::new(self.archive_config.clone());
        let stats = archiver.stats();
        let archive_shutdown = Shutdown::new();
        let archive = tokio::spawn(archiver.run(archive_shutdown.clone()));
        let running = start(&self.aggregator_config).await;
        wait_caught_up(&self.aggregator_config, Duration::from_secs(120)).await;
        testkit::eventually(Duration::from_secs(120), "archive caught up", || {
            let stats = std::sync::Arc::clone(&stats);
            async move { (stats.processed() >= records).then_some(()) }
        })
        .await;
        running.stop().await.expect("aggregator ran without error");
        archive_shutdown.cancel();
        archive
            .await
            .expect("archive task")
            .expect("archive ran without error");
    }

    /// The fate of every offset of partition 0 for `service` (`ingest` is the archive).
    async fn fates(&self, service: &str) -> BTreeMap<i64, Fate> {
        let topic = &self.aggregator_config.kafka.topics.usage;
        #[derive(Debug, clickhouse::Row, serde::Deserialize)]
        struct Letter {
            source_offset: i64,
            error_kind: String,
        }
        let letters = self
            .client
            .query(
                "SELECT source_offset, error_kind FROM dead_letters FINAL \
                 WHERE service = ? AND source_topic = ? AND source_partition = 0",
            )
            .bind(service)
            .bind(topic)
            .fetch_all::<Letter>()
            .await
            .expect("dead letters");
        letters
            .into_iter()
            .map(|letter| (letter.source_offset, Fate::DeadLettered(letter.error_kind)))
            .collect()
    }

    /// Offsets archived in `usage_events_raw`, with the archived cost and cost source.
    async fn archived(&self) -> BTreeMap<i64, (String, String)> {
        #[derive(Debug, clickhouse::Row, serde::Deserialize)]
        struct Archived {
            kafka_offset: i64,
            cost: String,
            cost_source: String,
        }
        self.client
            .query(
                "SELECT toInt64(kafka_offset) AS kafka_offset, \
                 ifNull(toString(cost_usd), 'null') AS cost, cost_source \
                 FROM usage_events_raw FINAL WHERE kafka_topic = ? AND kafka_partition = 0",
            )
            .bind(&self.aggregator_config.kafka.topics.usage)
            .fetch_all::<Archived>()
            .await
            .expect("archived rows")
            .into_iter()
            .map(|row| (row.kafka_offset, (row.cost, row.cost_source)))
            .collect()
    }

    /// Per team: (requests, cost, unpriced events, late events) summed over the UTC `window_kind`
    /// windows the aggregator stored.
    async fn team_totals(&self, window_kind: &str) -> BTreeMap<String, (u64, Decimal, u64, u64)> {
        #[derive(Debug, clickhouse::Row, serde::Deserialize)]
        struct Total {
            scope_key: String,
            requests: u64,
            cost: String,
            unpriced_events: u64,
            late_events: u64,
        }
        self.client
            .query(
                "SELECT scope_key, sum(requests) AS requests, toString(sum(cost_usd)) AS cost, \
                 sum(unpriced_events) AS unpriced_events, sum(late_events) AS late_events \
                 FROM window_totals_current \
                 WHERE scope_kind = 'team' AND window_kind = ? AND window_tz = 'UTC' \
                 GROUP BY scope_key",
            )
            .bind(window_kind)
            .fetch_all::<Total>()
            .await
            .expect("totals")
            .into_iter()
            .map(|row| {
                (
                    row.scope_key,
                    (
                        row.requests,
                        row.cost.parse().expect("decimal"),
                        row.unpriced_events,
                        row.late_events,
                    ),
                )
            })
            .collect()
    }

    /// Every offset's fate in the archive and in the aggregator (kept unless dead-lettered).
    async fn both_fates(&self, offsets: &[i64]) -> Vec<(i64, Fate, Fate)> {
        let archived = self.archived().await;
        let archive_letters = self.fates(quotaflow_archiver::SERVICE).await;
        let aggregator_letters = self.fates(aggregator::partition::SERVICE).await;
        offsets
            .iter()
            .map(|offset| {
                let archive = match (archived.contains_key(offset), archive_letters.get(offset)) {
                    (true, None) => Fate::Kept,
                    (false, Some(fate)) => fate.clone(),
                    other => panic!("offset {offset}: archived and dead-lettered? {other:?}"),
                };
                let aggregator = aggregator_letters
                    .get(offset)
                    .cloned()
                    .unwrap_or(Fate::Kept);
                (*offset, archive, aggregator)
            })
            .collect()
    }

    async fn drop(self) {
        testkit::drop_database(&self.aggregator_config.clickhouse)
            .await
            .expect("drop database");
    }
}

fn usd(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

/// Issue 13, point 10: direct Avro producers. A reported cost without an envelope was counted as
/// unpriced (cost 0); a forged envelope (`cost_usd = 999999999`) was counted as is; 50M tokens
/// and an empty team were dead-lettered by the archive and counted by the aggregator. Now both
/// readers admit each record with one step: the reported cost wins, the envelope is recomputed
/// from the catalog, and the invalid records are dead-lettered by both with the same kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn archive_and_aggregator_price_and_refuse_direct_records_alike() {
    let readers = Readers::new("agg_direct").await;
    let now = Utc::now().trunc_subsecs(3) - TimeDelta::minutes(1);
    let team = |name: &str| format!("direct-{name}");
    let event = |name: &str| {
        let mut event = text_event(&testkit::unique_name(name), now);
        event.team = team(name);
        event
    };

    let mut reported = event("reported");
    reported.reported_cost_usd = Some(usd("0.42"));
    let mut forged = event("forged");
    forged.cost_usd = Some(usd("999999999"));
    forged.cost_source = Some(CostSource::Priced);
    forged.catalog_version = Some("producer-catalog-v0".to_owned());
    let mut huge = event("huge");
    huge.input_tokens = 50_000_000;
    let mut no_team = event("no-team");
    no_team.team = String::new();
    let plain = event("plain");

    // What HTTP ingest would have charged for the forged and the plain event (same catalog).
    let pricer =
        quotaflow_admission::pricer::Pricer::from_config(&readers.aggregator_config.pricing)
            .expect("catalog");
    let catalog_cost = {
        let mut priced = event("priced");
        pricer.apply(&mut priced).expect("priced");
        priced.cost_usd.expect("gpt-4o is in the catalog")
    };
    assert_ne!(catalog_cost, usd("999999999"));

    let records: Vec<(UsageEvent, Option<DateTime<Utc>>)> =
        [reported, forged, huge, no_team, plain]
            .into_iter()
            .map(|event| (event, None))
            .collect();
    let offsets = readers.produce(&records).await;
    readers.run_both(records.len() as u64).await;

    let fates = readers.both_fates(&offsets).await;
    for (offset, archive, aggregator) in &fates {
        assert_eq!(archive, aggregator, "offset {offset}: the readers disagree");
    }
    let validation = Fate::DeadLettered("validation".to_owned());
    let expected = [
        Fate::Kept,
        Fate::Kept,
        validation.clone(),
        validation.clone(),
        Fate::Kept,
    ];
    let got: Vec<Fate> = fates
        .iter()
        .map(|(_, archive, _)| archive.clone())
        .collect();
    assert_eq!(got, expected);

    // Counted and archived at the same, recomputed costs.
    let archived = readers.archived().await;
    assert_eq!(
        (
            archived[&offsets[0]].0.parse::<Decimal>().expect("decimal"),
            archived[&offsets[0]].1.as_str()
        ),
        (usd("0.42"), "reported"),
        "a reported cost wins"
    );
    assert_eq!(
        archived[&offsets[1]].0.parse::<Decimal>().expect("decimal"),
        catalog_cost,
        "the forged envelope is recomputed"
    );
    assert_eq!(archived[&offsets[1]].1, "priced");
    assert_eq!(
        archived[&offsets[4]].0.parse::<Decimal>().expect("decimal"),
        catalog_cost
    );
    let totals = readers.team_totals("day").await;
    assert_eq!(totals[&team("reported")], (1, usd("0.42"), 0, 0));
    assert_eq!(totals[&team("forged")], (1, catalog_cost, 0, 0));
    assert_eq!(totals[&team("plain")], (1, catalog_cost, 0, 0));
    assert!(!totals.contains_key(&team("huge")), "{totals:?}");
    assert!(!totals.contains_key(""), "{totals:?}");
    readers.drop().await;
}

/// Issue 13, point 10: a producer whose clock is 50 minutes fast stamps both `occurred_at` and
/// its record's timestamp 50 minutes ahead. It used to be counted, moving its partition's
/// watermark 50 minutes on, so the next honest events were dead-lettered as late and missing
/// from their windows. The usage topic now takes the broker's append time, the record is refused
/// by both readers (`in_future`), and the honest events are counted in their own windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_record_from_a_fast_clock_is_refused_by_both_and_moves_no_watermark() {
    let readers = Readers::new("agg_fast_clock").await;
    let now = Utc::now().trunc_subsecs(3);
    let honest = |name: &str, at: DateTime<Utc>| {
        let mut event = text_event(&testkit::unique_name(name), at);
        event.team = "honest".to_owned();
        event
    };
    let fast_clock = now + TimeDelta::minutes(50);
    let mut fast = text_event(&testkit::unique_name("fast"), fast_clock);
    fast.team = "fast-clock".to_owned();
    let records = vec![
        (honest("before", now - TimeDelta::minutes(2)), None),
        (fast, Some(fast_clock)),
        (honest("after-1", now - TimeDelta::minutes(1)), None),
        (honest("after-2", now), None),
        (honest("after-3", now), None),
    ];
    let offsets = readers.produce(&records).await;
    readers.run_both(records.len() as u64).await;

    let fates = readers.both_fates(&offsets).await;
    let in_future = Fate::DeadLettered("in_future".to_owned());
    let expected: Vec<(i64, Fate, Fate)> = offsets
        .iter()
        .enumerate()
        .map(|(index, offset)| {
            let fate = if index == 1 {
                in_future.clone()
            } else {
                Fate::Kept
            };
            (*offset, fate.clone(), fate)
        })
        .collect();
    assert_eq!(fates, expected);

    // Every honest event is in its own minute window, none late.
    let minutes = readers.team_totals("minute").await;
    let (requests, _, _, late) = minutes["honest"];
    assert_eq!((requests, late), (4, 0), "{minutes:?}");
    assert!(!minutes.contains_key("fast-clock"), "{minutes:?}");
    readers.drop().await;
}
