//! ClickHouse DDL as versioned migrations, embedded from `schemas/sql/migrations/NNNN_name.sql`.
//!
//! Guarantees the files keep (checked by the unit tests below, by `infra`'s migration tests on the
//! local 18.16 server, and by `dev/sql_check.py` on ClickHouse 18.16 and on modern ClickHouse via chDB):
//! - versions are strictly increasing and every file of the folder is listed in [`MIGRATIONS`];
//! - every statement is idempotent (`IF NOT EXISTS`, or `IF EXISTS` for a future drop), so applying a
//!   migration twice, crashing between applying and recording it, or two services migrating at once
//!   are all harmless;
//! - statements use unqualified table names: the client selects the database;
//! - every statement runs on ClickHouse 18.16 and on modern ClickHouse alike (no DateTime64, Map, TTL,
//!   LowCardinality, Enum or window functions; money is `Decimal(38, 12)`).
//!
//! Splitting rule ([`split_statements`], mirrored by `dev/sql_check.py`): a statement ends at a line
//! whose last non-blank character is `;`, unless that line is a `--` comment line; the `;` is dropped;
//! chunks made only of blank lines and `--` comment lines are skipped; text after the last `;` is a
//! statement if it holds code. Comments inside a statement are kept and sent to the server.

/// One versioned migration: an ordered list of idempotent DDL statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Position in the history; recorded in `schema_migrations` once applied. Never reused or reordered.
    pub version: u32,
    /// Short snake_case name, the file name without the version prefix and `.sql`.
    pub name: &'static str,
    /// The file's text, comments included.
    pub sql: &'static str,
}

impl Migration {
    /// The migration's statements in order, without their terminating `;` and without comment-only chunks.
    pub fn statements(&self) -> Vec<&'static str> {
        split_statements(self.sql)
    }
}

/// Every migration, oldest first. Append only: a shipped migration is never edited, a change is a new one.
/// A unit test checks that this list and the files of `sql/migrations/` agree.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "usage_events_raw",
        sql: include_str!("../sql/migrations/0001_usage_events_raw.sql"),
    },
    Migration {
        version: 2,
        name: "window_totals",
        sql: include_str!("../sql/migrations/0002_window_totals.sql"),
    },
    Migration {
        version: 3,
        name: "aggregator_checkpoints",
        sql: include_str!("../sql/migrations/0003_aggregator_checkpoints.sql"),
    },
    Migration {
        version: 4,
        name: "audit",
        sql: include_str!("../sql/migrations/0004_audit.sql"),
    },
    Migration {
        version: 5,
        name: "dead_letters",
        sql: include_str!("../sql/migrations/0005_dead_letters.sql"),
    },
    Migration {
        version: 6,
        name: "partials_and_checkpoints",
        sql: include_str!("../sql/migrations/0006_partials_and_checkpoints.sql"),
    },
    Migration {
        version: 7,
        name: "approval_checks",
        sql: include_str!("../sql/migrations/0007_approval_checks.sql"),
    },
    Migration {
        version: 8,
        name: "webhook_deliveries",
        sql: include_str!("../sql/migrations/0008_webhook_deliveries.sql"),
    },
];

/// Splits SQL text into statements by the rule in the module documentation.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut statements = Vec::new();
    let mut chunk_start = 0;
    let mut line_start = 0;
    for line in sql.split_inclusive('\n') {
        let line_end = line_start + line.len();
        let content = line.trim_end();
        if content.ends_with(';') && !is_comment_line(content) {
            let semicolon = line_start + content.len() - 1;
            push_if_code(&mut statements, &sql[chunk_start..semicolon]);
            chunk_start = line_end;
        }
        line_start = line_end;
    }
    push_if_code(&mut statements, &sql[chunk_start..]);
    statements
}

fn push_if_code<'a>(statements: &mut Vec<&'a str>, chunk: &'a str) {
    let chunk = chunk.trim();
    if chunk
        .lines()
        .any(|line| !line.trim().is_empty() && !is_comment_line(line))
    {
        statements.push(chunk);
    }
}

fn is_comment_line(line: &str) -> bool {
    line.trim_start().starts_with("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statement without its `--` comment lines, upper-cased, whitespace collapsed.
    fn code_of(statement: &str) -> String {
        statement
            .lines()
            .filter(|line| !is_comment_line(line))
            .flat_map(str::split_whitespace)
            .collect::<Vec<_>>()
            .join(" ")
            .to_uppercase()
    }

    #[test]
    fn versions_strictly_increase_from_one() {
        assert_eq!(
            MIGRATIONS.first().map(|migration| migration.version),
            Some(1)
        );
        for pair in MIGRATIONS.windows(2) {
            assert!(
                pair[0].version < pair[1].version,
                "{} then {}",
                pair[0].version,
                pair[1].version
            );
        }
    }

    #[test]
    fn every_statement_is_non_empty_and_idempotent() {
        for migration in MIGRATIONS {
            let statements = migration.statements();
            assert!(
                !statements.is_empty(),
                "migration {} has no statements",
                migration.version
            );
            for statement in statements {
                let code = code_of(statement);
                assert!(
                    !code.is_empty(),
                    "empty statement in migration {}",
                    migration.version
                );
                assert!(
                    !code.contains(';'),
                    "migration {}: `;` inside a statement: {code}",
                    migration.version
                );
                assert!(
                    code.contains(" IF NOT EXISTS ") || code.contains(" IF EXISTS "),
                    "migration {} statement is not idempotent: {code}",
                    migration.version
                );
                assert!(
                    !code.contains("DATETIME64")
                        && !code.contains("LOWCARDINALITY")
                        && !code.contains(" TTL ")
                        && !code.contains("MAP(")
                        && !code.contains("ENUM"),
                    "migration {} uses a type or clause ClickHouse 18.16 lacks: {code}",
                    migration.version
                );
            }
        }
    }

    #[test]
    fn every_file_in_the_folder_is_listed_once() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/migrations");
        let mut files: Vec<String> = std::fs::read_dir(&folder)
            .expect("migrations folder")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|migration| format!("{:04}_{}.sql", migration.version, migration.name))
            .collect();
        assert_eq!(files, listed);
    }

    #[test]
    fn splitting_ignores_comment_only_chunks_and_semicolons_in_comments() {
        let sql = "-- header;\n\nCREATE TABLE IF NOT EXISTS a (x UInt8) -- trailing\nENGINE = Memory;\n\n\
                   -- only a comment\n;\n  SELECT 1 ;  \n-- done;\nSELECT 2";
        assert_eq!(
            split_statements(sql),
            vec![
                "-- header;\n\nCREATE TABLE IF NOT EXISTS a (x UInt8) -- trailing\nENGINE = Memory",
                "SELECT 1",
                "-- done;\nSELECT 2",
            ]
        );
        assert!(split_statements("-- nothing here;\n\n").is_empty());
        assert!(split_statements("").is_empty());
    }

    #[test]
    fn the_tables_and_views_the_services_rely_on_exist() {
        let all_code: String = MIGRATIONS
            .iter()
            .flat_map(Migration::statements)
            .map(code_of)
            .collect::<Vec<_>>()
            .join("\n");
        for table in [
            "TABLE IF NOT EXISTS USAGE_EVENTS_RAW",
            "VIEW IF NOT EXISTS USAGE_EVENTS",
            "TABLE IF NOT EXISTS WINDOW_TOTALS",
            "VIEW IF NOT EXISTS WINDOW_TOTALS_CURRENT",
            "TABLE IF NOT EXISTS AGGREGATOR_CHECKPOINTS",
            "TABLE IF NOT EXISTS DECISIONS",
            "TABLE IF NOT EXISTS ALERTS",
            "TABLE IF NOT EXISTS APPROVALS",
            "TABLE IF NOT EXISTS APPROVAL_CHECKS",
            "TABLE IF NOT EXISTS DEAD_LETTERS",
        ] {
            assert!(all_code.contains(table), "no CREATE {table}");
        }
    }
}
