//! The bad corpus: each file in `tests/bad/` is wrong in a known way. One load of the directory
//! must report every problem of every file, each with its file, the line of the offending key
//! (or value) and a reason.

use policy::{check_dir, PolicySet};
use std::collections::BTreeSet;
use std::path::Path;

fn bad_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bad"))
}

/// (file, line, reason substring): every error the corpus must produce, and no other.
const EXPECTED: &[(&str, usize, &str)] = &[
    ("01_syntax_error.yaml", 7, "mapping values are not allowed"),
    ("02_unknown_field.yaml", 6, "unknown field `hard_capp`"),
    (
        "03_duplicate_id.yaml",
        9,
        "duplicate policy id \"same\": already defined at",
    ),
    ("04_degrade_without_target.yaml", 8, "needs `degrade_to`"),
    (
        "05_thresholds_not_increasing.yaml",
        7,
        "strictly increasing by the level each fires at, but 75% (7.5 cost_usd) follows 90% (9 cost_usd)",
    ),
    (
        "06_campaign_end_before_start.yaml",
        10,
        "is not after its start",
    ),
    (
        "07_unknown_time_zone.yaml",
        7,
        "unknown time zone \"America/Nowhere\"",
    ),
    ("08_bad_glob.yaml", 6, "bad glob \"gpt-[4o*\": unclosed `[`"),
    ("09_gauge_with_window.yaml", 5, "is a gauge"),
    ("10_counter_without_window.yaml", 4, "add `window`"),
    ("11_negative_cap.yaml", 6, "-5.5 is negative"),
    (
        "12_unknown_dimension.yaml",
        7,
        "unknown dimension \"tenant\"",
    ),
    ("13_model_and_pattern.yaml", 6, "are exclusive"),
    (
        "14_list_with_missing_owner.yaml",
        9,
        "missing field `owner`",
    ),
    (
        "14_list_with_missing_owner.yaml",
        26,
        "\"3 days\" is not a duration",
    ),
    (
        "20_approver_without_key.yaml",
        8,
        "approver \"alice\" has no public key",
    ),
    ("21_approver_listed_twice.yaml", 9, "is listed twice"),
    (
        "15_severity_threshold_not_in_soft_alerts.yaml",
        13,
        "names 90, which is not in soft_alerts",
    ),
    ("16_empty.yaml", 1, "holds no policy"),
    (
        "22_threshold_wrong_unit.yaml",
        7,
        "soft alert threshold 500 USD is not in the policy's unit total_tokens",
    ),
    (
        "23_threshold_above_cap.yaml",
        7,
        "soft alert threshold 150 USD is above the hard cap 100 cost_usd",
    ),
    (
        "24_thresholds_out_of_order.yaml",
        7,
        "400 USD (400 cost_usd) follows 50% (500 cost_usd)",
    ),
    (
        "25_backlog_on_a_counter.yaml",
        7,
        "pending_backlog applies to unit concurrent_jobs only, not requests",
    ),
    (
        "26_unknown_anomaly_metric.yaml",
        8,
        "anomaly.metrics lists \"prompt_size\", which is not one of",
    ),
    ("17_environment_conflict.yaml", 6, "could never match"),
    ("18_too_precise.yaml", 6, "more than 12 fractional digits"),
    (
        "19_stray_degrade_to.yaml",
        7,
        "only for action kind degrade",
    ),
];

#[test]
fn one_load_reports_every_error_with_file_line_and_reason() {
    let errors = PolicySet::load_dir(bad_dir()).expect_err("the corpus is bad");
    let actual: Vec<(String, usize, String)> = errors
        .errors()
        .iter()
        .map(|error| {
            let file = error
                .file
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (file, error.line(), error.reason.clone())
        })
        .collect();
    for (file, line, reason) in EXPECTED {
        assert!(
            actual
                .iter()
                .any(|(f, l, r)| f == file && l == line && r.contains(reason)),
            "expected {file}:{line}: …{reason}…, got:\n{errors}"
        );
    }
    assert_eq!(
        actual.len(),
        EXPECTED.len(),
        "unexpected extra errors:\n{errors}"
    );
    // Every file of the corpus is covered by an expectation.
    let files: BTreeSet<_> = std::fs::read_dir(bad_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let covered: BTreeSet<_> = EXPECTED
        .iter()
        .map(|(file, _, _)| file.to_string())
        .collect();
    assert_eq!(files, covered);
    assert!(files.len() >= 12);
}

#[test]
fn check_dir_renders_file_line_column_reason() {
    let report = check_dir(bad_dir());
    assert!(!report.is_ok());
    assert_eq!(report.fingerprint, None);
    let text = report.to_string();
    let first = text.lines().next().unwrap();
    assert!(
        first
            .ends_with("01_syntax_error.yaml:7:13: mapping values are not allowed in this context"),
        "{first}"
    );
    assert!(
        text.contains("19_stray_degrade_to.yaml:7:28: degrade_to is only for action kind degrade")
    );
    assert!(
        text.ends_with(&format!("failed: {} errors in 26 files", EXPECTED.len())),
        "{text}"
    );
}

#[test]
fn a_missing_directory_is_an_error_without_position() {
    let report = check_dir(bad_dir().join("does-not-exist"));
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].position, None);
    assert!(report
        .to_string()
        .contains("does-not-exist: cannot read the policy directory"));
}
