//! Every day, week and month window of every tzdb zone from 1800 to 2200, and every minute and
//! hour window of the days that are not 24 hours long: walked with `next()`, each checked to be
//! found again from its first and last instant, with ids unique per zone and kind.
//!
//! Slow in a debug build: `cargo test -p quotaflow-windows --release --test exhaustive -- --ignored`.

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::{Tz, TZ_VARIANTS};
use quotaflow_windows::{Window, WindowKind, WindowSpec};

fn walk(kind: WindowKind, zone: Tz, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Window> {
    let spec = WindowSpec::calendar(kind, zone).unwrap();
    let mut window = spec.window_of(from).unwrap();
    let mut walked = Vec::new();
    let mut ids = HashSet::new();
    while window.start() < until {
        assert_eq!(spec.window_of(window.start()).as_ref(), Some(&window));
        let last_instant = window.end() - TimeDelta::nanoseconds(1);
        assert_eq!(spec.window_of(last_instant).as_ref(), Some(&window));
        assert!(ids.insert(window.id()), "{} twice in {zone}", window.id());
        let next = window.next().unwrap();
        assert_eq!(next.start(), window.end());
        walked.push(window);
        window = next;
    }
    walked
}

#[test]
#[ignore = "about 5 minutes in release, far longer in debug"]
fn every_zone_every_day_week_and_month() {
    let from: DateTime<Utc> = "1800-01-01T00:00:00Z".parse().unwrap();
    let until: DateTime<Utc> = "2200-01-01T00:00:00Z".parse().unwrap();
    for zone in TZ_VARIANTS {
        walk(WindowKind::Week, zone, from, until);
        walk(WindowKind::Month, zone, from, until);
        for day in walk(WindowKind::Day, zone, from, until) {
            if day.duration() == TimeDelta::days(1) {
                continue;
            }
            for kind in [WindowKind::Minute, WindowKind::Hour] {
                let parts = walk(kind, zone, day.start(), day.end());
                assert_eq!(parts.first().unwrap().start(), day.start());
                assert_eq!(parts.last().unwrap().end(), day.end());
            }
        }
    }
}
