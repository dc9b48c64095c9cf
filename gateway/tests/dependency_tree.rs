//! The libraries other people embed in their own processes (this gateway client and the
//! `Recorder` producer library) depend on the lean client layer (`quotaflow-client`) only, never
//! on the service runtime (`infra`): an embedder must not link an HTTP server, a ClickHouse client,
//! a Prometheus exporter, a config loader or a log subscriber it did not ask for (issue 14).
//!
//! Runs `cargo tree -e normal` (what a dependent links: no dev or build dependencies) for each
//! library and fails naming the crate that came in and the path it came through. Needs no stack.

use std::path::Path;
use std::process::Command;

/// Crates of the service runtime an embedded library must not link, and why.
const FORBIDDEN: [(&str, &str); 6] = [
    (
        "infra",
        "the service runtime itself; depend on quotaflow-client",
    ),
    ("axum", "an HTTP server (infra's ops router)"),
    (
        "clickhouse",
        "the ClickHouse client (infra's migrations and sinks)",
    ),
    (
        "metrics-exporter-prometheus",
        "a Prometheus exporter (infra::telemetry)",
    ),
    (
        "figment",
        "the services' config loader (infra::config::load)",
    ),
    (
        "tracing-subscriber",
        "a log subscriber: the embedding process installs its own",
    ),
];

/// The embedded libraries this test holds to [`FORBIDDEN`].
const EMBEDDED_LIBRARIES: [&str; 3] = ["quotaflow-client", "gateway", "quotaflow-recorder"];

/// `cargo tree` of `package` with the given extra arguments, as text.
fn cargo_tree(package: &str, extra: &[&str]) -> String {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate sits in the workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args(["tree", "-p", package, "-e", "normal"])
        .args(extra)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("cargo tree prints UTF-8")
}

/// The crate names in `cargo tree --prefix none` output (`name vX.Y.Z (...)` per line).
fn crate_names(tree: &str) -> Vec<&str> {
    tree.lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

#[test]
fn embedded_libraries_link_no_service_runtime() {
    let mut violations = Vec::new();
    for package in EMBEDDED_LIBRARIES {
        let tree = cargo_tree(package, &["--prefix", "none"]);
        let names = crate_names(&tree);
        // The tree was really read: the package itself and its Kafka client are in it.
        assert_eq!(names.first(), Some(&package), "{tree}");
        assert!(names.contains(&"rdkafka"), "{package}: {tree}");
        for (forbidden, why) in FORBIDDEN {
            if names.contains(&forbidden) {
                // `--invert` shows the path from the forbidden crate back to the package.
                let path = cargo_tree(package, &["--invert", forbidden, "--depth", "8"]);
                violations.push(format!(
                    "{package} links {forbidden} ({why}); it comes in through:\n{path}"
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "an embedded library depends on the service runtime; move what it needs into \
         quotaflow-client (client/) instead:\n\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_service_runtime_is_what_the_check_looks_for() {
    // `infra` does link every forbidden crate but itself: were a crate renamed or dropped from
    // infra, its entry in FORBIDDEN would silently check nothing.
    let tree = cargo_tree("infra", &["--prefix", "none"]);
    let names = crate_names(&tree);
    for (forbidden, _) in FORBIDDEN {
        assert!(
            names.contains(&forbidden),
            "infra no longer links {forbidden}: update FORBIDDEN in this test"
        );
    }
}

/// The service crates (each a binary with its own stack). None links another: what two services
/// share is a pure core (`quotaflow-admission`, `quotaflow-totals`, `policy`, `schemas`, ...) or
/// a library (`gateway`, `quotaflow-recorder`), never another service's runtime.
const SERVICES: [&str; 5] = [
    "ingest",
    "quotaflow-archiver",
    "aggregator",
    "alerter",
    "quotaflow-decide",
];

#[test]
fn no_service_links_another_service() {
    let mut violations = Vec::new();
    for package in SERVICES {
        let tree = cargo_tree(package, &["--prefix", "none"]);
        let names = crate_names(&tree);
        assert_eq!(names.first(), Some(&package), "{tree}");
        // The tree was really read: every service links the service runtime.
        assert!(names.contains(&"infra"), "{package}: {tree}");
        for other in SERVICES.iter().filter(|other| **other != package) {
            if names.contains(other) {
                let path = cargo_tree(package, &["--invert", other, "--depth", "8"]);
                violations.push(format!("{package} links {other} through:\n{path}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "a service depends on another service; move what they share into a pure crate:\n\n{}",
        violations.join("\n")
    );
}
