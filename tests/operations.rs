//! Keeps `docs/operations.md` and the Grafana dashboard honest:
//! - every metric the services register (a `"quotaflow_…"`, `"aggregator_…"` or `"alerter_…"`
//!   string in their sources) is in the doc's metrics table, and every row there exists;
//! - every setting of every service's `Config` (its defaults serialized, as dotted keys) is in the
//!   doc's configuration reference;
//! - the dashboard is valid Grafana JSON whose every query uses only metrics that exist.

use std::collections::BTreeSet;
use std::path::Path;

fn repo(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative))
        .unwrap_or_else(|error| panic!("{relative}: {error}"))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// One per service: the naming rule `quotaflow_<service>_…` (docs/operations.md).
const PREFIXES: [&str; 4] = [
    "quotaflow_ingest_",
    "quotaflow_archiver_",
    "quotaflow_aggregator_",
    "quotaflow_alerter_",
];

/// Metric names in the services' sources: string literals with a metric prefix and a metric-ish
/// suffix (names of topics, groups and databases do not end like metrics).
fn source_metrics() -> BTreeSet<String> {
    let mut files = Vec::new();
    for crate_dir in [
        "ingest/src",
        "recorder/src",
        "archiver/src",
        "aggregator/src",
        "alerter/src",
    ] {
        rust_files(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(crate_dir),
            &mut files,
        );
    }
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for piece in text.split('"').skip(1).step_by(2) {
            let is_name = PREFIXES.iter().any(|prefix| piece.starts_with(prefix))
                && piece
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && [
                    "_total",
                    "_seconds",
                    "_bytes",
                    "_rows",
                    "_lag",
                    "_paused",
                    "_partitions",
                    "_windows",
                    "_ids",
                    "_connections",
                    "_running",
                    "_records",
                    "_entries",
                    "_held",
                ]
                .iter()
                .any(|suffix| piece.ends_with(suffix));
            if is_name {
                names.insert(piece.to_owned());
            }
        }
    }
    names
}

/// Metric names in the doc's metrics table (first column, in backticks).
fn documented_metrics(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| line.split('`').nth(1))
        .filter(|name| PREFIXES.iter().any(|prefix| name.starts_with(prefix)))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    let doc = repo("docs/operations.md");
    let documented = documented_metrics(&doc);
    let registered = source_metrics();
    assert!(
        registered.len() >= 25,
        "the scan found too few metrics: {registered:?}"
    );
    let missing: Vec<_> = registered.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "metrics missing from docs/operations.md: {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&registered).collect();
    assert!(
        stale.is_empty(),
        "documented metrics no service registers: {stale:?}"
    );
}

fn dotted_keys(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match value {
                    toml::Value::Table(inner) if !inner.is_empty() => {
                        dotted_keys(value, &path, out)
                    }
                    _ => {
                        out.insert(path);
                    }
                }
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

fn config_keys<C: serde::Serialize>(config: &C) -> BTreeSet<String> {
    let value = toml::Value::try_from(config).expect("config serializes to TOML");
    let mut keys = BTreeSet::new();
    dotted_keys(&value, "", &mut keys);
    keys
}

#[test]
fn every_setting_of_every_service_is_in_the_configuration_reference() {
    let doc = repo("docs/operations.md");
    let mut missing = Vec::new();
    for (service, keys) in [
        ("ingest", config_keys(&ingest::Config::default())),
        (
            "archiver",
            config_keys(&quotaflow_archiver::Config::default()),
        ),
        ("aggregator", config_keys(&aggregator::Config::default())),
        ("alerter", config_keys(&alerter::Config::default())),
    ] {
        assert!(keys.len() > 10, "{service}: {keys:?}");
        for key in keys {
            // The per-topic replication settings are documented once, for `<topic>`.
            let key = match key.strip_prefix("kafka.topics.replication.") {
                Some(rest) => match rest.split_once('.') {
                    Some((topic, field)) => {
                        assert!(
                            doc.contains(&format!("`{topic}`")),
                            "{service}: replication of topic `{topic}` not named in the reference"
                        );
                        format!("kafka.topics.replication.<topic>.{field}")
                    }
                    None => key,
                },
                None => key,
            };
            if !doc.contains(&format!("`{key}`")) {
                missing.push(format!("{service}: {key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "settings missing from docs/operations.md: {missing:#?}"
    );
}

#[test]
fn the_grafana_dashboard_is_valid_and_queries_only_existing_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo("ops/grafana/quotaflow.json")).expect("valid JSON");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().is_some());
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let registered = source_metrics();
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(panel["type"].as_str().is_some(), "{title}: no type");
        let grid = &panel["gridPos"];
        for field in ["h", "w", "x", "y"] {
            assert!(grid[field].as_u64().is_some(), "{title}: gridPos.{field}");
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| PREFIXES.iter().any(|prefix| word.starts_with(prefix)))
                .collect();
            assert!(
                !names.is_empty(),
                "{title}: {expr} uses no quotaflow metric"
            );
            for name in names {
                // Histograms are queried through their _bucket/_sum/_count series.
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                assert!(
                    registered.contains(base),
                    "{title}: {name} is not a metric of ours"
                );
                used.insert(base.to_owned());
            }
        }
    }
    for service_prefix in PREFIXES {
        assert!(
            used.iter().any(|name| name.starts_with(service_prefix)),
            "no panel about {service_prefix}*"
        );
    }
}
