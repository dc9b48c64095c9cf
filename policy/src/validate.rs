//! Checks that relate a record's fields to each other, and compilation into a [`Policy`].
//!
//! Each check reports the key it is about; [`Locator`] turns the key path into the key's line
//! and column (see [`crate::source_map`]). All checks of a policy run, so one load reports every
//! problem at once. Duplicate ids are checked across files by the loader.

use crate::dimension::Dimension;
use crate::error::LoadError;
use crate::glob::Glob;
use crate::policy::{Campaign, Filter, Policy, ValueSet, Window};
use crate::record::{ActionKind, Instant, PolicyRecord, WindowKind};
use crate::source_map::{Block, SourceMap};
use crate::threshold::Threshold;
use crate::unit::Unit;
use chrono::{DateTime, LocalResult, TimeZone, Utc};
use rust_decimal::Decimal;
use schemas::{Modality, Status};
use std::path::Path;
use std::sync::Arc;

/// Finds keys of one policy in its file.
pub(crate) struct Locator<'a> {
    /// The file, for messages.
    pub(crate) file: &'a Path,
    /// The file's text.
    pub(crate) map: &'a SourceMap<'a>,
    /// The policy's lines.
    pub(crate) block: Block,
}

impl Locator<'_> {
    /// An error at the key `path` (or its deepest existing parent).
    pub(crate) fn error(&self, path: &[&str], reason: impl Into<String>) -> LoadError {
        LoadError {
            file: self.file.to_path_buf(),
            position: Some(self.map.locate(self.block, path)),
            reason: reason.into(),
        }
    }
}

/// Validates a record and compiles its matchers.
pub(crate) fn compile(record: PolicyRecord, at: &Locator<'_>) -> Result<Policy, Vec<LoadError>> {
    let mut errors = Vec::new();
    check_identity(&record, at, &mut errors);
    let filters = compile_filters(&record, at, &mut errors);
    let group_by = compile_group_by(&record, at, &mut errors);
    let window = compile_window(&record, at, &mut errors);
    check_thresholds(&record, at, &mut errors);
    check_action(&record, at, &mut errors);
    check_optional_sections(&record, at, &mut errors);
    let allow_list = compile_allow_list(&record, at, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Policy {
        id: Arc::from(record.id.as_str()),
        definition: crate::policy::definition_of(&record),
        file: at.file.to_path_buf(),
        position: at.map.locate(at.block, &[]),
        record,
        window,
        filters,
        group_by,
        allow_list,
    })
}

/// `id`, owner and description.
fn check_identity(record: &PolicyRecord, at: &Locator<'_>, errors: &mut Vec<LoadError>) {
    let id_is_valid = !record.id.is_empty()
        && record
            .id
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "_-.".contains(character));
    if !id_is_valid {
        errors.push(at.error(
            &["id"],
            format!(
                "id {:?} must be non-empty and use only letters, digits, `_`, `-`, `.`",
                record.id
            ),
        ));
    }
    if record.owner.team.trim().is_empty() {
        errors.push(at.error(&["owner", "team"], "owner.team must not be empty"));
    }
    if record.owner.contact.trim().is_empty() {
        errors.push(at.error(&["owner", "contact"], "owner.contact must not be empty"));
    }
    if record.description.trim().is_empty() {
        errors.push(at.error(&["description"], "description must not be empty"));
    }
}

/// Environment, route and selector, merged into one filter list.
fn compile_filters(
    record: &PolicyRecord,
    at: &Locator<'_>,
    errors: &mut Vec<LoadError>,
) -> Vec<Filter> {
    let mut filters = Vec::new();
    let exact = |value: &str| ValueSet {
        exact: vec![value.to_owned()],
        globs: Vec::new(),
    };
    if let Some(environment) = &record.environment {
        if let Some(selected) = record.selector.get("environment") {
            if !selected.0.iter().any(|value| value == environment) {
                errors.push(at.error(
                    &["selector", "environment"],
                    format!(
                        "selector.environment {:?} excludes the policy's environment {environment:?}: \
                         the policy could never match",
                        selected.0
                    ),
                ));
            }
        }
        filters.push(Filter {
            dimension: Dimension::Environment,
            values: exact(environment),
        });
    }
    let route = &record.route;
    if let Some(provider) = &route.provider {
        filters.push(Filter {
            dimension: Dimension::Provider,
            values: exact(provider),
        });
    }
    if let Some(endpoint) = &route.endpoint {
        filters.push(Filter {
            dimension: Dimension::Endpoint,
            values: exact(endpoint),
        });
    }
    match (&route.model, &route.model_pattern) {
        (Some(_), Some(_)) => errors.push(at.error(
            &["route", "model_pattern"],
            "route.model and route.model_pattern are exclusive: keep one",
        )),
        (Some(model), None) => filters.push(Filter {
            dimension: Dimension::Model,
            values: exact(model),
        }),
        (None, Some(pattern)) => match Glob::new(pattern) {
            Ok(glob) => filters.push(Filter {
                dimension: Dimension::Model,
                values: ValueSet {
                    exact: Vec::new(),
                    globs: vec![glob],
                },
            }),
            Err(error) => errors.push(at.error(&["route", "model_pattern"], error.to_string())),
        },
        (None, None) => {}
    }
    for (key, values) in &record.selector {
        let path = ["selector", key.as_str()];
        let dimension = match key.parse::<Dimension>() {
            Ok(dimension) => dimension,
            Err(error) => {
                errors.push(at.error(&path, error.to_string()));
                continue;
            }
        };
        if values.0.is_empty() {
            errors.push(at.error(
                &path,
                format!("selector.{key} is an empty list: it would match nothing"),
            ));
            continue;
        }
        let mut set = ValueSet::default();
        for value in &values.0 {
            match &dimension {
                Dimension::Model if Glob::has_wildcard(value) => match Glob::new(value) {
                    Ok(glob) => set.globs.push(glob),
                    Err(error) => errors.push(at.error(&path, error.to_string())),
                },
                Dimension::Modality => match value.parse::<Modality>() {
                    Ok(_) => set.exact.push(value.clone()),
                    Err(error) => errors.push(at.error(&path, error.to_string())),
                },
                _ => set.exact.push(value.clone()),
            }
        }
        set.exact.sort();
        set.exact.dedup();
        filters.push(Filter {
            dimension,
            values: set,
        });
    }
    // Cheapest first so most events are rejected by a binary search on a fixed field.
    filters.sort_by_key(|filter| {
        (
            filter.values.cost(),
            matches!(filter.dimension, Dimension::Label(_)),
        )
    });
    filters
}

/// `group_by`: known dimensions, no repeats.
fn compile_group_by(
    record: &PolicyRecord,
    at: &Locator<'_>,
    errors: &mut Vec<LoadError>,
) -> Vec<(Dimension, String)> {
    let mut group_by: Vec<(Dimension, String)> = Vec::new();
    for name in &record.group_by {
        match name.parse::<Dimension>() {
            Ok(dimension) if group_by.iter().any(|(seen, _)| *seen == dimension) => {
                errors.push(at.error(&["group_by"], format!("group_by lists {name:?} twice")));
            }
            Ok(dimension) => group_by.push((dimension, name.clone())),
            Err(error) => errors.push(at.error(&["group_by"], format!("group_by: {error}"))),
        }
    }
    group_by
}

/// The window against the unit, and campaign bounds.
fn compile_window(
    record: &PolicyRecord,
    at: &Locator<'_>,
    errors: &mut Vec<LoadError>,
) -> Option<Window> {
    let unit = record.unit;
    if record.pending_backlog.is_some() && !unit.is_gauge() {
        errors.push(at.error(
            &["pending_backlog"],
            format!("pending_backlog applies to unit concurrent_jobs only, not {unit}"),
        ));
    }
    if record.max_job_age.is_some() && !unit.is_gauge() {
        errors.push(at.error(
            &["max_job_age"],
            format!("max_job_age applies to unit concurrent_jobs only, not {unit}"),
        ));
    }
    let Some(window) = &record.window else {
        if !unit.is_gauge() {
            errors.push(at.error(
                &["unit"],
                format!("unit {unit} is counted over a window: add `window` (kind: minute, hour, day, week, month or campaign)"),
            ));
        }
        return None;
    };
    if unit.is_gauge() {
        errors.push(at.error(
            &["window"],
            format!("unit {unit} is a gauge (jobs running now), it has no window: remove `window`"),
        ));
        return None;
    }
    let time_zone = window.time_zone.0;
    let campaign = match (window.kind, &window.campaign) {
        (WindowKind::Campaign, None) => {
            errors.push(at.error(
                &["window", "kind"],
                "window kind campaign needs `campaign` {name, start, end}",
            ));
            None
        }
        (WindowKind::Campaign, Some(campaign)) => {
            if campaign.name.trim().is_empty() {
                errors.push(at.error(
                    &["window", "campaign", "name"],
                    "campaign.name must not be empty",
                ));
            }
            let resolve = |instant: &Instant, key: &str, errors: &mut Vec<LoadError>| {
                resolve_instant(instant, time_zone).map_err(|reason| {
                    errors.push(at.error(&["window", "campaign", key], reason));
                })
            };
            let start = resolve(&campaign.start, "start", errors);
            let end = resolve(&campaign.end, "end", errors);
            match (start, end) {
                (Ok(start), Ok(end)) if end <= start => {
                    errors.push(at.error(
                        &["window", "campaign", "end"],
                        format!("campaign end {end} is not after its start {start}"),
                    ));
                    None
                }
                (Ok(start), Ok(end)) => Some(Campaign {
                    name: campaign.name.clone(),
                    start,
                    end,
                }),
                _ => None,
            }
        }
        (kind, Some(_)) => {
            errors.push(at.error(
                &["window", "campaign"],
                format!(
                    "`campaign` is only for window kind campaign, not {}",
                    kind.as_str()
                ),
            ));
            None
        }
        (_, None) => None,
    };
    Some(Window {
        kind: window.kind,
        time_zone,
        campaign,
    })
}

/// An instant in UTC; a local time must exist and be unambiguous in the time zone.
fn resolve_instant(instant: &Instant, time_zone: chrono_tz::Tz) -> Result<DateTime<Utc>, String> {
    match instant {
        Instant::WithOffset(instant) => Ok(instant.with_timezone(&Utc)),
        Instant::Local(local) => match time_zone.from_local_datetime(local) {
            LocalResult::Single(instant) => Ok(instant.with_timezone(&Utc)),
            LocalResult::Ambiguous(_, _) => Err(format!(
                "{local} happens twice in {} (clocks go back): give an offset",
                time_zone.name()
            )),
            LocalResult::None => Err(format!(
                "{local} does not exist in {} (clocks go forward): give an offset",
                time_zone.name()
            )),
        },
    }
}

/// `soft_alerts` and `notify.severity_by_threshold`.
fn check_thresholds(record: &PolicyRecord, at: &Locator<'_>, errors: &mut Vec<LoadError>) {
    let thresholds = &record.soft_alerts;
    let cap = record.hard_cap;
    let unit = record.unit.to_string();
    let mut wrong = false;
    for threshold in thresholds {
        let problem = match threshold {
            Threshold::Percent(percent) if !(1..=100).contains(percent) => Some(format!(
                "soft alert threshold {percent} is outside 1..=100 (percent of the hard cap)"
            )),
            Threshold::Percent(_) => None,
            Threshold::Amount {
                amount,
                unit: written,
            } => {
                let unit_matches = if written == "USD" {
                    record.unit == Unit::CostUsd
                } else {
                    *written == unit
                };
                if !unit_matches {
                    Some(format!(
                        "soft alert threshold {threshold} is not in the policy's unit {unit} \
                         (write \"$N\" for cost_usd, or \"N {unit}\")"
                    ))
                } else if amount.is_zero() {
                    Some(format!(
                        "soft alert threshold {threshold} must be above zero"
                    ))
                } else if *amount > cap {
                    Some(format!(
                        "soft alert threshold {threshold} is above the hard cap {} {unit}: it \
                         would never fire before the cap does",
                        cap.normalize()
                    ))
                } else {
                    None
                }
            }
        };
        if let Some(problem) = problem {
            errors.push(at.error(&["soft_alerts"], problem));
            wrong = true;
        }
    }
    // A threshold already wrong says nothing useful about the order.
    if let Some(pair) = thresholds
        .windows(2)
        .filter(|_| !wrong)
        .find(|pair| pair[1].level(cap) <= pair[0].level(cap))
    {
        errors.push(at.error(
            &["soft_alerts"],
            format!(
                "soft_alerts must be strictly increasing by the level each fires at, but {} ({} \
                 {unit}) follows {} ({} {unit})",
                pair[1],
                pair[1].level(cap).normalize(),
                pair[0],
                pair[0].level(cap).normalize()
            ),
        ));
    }
    if let Some(notify) = &record.notify {
        let percents: Vec<u8> = thresholds.iter().filter_map(Threshold::percent).collect();
        for threshold in notify.severity_by_threshold.keys() {
            if !percents.contains(threshold) {
                let key = threshold.to_string();
                errors.push(at.error(
                    &["notify", "severity_by_threshold", &key],
                    format!("severity_by_threshold names {threshold}, which is not in soft_alerts {percents:?}"),
                ));
            }
        }
    }
}

/// `action`: `degrade_to` exactly when degrading.
fn check_action(record: &PolicyRecord, at: &Locator<'_>, errors: &mut Vec<LoadError>) {
    let action = &record.action;
    match (action.kind, &action.degrade_to) {
        (ActionKind::Degrade, None) => errors.push(at.error(
            &["action", "kind"],
            "action kind degrade needs `degrade_to` (the route/model to switch to)",
        )),
        (ActionKind::Degrade, Some(target)) if target.trim().is_empty() => {
            errors.push(at.error(&["action", "degrade_to"], "degrade_to must not be empty"))
        }
        (ActionKind::Block | ActionKind::AlertOnly, Some(_)) => errors.push(at.error(
            &["action", "degrade_to"],
            "degrade_to is only for action kind degrade",
        )),
        _ => {}
    }
}

/// `approval`, `retry_policy`, `anomaly`.
fn check_optional_sections(record: &PolicyRecord, at: &Locator<'_>, errors: &mut Vec<LoadError>) {
    if let Some(approval) = &record.approval {
        if approval.approvers.is_empty() {
            errors.push(at.error(
                &["approval", "approvers"],
                "approval.approvers must name at least one approver",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for approver in &approval.approvers {
            if approver.name.trim().is_empty() {
                errors.push(at.error(
                    &["approval", "approvers"],
                    "an approver's name must not be empty",
                ));
            } else if !names.insert(approver.name.as_str()) {
                errors.push(at.error(
                    &["approval", "approvers"],
                    format!("approver {} is listed twice", approver.name),
                ));
            }
        }
        if approval.max_raise.absolute_for(Decimal::ONE_HUNDRED) <= Decimal::ZERO {
            errors.push(at.error(
                &["approval", "max_raise"],
                "approval.max_raise must be more than 0",
            ));
        }
    }
    if let Some(retry) = &record.retry_policy {
        if retry.max_attempts_per_action == 0 {
            errors.push(at.error(
                &["retry_policy", "max_attempts_per_action"],
                "max_attempts_per_action must be at least 1 (the primary attempt)",
            ));
        }
        if retry.non_retryable.contains(&Status::Ok) {
            errors.push(at.error(
                &["retry_policy", "non_retryable"],
                "non_retryable lists `ok`, which is not a failure",
            ));
        }
    }
    if let Some(admission) = &record.admission {
        for (field, problem) in admission.problems() {
            errors.push(at.error(&["admission", field], problem));
        }
        if admission.estimated_cost && record.unit != crate::Unit::CostUsd {
            errors.push(at.error(
                &["admission", "estimated_cost"],
                format!(
                    "admission.estimated_cost compares a cost with what is left, so the policy's unit must be cost_usd, not {}",
                    record.unit
                ),
            ));
        }
    }
    if let Some(anomaly) = &record.anomaly {
        if anomaly.z_threshold <= Decimal::ZERO {
            errors.push(at.error(
                &["anomaly", "z_threshold"],
                "anomaly.z_threshold must be more than 0",
            ));
        }
        for metric in anomaly.metrics.iter().flatten() {
            if !crate::record::ANOMALY_METRICS.contains(&metric.as_str()) {
                errors.push(at.error(
                    &["anomaly", "metrics"],
                    format!(
                        "anomaly.metrics lists {metric:?}, which is not one of {}",
                        crate::record::ANOMALY_METRICS.join(", ")
                    ),
                ));
            }
        }
        if anomaly.metrics.as_ref().is_some_and(Vec::is_empty) {
            errors.push(at.error(
                &["anomaly", "metrics"],
                "anomaly.metrics is empty: leave it out to watch every ratio, or set enabled: false",
            ));
        }
    }
    if let Some(shared) = &record.shared_key {
        if shared.max_workflows == Some(0) || shared.max_teams == Some(0) {
            errors.push(at.error(
                &["shared_key"],
                "shared_key limits must be at least 1 (a key used at all serves one)",
            ));
        }
    }
    if let Some(backlog) = &record.pending_backlog {
        if backlog.min_jobs == 0 {
            errors.push(at.error(
                &["pending_backlog", "min_jobs"],
                "pending_backlog.min_jobs must be at least 1",
            ));
        }
    }
}

/// `model_rules.allow_list` globs.
fn compile_allow_list(
    record: &PolicyRecord,
    at: &Locator<'_>,
    errors: &mut Vec<LoadError>,
) -> Vec<Glob> {
    let Some(rules) = &record.model_rules else {
        return Vec::new();
    };
    let mut globs = Vec::new();
    for pattern in &rules.allow_list {
        match Glob::new(pattern) {
            Ok(glob) => globs.push(glob),
            Err(error) => errors.push(at.error(&["model_rules", "allow_list"], error.to_string())),
        }
    }
    globs
}
