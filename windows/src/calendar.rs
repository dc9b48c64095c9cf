//! The time zone arithmetic behind calendar windows. Private: the public face is
//! [`crate::WindowSpec::window_of`].
//!
//! Two rules, chosen so that windows of every kind partition the time line and nest
//! (minute ⊂ hour ⊂ day ⊂ week and day ⊂ month):
//! - **Minute and hour** windows are runs of instants that show the same truncated local clock
//!   time *at the same UTC offset*. An offset change ends the run, so a repeated fall-back hour is
//!   two windows of one hour each, and an hour cut by a half-hour change is shorter.
//! - **Day, week and month** windows start at the *first instant the local clock shows the
//!   period's first day at 00:00 or later*: local midnight; the earliest of two local midnights
//!   when midnight is repeated; the end of the gap when midnight is skipped. Instants whose clock
//!   was set back behind an already started day stay in that day, so a date never has two windows.
//!
//! Offsets come from chrono-tz's tzdb tables, whose offset changes are at least a week apart in
//! every zone (measured on chrono-tz 0.10.4: the closest pair is 601,200 s apart, Brazil 2000 and
//! Gaza). Minute and hour windows rely on that: within one hour there is at most one change.

use chrono::{
    DateTime, Datelike, Days, LocalResult, Months, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone, Utc,
};
use chrono_tz::{GapInfo, Tz};

/// The calendar kinds, without the campaign payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CalendarUnit {
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

/// A computed calendar window with the local label its id is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CalendarWindow {
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
    /// The local clock time the window is named after (minute, hour, first day 00:00).
    pub(crate) label: NaiveDateTime,
    /// The UTC offset of the label, in seconds: part of minute and hour ids, 0 for longer kinds.
    pub(crate) label_offset_seconds: i32,
}

/// The calendar window of `unit` in `time_zone` containing `instant`; `None` only within about a
/// month of the limits of `chrono`'s representable dates.
pub(crate) fn calendar_window(
    unit: CalendarUnit,
    time_zone: Tz,
    instant: DateTime<Utc>,
) -> Option<CalendarWindow> {
    match unit {
        CalendarUnit::Minute => clock_window(60, time_zone, instant),
        CalendarUnit::Hour => clock_window(3600, time_zone, instant),
        CalendarUnit::Day | CalendarUnit::Week | CalendarUnit::Month => {
            date_window(unit, time_zone, instant)
        }
    }
}

fn offset_seconds_at(time_zone: Tz, utc_seconds: i64) -> Option<i32> {
    let utc = DateTime::from_timestamp(utc_seconds, 0)?.naive_utc();
    Some(
        time_zone
            .offset_from_utc_datetime(&utc)
            .fix()
            .local_minus_utc(),
    )
}

/// The first second in `(after, up_to]` whose offset satisfies `wanted`, given that `up_to`'s does
/// and there is a single offset change in between (tzdb offset changes are a week apart).
fn first_second_where(
    time_zone: Tz,
    mut after: i64,
    mut up_to: i64,
    wanted: impl Fn(i32) -> bool,
) -> Option<i64> {
    while up_to - after > 1 {
        let middle = after + (up_to - after) / 2;
        if wanted(offset_seconds_at(time_zone, middle)?) {
            up_to = middle;
        } else {
            after = middle;
        }
    }
    Some(up_to)
}

/// Minute and hour windows: the run of instants showing the same truncated local clock time at the
/// same offset. Offsets are whole seconds and tzdb changes happen on whole seconds, so the whole
/// computation is on integer seconds.
fn clock_window(
    unit_seconds: i64,
    time_zone: Tz,
    instant: DateTime<Utc>,
) -> Option<CalendarWindow> {
    let instant_second = instant.timestamp();
    let offset = offset_seconds_at(time_zone, instant_second)?;
    let local_seconds = instant_second.checked_add(i64::from(offset))?;
    let label_seconds = local_seconds.div_euclid(unit_seconds) * unit_seconds;
    let clock_start = label_seconds - i64::from(offset);
    let clock_end = clock_start + unit_seconds;

    let start = if offset_seconds_at(time_zone, clock_start)? == offset {
        clock_start
    } else {
        // The offset changed during this clock minute or hour: the window starts at the change.
        first_second_where(time_zone, clock_start, instant_second, |o| o == offset)?
    };
    let end = if offset_seconds_at(time_zone, clock_end - 1)? == offset {
        clock_end
    } else {
        first_second_where(time_zone, instant_second, clock_end - 1, |o| o != offset)?
    };
    debug_assert!(start <= instant_second && instant_second < end);
    Some(CalendarWindow {
        start: DateTime::from_timestamp(start, 0)?,
        end: DateTime::from_timestamp(end, 0)?,
        label: DateTime::from_timestamp(label_seconds, 0)?.naive_utc(),
        label_offset_seconds: offset,
    })
}

/// The first day of the period of `unit` containing `date`.
fn period_first_day(unit: CalendarUnit, date: NaiveDate) -> Option<NaiveDate> {
    match unit {
        CalendarUnit::Week => {
            date.checked_sub_days(Days::new(u64::from(date.weekday().num_days_from_monday())))
        }
        CalendarUnit::Month => date.with_day(1),
        _ => Some(date),
    }
}

fn following_period(unit: CalendarUnit, first_day: NaiveDate) -> Option<NaiveDate> {
    match unit {
        CalendarUnit::Week => first_day.checked_add_days(Days::new(7)),
        CalendarUnit::Month => first_day.checked_add_months(Months::new(1)),
        _ => first_day.succ_opt(),
    }
}

fn preceding_period(unit: CalendarUnit, first_day: NaiveDate) -> Option<NaiveDate> {
    match unit {
        CalendarUnit::Week => first_day.checked_sub_days(Days::new(7)),
        CalendarUnit::Month => first_day.checked_sub_months(Months::new(1)),
        _ => first_day.pred_opt(),
    }
}

/// The first instant the local clock shows `date` 00:00 or later: midnight, the earliest of two
/// midnights, or the end of the gap that skips midnight.
fn first_instant_of_local_date(time_zone: Tz, date: NaiveDate) -> Option<DateTime<Utc>> {
    let midnight = date.and_time(NaiveTime::MIN);
    match time_zone.from_local_datetime(&midnight) {
        LocalResult::Single(instant) => Some(instant.with_timezone(&Utc)),
        LocalResult::Ambiguous(earliest, _) => Some(earliest.with_timezone(&Utc)),
        LocalResult::None => GapInfo::new(&midnight, &time_zone)?
            .end
            .map(|gap_end| gap_end.with_timezone(&Utc)),
    }
}

/// Day, week and month windows: `[first instant of period P, first instant of the next period)`
/// for the last period P whose first instant is not after `instant`.
fn date_window(
    unit: CalendarUnit,
    time_zone: Tz,
    instant: DateTime<Utc>,
) -> Option<CalendarWindow> {
    let local_date = instant.with_timezone(&time_zone).date_naive();
    let mut first_day = period_first_day(unit, local_date)?;
    let mut start = first_instant_of_local_date(time_zone, first_day)?;
    // Never taken with tzdb data; it keeps `start <= instant` whatever the zone's history.
    while start > instant {
        first_day = preceding_period(unit, first_day)?;
        start = first_instant_of_local_date(time_zone, first_day)?;
    }
    loop {
        let next_first_day = following_period(unit, first_day)?;
        let end = first_instant_of_local_date(time_zone, next_first_day)?;
        if end > instant {
            return Some(CalendarWindow {
                start,
                end,
                label: first_day.and_time(NaiveTime::MIN),
                label_offset_seconds: 0,
            });
        }
        // The clock was set back across midnight, or a whole day was skipped (Pacific/Apia,
        // 2011-12-30): the instant belongs to a later period.
        first_day = next_first_day;
        start = end;
    }
}
