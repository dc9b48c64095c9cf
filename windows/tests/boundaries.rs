//! Window boundaries at hour, day, week, month and year ends, leap days, ISO weeks across years,
//! DST days, half- and quarter-hour offsets, skipped and repeated midnights, and campaigns.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use quotaflow_windows::{CampaignId, WindowKind, WindowSpec};

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn spec(kind: WindowKind, zone: &str) -> WindowSpec {
    WindowSpec::calendar(kind, zone.parse::<Tz>().unwrap()).unwrap()
}

/// `(id, start, end)` of the window of `instant`.
fn window(kind: WindowKind, zone: &str, instant: &str) -> (String, DateTime<Utc>, DateTime<Utc>) {
    let window = spec(kind, zone).window_of(at(instant)).unwrap();
    (window.id(), window.start(), window.end())
}

fn expect(kind: WindowKind, zone: &str, instant: &str, id: &str, start: &str, end: &str) {
    assert_eq!(
        window(kind.clone(), zone, instant),
        (id.to_owned(), at(start), at(end)),
        "{kind} window of {instant} in {zone}"
    );
}

/// Every window of `kind` from the one containing `from` up to `until`, following `next()`.
fn windows_between(
    kind: WindowKind,
    zone: &str,
    from: &str,
    until: &str,
) -> Vec<quotaflow_windows::Window> {
    let mut window = spec(kind, zone).window_of(at(from)).unwrap();
    let mut all = Vec::new();
    while window.start() < at(until) {
        let next = window.next().unwrap();
        all.push(window);
        window = next;
    }
    all
}

#[test]
fn year_end_in_utc() {
    let last = "2026-12-31T23:59:59.999999999Z";
    use WindowKind::*;
    expect(
        Minute,
        "UTC",
        last,
        "minute:2026-12-31T23:59+00:00@UTC",
        "2026-12-31T23:59:00Z",
        "2027-01-01T00:00:00Z",
    );
    expect(
        Hour,
        "UTC",
        last,
        "hour:2026-12-31T23:00+00:00@UTC",
        "2026-12-31T23:00:00Z",
        "2027-01-01T00:00:00Z",
    );
    expect(
        Day,
        "UTC",
        last,
        "day:2026-12-31@UTC",
        "2026-12-31T00:00:00Z",
        "2027-01-01T00:00:00Z",
    );
    expect(
        Month,
        "UTC",
        last,
        "month:2026-12@UTC",
        "2026-12-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
    );
    let first = "2027-01-01T00:00:00Z";
    expect(
        Hour,
        "UTC",
        first,
        "hour:2027-01-01T00:00+00:00@UTC",
        first,
        "2027-01-01T01:00:00Z",
    );
    expect(
        Day,
        "UTC",
        first,
        "day:2027-01-01@UTC",
        first,
        "2027-01-02T00:00:00Z",
    );
    expect(
        Month,
        "UTC",
        first,
        "month:2027-01@UTC",
        first,
        "2027-02-01T00:00:00Z",
    );
    let december = spec(Month, "UTC").window_of(at(last)).unwrap();
    assert_eq!(december.next().unwrap().id(), "month:2027-01@UTC");
    assert_eq!(december.reset_at(), at(first));
}

#[test]
fn leap_day() {
    use WindowKind::*;
    expect(
        Day,
        "UTC",
        "2028-02-29T12:00:00Z",
        "day:2028-02-29@UTC",
        "2028-02-29T00:00:00Z",
        "2028-03-01T00:00:00Z",
    );
    expect(
        Month,
        "UTC",
        "2028-02-10T00:00:00Z",
        "month:2028-02@UTC",
        "2028-02-01T00:00:00Z",
        "2028-03-01T00:00:00Z",
    );
    expect(
        Month,
        "UTC",
        "2026-02-10T00:00:00Z",
        "month:2026-02@UTC",
        "2026-02-01T00:00:00Z",
        "2026-03-01T00:00:00Z",
    );
    let february_28 = spec(Day, "UTC")
        .window_of(at("2028-02-28T23:59:59Z"))
        .unwrap();
    assert_eq!(february_28.next().unwrap().id(), "day:2028-02-29@UTC");
    expect(
        Day,
        "America/New_York",
        "2028-02-29T04:59:59Z",
        "day:2028-02-28@America/New_York",
        "2028-02-28T05:00:00Z",
        "2028-02-29T05:00:00Z",
    );
}

#[test]
fn iso_weeks_across_year_ends() {
    use WindowKind::*;
    // 2026-12-31 is a Thursday; 2027-01-01 (Friday) is in the ISO week starting Monday 2026-12-28.
    for instant in [
        "2026-12-28T00:00:00Z",
        "2026-12-31T12:00:00Z",
        "2027-01-01T00:00:00Z",
        "2027-01-03T23:59:59Z",
    ] {
        expect(
            Week,
            "UTC",
            instant,
            "week:2026-12-28@UTC",
            "2026-12-28T00:00:00Z",
            "2027-01-04T00:00:00Z",
        );
    }
    // 2026-01-01 is a Thursday: its week started on Monday 2025-12-29.
    expect(
        Week,
        "UTC",
        "2026-01-01T08:00:00Z",
        "week:2025-12-29@UTC",
        "2025-12-29T00:00:00Z",
        "2026-01-05T00:00:00Z",
    );
    // Local Monday 00:00 in Berlin (CET, +01:00) is Sunday 23:00 UTC.
    expect(
        Week,
        "Europe/Berlin",
        "2026-12-27T23:00:00Z",
        "week:2026-12-28@Europe/Berlin",
        "2026-12-27T23:00:00Z",
        "2027-01-03T23:00:00Z",
    );
    expect(
        Week,
        "Europe/Berlin",
        "2026-12-27T22:59:59Z",
        "week:2026-12-21@Europe/Berlin",
        "2026-12-20T23:00:00Z",
        "2026-12-27T23:00:00Z",
    );
    // A week containing the spring-forward Sunday is 167 hours.
    let week = spec(Week, "Europe/Berlin")
        .window_of(at("2026-03-25T00:00:00Z"))
        .unwrap();
    assert_eq!(week.duration(), TimeDelta::hours(167));
}

#[test]
fn new_york_spring_forward_day_is_23_hours() {
    use WindowKind::*;
    let zone = "America/New_York";
    // 2026-03-08 02:00 EST (07:00 UTC) becomes 03:00 EDT.
    expect(
        Day,
        zone,
        "2026-03-08T12:00:00Z",
        "day:2026-03-08@America/New_York",
        "2026-03-08T05:00:00Z",
        "2026-03-09T04:00:00Z",
    );
    expect(
        Hour,
        zone,
        "2026-03-08T06:59:59Z",
        "hour:2026-03-08T01:00-05:00@America/New_York",
        "2026-03-08T06:00:00Z",
        "2026-03-08T07:00:00Z",
    );
    expect(
        Hour,
        zone,
        "2026-03-08T07:00:00Z",
        "hour:2026-03-08T03:00-04:00@America/New_York",
        "2026-03-08T07:00:00Z",
        "2026-03-08T08:00:00Z",
    );
    let hours = windows_between(Hour, zone, "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z");
    assert_eq!(hours.len(), 23);
    assert!(hours
        .iter()
        .all(|hour| hour.duration() == TimeDelta::hours(1)));
    // The month of March keeps its local midnights: EST at the start, EDT at the end.
    expect(
        Month,
        zone,
        "2026-03-08T12:00:00Z",
        "month:2026-03@America/New_York",
        "2026-03-01T05:00:00Z",
        "2026-04-01T04:00:00Z",
    );
}

#[test]
fn new_york_fall_back_day_is_25_hours_with_two_one_oclock_hours() {
    use WindowKind::*;
    let zone = "America/New_York";
    // 2026-11-01 02:00 EDT (06:00 UTC) becomes 01:00 EST.
    expect(
        Day,
        zone,
        "2026-11-01T12:00:00Z",
        "day:2026-11-01@America/New_York",
        "2026-11-01T04:00:00Z",
        "2026-11-02T05:00:00Z",
    );
    expect(
        Hour,
        zone,
        "2026-11-01T05:30:00Z",
        "hour:2026-11-01T01:00-04:00@America/New_York",
        "2026-11-01T05:00:00Z",
        "2026-11-01T06:00:00Z",
    );
    expect(
        Hour,
        zone,
        "2026-11-01T06:30:00Z",
        "hour:2026-11-01T01:00-05:00@America/New_York",
        "2026-11-01T06:00:00Z",
        "2026-11-01T07:00:00Z",
    );
    let hours = windows_between(Hour, zone, "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z");
    assert_eq!(hours.len(), 25);
    assert!(hours
        .iter()
        .all(|hour| hour.duration() == TimeDelta::hours(1)));
    let minutes = windows_between(Minute, zone, "2026-11-01T05:59:00Z", "2026-11-01T06:01:00Z");
    let ids: Vec<String> = minutes.iter().map(|minute| minute.id()).collect();
    assert_eq!(
        ids,
        [
            "minute:2026-11-01T01:59-04:00@America/New_York",
            "minute:2026-11-01T01:00-05:00@America/New_York",
        ]
    );
}

#[test]
fn berlin_dst_days() {
    use WindowKind::*;
    let zone = "Europe/Berlin";
    // 2026-03-29 02:00 CET (01:00 UTC) becomes 03:00 CEST.
    expect(
        Day,
        zone,
        "2026-03-29T10:00:00Z",
        "day:2026-03-29@Europe/Berlin",
        "2026-03-28T23:00:00Z",
        "2026-03-29T22:00:00Z",
    );
    expect(
        Hour,
        zone,
        "2026-03-29T01:00:00Z",
        "hour:2026-03-29T03:00+02:00@Europe/Berlin",
        "2026-03-29T01:00:00Z",
        "2026-03-29T02:00:00Z",
    );
    assert_eq!(
        windows_between(Hour, zone, "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z").len(),
        23
    );
    // 2026-10-25 03:00 CEST (01:00 UTC) becomes 02:00 CET.
    expect(
        Day,
        zone,
        "2026-10-25T10:00:00Z",
        "day:2026-10-25@Europe/Berlin",
        "2026-10-24T22:00:00Z",
        "2026-10-25T23:00:00Z",
    );
    expect(
        Hour,
        zone,
        "2026-10-25T00:59:59Z",
        "hour:2026-10-25T02:00+02:00@Europe/Berlin",
        "2026-10-25T00:00:00Z",
        "2026-10-25T01:00:00Z",
    );
    expect(
        Hour,
        zone,
        "2026-10-25T01:00:00Z",
        "hour:2026-10-25T02:00+01:00@Europe/Berlin",
        "2026-10-25T01:00:00Z",
        "2026-10-25T02:00:00Z",
    );
    let hours = windows_between(Hour, zone, "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z");
    assert_eq!(hours.len(), 25);
    assert!(hours
        .iter()
        .all(|hour| hour.duration() == TimeDelta::hours(1)));
}

#[test]
fn half_and_quarter_hour_offsets() {
    use WindowKind::*;
    // Kolkata is +05:30: local hours start at :30 UTC, local midnight is 18:30 UTC.
    expect(
        Hour,
        "Asia/Kolkata",
        "2026-03-08T10:00:00Z",
        "hour:2026-03-08T15:00+05:30@Asia/Kolkata",
        "2026-03-08T09:30:00Z",
        "2026-03-08T10:30:00Z",
    );
    expect(
        Day,
        "Asia/Kolkata",
        "2026-03-08T10:00:00Z",
        "day:2026-03-08@Asia/Kolkata",
        "2026-03-07T18:30:00Z",
        "2026-03-08T18:30:00Z",
    );
    expect(
        Minute,
        "Asia/Kolkata",
        "2026-03-08T10:00:30Z",
        "minute:2026-03-08T15:30+05:30@Asia/Kolkata",
        "2026-03-08T10:00:00Z",
        "2026-03-08T10:01:00Z",
    );
    // Kathmandu is +05:45: local hours start at :15 UTC.
    expect(
        Hour,
        "Asia/Kathmandu",
        "2026-03-08T10:00:00Z",
        "hour:2026-03-08T15:00+05:45@Asia/Kathmandu",
        "2026-03-08T09:15:00Z",
        "2026-03-08T10:15:00Z",
    );
    expect(
        Day,
        "Asia/Kathmandu",
        "2026-03-08T10:00:00Z",
        "day:2026-03-08@Asia/Kathmandu",
        "2026-03-07T18:15:00Z",
        "2026-03-08T18:15:00Z",
    );
    expect(
        Month,
        "Asia/Kathmandu",
        "2026-03-08T10:00:00Z",
        "month:2026-03@Asia/Kathmandu",
        "2026-02-28T18:15:00Z",
        "2026-03-31T18:15:00Z",
    );
    // Kathmandu moved from +05:30 to +05:45 at local 1986-01-01 00:00 (1985-12-31 18:30 UTC):
    // the clock jumped to 00:15, so the first hour of 1986 is 45 minutes long.
    expect(
        Hour,
        "Asia/Kathmandu",
        "1985-12-31T18:29:59Z",
        "hour:1985-12-31T23:00+05:30@Asia/Kathmandu",
        "1985-12-31T17:30:00Z",
        "1985-12-31T18:30:00Z",
    );
    expect(
        Hour,
        "Asia/Kathmandu",
        "1985-12-31T18:30:00Z",
        "hour:1986-01-01T00:00+05:45@Asia/Kathmandu",
        "1985-12-31T18:30:00Z",
        "1985-12-31T19:15:00Z",
    );
    expect(
        Day,
        "Asia/Kathmandu",
        "1985-12-31T18:30:00Z",
        "day:1986-01-01@Asia/Kathmandu",
        "1985-12-31T18:30:00Z",
        "1986-01-01T18:15:00Z",
    );
}

#[test]
fn skipped_midnight_starts_the_day_at_the_end_of_the_gap() {
    use WindowKind::*;
    // Sao Paulo, 2018-11-04 00:00 -03:00 (03:00 UTC) became 01:00 -02:00: no local midnight.
    expect(
        Day,
        "America/Sao_Paulo",
        "2018-11-04T12:00:00Z",
        "day:2018-11-04@America/Sao_Paulo",
        "2018-11-04T03:00:00Z",
        "2018-11-05T02:00:00Z",
    );
    expect(
        Day,
        "America/Sao_Paulo",
        "2018-11-04T02:59:59Z",
        "day:2018-11-03@America/Sao_Paulo",
        "2018-11-03T03:00:00Z",
        "2018-11-04T03:00:00Z",
    );
    expect(
        Month,
        "America/Sao_Paulo",
        "2018-11-04T12:00:00Z",
        "month:2018-11@America/Sao_Paulo",
        "2018-11-01T03:00:00Z",
        "2018-12-01T02:00:00Z",
    );
    // Havana, 2026-03-08 00:00 CST (05:00 UTC) becomes 01:00 CDT.
    expect(
        Day,
        "America/Havana",
        "2026-03-08T05:00:00Z",
        "day:2026-03-08@America/Havana",
        "2026-03-08T05:00:00Z",
        "2026-03-09T04:00:00Z",
    );
    expect(
        Hour,
        "America/Havana",
        "2026-03-08T05:00:00Z",
        "hour:2026-03-08T01:00-04:00@America/Havana",
        "2026-03-08T05:00:00Z",
        "2026-03-08T06:00:00Z",
    );
}

#[test]
fn repeated_midnight_starts_the_day_at_the_earliest() {
    use WindowKind::*;
    // Havana, 2026-11-01 01:00 CDT (05:00 UTC) becomes 00:00 CST: midnight is 04:00 and 05:00 UTC.
    expect(
        Day,
        "America/Havana",
        "2026-11-01T04:00:00Z",
        "day:2026-11-01@America/Havana",
        "2026-11-01T04:00:00Z",
        "2026-11-02T05:00:00Z",
    );
    expect(
        Day,
        "America/Havana",
        "2026-11-01T03:59:59Z",
        "day:2026-10-31@America/Havana",
        "2026-10-31T04:00:00Z",
        "2026-11-01T04:00:00Z",
    );
    expect(
        Hour,
        "America/Havana",
        "2026-11-01T05:00:00Z",
        "hour:2026-11-01T00:00-05:00@America/Havana",
        "2026-11-01T05:00:00Z",
        "2026-11-01T06:00:00Z",
    );
    expect(
        Month,
        "America/Havana",
        "2026-11-01T04:30:00Z",
        "month:2026-11@America/Havana",
        "2026-11-01T04:00:00Z",
        "2026-12-01T05:00:00Z",
    );
}

#[test]
fn skipped_day_has_no_window() {
    // Samoa skipped 2011-12-30 (23:59:59 on the 29th, -10:00, was followed by the 31st, +14:00).
    let days = windows_between(
        WindowKind::Day,
        "Pacific/Apia",
        "2011-12-29T12:00:00Z",
        "2011-12-31T09:00:00Z",
    );
    let ids: Vec<String> = days.iter().map(|day| day.id()).collect();
    assert_eq!(
        ids,
        ["day:2011-12-29@Pacific/Apia", "day:2011-12-31@Pacific/Apia"]
    );
    assert_eq!(days[0].end(), days[1].start());
}

#[test]
fn campaign_is_start_inclusive_end_exclusive() {
    let start = at("2026-05-01T00:00:00Z");
    let end = at("2026-06-01T00:00:00Z");
    let id = CampaignId::new("launch").unwrap();
    let spec = WindowSpec::campaign(id, start, end, chrono_tz::Europe::Paris).unwrap();
    let window = spec.window_of(start).unwrap();
    assert_eq!(
        (window.start(), window.end(), window.id().as_str()),
        (start, end, "campaign:launch")
    );
    assert_eq!(
        spec.window_of(end - TimeDelta::nanoseconds(1)),
        Some(window.clone())
    );
    assert_eq!(spec.window_of(end), None);
    assert_eq!(spec.window_of(start - TimeDelta::nanoseconds(1)), None);
    assert_eq!(window.next(), None);
    assert_eq!(window.reset_at(), end);
    assert!(WindowSpec::campaign(CampaignId::new("x").unwrap(), end, start, Tz::UTC).is_err());
    assert!(WindowSpec::campaign(CampaignId::new("x").unwrap(), start, start, Tz::UTC).is_err());
}
