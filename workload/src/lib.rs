//! A deterministic synthetic workload: a small gateway fleet of several teams, keys and environments
//! sending text (with cache hits), embeddings, images by tier, async video jobs, audio and batch
//! events, with some retries and fallbacks. Every model is a row of the embedded price catalog.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use schemas::{ImageTier, JobState, Modality, Status, UsageEvent};

/// One team of the simulated fleet and what it mostly calls.
struct Team {
    name: &'static str,
    workflows: &'static [&'static str],
    keys: &'static [&'static str],
}

const TEAMS: &[Team] = &[
    Team {
        name: "search",
        workflows: &["answer-synthesis", "query-rewrite"],
        keys: &["key_search_prod", "key_search_staging"],
    },
    Team {
        name: "support",
        workflows: &["ticket-triage", "kb-answer"],
        keys: &["key_support_prod"],
    },
    Team {
        name: "creative",
        workflows: &["ad-images", "promo-video"],
        keys: &["key_creative_prod", "key_creative_staging"],
    },
    Team {
        name: "voice",
        workflows: &["call-transcripts"],
        keys: &["key_voice_prod"],
    },
];

/// A route: provider, model and endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Provider.
    pub provider: &'static str,
    /// Model as billed.
    pub model: &'static str,
}

/// The models the workload calls, per kind of traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Models {
    /// OpenAI chat.
    pub openai_text: Route,
    /// Anthropic chat (and the other side of text fallbacks).
    pub anthropic_text: Route,
    /// Embeddings.
    pub embedding: Route,
    /// Batch jobs.
    pub batch: Route,
    /// Image generation (priced by tier where the catalog has tier rows).
    pub image: Route,
    /// Async video jobs.
    pub video: Route,
    /// Audio transcription.
    pub audio: Route,
}

impl Models {
    /// The models of the first version of the workload (benchmarks and tests rely on them; the
    /// embedded sample catalog prices all of them).
    pub fn classic() -> Models {
        Models {
            openai_text: Route {
                provider: "openai",
                model: "gpt-4o",
            },
            anthropic_text: Route {
                provider: "anthropic",
                model: "claude-sonnet-4-5",
            },
            embedding: Route {
                provider: "openai",
                model: "text-embedding-3-small",
            },
            batch: Route {
                provider: "gemini",
                model: "gemini-2.5-pro",
            },
            image: Route {
                provider: "openai",
                model: "gpt-image-1.5",
            },
            video: Route {
                provider: "openai",
                model: "sora-2",
            },
            audio: Route {
                provider: "openai",
                model: "whisper-1",
            },
        }
    }

    /// For each kind of traffic, the first candidate `catalog` prices that is neither deprecated
    /// on `day` nor a preview, so production traffic stays clear of the model-lifecycle rules
    /// whatever the date (the candidates end with models the catalog gives no retirement date).
    pub fn current(catalog: &pricing::Catalog, day: NaiveDate) -> Models {
        let pick = |candidates: &[Route]| -> Route {
            candidates
                .iter()
                .find(|route| {
                    catalog
                        .lookup(route.provider, route.model)
                        .is_some_and(|entry| !entry.is_preview && !entry.is_deprecated_on(day))
                })
                .unwrap_or(&candidates[candidates.len() - 1])
                .clone()
        };
        let route = |provider, model| Route { provider, model };
        Models {
            openai_text: pick(&[route("openai", "gpt-5.4"), route("openai", "gpt-6-luna")]),
            anthropic_text: pick(&[route("anthropic", "claude-sonnet-4-6")]),
            embedding: pick(&[route("openai", "text-embedding-3-small")]),
            batch: pick(&[route("openai", "gpt-5.4"), route("openai", "gpt-6-luna")]),
            image: pick(&[
                route("openai", "gpt-image-1.5"),
                route("gemini", "imagen-3.0-generate-001"),
            ]),
            video: pick(&[route("dashscope", "wan3.0-video")]),
            audio: pick(&[
                route("openai", "whisper-1"),
                route("openai", "gpt-transcribe"),
            ]),
        }
    }
}

/// Generates the demo's events; the same seed gives the same workload.
pub struct Workload {
    random: StdRng,
    run_id: String,
    producer: String,
    sequence: u64,
    models: Models,
    /// Video jobs are submitted, then finish later (`Some`), or are one finished event (`None`).
    jobs: Option<VecDeque<(DateTime<Utc>, UsageEvent)>>,
}

impl Workload {
    pub fn new(seed: u64, run_id: &str, producer: &str) -> Self {
        Self {
            random: StdRng::seed_from_u64(seed),
            run_id: run_id.to_owned(),
            producer: producer.to_owned(),
            sequence: 0,
            models: Models::classic(),
            jobs: None,
        }
    }

    /// Calls `models` instead of the classic ones.
    pub fn with_models(mut self, models: Models) -> Self {
        self.models = models;
        self
    }

    /// Video jobs as a provider runs them: a `submitted` event, then a `succeeded` one (which
    /// carries the billed seconds) two to eight seconds later.
    pub fn with_async_jobs(mut self) -> Self {
        self.jobs = Some(VecDeque::new());
        self
    }

    /// Video jobs submitted and not finished yet.
    pub fn jobs_in_flight(&self) -> usize {
        self.jobs.as_ref().map_or(0, VecDeque::len)
    }

    /// The next billable attempt, stamped `now`.
    pub fn next_event(&mut self, now: DateTime<Utc>) -> UsageEvent {
        if let Some(jobs) = &mut self.jobs {
            if jobs.front().is_some_and(|(due, _)| *due <= now) {
                if let Some((_, mut finished)) = jobs.pop_front() {
                    finished.occurred_at = now;
                    return finished;
                }
            }
        }
        self.sequence += 1;
        let team = &TEAMS[self.random.random_range(0..TEAMS.len())];
        let key = team.keys[self.random.random_range(0..team.keys.len())];
        let environment = if key.ends_with("staging") {
            "staging"
        } else {
            "prod"
        };
        let workflow = team.workflows[self.random.random_range(0..team.workflows.len())];
        let mut event = self.base_event(now, team.name, key, environment, workflow);
        match team.name {
            "creative" if workflow == "promo-video" => self.video(&mut event),
            "creative" => self.image(&mut event),
            "voice" => self.audio(&mut event),
            _ => match self.random.random_range(0..10) {
                0 => self.embedding(&mut event),
                1 => self.batch(&mut event),
                _ => self.text(&mut event),
            },
        }
        if event.job_id.is_some() {
            // Video and batch jobs: with async jobs, the submission now and this finish later.
            if let Some(submitted) = self.submit(&event, now) {
                return submitted;
            }
        }
        event
    }

    fn base_event(
        &mut self,
        now: DateTime<Utc>,
        team: &str,
        key: &str,
        environment: &str,
        workflow: &str,
    ) -> UsageEvent {
        let sequence = self.sequence;
        UsageEvent {
            producer: self.producer.clone(),
            request_id: format!("req_{}_{sequence}", self.run_id),
            action_id: format!("act_{}_{sequence}", self.run_id),
            api_key_id: key.to_owned(),
            team: team.to_owned(),
            workflow: workflow.to_owned(),
            environment: environment.to_owned(),
            user_id: Some(format!("user_{}", self.random.random_range(1..40))),
            customer_id: Some(format!("cust_{}", self.random.random_range(1..8))),
            input_tokens: 0,
            output_tokens: 0,
            accepted: Some(true),
            latency_ms: Some(self.random.random_range(200..4_000)),
            labels: BTreeMap::from([("demo_run".to_owned(), self.run_id.clone())]),
            ..schemas::fixtures::text_event(&format!("evt_{}_{sequence:08}", self.run_id), now)
        }
    }

    /// With async jobs, the `submitted` event (nothing billed yet) of the finished `event`, which
    /// is queued.
    fn submit(&mut self, event: &UsageEvent, now: DateTime<Utc>) -> Option<UsageEvent> {
        let jobs = self.jobs.as_mut()?;
        let mut submitted = event.clone();
        submitted.event_id = format!("{}-submitted", event.event_id);
        submitted.request_id = format!("{}-submitted", event.request_id);
        submitted.job_state = Some(JobState::Submitted);
        submitted.video_duration_ms = 0;
        submitted.input_tokens = 0;
        submitted.output_tokens = 0;
        submitted.cached_input_tokens = 0;
        submitted.accepted = None;
        let due = now + TimeDelta::milliseconds(self.random.random_range(2_000..8_000));
        jobs.push_back((due, event.clone()));
        jobs.make_contiguous().sort_by_key(|(due, _)| *due);
        Some(submitted)
    }

    fn set_route(event: &mut UsageEvent, route: &Route) {
        event.provider = route.provider.to_owned();
        event.model = route.model.to_owned();
    }

    fn text(&mut self, event: &mut UsageEvent) {
        let anthropic = self.random.random_bool(0.4);
        let (primary, other) = if anthropic {
            (&self.models.anthropic_text, &self.models.openai_text)
        } else {
            (&self.models.openai_text, &self.models.anthropic_text)
        };
        let (primary, other) = (primary.clone(), other.clone());
        Self::set_route(event, &primary);
        if anthropic {
            event.endpoint = "messages".to_owned();
        }
        event.input_tokens = self.random.random_range(500..12_000);
        // Agents re-send their long system prompt: most input is a cache hit.
        event.cached_input_tokens = event.input_tokens * self.random.random_range(0..80) / 100;
        event.output_tokens = self.random.random_range(50..1_500);
        if self.random.random_bool(0.08) {
            // A retry after a rate limit, or a fallback to the other provider.
            event.attempt = 2;
            if self.random.random_bool(0.5) {
                event.fallback_from_model = Some(other.model.to_owned());
            }
        }
        if self.random.random_bool(0.03) {
            event.status = Status::RateLimited;
            event.http_status = Some(429);
            event.retry_after_ms = Some(1_000);
            event.output_tokens = 0;
            event.accepted = None;
        }
    }

    fn embedding(&mut self, event: &mut UsageEvent) {
        let route = self.models.embedding.clone();
        Self::set_route(event, &route);
        event.endpoint = "embeddings".to_owned();
        event.modality = Modality::Embedding;
        event.input_tokens = self.random.random_range(100..8_000);
        event.accepted = None;
    }

    fn batch(&mut self, event: &mut UsageEvent) {
        let route = self.models.batch.clone();
        Self::set_route(event, &route);
        event.endpoint = "batch".to_owned();
        event.modality = Modality::Batch;
        event.input_tokens = self.random.random_range(10_000..120_000);
        event.output_tokens = self.random.random_range(1_000..20_000);
        event.job_id = Some(format!("batch_{}_{}", self.run_id, self.sequence));
        event.job_state = Some(JobState::Succeeded);
    }

    fn image(&mut self, event: &mut UsageEvent) {
        let route = self.models.image.clone();
        Self::set_route(event, &route);
        event.endpoint = "images".to_owned();
        event.modality = Modality::Image;
        event.images = self.random.random_range(1..5);
        let tiers = [
            ImageTier::Draft,
            ImageTier::Draft,
            ImageTier::Preview,
            ImageTier::Final,
        ];
        event.image_tier = Some(tiers[self.random.random_range(0..tiers.len())]);
        event.accepted = Some(self.random.random_bool(0.6));
    }

    fn video(&mut self, event: &mut UsageEvent) {
        let route = self.models.video.clone();
        Self::set_route(event, &route);
        event.endpoint = "video".to_owned();
        event.modality = Modality::Video;
        event.video_duration_ms = self.random.random_range(4..13) * 1_000;
        event.video_resolution = Some("1280x720".to_owned());
        event.job_id = Some(format!("video_{}_{}", self.run_id, self.sequence));
        event.job_state = Some(JobState::Succeeded);
    }

    fn audio(&mut self, event: &mut UsageEvent) {
        let route = self.models.audio.clone();
        Self::set_route(event, &route);
        event.endpoint = "audio".to_owned();
        event.modality = Modality::Audio;
        event.audio_duration_ms = self.random.random_range(5_000..600_000);
        event.accepted = None;
    }
}
