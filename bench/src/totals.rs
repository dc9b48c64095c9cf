//! Reading a contender's (scope, window) totals from ClickHouse and comparing them with the
//! recount ([`crate::recount`]), on the common set of scopes, windows and measures.

use std::collections::HashMap;
use std::fmt;

use anyhow::{Context, Result};
use rust_decimal::Decimal;

use crate::clickhouse_http::ClickHouse;
use crate::events::marker_cutoff;
use crate::recount::{Sums, TotalKey, DIMENSIONS, MEASURES, WINDOW_KINDS};

/// Totals as read back: the measures as decimals, in [`MEASURES`] order.
pub type ReadTotals = HashMap<TotalKey, Vec<Decimal>>;

/// The common-set filter on `scope_kind`, `window_kind` and `window_start` (no freshness markers).
fn common_set_filter() -> String {
    let quoted = |names: &[&str]| {
        names
            .iter()
            .map(|name| format!("'{name}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "scope_kind IN ({}) AND window_kind IN ({}) AND window_start < toDateTime({}, 'UTC')",
        quoted(&DIMENSIONS),
        quoted(&WINDOW_KINDS),
        marker_cutoff().timestamp()
    )
}

/// The aggregator's current totals (`window_totals_current` of `database`), UTC windows.
pub async fn read_aggregator(clickhouse: &ClickHouse, database: &str) -> Result<ReadTotals> {
    let sql = format!(
        "SELECT scope_kind, scope_key, window_kind, toUnixTimestamp(window_start), {} \
         FROM `{database}`.window_totals_current WHERE window_tz = 'UTC' AND {} FORMAT TSV",
        MEASURES.join(", "),
        common_set_filter()
    );
    parse(clickhouse.rows(&sql).await?)
}

/// The Kafka-engine contender's totals (`totals` of `database`), summed (SummingMergeTree parts
/// may not be merged yet).
pub async fn read_kafka_engine(clickhouse: &ClickHouse, database: &str) -> Result<ReadTotals> {
    let sums: Vec<String> = MEASURES
        .iter()
        .map(|measure| format!("sum({measure})"))
        .collect();
    let sql = format!(
        "SELECT scope_kind, scope_key, window_kind, toUnixTimestamp(window_start), {} \
         FROM `{database}`.totals WHERE {} \
         GROUP BY scope_kind, scope_key, window_kind, window_start FORMAT TSV",
        sums.join(", "),
        common_set_filter()
    );
    parse(clickhouse.rows(&sql).await?)
}

fn parse(rows: Vec<Vec<String>>) -> Result<ReadTotals> {
    let mut totals = ReadTotals::with_capacity(rows.len());
    for row in rows {
        let [scope_kind, scope_key, window_kind, window_start, measures @ ..] = row.as_slice()
        else {
            anyhow::bail!("short row {row:?}");
        };
        let values = measures
            .iter()
            .map(|value| {
                value
                    .parse::<Decimal>()
                    .with_context(|| format!("{value:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        totals.insert(
            TotalKey {
                scope_kind: scope_kind.clone(),
                scope_key: scope_key.clone(),
                window_kind: window_kind.clone(),
                window_start: window_start.parse()?,
            },
            values,
        );
    }
    Ok(totals)
}

/// How read totals compare with a recount.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// Totals in the recount.
    pub expected: usize,
    /// Totals whose every measure equals the recount's.
    pub matching: usize,
    /// Totals read that the recount does not have.
    pub extra: usize,
    /// Per measure: read minus recount, over the `environment` × `month` totals (every event
    /// counts there exactly once: the stream's grand total).
    pub grand_total_delta: Vec<Decimal>,
    /// Per measure: the recount's grand total.
    pub grand_total: Vec<Decimal>,
}

impl Comparison {
    /// Every total and measure equal.
    pub fn exact(&self) -> bool {
        self.matching == self.expected && self.extra == 0
    }
}

/// Compares `read` with `expected` total by total and measure by measure.
pub fn compare(read: &ReadTotals, expected: &HashMap<TotalKey, Sums>) -> Comparison {
    let mut comparison = Comparison {
        expected: expected.len(),
        grand_total_delta: vec![Decimal::ZERO; MEASURES.len()],
        grand_total: vec![Decimal::ZERO; MEASURES.len()],
        ..Comparison::default()
    };
    let grand = |key: &TotalKey| key.scope_kind == "environment" && key.window_kind == "month";
    for (key, sums) in expected {
        if let Some(values) = read.get(key) {
            let equal = (0..MEASURES.len()).all(|index| values[index] == sums.get(index));
            comparison.matching += usize::from(equal);
        }
        if grand(key) {
            for index in 0..MEASURES.len() {
                comparison.grand_total[index] += sums.get(index);
                comparison.grand_total_delta[index] -= sums.get(index);
            }
        }
    }
    for (key, values) in read {
        if !expected.contains_key(key) {
            comparison.extra += 1;
        }
        if grand(key) {
            for (index, value) in values.iter().enumerate() {
                comparison.grand_total_delta[index] += value;
            }
        }
    }
    comparison
}

impl fmt::Display for Comparison {
    /// `exact (N totals)`, or how many differ and the grand-total deltas of requests and cost.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exact() {
            return write!(f, "exact ({} totals)", self.expected);
        }
        write!(
            f,
            "{}/{} totals off",
            self.expected - self.matching,
            self.expected
        )?;
        if self.extra > 0 {
            write!(f, ", {} extra", self.extra)?;
        }
        for measure in ["requests", "cost_usd"] {
            let index = MEASURES.iter().position(|name| *name == measure).unwrap();
            let delta = self.grand_total_delta[index];
            let total = self.grand_total[index];
            if !delta.is_zero() && !total.is_zero() {
                let percent = delta * Decimal::ONE_HUNDRED / total;
                write!(f, ", {measure} {:+.2} %", percent)?;
            }
        }
        Ok(())
    }
}
