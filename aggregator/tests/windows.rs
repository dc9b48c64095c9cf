//! Windows on the real stack: calendar boundaries (minute, hour, day, ISO week, month) in UTC, a
//! policy's own time zone (a half-hour offset, and a 23-hour DST day), late and far-future events.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use infra::testkit;
use schemas::fixtures::text_event;
use support::*;

const POLICIES: &str = r#"
- id: kolkata-daily
  owner: {team: search, contact: s@example.com}
  description: requests per team per Kolkata day
  unit: requests
  group_by: [team]
  window: {kind: day, time_zone: Asia/Kolkata}
  hard_cap: 1000
  action: {kind: alert_only}
- id: new-york-daily
  owner: {team: search, contact: s@example.com}
  description: requests per team per New York day
  unit: requests
  group_by: [team]
  window: {kind: day, time_zone: America/New_York}
  hard_cap: 1000
  action: {kind: alert_only}
"#;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct WindowRow {
    window_kind: String,
    window_tz: String,
    start: String,
    end: String,
    requests: u64,
    late_events: u64,
}

/// (kind, tz, start, end, requests, late) of every window of one scope.
async fn windows_of(
    config: &aggregator::Config,
    kind: &str,
    key: &str,
) -> BTreeSet<(String, String, String, String, u64, u64)> {
    infra::clickhouse::client(&config.clickhouse)
        .query(
            "SELECT window_kind, window_tz, toString(window_start) AS start, \
             toString(window_end) AS end, requests, late_events FROM window_totals_current \
             WHERE (scope_kind = ? OR startsWith(scope_kind, ?)) AND scope_key = ?",
        )
        .bind(kind)
        // A policy's totals are `policy:<id>@<definition>`.
        .bind(format!("{kind}@"))
        .bind(key)
        .fetch_all::<WindowRow>()
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            (
                row.window_kind,
                row.window_tz,
                row.start,
                row.end,
                row.requests,
                row.late_events,
            )
        })
        .collect()
}

fn row(
    kind: &str,
    tz: &str,
    start: &str,
    end: &str,
    requests: u64,
    late: u64,
) -> (String, String, String, String, u64, u64) {
    (
        kind.to_owned(),
        tz.to_owned(),
        start.to_owned(),
        end.to_owned(),
        requests,
        late,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn windows_follow_calendar_boundaries_policy_time_zones_and_lateness() {
    let mut config = isolated_config("agg_windows");
    // One partition: the watermark (and so lateness) is per partition.
    config.kafka.topics.partitions = 1;
    config.aggregate.policies_dir = Some(policies_dir(POLICIES));
    let event = |id: &str, when: &str| {
        let mut event = text_event(id, at(when));
        event.team = "boundaries".to_owned();
        event.environment = "prod".to_owned();
        event
    };
    let events = vec![
        // The last millisecond of February (a Saturday) and the first of March (a Sunday, same
        // ISO week), then Monday: a new week.
        event("feb-last", "2026-02-28T23:59:59.999Z"),
        event("mar-first", "2026-03-01T00:00:00Z"),
        event("monday", "2026-03-02T00:00:00Z"),
        // Kolkata (UTC+05:30) days turn at 18:30 UTC.
        event("kolkata-before", "2026-03-02T18:29:59Z"),
        event("kolkata-after", "2026-03-02T18:30:00Z"),
        // New York springs forward on 2026-03-08: that day is 23 hours, 05:00Z to 04:00Z.
        event("dst-day-end", "2026-03-09T03:59:59Z"),
        event("after-dst-day", "2026-03-09T04:00:00Z"),
        // 11 minutes later the 04:00 minute has closed (10 minutes of allowed lateness).
        event("moves-watermark", "2026-03-09T04:11:00Z"),
        // Late: its minute, hour and day closed long ago; counted in late_events instead.
        event("late", "2026-03-09T03:59:30Z"),
    ];
    let mut future = event("from-the-future", "2026-03-09T04:11:00Z");
    future.occurred_at = Utc::now() + chrono::TimeDelta::days(1);

    let running = start(&config).await;
    produce(&config.kafka, &events).await;
    produce(&config.kafka, &[future]).await;
    wait_caught_up(&config, Duration::from_secs(120)).await;

    let utc = windows_of(&config, "team", "boundaries").await;
    let expected_utc: BTreeSet<_> = [
        row(
            "minute",
            "UTC",
            "2026-02-28 23:59:00",
            "2026-03-01 00:00:00",
            1,
            0,
        ),
        row(
            "minute",
            "UTC",
            "2026-03-01 00:00:00",
            "2026-03-01 00:01:00",
            1,
            0,
        ),
        row(
            "minute",
            "UTC",
            "2026-03-02 00:00:00",
            "2026-03-02 00:01:00",
            1,
            0,
        ),
        row(
            "minute",
            "UTC",
            "2026-03-02 18:29:00",
            "2026-03-02 18:30:00",
            1,
            0,
        ),
        row(
            "minute",
            "UTC",
            "2026-03-02 18:30:00",
            "2026-03-02 18:31:00",
            1,
            0,
        ),
        row(
            "minute",
            "UTC",
            "2026-03-09 03:59:00",
            "2026-03-09 04:00:00",
            1,
            0,
        ),
        row(
            "minute",
            "UTC",
            "2026-03-09 04:00:00",
            "2026-03-09 04:01:00",
            1,
            0,
        ),
        // The late event is counted where the watermark is.
        row(
            "minute",
            "UTC",
            "2026-03-09 04:11:00",
            "2026-03-09 04:12:00",
            1,
            1,
        ),
        row(
            "hour",
            "UTC",
            "2026-02-28 23:00:00",
            "2026-03-01 00:00:00",
            1,
            0,
        ),
        row(
            "hour",
            "UTC",
            "2026-03-01 00:00:00",
            "2026-03-01 01:00:00",
            1,
            0,
        ),
        row(
            "hour",
            "UTC",
            "2026-03-02 00:00:00",
            "2026-03-02 01:00:00",
            1,
            0,
        ),
        row(
            "hour",
            "UTC",
            "2026-03-02 18:00:00",
            "2026-03-02 19:00:00",
            2,
            0,
        ),
        row(
            "hour",
            "UTC",
            "2026-03-09 03:00:00",
            "2026-03-09 04:00:00",
            1,
            0,
        ),
        row(
            "hour",
            "UTC",
            "2026-03-09 04:00:00",
            "2026-03-09 05:00:00",
            2,
            1,
        ),
        row(
            "day",
            "UTC",
            "2026-02-28 00:00:00",
            "2026-03-01 00:00:00",
            1,
            0,
        ),
        row(
            "day",
            "UTC",
            "2026-03-01 00:00:00",
            "2026-03-02 00:00:00",
            1,
            0,
        ),
        row(
            "day",
            "UTC",
            "2026-03-02 00:00:00",
            "2026-03-03 00:00:00",
            3,
            0,
        ),
        // The late event's day (03-09) is still open: counted there, late only elsewhere.
        row(
            "day",
            "UTC",
            "2026-03-09 00:00:00",
            "2026-03-10 00:00:00",
            4,
            0,
        ),
        row(
            "week",
            "UTC",
            "2026-02-23 00:00:00",
            "2026-03-02 00:00:00",
            2,
            0,
        ),
        row(
            "week",
            "UTC",
            "2026-03-02 00:00:00",
            "2026-03-09 00:00:00",
            3,
            0,
        ),
        row(
            "week",
            "UTC",
            "2026-03-09 00:00:00",
            "2026-03-16 00:00:00",
            4,
            0,
        ),
        row(
            "month",
            "UTC",
            "2026-02-01 00:00:00",
            "2026-03-01 00:00:00",
            1,
            0,
        ),
        row(
            "month",
            "UTC",
            "2026-03-01 00:00:00",
            "2026-04-01 00:00:00",
            8,
            0,
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(utc, expected_utc);

    let kolkata = windows_of(&config, "policy:kolkata-daily", "team=boundaries").await;
    let expected_kolkata: BTreeSet<_> = [
        // 2026-03-01 Kolkata: 2026-02-28 18:30Z to 03-01 18:30Z.
        row(
            "day",
            "Asia/Kolkata",
            "2026-02-28 18:30:00",
            "2026-03-01 18:30:00",
            2,
            0,
        ),
        row(
            "day",
            "Asia/Kolkata",
            "2026-03-01 18:30:00",
            "2026-03-02 18:30:00",
            2,
            0,
        ),
        row(
            "day",
            "Asia/Kolkata",
            "2026-03-02 18:30:00",
            "2026-03-03 18:30:00",
            1,
            0,
        ),
        row(
            "day",
            "Asia/Kolkata",
            "2026-03-08 18:30:00",
            "2026-03-09 18:30:00",
            4,
            0,
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(kolkata, expected_kolkata);

    let new_york = windows_of(&config, "policy:new-york-daily", "team=boundaries").await;
    assert!(
        new_york.contains(&row(
            "day",
            "America/New_York",
            "2026-03-08 05:00:00",
            "2026-03-09 04:00:00",
            1,
            0
        )),
        "the 23-hour DST day: {new_york:?}"
    );
    assert!(new_york.contains(&row(
        "day",
        "America/New_York",
        "2026-03-09 04:00:00",
        "2026-03-10 04:00:00",
        2,
        // The late event's New York day (03-08) had closed: counted here as late.
        1
    )));

    let letters = dead_letter_kinds(&config.clickhouse).await;
    assert_eq!(letters.get("late"), Some(&1), "{letters:?}");
    assert_eq!(letters.get("in_future"), Some(&1), "{letters:?}");
    running.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}
