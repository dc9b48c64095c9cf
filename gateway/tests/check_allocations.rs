//! [`DecisionView::check`] allocates nothing, decisions with absent dimensions included. A counting
//! global allocator (counting per thread, so the test harness's own threads do not interfere)
//! measures the checks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use gateway::{DecisionView, RequestAttributes, Verdict};
use schemas::ControlDecision;

/// Counts the allocations of the current thread.
struct CountingAllocator;

thread_local! {
    /// Allocations made by this thread so far.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn decision(policy_id: &str, scope: &[(&str, &str)], absent: &[&str]) -> ControlDecision {
    let scope: BTreeMap<String, String> = scope
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let absent = absent.iter().map(|name| name.to_string()).collect();
    schemas::fixtures::block_decision(policy_id, scope, absent, now())
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
}

/// Issue 13, point 2: matching absent dimensions (`user_id`, `customer_id`, labels) keeps
/// `check` allocation-free.
#[test]
fn check_allocates_nothing_with_absent_dimensions() {
    let mut view = DecisionView::new();
    view.apply(&decision("anon", &[("environment", "prod")], &["user_id"]));
    view.apply(&decision(
        "global-anon",
        &[],
        &["customer_id", "labels.tier"],
    ));
    view.apply(&decision("u1", &[("user_id", "u1")], &[]));
    view.apply(&decision("team", &[("team", "ads")], &["labels.feature"]));
    let base = RequestAttributes {
        api_key_id: "key-1",
        team: "search",
        user_id: Some("u2"),
        customer_id: Some("acme"),
        workflow: "answer",
        environment: "prod",
        provider: "openai",
        model: "gpt-4o",
        endpoint: "chat",
        modality: "text",
        labels: &[("tier", "gold"), ("feature", "summaries")],
    };
    let requests = [
        base,
        RequestAttributes {
            user_id: None,
            ..base
        },
        RequestAttributes {
            user_id: Some("u1"),
            ..base
        },
        RequestAttributes {
            customer_id: None,
            labels: &[],
            ..base
        },
        RequestAttributes {
            team: "ads",
            labels: &[("tier", "gold")],
            ..base
        },
    ];
    let now = now();
    let mut verdicts = Vec::with_capacity(requests.len());
    let probe = ALLOCATIONS.with(Cell::get);
    std::hint::black_box(Box::new(0_u64));
    assert!(
        ALLOCATIONS.with(Cell::get) > probe,
        "the counter sees this thread's allocations"
    );
    let before = ALLOCATIONS.with(Cell::get);
    for request in &requests {
        verdicts.push(view.check(request, now));
    }
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    let blocked_by: Vec<Option<&str>> = verdicts
        .iter()
        .map(|verdict| match verdict {
            Verdict::Block { policy_id, .. } => Some(&**policy_id),
            _ => None,
        })
        .collect();
    assert_eq!(
        blocked_by,
        [
            None,
            Some("anon"),
            Some("u1"),
            Some("global-anon"),
            Some("team")
        ]
    );
    assert_eq!(allocations, 0, "check allocated");
}
