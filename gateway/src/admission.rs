//! [`Admission`]: the policies' request-time admission rules ([`policy::admission`]), checked
//! per request before it is sent. Pure, no IO.
//!
//! A policy's rules apply to every request its environment, route and selector match (the
//! request's attributes read as an event's dimensions; a request whose `modality` is not one of
//! the contract's is read as `text`). Policies are checked in id order; the first rule broken
//! refuses, naming the policy, the rule, its limit and what the request declared.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use policy::admission::{Declared, Refusal};
use policy::{EventDims, Policy, PolicySet};
use schemas::Modality;

use crate::RequestAttributes;

/// The policies that have admission rules.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    policies: Vec<Policy>,
}

/// Why a request may not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionRefusal {
    /// The policy whose rule refuses.
    pub policy_id: Arc<str>,
    /// The rule, its limit and what was declared.
    pub refusal: Refusal,
    /// What the policy tells the user to do instead.
    pub hint: Option<String>,
}

impl AdmissionRefusal {
    /// The reason to show the user.
    pub fn reason(&self) -> String {
        let mut reason = format!(
            "policy {} refuses this request before it is sent: {}",
            self.policy_id, self.refusal
        );
        if let Some(hint) = &self.hint {
            reason.push_str(". ");
            reason.push_str(hint);
        }
        reason
    }
}

impl Admission {
    /// The admission rules of `policies`.
    pub fn new(policies: &PolicySet) -> Admission {
        let mut policies: Vec<Policy> = policies
            .policies()
            .iter()
            .filter(|policy| policy.admission().is_some())
            .cloned()
            .collect();
        policies.sort_by(|a, b| a.id().cmp(b.id()));
        Admission { policies }
    }

    /// Whether no policy has admission rules.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The first rule `request`, declaring `declared`, breaks; `None` when it may be sent.
    pub fn check(
        &self,
        request: &RequestAttributes<'_>,
        declared: &Declared,
    ) -> Option<AdmissionRefusal> {
        if self.policies.is_empty() || declared.is_empty() {
            return None;
        }
        with_event_dims(request, |event| {
            self.policies.iter().find_map(|policy| {
                let rules = policy.admission()?;
                if !policy.matches(event) {
                    return None;
                }
                let refusal = rules.check(declared).err()?;
                Some(AdmissionRefusal {
                    policy_id: Arc::from(policy.id()),
                    refusal,
                    hint: rules.hint.clone(),
                })
            })
        })
    }
}

/// Lends `request` as the policy crate's [`EventDims`] (what policies match and scope events by)
/// to `f`: the labels are copied into the map `EventDims` reads; an unknown modality reads as
/// text.
pub fn with_event_dims<R>(
    request: &RequestAttributes<'_>,
    f: impl FnOnce(&EventDims<'_>) -> R,
) -> R {
    let labels: BTreeMap<String, String> = request
        .labels
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    let event = EventDims {
        api_key_id: request.api_key_id,
        team: request.team,
        user_id: request.user_id,
        customer_id: request.customer_id,
        workflow: request.workflow,
        environment: request.environment,
        provider: request.provider,
        model: request.model,
        endpoint: request.endpoint,
        modality: Modality::from_str(request.modality).unwrap_or(Modality::Text),
        labels: &labels,
    };
    f(&event)
}

/// A request's maximum cost as it declares it (input tokens and max output tokens, an image of
/// the declared tier, video seconds and resolution), priced from `catalog` for its provider,
/// model, endpoint and modality, exactly as the event will be priced; `None` when it declares
/// none of these or the catalog cannot price it (an unknown model, a missing price).
pub fn estimated_cost(
    catalog: &pricing::Catalog,
    request: &RequestAttributes<'_>,
    declared: &Declared,
) -> Option<rust_decimal::Decimal> {
    if declared.is_empty() {
        return None;
    }
    let count =
        |value: Option<u64>| value.map_or(0, |value| i64::try_from(value).unwrap_or(i64::MAX));
    let input = pricing::PricingInput {
        model: request.model.to_owned(),
        provider: request.provider.to_owned(),
        endpoint: request.endpoint.to_owned(),
        modality: request.modality.to_owned(),
        input_tokens: count(declared.input_tokens),
        output_tokens: count(declared.max_output_tokens),
        images: i32::from(declared.image_tier.is_some()),
        image_tier: declared.image_tier.map(|tier| tier.as_str().to_owned()),
        video_duration_ms: count(declared.video_seconds).saturating_mul(1000),
        video_resolution: declared
            .video_resolution
            .map(|resolution| resolution.to_string()),
        ..pricing::PricingInput::default()
    };
    match catalog.price(&input) {
        pricing::PriceOutcome::Priced { cost_usd, .. } => Some(cost_usd),
        pricing::PriceOutcome::Unpriced { .. } => None,
    }
}
