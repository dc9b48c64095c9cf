//! ClickHouse over HTTP: the client built from [`ClickHouseConfig`], and what a failed call means
//! ([`classify_error`]: retry, set the rows aside, or stop).
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

/// What a failed ClickHouse call means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickHouseFailure {
    /// Goes away by itself (network, timeout, load, a restarting server): retry with backoff.
    Transient,
    /// These values cannot be inserted: retrying fails the same way; set the rows aside.
    Data,
    /// A deployment problem (unknown table, missing column, authentication): stop and tell.
    Fatal,
}

/// ClickHouse exception codes that mean "these values cannot be inserted".
const DATA_ERROR_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
];

/// ClickHouse exception codes that go away by themselves (load, memory, timeouts, restarts).
const TRANSIENT_CODES: &[u32] = &[
    159, // TIMEOUT_EXCEEDED
    164, // READONLY (server starting)
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    252, // TOO_MANY_PARTS
    319, // UNKNOWN_STATUS_OF_INSERT
];

/// The `Code: N` of a ClickHouse exception message, if any.
fn exception_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Classifies an error of the clickhouse crate by its kind and the server's exception code. Data
/// errors are never worth a retry (CONVENTIONS.md §9); an answer without an exception code comes
/// from a proxy or a restarting server and is transient.
pub fn classify_error(error: &clickhouse::error::Error) -> ClickHouseFailure {
    use clickhouse::error::Error;
    match error {
        Error::Network(_) | Error::TimedOut => ClickHouseFailure::Transient,
        Error::BadResponse(text) => match exception_code(text) {
            Some(code) if DATA_ERROR_CODES.contains(&code) => ClickHouseFailure::Data,
            Some(code) if TRANSIENT_CODES.contains(&code) => ClickHouseFailure::Transient,
            None => ClickHouseFailure::Transient,
            Some(_) => ClickHouseFailure::Fatal,
        },
        _ => ClickHouseFailure::Fatal,
    }
}
