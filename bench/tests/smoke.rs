//! Smoke test of the side-by-side benchmark on the real local stack: 20,000 records, one
//! partition, one run, every contender, topics deleted at the end. Checks the harness works, not
//! the figures: the aggregator's totals equal the recount of distinct events, the Kafka engine's
//! equal the recount of every record (it counts the duplicates), and the table is printed.
//!
//! The aggregator binary is the one `cargo test` built next to this package's binaries; kcat
//! comes from `dev/setup`.

use std::path::PathBuf;
use std::process::Command;

#[test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
fn bench_runs_every_contender_on_a_small_topic() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let aggregator = bench.with_file_name("quotaflow-aggregator");
    assert!(
        aggregator.exists(),
        "{} is missing: build it with `cargo build -p aggregator`",
        aggregator.display()
    );
    let prefix = infra::testkit::unique_name("qfbench_smoke");
    let output = Command::new(&bench)
        .args(["--events", "20000", "--partitions", "1", "--runs", "1"])
        .args(["--markers", "1", "--drop-topics", "--topic-prefix", &prefix])
        .arg("--aggregator-bin")
        .arg(&aggregator)
        .output()
        .expect("running the bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let row = |label: &str| {
        stdout
            .lines()
            .rev()
            .find(|line| line.starts_with("| 20000 | 1 |") && line.contains(label))
            .unwrap_or_else(|| panic!("no table row for {label} in\n{stdout}"))
            .to_owned()
    };
    assert!(row("(a) aggregator").contains("exact ("), "{stdout}");
    assert!(
        row("(b) ClickHouse Kafka engine").contains("= every-record recount"),
        "{stdout}"
    );
    for label in ["kcat -C, Avro", "kcat -C, JSON", "rdkafka, do nothing"] {
        row(label);
    }
}

/// Issue 13 point 7: the cardinality benchmark runs end to end on a small topic: with a limit of
/// 100, 2,000 distinct `user_id`s give 100 month totals of their own plus the overflow bucket,
/// which took the other 1,900 events; without a limit every user has its own total.
#[test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
fn cardinality_bench_runs_with_and_without_a_limit() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let aggregator = bench.with_file_name("quotaflow-aggregator");
    let prefix = infra::testkit::unique_name("qfbench_card_smoke");
    let output = Command::new(&bench)
        .args(["--drop-topics", "--topic-prefix", &prefix])
        .arg("--aggregator-bin")
        .arg(&aggregator)
        .args(["cardinality", "--users", "2000", "--limits", "100,0"])
        .output()
        .expect("running the bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let row = |limit: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(&format!("| {limit} | 2000 |")))
            .unwrap_or_else(|| panic!("no table row for {limit} in\n{stdout}"))
            .to_owned()
    };
    assert!(row("100").ends_with("| 101 | 1900 |"), "{stdout}");
    assert!(row("none").ends_with("| 2000 | 0 |"), "{stdout}");
}
