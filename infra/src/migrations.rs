//! Versioned ClickHouse migrations: applies `schemas::ddl::MIGRATIONS` to the configured database.
//!
//! Guarantees:
//! - The database and `schema_migrations` are created if missing; every migration not recorded there
//!   is applied, oldest first, statement by statement, and then recorded (one row per version).
//! - A migration is recorded only after all its statements succeeded. Every statement is
//!   `IF NOT EXISTS`, so a crash between applying and recording only means the statements run again.
//! - Several services may migrate at once: they may both apply a migration (harmless, see above) and both
//!   record it; `schema_migrations` is a `ReplacingMergeTree` ordered by version and is read with
//!   `DISTINCT`, so a version recorded twice counts once.
//! - A failing statement stops the run with [`Error::Migration`] naming the migration; later
//!   migrations are not attempted.

use crate::clickhouse::{client, server_client};
use crate::config::ClickHouseConfig;
use crate::{Error, Result};
use schemas::ddl::{Migration, MIGRATIONS};

/// The bookkeeping table; created here rather than by a migration, since it records the migrations.
const CREATE_SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
     (version UInt32, name String, applied_at DateTime('UTC')) \
     ENGINE = ReplacingMergeTree ORDER BY version";

#[derive(clickhouse::Row, serde::Deserialize)]
struct AppliedVersion {
    version: u32,
}

/// Creates the configured database if missing and applies every migration in `schemas::ddl` that is
/// not yet recorded, in order. Idempotent; safe to run from several services at once.
pub async fn migrate(config: &ClickHouseConfig) -> Result<()> {
    server_client(config)
        .query("CREATE DATABASE IF NOT EXISTS ?")
        .bind(clickhouse::sql::Identifier(&config.database))
        .execute()
        .await?;
    let database_client = client(config);
    database_client
        .query(CREATE_SCHEMA_MIGRATIONS)
        .execute()
        .await?;

    let applied: Vec<u32> = database_client
        .query("SELECT DISTINCT version FROM schema_migrations ORDER BY version")
        .fetch_all::<AppliedVersion>()
        .await?
        .into_iter()
        .map(|row| row.version)
        .collect();

    let mut applied_now = 0;
    for migration in MIGRATIONS
        .iter()
        .filter(|migration| !applied.contains(&migration.version))
    {
        apply(&database_client, migration).await?;
        applied_now += 1;
    }
    tracing::info!(
        database = %config.database,
        applied = applied_now,
        latest = MIGRATIONS.last().map(|migration| migration.version),
        "schema migrations up to date"
    );
    Ok(())
}

/// Runs one migration's statements, then records it.
async fn apply(database_client: &clickhouse::Client, migration: &Migration) -> Result<()> {
    let failed = |source| Error::Migration {
        version: migration.version,
        name: migration.name,
        source,
    };
    tracing::info!(
        version = migration.version,
        name = migration.name,
        "applying migration"
    );
    for statement in migration.statements() {
        // The client treats `?` as a bind placeholder; `??` sends a literal `?` (e.g. in a comment).
        database_client
            .query(&statement.replace('?', "??"))
            .execute()
            .await
            .map_err(failed)?;
    }
    database_client
        .query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, now())")
        .bind(migration.version)
        .bind(migration.name)
        .execute()
        .await
        .map_err(failed)?;
    tracing::info!(
        version = migration.version,
        name = migration.name,
        "applied migration"
    );
    Ok(())
}
