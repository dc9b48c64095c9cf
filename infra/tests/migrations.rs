//! The migrations runner against the real local ClickHouse 18.16 (`dev/stack up`; address from
//! `QUOTAFLOW_TEST_CLICKHOUSE`, default `http://127.0.0.1:8123`). Each test migrates its own fresh
//! database and drops it at the end, also when the test fails.

use std::future::Future;

use clickhouse::Client;
use infra::config::ClickHouseConfig;
use infra::migrations::migrate;
use infra::testkit::{clickhouse_config, drop_database};
use schemas::ddl::MIGRATIONS;

const TABLES_AND_VIEWS: &[(&str, &str)] = &[
    ("aggregator_checkpoints", "ReplacingMergeTree"),
    ("alerts", "ReplacingMergeTree"),
    ("approval_checks", "ReplacingMergeTree"),
    ("approvals", "ReplacingMergeTree"),
    ("dead_letters", "ReplacingMergeTree"),
    ("decisions", "ReplacingMergeTree"),
    ("schema_migrations", "ReplacingMergeTree"),
    ("usage_events", "View"),
    ("usage_events_raw", "ReplacingMergeTree"),
    ("webhook_deliveries", "ReplacingMergeTree"),
    ("window_partials", "ReplacingMergeTree"),
    ("window_totals_current", "View"),
];

#[derive(Debug, PartialEq, clickhouse::Row, serde::Deserialize)]
struct TableRow {
    name: String,
    engine: String,
}

#[derive(Debug, PartialEq, clickhouse::Row, serde::Deserialize)]
struct MigrationRow {
    version: u32,
    name: String,
}

async fn tables(config: &ClickHouseConfig) -> Vec<(String, String)> {
    infra::clickhouse::server_client(config)
        .query("SELECT name, engine FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&config.database)
        .fetch_all::<TableRow>()
        .await
        .expect("list tables")
        .into_iter()
        .map(|row| (row.name, row.engine))
        .collect()
}

/// Every row of `schema_migrations`, duplicates included (no FINAL).
async fn recorded_migrations(client: &Client) -> Vec<(u32, String)> {
    client
        .query("SELECT version, name FROM schema_migrations ORDER BY version")
        .fetch_all::<MigrationRow>()
        .await
        .expect("read schema_migrations")
        .into_iter()
        .map(|row| (row.version, row.name))
        .collect()
}

/// Runs `body` with the config of a fresh database (not yet created), then drops the database, also
/// when `body` panics (the panic is re-raised afterwards).
async fn with_fresh_database<F, Fut>(test: &str, body: F)
where
    F: FnOnce(ClickHouseConfig) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let config = clickhouse_config(test);
    let outcome = tokio::spawn(body(config.clone())).await;
    drop_database(&config).await.expect("drop database");
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

fn expected_tables() -> Vec<(String, String)> {
    TABLES_AND_VIEWS
        .iter()
        .map(|(name, engine)| (name.to_string(), engine.to_string()))
        .collect()
}

fn expected_migrations() -> Vec<(u32, String)> {
    MIGRATIONS
        .iter()
        .map(|migration| (migration.version, migration.name.to_string()))
        .collect()
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn migrating_twice_gives_the_same_schema_and_one_record_per_migration() {
    with_fresh_database("migr", migrating_twice).await;
}

async fn migrating_twice(config: ClickHouseConfig) {
    migrate(&config).await.expect("first migrate");
    let after_first = tables(&config).await;
    assert_eq!(after_first, expected_tables());

    migrate(&config).await.expect("second migrate");
    assert_eq!(tables(&config).await, after_first);
    let client = infra::clickhouse::client(&config);
    assert_eq!(recorded_migrations(&client).await, expected_migrations());
}

/// The three services each migrate at startup, possibly at the same moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn three_services_migrating_at_once_all_succeed() {
    with_fresh_database("migr_concurrent", migrating_concurrently).await;
}

async fn migrating_concurrently(config: ClickHouseConfig) {
    let services = (0..3).map(|_| {
        let config = config.clone();
        tokio::spawn(async move { migrate(&config).await })
    });
    for outcome in futures::future::join_all(services).await {
        outcome.expect("task").expect("concurrent migrate");
    }
    assert_eq!(tables(&config).await, expected_tables());

    // Several may have recorded a version; FINAL collapses the copies, as the runner's DISTINCT does.
    let client = infra::clickhouse::client(&config);
    let recorded: Vec<(u32, String)> = client
        .query("SELECT version, name FROM schema_migrations FINAL ORDER BY version")
        .fetch_all::<MigrationRow>()
        .await
        .expect("read schema_migrations")
        .into_iter()
        .map(|row| (row.version, row.name))
        .collect();
    assert_eq!(recorded, expected_migrations());
}

#[derive(Debug, PartialEq, clickhouse::Row, serde::Deserialize)]
struct EventSummary {
    event_id: String,
    copies: u64,
    kafka_offset: i64,
    /// `sum` of a Nullable column is Nullable (NULL when every value is NULL).
    cost_usd_text: Option<String>,
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn the_usage_view_shows_a_duplicate_once_and_sums_decimals_exactly() {
    with_fresh_database("migr_view", usage_view_deduplicates).await;
}

async fn usage_view_deduplicates(config: ClickHouseConfig) {
    migrate(&config).await.expect("migrate");
    let client = infra::clickhouse::client(&config);

    // e2 is archived twice (a producer re-send): the copy with the higher version must win.
    let insert = |event_id: &str, cost: &str, offset: i64, version: u64| {
        format!(
            "INSERT INTO usage_events_raw (event_id, occurred_at, occurred_at_us, api_key_id, team, model, \
             status, cost_usd, kafka_topic, kafka_partition, kafka_offset, ingested_at, version) VALUES \
             ('{event_id}', '2024-03-01 12:00:00', 1709294400000000, 'ak_1', 'ml', 'gpt-4o', 'succeeded', \
             {cost}, 'usage', 0, {offset}, '2024-03-01 12:00:01', {version})"
        )
    };
    for statement in [
        insert("e1", "0.000000000001", 10, 1),
        insert("e2", "0.000000000001", 11, 1),
        insert("e2", "0.000000000001", 12, 2),
    ] {
        client.query(&statement).execute().await.expect("insert");
    }

    let summary = client
        .query(
            "SELECT event_id, count() AS copies, any(kafka_offset) AS kafka_offset, \
             toString(sum(cost_usd)) AS cost_usd_text FROM usage_events GROUP BY event_id ORDER BY event_id",
        )
        .fetch_all::<EventSummary>()
        .await
        .expect("read view");
    let row = |event_id: &str, kafka_offset: i64| EventSummary {
        event_id: event_id.to_string(),
        copies: 1,
        kafka_offset,
        cost_usd_text: Some("0.000000000001".to_string()),
    };
    // A known row must come back: an empty answer here means a client misconfiguration (e.g. LZ4).
    assert_eq!(summary, vec![row("e1", 10), row("e2", 12)]);

    let total: Option<String> = client
        .query("SELECT toString(sum(cost_usd)) FROM usage_events")
        .fetch_one()
        .await
        .expect("sum");
    assert_eq!(total.as_deref(), Some("0.000000000002"));
    let raw_copies: u64 = client
        .query("SELECT count() FROM usage_events_raw")
        .fetch_one()
        .await
        .expect("count raw");
    assert_eq!(
        raw_copies, 3,
        "the raw archive keeps every copy until a merge"
    );
}
