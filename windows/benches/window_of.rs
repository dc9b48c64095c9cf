//! Cost of finding an event's window: uncached (`WindowSpec::window_of`, time zone look-ups every
//! time) and through a `WindowCache` on a stream of events 10 ms apart (nearly all hits).
//!
//! `cargo bench -p quotaflow-windows --bench window_of`

use std::hint::black_box;

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quotaflow_windows::{CampaignId, WindowCache, WindowKind, WindowSpec};

const EVENTS: usize = 10_000;

fn events() -> Vec<DateTime<Utc>> {
    let first: DateTime<Utc> = "2026-03-08T06:30:00Z".parse().unwrap();
    (0..EVENTS)
        .map(|index| first + TimeDelta::milliseconds(10 * index as i64))
        .collect()
}

fn specs() -> Vec<(&'static str, WindowSpec)> {
    let new_york = chrono_tz::America::New_York;
    let start = "2026-03-01T00:00:00Z".parse().unwrap();
    let end = "2026-04-01T00:00:00Z".parse().unwrap();
    vec![
        (
            "minute",
            WindowSpec::calendar(WindowKind::Minute, new_york).unwrap(),
        ),
        (
            "hour",
            WindowSpec::calendar(WindowKind::Hour, new_york).unwrap(),
        ),
        (
            "day",
            WindowSpec::calendar(WindowKind::Day, new_york).unwrap(),
        ),
        (
            "week",
            WindowSpec::calendar(WindowKind::Week, new_york).unwrap(),
        ),
        (
            "month",
            WindowSpec::calendar(WindowKind::Month, new_york).unwrap(),
        ),
        (
            "campaign",
            WindowSpec::campaign(CampaignId::new("launch").unwrap(), start, end, new_york).unwrap(),
        ),
    ]
}

fn window_of(criterion: &mut Criterion) {
    let events = events();
    let mut group = criterion.benchmark_group("window_of");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (name, spec) in specs() {
        group.bench_function(format!("uncached/{name}"), |bencher| {
            bencher.iter(|| {
                for &event in &events {
                    black_box(spec.window_of(black_box(event)));
                }
            })
        });
        group.bench_function(format!("cached/{name}"), |bencher| {
            bencher.iter(|| {
                let mut cache = WindowCache::new(spec.clone());
                for &event in &events {
                    black_box(cache.window_of(black_box(event)));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, window_of);
criterion_main!(benches);
