//! [`Detector`]: anomalies of a policy scope's traffic mix, compared with the scope's own
//! trailing baseline. Pure: time comes from the totals (`written_at`, the aggregator's clock).
//!
//! # The rule
//! Per (policy, scope) the totals are cut into **buckets** of `bucket_secs` (by the totals'
//! `written_at`). For each bucket the change of the totals over it gives four ratios:
//!
//! | metric                  | ratio                                  | anomalous when |
//! |-------------------------|----------------------------------------|----------------|
//! | `fallback_share`        | fallback attempts / requests           | higher         |
//! | `attempts_per_output`   | billable attempts / accepted outputs   | higher         |
//! | `cache_hit_rate`        | cached input tokens / input tokens     | lower          |
//! | `output_input_ratio`    | output tokens / input tokens           | either way     |
//! | `input_tokens_per_success` | input tokens / successful requests  | higher         |
//! | `final_images_per_output` | final-tier images / accepted outputs | higher         |
//!
//! A successful request is a request minus the failed attempts (4xx, 5xx, other) of the same
//! bucket. `input_tokens_per_success` catches prompts that grow (a loop appending its history, a
//! retrieval step stuffing the context); `final_images_per_output` catches final-quality renders
//! made before a person chose among drafts. A policy's `anomaly.metrics` picks the ratios it
//! watches (default: all).
//!
//! The current bucket's ratio `x` is compared with the last `history_buckets` closed buckets of
//! the same scope (buckets without traffic are skipped) by a **robust z-score**:
//! `z = (x − median) / max(1.4826 × MAD, floor)`, where MAD is the median absolute deviation and
//! `floor = max(0.02, 5 % of |median|)` keeps a perfectly flat baseline from turning any change
//! into an infinite z. It fires when `z` passes the policy's `anomaly.z_threshold` in the
//! metric's direction, **and** the bucket's amount in the policy's unit is at least
//! `anomaly.min_volume` (quiet scopes do not page), **and** the baseline has at least
//! `min_history` buckets with that ratio defined. Median and MAD resist the outliers a mean and
//! standard deviation would absorb: one earlier storm does not hide the next.
//!
//! Each (policy, scope, metric) fires at most once per policy window ([`crate::engine`] keys the
//! alert by window start).

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, TimeDelta, Utc};
use policy::Policy;
use quotaflow_totals::measures::Measures;
use rust_decimal::Decimal;
use schemas::WindowTotal;
use serde::{Deserialize, Serialize};

use crate::totals::WindowKey;

/// Settings of the baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalySettings {
    /// Bucket length in seconds.
    pub bucket_secs: u64,
    /// Closed buckets kept as the baseline.
    pub history_buckets: usize,
    /// Buckets a baseline needs before anything is judged anomalous.
    pub min_history: usize,
}

impl Default for AnomalySettings {
    fn default() -> Self {
        Self {
            bucket_secs: 60,
            history_buckets: 60,
            min_history: 10,
        }
    }
}

/// The metrics (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Fallback attempts / requests.
    FallbackShare,
    /// Billable attempts / accepted outputs.
    AttemptsPerOutput,
    /// Cached input tokens / input tokens.
    CacheHitRate,
    /// Output tokens / input tokens.
    OutputInputRatio,
    /// Input tokens / successful requests.
    InputTokensPerSuccess,
    /// Final-tier images / accepted outputs.
    FinalImagesPerOutput,
}

const METRICS: [Metric; RATIOS] = [
    Metric::FallbackShare,
    Metric::AttemptsPerOutput,
    Metric::CacheHitRate,
    Metric::OutputInputRatio,
    Metric::InputTokensPerSuccess,
    Metric::FinalImagesPerOutput,
];

/// How many ratios there are.
const RATIOS: usize = 6;

impl Metric {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::FallbackShare => "fallback_share",
            Metric::AttemptsPerOutput => "attempts_per_output",
            Metric::CacheHitRate => "cache_hit_rate",
            Metric::OutputInputRatio => "output_input_ratio",
            Metric::InputTokensPerSuccess => "input_tokens_per_success",
            Metric::FinalImagesPerOutput => "final_images_per_output",
        }
    }

    /// What the ratio is, in words.
    pub fn meaning(self) -> &'static str {
        match self {
            Metric::FallbackShare => "fallback attempts per request",
            Metric::AttemptsPerOutput => "billable attempts per accepted output",
            Metric::CacheHitRate => "share of input tokens read from the prompt cache",
            Metric::OutputInputRatio => "output tokens per input token",
            Metric::InputTokensPerSuccess => "average input tokens per successful request",
            Metric::FinalImagesPerOutput => "final-quality images per accepted output",
        }
    }

    /// What usually causes it.
    pub fn hint(self) -> &'static str {
        match self {
            Metric::FallbackShare => "the primary model is failing and spend moves to fallbacks",
            Metric::AttemptsPerOutput => "attempts are retried or regenerated without being used",
            Metric::CacheHitRate => "prompts stopped hitting the cache (a changed prefix?)",
            Metric::OutputInputRatio => "answers are much longer or shorter than usual",
            Metric::InputTokensPerSuccess => {
                "prompts grew: a loop appending its history, or a retrieval step stuffing the context"
            }
            Metric::FinalImagesPerOutput => {
                "final-quality images are rendered before a person chose among drafts or previews"
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One anomaly found.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Which ratio.
    pub metric: Metric,
    /// The current bucket's value.
    pub value: Decimal,
    /// The baseline's median.
    pub median: Decimal,
    /// The robust z-score.
    pub z: Decimal,
    /// Buckets in the baseline.
    pub baseline: usize,
}

impl Finding {
    /// A sentence for people.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}) is {} against a usual {} (robust z = {}, baseline of {} buckets): {}",
            self.metric.as_str(),
            self.metric.meaning(),
            self.value.round_dp(3).normalize(),
            self.median.round_dp(3).normalize(),
            self.z.round_dp(1).normalize(),
            self.baseline,
            self.metric.hint(),
        )
    }
}

/// The counters the ratios need, and the policy's amount.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counters {
    requests: u64,
    fallback_attempts: u64,
    billable_attempts: u64,
    accepted_outputs: u64,
    input_tokens: u64,
    cached_input_tokens: u64,
    output_tokens: u64,
    failed_attempts: u64,
    images_final: u64,
    amount: Decimal,
}

impl Counters {
    fn of(total: &WindowTotal, policy: &Policy) -> Counters {
        Counters {
            requests: total.requests,
            fallback_attempts: total.fallback_attempts,
            billable_attempts: total.billable_attempts,
            accepted_outputs: total.accepted_outputs,
            input_tokens: total.input_tokens,
            cached_input_tokens: total.cached_input_tokens,
            output_tokens: total.output_tokens,
            failed_attempts: total
                .errors_4xx
                .saturating_add(total.errors_5xx)
                .saturating_add(total.errors_other),
            images_final: total.images_final,
            amount: Measures::from(total).unit_amount(policy.unit()),
        }
    }

    fn minus(&self, base: &Counters) -> Counters {
        Counters {
            requests: self.requests.saturating_sub(base.requests),
            fallback_attempts: self
                .fallback_attempts
                .saturating_sub(base.fallback_attempts),
            billable_attempts: self
                .billable_attempts
                .saturating_sub(base.billable_attempts),
            accepted_outputs: self.accepted_outputs.saturating_sub(base.accepted_outputs),
            input_tokens: self.input_tokens.saturating_sub(base.input_tokens),
            cached_input_tokens: self
                .cached_input_tokens
                .saturating_sub(base.cached_input_tokens),
            output_tokens: self.output_tokens.saturating_sub(base.output_tokens),
            failed_attempts: self.failed_attempts.saturating_sub(base.failed_attempts),
            images_final: self.images_final.saturating_sub(base.images_final),
            amount: self.amount - base.amount,
        }
    }

    fn ratios(&self) -> [Option<Decimal>; RATIOS] {
        let ratio = |numerator: u64, denominator: u64| {
            (denominator > 0).then(|| Decimal::from(numerator) / Decimal::from(denominator))
        };
        [
            ratio(self.fallback_attempts, self.requests),
            ratio(self.billable_attempts, self.accepted_outputs),
            ratio(self.cached_input_tokens, self.input_tokens),
            ratio(self.output_tokens, self.input_tokens),
            ratio(
                self.input_tokens,
                self.requests.saturating_sub(self.failed_attempts),
            ),
            ratio(self.images_final, self.accepted_outputs),
        ]
    }
}

#[derive(Debug)]
struct Track {
    window_start: DateTime<Utc>,
    bucket: i64,
    base: Counters,
    latest: Counters,
    history: VecDeque<[Option<Decimal>; RATIOS]>,
}

/// Baselines per (policy, scope) (module docs).
#[derive(Debug, Default)]
pub struct Detector {
    settings: AnomalySettings,
    tracks: HashMap<(String, String), Track>,
}

impl Detector {
    /// A detector with `settings`.
    pub fn new(settings: AnomalySettings) -> Detector {
        Detector {
            settings,
            tracks: HashMap::new(),
        }
    }

    /// Applies the current `total` of `policy`'s scope `key`; returns the anomalies of the
    /// current bucket (the caller fires each once).
    pub fn observe(
        &mut self,
        policy: &Policy,
        key: &WindowKey,
        total: &WindowTotal,
    ) -> Vec<Finding> {
        self.observe_settled(policy, key, total).0
    }

    /// [`Detector::observe`], and the metrics a bucket that just closed showed back within the
    /// usual (judged as a current bucket would be: enough volume and baseline, not anomalous), so
    /// the caller can resolve an anomaly it fired before.
    pub fn observe_settled(
        &mut self,
        policy: &Policy,
        key: &WindowKey,
        total: &WindowTotal,
    ) -> (Vec<Finding>, Vec<Metric>) {
        let Some(rules) = policy
            .record()
            .anomaly
            .as_ref()
            .filter(|rules| rules.enabled)
        else {
            return (Vec::new(), Vec::new());
        };
        let bucket_secs = i64::try_from(self.settings.bucket_secs.max(1)).unwrap_or(60);
        let bucket = total.written_at.timestamp().div_euclid(bucket_secs);
        let counters = Counters::of(total, policy);
        let history_buckets = self.settings.history_buckets.max(1);
        let track = self
            .tracks
            .entry((policy.id().to_owned(), key.scope_key.clone()))
            .or_insert_with(|| Track {
                window_start: key.window_start,
                bucket,
                base: Counters::default(),
                latest: Counters::default(),
                history: VecDeque::new(),
            });
        if track.window_start != key.window_start {
            if key.window_start < track.window_start {
                return (Vec::new(), Vec::new()); // a late total of an older window
            }
            // A new window: its totals count from zero.
            track.window_start = key.window_start;
            track.base = Counters::default();
            track.latest = Counters::default();
        }
        let mut settled = Vec::new();
        if bucket > track.bucket {
            let closed = track.latest.minus(&track.base);
            if closed.requests > 0 && closed.amount >= rules.min_volume {
                let values = closed.ratios();
                for metric in METRICS {
                    if rules.watches(metric.as_str())
                        && judge(
                            metric,
                            values[metric.index()],
                            &track.history,
                            self.settings.min_history,
                            rules.z_threshold,
                        )
                        .is_some_and(|finding| finding.is_none())
                    {
                        settled.push(metric);
                    }
                }
            }
            if closed.requests > 0 {
                track.history.push_back(closed.ratios());
                while track.history.len() > history_buckets {
                    track.history.pop_front();
                }
            }
            track.base = track.latest;
            track.bucket = bucket;
        }
        track.latest = counters;
        let current = track.latest.minus(&track.base);
        if current.requests == 0 || current.amount < rules.min_volume {
            return (Vec::new(), settled);
        }
        let values = current.ratios();
        let findings = METRICS
            .into_iter()
            .filter(|metric| rules.watches(metric.as_str()))
            .filter_map(|metric| {
                judge(
                    metric,
                    values[metric.index()],
                    &track.history,
                    self.settings.min_history,
                    rules.z_threshold,
                )
                .flatten()
            })
            .collect();
        (findings, settled)
    }

    /// Baselines held, one per (policy, scope).
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    /// Whether no baseline is held.
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Forgets scopes whose window started before `before` and that have no newer total.
    pub fn evict(&mut self, before: DateTime<Utc>) {
        self.tracks
            .retain(|_, track| track.window_start >= before - TimeDelta::days(62));
    }
}

/// Judges `value` of `metric` against `history`: `None` when it cannot be judged (no value, too
/// short a baseline), `Some(None)` when usual, `Some(Some(finding))` when anomalous.
fn judge(
    metric: Metric,
    value: Option<Decimal>,
    history: &VecDeque<[Option<Decimal>; RATIOS]>,
    min_history: usize,
    z_threshold: Decimal,
) -> Option<Option<Finding>> {
    let value = value?;
    let baseline: Vec<Decimal> = history
        .iter()
        .filter_map(|ratios| ratios[metric.index()])
        .collect();
    if baseline.len() < min_history.max(1) {
        return None;
    }
    let center = median(baseline.clone());
    let mad = median(baseline.iter().map(|v| (*v - center).abs()).collect());
    let floor = Decimal::new(2, 2).max(center.abs() * Decimal::new(5, 2));
    let scale = (mad * Decimal::new(14826, 4)).max(floor);
    let z = (value - center) / scale;
    let anomalous = match metric {
        Metric::FallbackShare
        | Metric::AttemptsPerOutput
        | Metric::InputTokensPerSuccess
        | Metric::FinalImagesPerOutput => z >= z_threshold,
        Metric::CacheHitRate => -z >= z_threshold,
        Metric::OutputInputRatio => z.abs() >= z_threshold,
    };
    Some(anomalous.then_some(Finding {
        metric,
        value,
        median: center,
        z,
        baseline: baseline.len(),
    }))
}

fn median(mut values: Vec<Decimal>) -> Decimal {
    values.sort_unstable();
    let n = values.len();
    if n == 0 {
        return Decimal::ZERO;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / Decimal::TWO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::PolicySet;

    const POLICY: &str = r#"
id: fb
description: fallback spend
owner: {team: support, contact: support@example.com}
unit: requests
group_by: [workflow]
window: {kind: day}
hard_cap: 1000000
action: {kind: alert_only}
anomaly: {min_volume: 50, z_threshold: 4}
"#;

    fn total(at: i64, requests: u64, fallbacks: u64) -> WindowTotal {
        let day = DateTime::<Utc>::from_timestamp(1_700_006_400, 0).unwrap();
        WindowTotal {
            requests,
            fallback_attempts: fallbacks,
            billable_attempts: requests,
            accepted_outputs: requests - fallbacks,
            input_tokens: requests * 100,
            output_tokens: requests * 10,
            written_at: day + TimeDelta::seconds(at),
            ..schemas::fixtures::empty_day_total("policy:fb", "workflow=triage", day)
        }
    }

    fn run(steps: &[(i64, u64, u64)]) -> Vec<Vec<Metric>> {
        let policies = PolicySet::from_str("p.yaml", POLICY).unwrap();
        let policy = policies.get("fb").unwrap();
        let mut detector = Detector::new(AnomalySettings {
            bucket_secs: 60,
            history_buckets: 60,
            min_history: 5,
        });
        steps
            .iter()
            .map(|(at, requests, fallbacks)| {
                let total = total(*at, *requests, *fallbacks);
                detector
                    .observe(policy, &WindowKey::of(&total), &total)
                    .into_iter()
                    .map(|finding| finding.metric)
                    .collect()
            })
            .collect()
    }

    /// Cumulative totals: 100 requests a minute with `share` % fallbacks, then a storm.
    fn steady_then(storm_requests: u64, storm_fallbacks: u64) -> Vec<(i64, u64, u64)> {
        let mut steps = Vec::new();
        let (mut requests, mut fallbacks) = (0u64, 0u64);
        for minute in 0..8i64 {
            requests += 100;
            fallbacks += 5 + (minute as u64 % 3);
            steps.push((minute * 60 + 30, requests, fallbacks));
        }
        steps.push((
            8 * 60 + 30,
            requests + storm_requests,
            fallbacks + storm_fallbacks,
        ));
        steps
    }

    #[test]
    fn a_fallback_storm_against_a_steady_baseline_is_an_anomaly() {
        let found = run(&steady_then(100, 80));
        assert!(found[..8].iter().all(Vec::is_empty), "{found:?}");
        assert!(found[8].contains(&Metric::FallbackShare), "{found:?}");
        assert!(found[8].contains(&Metric::AttemptsPerOutput), "{found:?}");
    }

    #[test]
    fn ordinary_variation_and_quiet_buckets_are_not() {
        let found = run(&steady_then(100, 7));
        assert!(found.iter().all(Vec::is_empty), "{found:?}");
        // Below min_volume (50 requests in the bucket): never anomalous, however odd.
        let found = run(&steady_then(20, 20));
        assert!(found.iter().all(Vec::is_empty), "{found:?}");
    }

    /// Cumulative totals of a scope sending 100 successful requests a minute with about
    /// `tokens` input tokens each and `finals` final images, then one minute of `storm_tokens`
    /// and `storm_finals`; the policy watches `metrics`.
    fn prompt_steps(metrics: &str, storm_tokens: u64, storm_finals: u64) -> Vec<Vec<Metric>> {
        let yaml = POLICY.replace(
            "anomaly: {min_volume: 50, z_threshold: 4}",
            &format!("anomaly: {{min_volume: 50, z_threshold: 4{metrics}}}"),
        );
        let policies = PolicySet::from_str("p.yaml", &yaml).unwrap();
        let policy = policies.get("fb").unwrap();
        let mut detector = Detector::new(AnomalySettings {
            bucket_secs: 60,
            history_buckets: 60,
            min_history: 5,
        });
        let (mut requests, mut tokens, mut finals, mut accepted) = (0u64, 0u64, 0u64, 0u64);
        let mut found = Vec::new();
        for minute in 0..9i64 {
            let storm = minute == 8;
            requests += 100;
            accepted += 50;
            tokens += if storm {
                storm_tokens
            } else {
                100 * (1_000 + 20 * (minute as u64 % 3))
            };
            finals += if storm {
                storm_finals
            } else {
                5 + minute as u64 % 2
            };
            let mut total = total(minute * 60 + 30, requests, 0);
            total.input_tokens = tokens;
            total.output_tokens = requests * 10;
            total.images_final = finals;
            total.accepted_outputs = accepted;
            // Failed attempts are not successful requests: 10 a minute.
            total.errors_5xx = 10 * (minute as u64 + 1);
            found.push(
                detector
                    .observe(policy, &WindowKey::of(&total), &total)
                    .into_iter()
                    .map(|finding| finding.metric)
                    .collect(),
            );
        }
        found
    }

    #[test]
    fn growing_prompts_and_early_final_renders_are_anomalies() {
        // 100 requests, 10 failed: 9,000 input tokens per success against about 1,100.
        let found = prompt_steps("", 810_000, 5);
        assert!(found[..8].iter().all(Vec::is_empty), "{found:?}");
        assert!(
            found[8].contains(&Metric::InputTokensPerSuccess),
            "{found:?}"
        );
        assert!(
            !found[8].contains(&Metric::FinalImagesPerOutput),
            "{found:?}"
        );
        // 60 final images for 50 accepted outputs against about 0.1 per output.
        let found = prompt_steps("", 100 * 1_000, 60);
        assert!(
            found[8].contains(&Metric::FinalImagesPerOutput),
            "{found:?}"
        );
        assert!(
            !found[8].contains(&Metric::InputTokensPerSuccess),
            "{found:?}"
        );
        // The usual mix: nothing.
        let found = prompt_steps("", 100 * 1_040, 6);
        assert!(found.iter().all(Vec::is_empty), "{found:?}");
    }

    #[test]
    fn a_policy_watches_only_the_ratios_it_lists() {
        let found = prompt_steps(", metrics: [final_images_per_output]", 810_000, 5);
        assert!(found.iter().all(Vec::is_empty), "{found:?}");
        let found = prompt_steps(", metrics: [input_tokens_per_success]", 810_000, 60);
        assert_eq!(found[8], vec![Metric::InputTokensPerSuccess]);
    }

    #[test]
    fn no_baseline_no_verdict() {
        let found = run(&[(30, 100, 5), (90, 200, 10), (150, 300, 95)]);
        assert!(found.iter().all(Vec::is_empty), "{found:?}");
    }
}
