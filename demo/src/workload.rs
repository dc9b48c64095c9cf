//! A deterministic synthetic workload: a small gateway fleet of several teams, keys and environments
//! sending text (with cache hits), embeddings, images by tier, async video jobs, audio and batch
//! events, with some retries and fallbacks. Every model is a row of the embedded price catalog.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
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
        workflows: &["ticket-triage", "reply-draft"],
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

/// Generates the demo's events; the same seed gives the same workload.
pub struct Workload {
    random: StdRng,
    run_id: String,
    producer: String,
    sequence: u64,
}

impl Workload {
    pub fn new(seed: u64, run_id: &str, producer: &str) -> Self {
        Self {
            random: StdRng::seed_from_u64(seed),
            run_id: run_id.to_owned(),
            producer: producer.to_owned(),
            sequence: 0,
        }
    }

    /// The next billable attempt, stamped `now`.
    pub fn next_event(&mut self, now: DateTime<Utc>) -> UsageEvent {
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

    fn text(&mut self, event: &mut UsageEvent) {
        let anthropic = self.random.random_bool(0.4);
        if anthropic {
            event.provider = "anthropic".to_owned();
            event.model = "claude-sonnet-4-5".to_owned();
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
                event.fallback_from_model = Some(
                    if anthropic {
                        "gpt-4o"
                    } else {
                        "claude-sonnet-4-5"
                    }
                    .to_owned(),
                );
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
        event.model = "text-embedding-3-small".to_owned();
        event.endpoint = "embeddings".to_owned();
        event.modality = Modality::Embedding;
        event.input_tokens = self.random.random_range(100..8_000);
        event.accepted = None;
    }

    fn batch(&mut self, event: &mut UsageEvent) {
        event.provider = "gemini".to_owned();
        event.model = "gemini-2.5-pro".to_owned();
        event.endpoint = "batch".to_owned();
        event.modality = Modality::Batch;
        event.input_tokens = self.random.random_range(10_000..120_000);
        event.output_tokens = self.random.random_range(1_000..20_000);
        event.job_id = Some(format!("batch_{}_{}", self.run_id, self.sequence));
        event.job_state = Some(JobState::Succeeded);
    }

    fn image(&mut self, event: &mut UsageEvent) {
        event.model = "gpt-image-1.5".to_owned();
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
        event.model = "sora-2".to_owned();
        event.endpoint = "video".to_owned();
        event.modality = Modality::Video;
        event.video_duration_ms = self.random.random_range(4..13) * 1_000;
        event.video_resolution = Some("1280x720".to_owned());
        event.job_id = Some(format!("video_{}_{}", self.run_id, self.sequence));
        event.job_state = Some(JobState::Succeeded);
    }

    fn audio(&mut self, event: &mut UsageEvent) {
        event.model = "whisper-1".to_owned();
        event.endpoint = "audio".to_owned();
        event.modality = Modality::Audio;
        event.audio_duration_ms = self.random.random_range(5_000..600_000);
        event.accepted = None;
    }
}
