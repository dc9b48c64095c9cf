//! ClickHouse DDL migrations (placeholder until written).
