//! Every migration statement and every documented query runs on both ClickHouse engines we support:
//! the local 18.16 server (`dev/stack up`; `QUOTAFLOW_TEST_CLICKHOUSE`, default `http://127.0.0.1:8123`)
//! and modern ClickHouse in-process through chDB (`pip install chdb-core`).
//!
//! The work is done by `dev/sql_check.py`; this test runs it once per engine and checks its final line
//! `N passed, N failed` against its own count of the statements (migrations from `schemas::ddl`, queries
//! from `schemas/sql/queries/*.sql` and ```sql blocks in `docs/**/*.md`, split by the same rule), so a
//! script that silently checked nothing, or split differently, fails here.

use std::path::{Path, PathBuf};
use std::process::Command;

use schemas::ddl::{split_statements, MIGRATIONS};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bodies of the ```sql fenced blocks of a markdown text (same rule as `dev/sql_check.py`).
fn sql_blocks_of_markdown(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut body: Option<Vec<&str>> = None;
    for line in text.lines() {
        match body.as_mut() {
            None if line.trim() == "```sql" => body = Some(Vec::new()),
            None => {}
            Some(lines) if line.trim() == "```" => {
                blocks.push(lines.join("\n"));
                body = None;
            }
            Some(lines) => lines.push(line),
        }
    }
    blocks
}

fn markdown_files(folder: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("docs entry").path();
        if path.is_dir() {
            markdown_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "md") {
            found.push(path);
        }
    }
}

/// Migration statements plus query statements: what the script must report as passed.
fn expected_statement_count() -> usize {
    let root = workspace_root();
    let migration_statements: usize = MIGRATIONS
        .iter()
        .map(|migration| migration.statements().len())
        .sum();

    let mut query_texts = Vec::new();
    for entry in std::fs::read_dir(root.join("schemas/sql/queries")).expect("queries folder") {
        let path = entry.expect("queries entry").path();
        if path.extension().is_some_and(|extension| extension == "sql") {
            let text = std::fs::read_to_string(&path).expect("read query");
            assert!(
                text.starts_with("-- title:") && text.contains("\n-- description:"),
                "{} must start with `-- title:` and have a `-- description:` comment",
                path.display()
            );
            query_texts.push(text);
        }
    }
    assert!(!query_texts.is_empty(), "no documented queries found");

    let mut docs = Vec::new();
    markdown_files(&root.join("docs"), &mut docs);
    for path in docs {
        query_texts.extend(sql_blocks_of_markdown(
            &std::fs::read_to_string(&path).expect("read doc"),
        ));
    }
    let query_statements: usize = query_texts
        .iter()
        .map(|text| split_statements(text).len())
        .sum();
    migration_statements + query_statements
}

fn run_sql_check(engine: &str) {
    let expected = expected_statement_count();
    let output = Command::new("python3")
        .arg(workspace_root().join("dev/sql_check.py"))
        .args(["--engine", engine])
        .output()
        .expect("run python3 dev/sql_check.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!("--engine {engine}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        output.status.success(),
        "sql_check failed ({})\n{report}",
        output.status
    );
    let last_line = stdout.lines().last().unwrap_or_default();
    assert_eq!(
        last_line,
        format!("{expected} passed, 0 failed"),
        "\n{report}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
fn migrations_and_queries_run_on_clickhouse_18_16() {
    run_sql_check("http");
}

#[test]
fn migrations_and_queries_run_on_modern_clickhouse_via_chdb() {
    run_sql_check("chdb");
}
