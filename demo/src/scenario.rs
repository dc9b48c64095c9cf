//! The demo's scripted scenarios on top of the background [`Workload`]: what a gateway fleet
//! sends in one run, tick by tick, as requests the simulated gateway then checks against the
//! control topic.
//!
//! Timeline, as fractions of the run's duration:
//! - all along: the background fleet (several teams, keys and environments; text with cache hits,
//!   images by tier, async video jobs, audio, embeddings, batch; some retries and fallbacks), and
//!   a legacy client that keeps calling a model the price catalog marks deprecated, in prod;
//! - from 10 %: a runaway agent loop on a staging key, [`LOOP_RATE`] calls a second, and once
//!   a call of its agent whose context is above the workflow's approved size;
//! - from 55 % to 85 %: a fallback storm: the support bots' primary route fails and every
//!   action falls back to the other provider, [`STORM_RATE`] actions a second;
//! - all along, the research team's two agents, [`RESEARCH_RATE`] calls a second with steady
//!   prompts; from 60 % one of them ([`GROWING_WORKFLOW`]) appends its whole history to every
//!   prompt (input tokens per request grow eightfold: an anomaly against its own baseline), the
//!   other ([`STEADY_WORKFLOW`]) goes on as before;
//! - at 10 %: [`STALLED_JOBS`] video jobs of [`STALLED_CUSTOMER`] that the provider does not
//!   start (a stalled queue: a pending-job backlog page once they wait longer than the policy
//!   allows); at 80 % they finish and the backlog drains (the page resolves).
//!
//! The approval that lifts the loop's block is the demo's own step (it is a person's act).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use schemas::{Modality, Status, UsageEvent};

use crate::workload::{Models, Workload};

/// Who sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Actor {
    /// The background fleet.
    Background,
    /// A client still calling a deprecated model in prod.
    Legacy,
    /// The runaway agent loop in staging (through NGINX and the decision sidecar).
    RunawayLoop,
    /// One call of the loop's agent with a context above its workflow's approved size (through
    /// NGINX and the sidecar, refused at admission).
    OversizedContext,
    /// The support bots' primary attempts during the storm.
    StormPrimary,
    /// The support bots' fallback attempts during the storm.
    StormFallback,
    /// The research team's agents (one of them's prompts grow from 60 %).
    Research,
    /// The video jobs stuck in the provider's queue, and their late completion.
    StalledVideo,
}

/// One request for the gateway to check, and the event it accounts for if sent.
#[derive(Debug, Clone)]
pub struct Request {
    /// Who sends it.
    pub actor: Actor,
    /// The usage event.
    pub event: UsageEvent,
}

/// The runaway loop's calls per second.
pub const LOOP_RATE: f64 = 40.0;
/// The fallback storm's actions per second.
pub const STORM_RATE: f64 = 25.0;
/// The legacy client's calls per second.
pub const LEGACY_RATE: f64 = 2.0;
/// The context size the agent's workflow is approved for (the `admission:` section of
/// `demo/policies/staging_agent_cap.yaml`).
pub const LOOP_CONTEXT_LIMIT: u64 = 100_000;
/// The context the oversized call declares.
pub const OVERSIZED_INPUT_TOKENS: u64 = 180_000;
/// The max output tokens every loop call declares.
pub const LOOP_MAX_OUTPUT_TOKENS: u64 = 1_024;
/// The staging key the runaway loop uses.
pub const LOOP_KEY: &str = "key_agent_staging";
/// The support workflow the storm hits.
pub const STORM_WORKFLOW: &str = "reply-draft";
/// The deprecated model the legacy client calls (retired 2026-09-24 in the catalog).
pub const DEPRECATED: (&str, &str) = ("openai", "sora-2");

/// The research agents' calls per second (both workflows together).
pub const RESEARCH_RATE: f64 = 10.0;
/// The research workflow whose prompts grow from [`PROMPTS_GROW_FROM`].
pub const GROWING_WORKFLOW: &str = "research-agent";
/// The research workflow that keeps its usual prompts.
pub const STEADY_WORKFLOW: &str = "research-digest";
/// The customer whose video jobs stall.
pub const STALLED_CUSTOMER: &str = "cust_stalled";
/// How many of its jobs stall (`pending_backlog.min_jobs` of `video-concurrent-jobs` is 5).
pub const STALLED_JOBS: u64 = 6;

/// When the scenarios run, as fractions of the duration.
const LOOP_FROM: f64 = 0.10;
const PROMPTS_GROW_FROM: f64 = 0.60;
const STALL_AT: f64 = 0.10;
const STALL_CLEARS_AT: f64 = 0.80;
const STORM_FROM: f64 = 0.55;
const STORM_UNTIL: f64 = 0.85;

/// The scripted run.
pub struct Scenario {
    background: Workload,
    random: StdRng,
    run_id: String,
    producer: String,
    models: Models,
    duration: Duration,
    rate: f64,
    /// Fractional requests owed per actor (rates are not multiples of the tick).
    owed: [f64; 5],
    sequence: u64,
    oversized_sent: bool,
    /// The stalled jobs' ids once submitted; emptied when they finish.
    stalled: Vec<String>,
    stall_cleared: bool,
}

impl Scenario {
    /// A run of `duration` with `rate` background events a second.
    pub fn new(
        seed: u64,
        run_id: &str,
        producer: &str,
        models: Models,
        duration: Duration,
        rate: u64,
    ) -> Scenario {
        Scenario {
            background: Workload::new(seed, run_id, producer)
                .with_models(models.clone())
                .with_async_jobs(),
            random: StdRng::seed_from_u64(seed ^ 0x5eed),
            run_id: run_id.to_owned(),
            producer: producer.to_owned(),
            models,
            duration,
            rate: rate as f64,
            owed: [0.0; 5],
            sequence: 0,
            oversized_sent: false,
            stalled: Vec::new(),
            stall_cleared: false,
        }
    }

    /// Whether `elapsed` is past the runaway loop's start.
    pub fn loop_started(&self, elapsed: Duration) -> bool {
        self.fraction(elapsed) >= LOOP_FROM
    }

    fn fraction(&self, elapsed: Duration) -> f64 {
        elapsed.as_secs_f64() / self.duration.as_secs_f64().max(0.001)
    }

    /// The requests of the tick `[elapsed - tick, elapsed)`, stamped `now`.
    pub fn tick(&mut self, elapsed: Duration, tick: Duration, now: DateTime<Utc>) -> Vec<Request> {
        let fraction = self.fraction(elapsed);
        let seconds = tick.as_secs_f64();
        let mut requests = Vec::new();
        for _ in 0..self.due(0, self.rate * seconds) {
            requests.push(Request {
                actor: Actor::Background,
                event: self.background.next_event(now),
            });
        }
        for _ in 0..self.due(1, LEGACY_RATE * seconds) {
            let event = self.legacy(now);
            requests.push(Request {
                actor: Actor::Legacy,
                event,
            });
        }
        if fraction >= LOOP_FROM {
            if !self.oversized_sent {
                // Once, as the loop starts: the agent pastes a whole corpus into its context.
                self.oversized_sent = true;
                let mut event = self.agent_call(now);
                event.input_tokens = OVERSIZED_INPUT_TOKENS;
                requests.push(Request {
                    actor: Actor::OversizedContext,
                    event,
                });
            }
            for _ in 0..self.due(2, LOOP_RATE * seconds) {
                let event = self.agent_call(now);
                requests.push(Request {
                    actor: Actor::RunawayLoop,
                    event,
                });
            }
        }
        for _ in 0..self.due(4, RESEARCH_RATE * seconds) {
            let event = self.research_call(now, fraction >= PROMPTS_GROW_FROM);
            requests.push(Request {
                actor: Actor::Research,
                event,
            });
        }
        if fraction >= STALL_AT && self.stalled.is_empty() && !self.stall_cleared {
            for _ in 0..STALLED_JOBS {
                let event = self.stalled_job(now, None);
                self.stalled.push(event.job_id.clone().unwrap_or_default());
                requests.push(Request {
                    actor: Actor::StalledVideo,
                    event,
                });
            }
        }
        if fraction >= STALL_CLEARS_AT && !self.stall_cleared {
            self.stall_cleared = true;
            for job_id in std::mem::take(&mut self.stalled) {
                let event = self.stalled_job(now, Some(job_id));
                requests.push(Request {
                    actor: Actor::StalledVideo,
                    event,
                });
            }
        }
        if (STORM_FROM..STORM_UNTIL).contains(&fraction) {
            for _ in 0..self.due(3, STORM_RATE * seconds) {
                let (primary, fallback) = self.storm_action(now);
                requests.push(Request {
                    actor: Actor::StormPrimary,
                    event: primary,
                });
                requests.push(Request {
                    actor: Actor::StormFallback,
                    event: fallback,
                });
            }
        }
        requests
    }

    /// Whole requests owed to `actor` after adding `amount`.
    fn due(&mut self, actor: usize, amount: f64) -> u64 {
        self.owed[actor] += amount;
        let whole = self.owed[actor].floor();
        self.owed[actor] -= whole;
        whole as u64
    }

    fn base(&mut self, now: DateTime<Utc>, tag: &str) -> UsageEvent {
        self.sequence += 1;
        let id = format!("{tag}_{}_{:08}", self.run_id, self.sequence);
        UsageEvent {
            producer: self.producer.clone(),
            request_id: format!("req_{id}"),
            action_id: format!("act_{id}"),
            labels: [("demo_run".to_owned(), self.run_id.clone())].into(),
            ..schemas::fixtures::text_event(&format!("evt_{id}"), now)
        }
    }

    /// A legacy promo-video client still on a retired video model, in prod.
    fn legacy(&mut self, now: DateTime<Utc>) -> UsageEvent {
        let mut event = self.base(now, "legacy");
        event.api_key_id = "key_creative_prod".to_owned();
        event.team = "creative".to_owned();
        event.workflow = "promo-video-legacy".to_owned();
        event.environment = "prod".to_owned();
        event.provider = DEPRECATED.0.to_owned();
        event.model = DEPRECATED.1.to_owned();
        event.endpoint = "video".to_owned();
        event.modality = Modality::Video;
        event.input_tokens = 0;
        event.output_tokens = 0;
        event.video_duration_ms = 8_000;
        event.video_resolution = Some("1280x720".to_owned());
        event.job_id = Some(format!("legacy_{}_{}", self.run_id, self.sequence));
        event.job_state = Some(schemas::JobState::Succeeded);
        event
    }

    /// A research agent's call: about 2,000 input tokens, all answered; with `grown`, the growing
    /// workflow sends its whole history again (eight times the prompt).
    fn research_call(&mut self, now: DateTime<Utc>, grown: bool) -> UsageEvent {
        let mut event = self.base(now, "research");
        let growing = self.random.random_bool(0.5);
        event.api_key_id = "key_research_prod".to_owned();
        event.team = "research".to_owned();
        event.workflow = if growing {
            GROWING_WORKFLOW
        } else {
            STEADY_WORKFLOW
        }
        .to_owned();
        event.environment = "prod".to_owned();
        event.provider = self.models.openai_text.provider.to_owned();
        event.model = self.models.openai_text.model.to_owned();
        event.input_tokens = self.random.random_range(2_000..2_200);
        if grown && growing {
            event.input_tokens *= 8;
        }
        event.output_tokens = self.random.random_range(300..500);
        event.accepted = Some(true);
        event
    }

    /// A video job of the stalled customer: submitted (`job_id` `None`), or finished.
    fn stalled_job(&mut self, now: DateTime<Utc>, job_id: Option<String>) -> UsageEvent {
        let mut event = self.base(now, "stalled");
        event.api_key_id = "key_creative_prod".to_owned();
        event.team = "creative".to_owned();
        event.workflow = "product-video".to_owned();
        event.environment = "prod".to_owned();
        event.customer_id = Some(STALLED_CUSTOMER.to_owned());
        event.provider = self.models.video.provider.to_owned();
        event.model = self.models.video.model.to_owned();
        event.endpoint = "video".to_owned();
        event.modality = Modality::Video;
        event.input_tokens = 0;
        event.output_tokens = 0;
        event.video_resolution = Some("1280x720".to_owned());
        event.accepted = None;
        match job_id {
            None => {
                event.job_id = Some(format!("stalled_{}_{}", self.run_id, self.sequence));
                event.job_state = Some(schemas::JobState::Submitted);
            }
            Some(job_id) => {
                event.job_id = Some(job_id);
                event.job_state = Some(schemas::JobState::Succeeded);
                event.video_duration_ms = 8_000;
            }
        }
        event
    }

    /// One turn of an agent stuck in a loop: a long uncached context, a short answer.
    fn agent_call(&mut self, now: DateTime<Utc>) -> UsageEvent {
        let mut event = self.base(now, "loop");
        event.api_key_id = LOOP_KEY.to_owned();
        event.team = "search".to_owned();
        event.workflow = "agent-loop".to_owned();
        event.environment = "staging".to_owned();
        event.user_id = Some("user_7".to_owned());
        event.provider = self.models.anthropic_text.provider.to_owned();
        event.model = self.models.anthropic_text.model.to_owned();
        event.endpoint = "messages".to_owned();
        event.input_tokens = self.random.random_range(11_000..13_000);
        event.output_tokens = self.random.random_range(600..1_000);
        event.accepted = Some(false);
        event
    }

    /// A support action during the storm: the primary attempt fails (5xx, nothing billed), the
    /// fallback attempt goes to the other provider.
    fn storm_action(&mut self, now: DateTime<Utc>) -> (UsageEvent, UsageEvent) {
        let mut primary = self.base(now, "storm");
        primary.api_key_id = "key_support_prod".to_owned();
        primary.team = "support".to_owned();
        primary.workflow = STORM_WORKFLOW.to_owned();
        primary.environment = "prod".to_owned();
        primary.customer_id = Some(format!("cust_{}", self.random.random_range(1..8)));
        primary.provider = self.models.openai_text.provider.to_owned();
        primary.model = self.models.openai_text.model.to_owned();
        primary.input_tokens = 0;
        primary.output_tokens = 0;
        primary.status = Status::ProviderError;
        primary.http_status = Some(503);
        primary.accepted = None;
        let mut fallback = primary.clone();
        fallback.event_id = format!("{}-fallback", primary.event_id);
        fallback.request_id = format!("{}-fallback", primary.request_id);
        fallback.attempt = 2;
        fallback.fallback_from_model = Some(primary.model.clone());
        fallback.provider = self.models.anthropic_text.provider.to_owned();
        fallback.model = self.models.anthropic_text.model.to_owned();
        fallback.endpoint = "messages".to_owned();
        fallback.input_tokens = self.random.random_range(4_000..8_000);
        fallback.output_tokens = self.random.random_range(300..700);
        fallback.status = Status::Ok;
        fallback.http_status = Some(200);
        fallback.accepted = Some(true);
        (primary, fallback)
    }
}
