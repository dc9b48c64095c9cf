//! `TotalsState::apply` throughput on realistic events, and resident bytes per (scope, window).
//!
//! Events: prod chat completions with every optional scope set (10 single-dimension scopes × 5
//! UTC windows) matching 2 policies (team × model per New York day, key × user per month): 52
//! totals per event. 20,000 events spread over one minute across 200 keys, 20 teams, 5,000 users,
//! 300 customers, 10 workflows, 3 providers, 8 models and 4 endpoints.
//!
//! - `apply/steady`: every scope and window exists (the common case in a running aggregator);
//!   peeks and drains at the aggregator's cadence included. `apply/steady_checked`: the same
//!   with the fast path off (every total added with checked decimal arithmetic).
//! - `apply/cold`: a fresh state takes the 20,000 events (scope and window creation included)
//!   and drains them.
//!
//! Resident bytes are measured with a counting global allocator (live bytes after building the
//! state, divided by its (scope, window) totals) and printed once; `approximate_bytes` is shown
//! beside it.
//!
//! `cargo bench -p quotaflow-totals --bench state`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{TimeDelta, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use policy::PolicySet;
use quotaflow_totals::state::{TotalsConfig, TotalsState};
use rust_decimal::Decimal;
use schemas::fixtures::text_event;
use schemas::UsageEvent;

/// Counts live heap bytes, to measure what the state really holds.
struct CountingAllocator;

/// Live bytes allocated through [`CountingAllocator`].
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const POLICIES: &str = r#"
- id: team-model-daily-cost
  owner: {team: platform, contact: p@example.com}
  description: cost per team and model per New York day
  environment: prod
  unit: cost_usd
  group_by: [team, model]
  window: {kind: day, time_zone: America/New_York}
  hard_cap: 100
  action: {kind: alert_only}
- id: key-user-monthly-requests
  owner: {team: platform, contact: p@example.com}
  description: requests per key and user per month
  unit: requests
  group_by: [api_key_id, user_id]
  window: {kind: month}
  hard_cap: 1000000
  action: {kind: alert_only}
"#;

const EVENTS: usize = 20_000;

fn events() -> Vec<UsageEvent> {
    let start = Utc.with_ymd_and_hms(2026, 3, 9, 12, 0, 0).unwrap();
    let models = [
        "gpt-4o",
        "gpt-4o-mini",
        "o3",
        "claude-sonnet-4",
        "claude-haiku",
        "gemini-2.5-pro",
        "gemini-flash",
        "text-embedding-3",
    ];
    let providers = ["openai", "anthropic", "google"];
    let endpoints = ["chat_completions", "responses", "messages", "embeddings"];
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |modulo: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % modulo
    };
    (0..EVENTS)
        .map(|index| {
            let mut event = text_event(
                &format!("evt-{index:08}"),
                start + TimeDelta::milliseconds(3 * index as i64),
            );
            event.api_key_id = format!("key-{:04}", next(200));
            event.team = format!("team-{:02}", next(20));
            event.user_id = Some(format!("user-{:05}", next(5_000)));
            event.customer_id = Some(format!("cust-{:04}", next(300)));
            event.workflow = format!("workflow-{}", next(10));
            event.provider = providers[next(3) as usize].to_owned();
            event.model = models[next(8) as usize].to_owned();
            event.endpoint = endpoints[next(4) as usize].to_owned();
            event.input_tokens = 200 + next(4_000);
            event.output_tokens = next(1_000);
            event.cost_usd = Some(Decimal::new(next(50_000_000) as i64, 9));
            event.attempt = if next(20) == 0 { 2 } else { 1 };
            event
        })
        .collect()
}

fn new_state() -> TotalsState {
    let policies = PolicySet::from_str("bench.yaml", POLICIES).expect("policies");
    TotalsState::new(&policies, TotalsConfig::default()).expect("state")
}

fn report_bytes(events: &[UsageEvent]) {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut state = new_state();
    for (version, event) in events.iter().enumerate() {
        state.apply(event, version as u64 + 1).expect("apply");
        if (version as u64 + 1).is_multiple_of(EVENTS_PER_PEEK) {
            drop(state.peek_policy_updates());
        }
    }
    drop(state.drain_dirty());
    // The aggregator evicts after each flush, which also trims the pending deltas' room.
    state.evict_closed();
    let resident = LIVE_BYTES.load(Ordering::Relaxed) - before;
    let windows = state.active_windows();
    println!(
        "state: {windows} (scope, window) totals in {} scopes; resident {resident} bytes = {} bytes per total (approximate_bytes: {} per total)",
        state.scope_count(),
        resident / windows,
        state.approximate_bytes() / windows,
    );
}

/// Events between two peeks of the policy totals: the aggregator peeks every 20 ms
/// (`publish_interval_ms`), about 4,000 events at 200k events/s.
const EVENTS_PER_PEEK: u64 = 4_000;

/// Events between two drains: a flush every 500 ms at 200k events/s.
const EVENTS_PER_DRAIN: u64 = 100_000;

fn bench_apply(criterion: &mut Criterion) {
    let events = events();
    report_bytes(&events);
    let mut group = criterion.benchmark_group("apply");

    // `steady`: the fast path (one delta per scope and windows, folded into the totals at each
    // peek and drain); `steady_checked`: every event added to each of its 52 totals with
    // checked decimal arithmetic (the path before issue 16 point 1, still taken by late
    // events and replays). Both peek and drain at the aggregator's cadence, which the time
    // per event includes.
    for (name, fast_path) in [("steady", true), ("steady_checked", false)] {
        let mut state = new_state();
        state.set_fast_path(fast_path);
        for (version, event) in events.iter().enumerate() {
            state.apply(event, version as u64 + 1).expect("apply");
        }
        drop(state.drain_dirty());
        let mut version = events.len() as u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |bencher| {
            bencher.iter(|| {
                let event = &events[version as usize % events.len()];
                version += 1;
                let outcome = state.apply(black_box(event), version).expect("apply");
                if version.is_multiple_of(EVENTS_PER_PEEK) {
                    black_box(state.peek_policy_updates());
                }
                if version.is_multiple_of(EVENTS_PER_DRAIN) {
                    black_box(state.drain_dirty());
                }
                black_box(outcome)
            })
        });
    }

    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    group.bench_function("cold", |bencher| {
        bencher.iter_batched(
            new_state,
            |mut state| {
                for (version, event) in events.iter().enumerate() {
                    state.apply(event, version as u64 + 1).expect("apply");
                }
                state.drain_dirty();
                state
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// The duplicate filter (issue 16 point 3): one id remembered per event, the oldest forgotten
/// once `max_ids` are held (steady state), ids shaped like real ones.
fn bench_dedup(criterion: &mut Criterion) {
    let ids: Vec<String> = (0..200_000)
        .map(|index| format!("evt_01J9Z6X4W8K2M5N7P3Q1{index:08}"))
        .collect();
    let at = chrono::Utc::now();
    let mut dedup =
        quotaflow_totals::dedup::Dedup::new(std::time::Duration::from_secs(900), 100_000);
    for (offset, id) in ids.iter().enumerate() {
        dedup.insert(id, at, offset as i64);
    }
    let mut offset = ids.len() as i64;
    let mut group = criterion.benchmark_group("dedup");
    group.throughput(Throughput::Elements(1));
    group.bench_function("insert", |bencher| {
        bencher.iter(|| {
            let id = &ids[offset as usize % ids.len()];
            offset += 1;
            black_box(dedup.insert(black_box(id), at, offset))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_apply, bench_dedup);
criterion_main!(benches);
