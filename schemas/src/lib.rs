//! Data contracts of the pipeline (no network IO).

pub mod ddl;
