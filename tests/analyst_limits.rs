//! The `analyst` ClickHouse user reads and cannot do anything else, its limits included.
//!
//! On the running local server (`dev/stack up`; `QUOTAFLOW_TEST_CLICKHOUSE`, default
//! `http://127.0.0.1:8123`, which loads `dev/clickhouse/users.xml`): a query that tries to lift
//! `max_memory_usage` or `max_execution_time` (a `SETTINGS` clause, an HTTP URL parameter) is refused,
//! so is every write, and every documented analyst query still runs. Without a Docker engine, the
//! compose server's `deploy/clickhouse/users.d/analyst.xml` is checked to set the same profile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use infra::testkit;

const ANALYST: (&str, &str) = ("analyst", "analyst");
const DEV_USERS: &str = "dev/clickhouse/users.xml";
const COMPOSE_USERS: &str = "deploy/clickhouse/users.d/analyst.xml";
/// ClickHouse's error code for what `readonly` forbids.
const READONLY_ERROR: &str = "Code: 164";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_repo_file(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|error| panic!("{relative}: {error}"))
}

/// The text inside the first `<tag>…</tag>` of `xml` (no attributes on `tag`), trimmed.
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim())
}

/// The `analyst` profile of a users file: its `<profiles><analyst>` element.
fn analyst_profile(xml: &str) -> &str {
    let profiles = element(xml, "profiles").expect("a <profiles> element");
    element(profiles, "analyst").expect("an analyst profile")
}

/// The profile settings a limit test relies on, as the file spells them.
fn limits(profile: &str) -> [(&'static str, String); 3] {
    ["readonly", "max_memory_usage", "max_execution_time"].map(|name| {
        let value = element(profile, name).unwrap_or_else(|| panic!("no {name} in {profile}"));
        (name, value.to_owned())
    })
}

/// A query over HTTP as `user`; `Ok(body)` on 200, `Err(body)` otherwise.
async fn query(
    url: &str,
    user: Option<(&str, &str)>,
    parameters: &[(&str, &str)],
    sql: &str,
) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut request = client.post(url).query(parameters).body(sql.to_owned());
    if let Some((name, password)) = user {
        request = request.basic_auth(name, Some(password));
    }
    let response = request.send().await.expect("clickhouse answers");
    let status = response.status();
    let body = response.text().await.expect("clickhouse body");
    if status.is_success() {
        Ok(body)
    } else {
        Err(body)
    }
}

/// Asserts ClickHouse refused `result` because the analyst is read-only.
fn assert_refused_as_readonly(result: Result<String, String>, what: &str) {
    match result {
        Ok(body) => panic!("{what}: accepted for the analyst ({body:?})"),
        Err(body) => assert!(
            body.contains(READONLY_ERROR) && body.contains("readonly mode"),
            "{what}: refused, but not for being read-only: {body}"
        ),
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn the_analyst_cannot_lift_its_limits_or_write_and_the_documented_queries_run() {
    let clickhouse = testkit::clickhouse_config("analyst_limits");
    infra::migrations::migrate(&clickhouse)
        .await
        .expect("migrations");
    let url = clickhouse.url.as_str();
    let database = [("database", clickhouse.database.as_str())];

    // The server applies dev/clickhouse/users.xml: the analyst's session has the file's limits.
    // (18.16 reloads the file when it changes; dev/stack up copies a changed one into place.)
    let expected = limits(analyst_profile(&read_repo_file(DEV_USERS)));
    let settings_sql = "SELECT name, value FROM system.settings \
                        WHERE name IN ('readonly', 'max_memory_usage', 'max_execution_time') \
                        ORDER BY name FORMAT TSV";
    let mut wanted: Vec<String> = expected
        .iter()
        .map(|(name, value)| format!("{name}\t{value}"))
        .collect();
    wanted.sort();
    testkit::eventually(
        Duration::from_secs(20),
        "the server to apply dev/clickhouse/users.xml to the analyst (run dev/stack up)",
        || async {
            let body = query(url, Some(ANALYST), &[], settings_sql).await.ok()?;
            (body.lines().collect::<Vec<_>>() == wanted).then_some(())
        },
    )
    .await;

    // Lifting a limit, in each way a client could try.
    assert_refused_as_readonly(
        query(
            url,
            Some(ANALYST),
            &database,
            "SELECT count() FROM usage_events SETTINGS max_memory_usage = 0",
        )
        .await,
        "SETTINGS max_memory_usage = 0",
    );
    assert_refused_as_readonly(
        query(
            url,
            Some(ANALYST),
            &database,
            "SELECT 1 SETTINGS max_execution_time = 0, max_memory_usage = 0",
        )
        .await,
        "SETTINGS max_execution_time = 0",
    );
    assert_refused_as_readonly(
        query(
            url,
            Some(ANALYST),
            &[
                ("database", clickhouse.database.as_str()),
                ("max_execution_time", "0"),
            ],
            "SELECT count() FROM usage_events",
        )
        .await,
        "URL parameter max_execution_time=0",
    );
    assert_refused_as_readonly(
        query(url, Some(ANALYST), &[("max_memory_usage", "0")], "SELECT 1").await,
        "URL parameter max_memory_usage=0",
    );
    assert_refused_as_readonly(
        query(url, Some(ANALYST), &[("readonly", "2")], "SELECT 1").await,
        "URL parameter readonly=2",
    );

    // Writing, creating, dropping.
    let writes = [
        "INSERT INTO dead_letters (service) VALUES ('analyst')",
        "CREATE TABLE analyst_scratch (x UInt8) ENGINE = Memory",
        "DROP TABLE dead_letters",
        "ALTER TABLE dead_letters DELETE WHERE 1",
        "TRUNCATE TABLE dead_letters",
    ];
    for statement in writes {
        assert_refused_as_readonly(
            query(url, Some(ANALYST), &database, statement).await,
            statement,
        );
    }
    assert!(
        query(url, None, &database, "EXISTS TABLE dead_letters FORMAT TSV")
            .await
            .expect("exists")
            .starts_with('1'),
        "the DROP as analyst must have left the table"
    );

    // Reading still works: every documented query, with its output picked by FORMAT.
    let mut ran = 0;
    for entry in std::fs::read_dir(repo_path("schemas/sql/queries")).expect("queries folder") {
        let path = entry.expect("queries entry").path();
        if path.extension().is_none_or(|extension| extension != "sql") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("query text");
        let sql = format!("{} FORMAT JSONEachRow", text.trim().trim_end_matches(';'));
        if let Err(body) = query(url, Some(ANALYST), &database, &sql).await {
            panic!("{} fails for the analyst: {body}", path.display());
        }
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} documented queries found");

    testkit::drop_database(&clickhouse).await.unwrap();
}

#[test]
fn the_compose_analyst_has_the_same_limits_and_reads_only_quotaflow() {
    let dev = read_repo_file(DEV_USERS);
    let compose = read_repo_file(COMPOSE_USERS);
    let dev_limits = limits(analyst_profile(&dev));
    let compose_profile = analyst_profile(&compose);
    assert_eq!(limits(compose_profile), dev_limits);
    assert_eq!(dev_limits[0], ("readonly", "1".to_owned()));
    for (name, value) in &dev_limits[1..] {
        assert!(
            value.parse::<u64>().is_ok_and(|limit| limit > 0),
            "{name} must be a limit, not {value}"
        );
    }
    // A modern server also fixes the two limits with constraints (18.16 does not know them).
    let constraints = element(compose_profile, "constraints").expect("constraints");
    for name in ["max_memory_usage", "max_execution_time"] {
        let constraint = element(constraints, name).unwrap_or_else(|| panic!("no {name}"));
        assert!(constraint.contains("<readonly/>"), "{name}: {constraint}");
    }
    // Only the quotaflow database, and the user is the one with that profile.
    let users = element(&compose, "users").expect("users");
    let analyst = element(users, "analyst").expect("the analyst user");
    assert_eq!(element(analyst, "profile"), Some("analyst"));
    let grants: Vec<&str> = analyst
        .split("<query>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</query>").map(|(grant, _)| grant.trim()))
        .collect();
    assert_eq!(grants, ["GRANT SELECT ON quotaflow.*"]);
    let dev_users = element(&dev, "users").expect("users");
    assert_eq!(
        element(element(dev_users, "analyst").expect("analyst"), "profile"),
        Some("analyst")
    );
}
