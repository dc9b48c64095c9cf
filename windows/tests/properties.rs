//! Properties of calendar windows for random instants (years 1800–2200, so historic offsets and
//! tzdb's odd changes are in range) in random tzdb zones.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::{Tz, TZ_VARIANTS};
use proptest::prelude::*;
use quotaflow_windows::{Window, WindowCache, WindowKind, WindowSpec};

const FIRST_SECOND: i64 = -5_364_662_400; // 1800-01-01
const LAST_SECOND: i64 = 7_258_118_400; // 2200-01-01

fn any_zone() -> impl Strategy<Value = Tz> {
    prop_oneof![
        // Zones with the changes the boundary tests are about, drawn more often.
        prop::sample::select(vec![
            chrono_tz::America::New_York,
            chrono_tz::Europe::Berlin,
            chrono_tz::Asia::Kolkata,
            chrono_tz::Asia::Kathmandu,
            chrono_tz::America::Sao_Paulo,
            chrono_tz::America::Havana,
            chrono_tz::Pacific::Apia,
            chrono_tz::Australia::Lord_Howe,
            chrono_tz::America::Sitka,
        ]),
        prop::sample::select(TZ_VARIANTS.to_vec()),
    ]
}

fn any_instant() -> impl Strategy<Value = DateTime<Utc>> {
    (FIRST_SECOND..LAST_SECOND, 0u32..1_000_000_000)
        .prop_map(|(seconds, nanos)| DateTime::from_timestamp(seconds, nanos).unwrap())
}

fn any_calendar_kind() -> impl Strategy<Value = WindowKind> {
    prop::sample::select(vec![
        WindowKind::Minute,
        WindowKind::Hour,
        WindowKind::Day,
        WindowKind::Week,
        WindowKind::Month,
    ])
}

fn window_of(kind: &WindowKind, zone: Tz, instant: DateTime<Utc>) -> Window {
    WindowSpec::calendar(kind.clone(), zone)
        .unwrap()
        .window_of(instant)
        .expect("calendar kinds have a window for every instant")
}

/// The longest a window of `kind` can be: a unit, or (days and up) the unit plus a day for the
/// largest clock change in tzdb (Alaska 1867, Samoa 2011).
fn longest(kind: &WindowKind) -> TimeDelta {
    match kind {
        WindowKind::Minute => TimeDelta::minutes(1),
        WindowKind::Hour => TimeDelta::hours(1),
        WindowKind::Day => TimeDelta::days(2),
        WindowKind::Week => TimeDelta::days(8),
        _ => TimeDelta::days(32),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn window_contains_its_instant_and_is_named_after_itself(
        kind in any_calendar_kind(), zone in any_zone(), instant in any_instant()
    ) {
        let window = window_of(&kind, zone, instant);
        prop_assert!(window.start() <= instant && instant < window.end(), "{window:?} misses {instant}");
        prop_assert!(window.contains(instant));
        prop_assert!(window.duration() > TimeDelta::zero() && window.duration() <= longest(&kind));
        prop_assert_eq!(&window_of(&kind, zone, window.start()), &window);
        prop_assert_eq!(window_of(&kind, zone, window.end() - TimeDelta::nanoseconds(1)), window.clone());
        let next = window.next().unwrap();
        prop_assert_eq!(next.start(), window.end());
        prop_assert_eq!(&window_of(&kind, zone, window.end()), &next);
        prop_assert_ne!(next.id(), window.id());
    }

    #[test]
    fn later_instants_have_the_same_or_following_windows(
        kind in any_calendar_kind(),
        zone in any_zone(),
        instant in any_instant(),
        fraction_of_three_units in 0.0f64..1.0,
    ) {
        let unit_seconds = match kind {
            WindowKind::Minute => 60.0,
            WindowKind::Hour => 3600.0,
            WindowKind::Day => 86_400.0,
            WindowKind::Week => 7.0 * 86_400.0,
            _ => 31.0 * 86_400.0,
        };
        let later = instant + TimeDelta::milliseconds((fraction_of_three_units * 3.0 * unit_seconds * 1000.0) as i64);
        let first = window_of(&kind, zone, instant);
        let last = window_of(&kind, zone, later);
        prop_assert!(first.start() <= last.start());
        // Walking next() from the first reaches the last exactly: no gap, no overlap.
        let mut walked = first;
        for _ in 0..8 {
            if walked == last {
                break;
            }
            let next = walked.next().unwrap();
            prop_assert_eq!(next.start(), walked.end());
            prop_assert!(next.start() <= last.start(), "{next:?} jumps past {last:?}");
            walked = next;
        }
        prop_assert_eq!(walked, last);
    }

    #[test]
    fn windows_nest(zone in any_zone(), instant in any_instant()) {
        let inside = |small: &Window, large: &Window| {
            large.start() <= small.start() && small.end() <= large.end()
        };
        let minute = window_of(&WindowKind::Minute, zone, instant);
        let hour = window_of(&WindowKind::Hour, zone, instant);
        let day = window_of(&WindowKind::Day, zone, instant);
        let week = window_of(&WindowKind::Week, zone, instant);
        let month = window_of(&WindowKind::Month, zone, instant);
        prop_assert!(inside(&minute, &hour), "{minute:?} not in {hour:?}");
        prop_assert!(inside(&hour, &day), "{hour:?} not in {day:?}");
        prop_assert!(inside(&day, &week), "{day:?} not in {week:?}");
        prop_assert!(inside(&day, &month), "{day:?} not in {month:?}");
    }

    #[test]
    fn cache_answers_as_the_spec(
        kind in any_calendar_kind(),
        zone in any_zone(),
        instant in any_instant(),
        steps in prop::collection::vec(-600_000i64..3_600_000, 1..40),
    ) {
        let spec = WindowSpec::calendar(kind, zone).unwrap();
        let mut cache = WindowCache::new(spec.clone());
        let mut current = instant;
        for step in steps {
            current += TimeDelta::milliseconds(step);
            prop_assert_eq!(cache.window_of(current).cloned(), spec.window_of(current));
        }
    }
}
