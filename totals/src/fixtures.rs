//! Policy fixtures for tests of this crate and of the services built on it (not for production
//! use; hidden from the docs).

/// Two policies an ordinary prod chat event matches, and a gauge.
pub const POLICIES: &str = r#"
- id: team-model-daily-cost
  owner: {team: platform, contact: p@example.com}
  description: cost per team and model per New York day
  environment: prod
  unit: cost_usd
  group_by: [team, model]
  window: {kind: day, time_zone: America/New_York}
  hard_cap: 100
  action: {kind: alert_only}
- id: key-monthly-requests
  owner: {team: platform, contact: p@example.com}
  description: requests per key and user per month
  unit: requests
  group_by: [api_key_id, user_id]
  window: {kind: month}
  hard_cap: 1000000
  action: {kind: alert_only}
- id: staging-only
  owner: {team: platform, contact: p@example.com}
  description: never matches prod
  environment: staging
  unit: requests
  window: {kind: hour}
  hard_cap: 10
  action: {kind: alert_only}
- id: video-concurrency
  owner: {team: platform, contact: p@example.com}
  description: a gauge
  unit: concurrent_jobs
  hard_cap: 5
  action: {kind: alert_only}
"#;
