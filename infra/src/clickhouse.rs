//! ClickHouse over HTTP: the client built from [`ClickHouseConfig`], and the migrations runner.
//!
//! Compression and result validation are configuration, not code paths: both must be off against the
//! local 18.16 server (see `ClickHouseConfig`), and may be on against a modern server.

use crate::config::ClickHouseConfig;

/// A client for the configured database.
pub fn client(config: &ClickHouseConfig) -> clickhouse::Client {
    server_client(config).with_database(&config.database)
}

/// A client without a default database (to create it, or to query `system`).
pub fn server_client(config: &ClickHouseConfig) -> clickhouse::Client {
    let mut client = clickhouse::Client::default()
        .with_url(&config.url)
        .with_user(&config.user)
        .with_compression(if config.compression {
            clickhouse::Compression::Lz4
        } else {
            clickhouse::Compression::None
        })
        .with_validation(config.validation);
    if !config.password.is_empty() {
        client = client.with_password(config.password.expose());
    }
    client
}
