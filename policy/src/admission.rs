//! Request-time admission rules (`admission:` in a policy): limits on what a request declares,
//! checked by gateways before the request is sent, so no money is spent on a request the policy
//! would never allow. They apply to every request the policy's environment, route and selector
//! match (not per scope: a rule is the same for every scope).
//!
//! ```yaml
//! admission:
//!   max_input_tokens: 32000          # the approved context size
//!   max_output_tokens: 4096          # per request
//!   image_tiers: [draft, preview]    # previews never run on a final-quality route
//!   max_video_seconds: 8
//!   max_video_resolution: 720p       # the shorter side: 480p, 720p, 1080p, 2160p (or 4k)
//!   estimated_cost: true             # refuse what may cost more than the scope has left
//!   hint: "use the summaries-lite workflow, or ask #ml-platform for an approved raise"
//! ```
//!
//! A request is refused when it **declares** more than a limit (or a tier not listed); what it
//! does not declare is not checked here (the spend caps still count it afterwards).

use std::fmt;
use std::str::FromStr;

use schemas::ImageTier;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The rules of one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionRules {
    /// Largest input (prompt and context) a request may declare, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    /// Largest output a request may ask for (`max_tokens`), in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// Image quality tiers a request may ask for; absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_tiers: Option<Vec<ImageTier>>,
    /// Longest video a request may ask for, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_video_seconds: Option<u64>,
    /// Highest video resolution a request may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_video_resolution: Option<Resolution>,
    /// Refuse a request whose estimated maximum cost (declared input tokens and max output
    /// tokens, image tier, video seconds and resolution, priced from the catalog) exceeds what
    /// its scope has left under the policy's limit (`cost_usd` policies; checked by the
    /// decision sidecar, which follows the totals).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated_cost: bool,
    /// What a refusal tells the user to do instead (a cheaper route, an upgrade path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// What a request declares about itself, before it is sent. Each field is checked only when
/// given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Declared {
    /// Input tokens (prompt and context).
    pub input_tokens: Option<u64>,
    /// The output limit asked for (`max_tokens`).
    pub max_output_tokens: Option<u64>,
    /// The image quality tier asked for.
    pub image_tier: Option<ImageTier>,
    /// The video length asked for, in seconds.
    pub video_seconds: Option<u64>,
    /// The video resolution asked for.
    pub video_resolution: Option<Resolution>,
}

impl Declared {
    /// Whether the request declares anything the rules look at.
    pub fn is_empty(&self) -> bool {
        *self == Declared::default()
    }
}

/// The estimated-cost rule's refusal: the request may cost `estimate`, more than the `remaining`
/// of the scope's `limit`.
pub fn estimated_cost_refusal(
    estimate: rust_decimal::Decimal,
    remaining: rust_decimal::Decimal,
) -> Option<Refusal> {
    (estimate > remaining).then(|| Refusal {
        rule: "estimated_cost",
        limit: format!("{} USD left", remaining.normalize()),
        declared: format!("up to {} USD", estimate.normalize()),
    })
}

/// Why a request is refused: the rule, its limit and what was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The rule's name as written in the policy (`max_input_tokens` …).
    pub rule: &'static str,
    /// The limit, as written.
    pub limit: String,
    /// What the request declared.
    pub declared: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} asked for {}, over the limit of {}",
            self.rule, self.declared, self.limit
        )
    }
}

impl AdmissionRules {
    /// The first rule `declared` breaks, in the order of the fields.
    pub fn check(&self, declared: &Declared) -> Result<(), Refusal> {
        fn over(rule: &'static str, limit: Option<u64>, asked: Option<u64>) -> Result<(), Refusal> {
            match (limit, asked) {
                (Some(limit), Some(asked)) if asked > limit => Err(Refusal {
                    rule,
                    limit: limit.to_string(),
                    declared: asked.to_string(),
                }),
                _ => Ok(()),
            }
        }
        over(
            "max_input_tokens",
            self.max_input_tokens,
            declared.input_tokens,
        )?;
        over(
            "max_output_tokens",
            self.max_output_tokens,
            declared.max_output_tokens,
        )?;
        if let (Some(tiers), Some(tier)) = (&self.image_tiers, declared.image_tier) {
            if !tiers.contains(&tier) {
                return Err(Refusal {
                    rule: "image_tiers",
                    limit: tiers
                        .iter()
                        .map(|tier| tier.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    declared: tier.as_str().to_owned(),
                });
            }
        }
        over(
            "max_video_seconds",
            self.max_video_seconds,
            declared.video_seconds,
        )?;
        if let (Some(limit), Some(asked)) = (self.max_video_resolution, declared.video_resolution) {
            if asked > limit {
                return Err(Refusal {
                    rule: "max_video_resolution",
                    limit: limit.to_string(),
                    declared: asked.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Rules that can never be met, as (field, problem).
    pub(crate) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        for (field, value) in [
            ("max_input_tokens", self.max_input_tokens),
            ("max_output_tokens", self.max_output_tokens),
            ("max_video_seconds", self.max_video_seconds),
        ] {
            if value == Some(0) {
                problems.push((field, format!("admission.{field} must be more than 0")));
            }
        }
        if self.image_tiers.as_ref().is_some_and(Vec::is_empty) {
            problems.push((
                "image_tiers",
                "admission.image_tiers is empty: no image could be made; leave it out to allow \
                 every tier"
                    .to_owned(),
            ));
        }
        if self
            .hint
            .as_deref()
            .is_some_and(|hint| hint.trim().is_empty())
        {
            problems.push(("hint", "admission.hint is empty".to_owned()));
        }
        problems
    }
}

/// A video resolution by its shorter side in pixels, written `720p` (also `4k` for 2160p, or
/// `1280x720`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resolution(pub u32);

impl FromStr for Resolution {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        let lines = if text == "4k" {
            Some(2160)
        } else if let Some(lines) = text.strip_suffix('p') {
            lines.parse().ok()
        } else if let Some((width, height)) = text.split_once('x') {
            match (width.parse::<u32>(), height.parse::<u32>()) {
                (Ok(width), Ok(height)) => Some(width.min(height)),
                _ => None,
            }
        } else {
            None
        };
        match lines {
            Some(lines) if lines > 0 => Ok(Resolution(lines)),
            _ => Err(format!(
                "{text:?} is not a video resolution (720p, 1080p, 4k or 1280x720)"
            )),
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}p", self.0)
    }
}

impl Serialize for Resolution {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Resolution {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> AdmissionRules {
        AdmissionRules {
            max_input_tokens: Some(32_000),
            max_output_tokens: Some(4_096),
            image_tiers: Some(vec![ImageTier::Draft, ImageTier::Preview]),
            max_video_seconds: Some(8),
            max_video_resolution: Some(Resolution(720)),
            estimated_cost: false,
            hint: None,
        }
    }

    #[test]
    fn each_rule_refuses_only_what_is_declared_over_it() {
        let rules = rules();
        assert_eq!(rules.check(&Declared::default()), Ok(()));
        let at_limits = Declared {
            input_tokens: Some(32_000),
            max_output_tokens: Some(4_096),
            image_tier: Some(ImageTier::Preview),
            video_seconds: Some(8),
            video_resolution: Some(Resolution(720)),
        };
        assert_eq!(rules.check(&at_limits), Ok(()));
        let refused = |declared: Declared| rules.check(&declared).unwrap_err();
        assert_eq!(
            refused(Declared {
                input_tokens: Some(32_001),
                ..at_limits
            })
            .to_string(),
            "max_input_tokens asked for 32001, over the limit of 32000"
        );
        assert_eq!(
            refused(Declared {
                max_output_tokens: Some(8_192),
                ..at_limits
            })
            .rule,
            "max_output_tokens"
        );
        let tier = refused(Declared {
            image_tier: Some(ImageTier::Final),
            ..at_limits
        });
        assert_eq!(
            (tier.rule, tier.limit.as_str()),
            ("image_tiers", "draft, preview")
        );
        assert_eq!(
            refused(Declared {
                video_seconds: Some(9),
                ..at_limits
            })
            .rule,
            "max_video_seconds"
        );
        assert_eq!(
            refused(Declared {
                video_resolution: Some("1080p".parse().unwrap()),
                ..at_limits
            })
            .to_string(),
            "max_video_resolution asked for 1080p, over the limit of 720p"
        );
    }

    #[test]
    fn resolutions_parse_in_the_usual_spellings() {
        assert_eq!("720p".parse(), Ok(Resolution(720)));
        assert_eq!("4K".parse(), Ok(Resolution(2160)));
        assert_eq!("1920x1080".parse(), Ok(Resolution(1080)));
        assert!("hd".parse::<Resolution>().is_err());
        assert!("0p".parse::<Resolution>().is_err());
    }
}

#[cfg(test)]
mod loading {
    use crate::PolicySet;

    fn policy(admission: &str) -> String {
        format!(
            r#"
id: summaries
owner: {{team: ml, contact: ml@example.com}}
description: summaries spend per day
unit: cost_usd
selector: {{workflow: summaries}}
window: {{kind: day}}
hard_cap: 100
action: {{kind: block}}
admission:
{admission}
"#
        )
    }

    #[test]
    fn a_policy_with_admission_rules_loads_and_exposes_them() {
        let set = PolicySet::from_str(
            "p.yaml",
            &policy(
                "  max_input_tokens: 32000\n  image_tiers: [draft, preview]\n  \
                 max_video_resolution: 720p\n  hint: use summaries-lite",
            ),
        )
        .unwrap();
        let rules = set.get("summaries").unwrap().admission().unwrap();
        assert_eq!(rules.max_input_tokens, Some(32_000));
        assert_eq!(rules.max_video_resolution, Some(super::Resolution(720)));
        assert_eq!(rules.hint.as_deref(), Some("use summaries-lite"));
    }

    #[test]
    fn impossible_or_misspelled_rules_are_load_errors_at_their_key() {
        let zero = PolicySet::from_str("p.yaml", &policy("  max_output_tokens: 0"))
            .unwrap_err()
            .to_string();
        assert!(
            zero.contains("admission.max_output_tokens must be more than 0"),
            "{zero}"
        );
        assert!(zero.contains("p.yaml:11:3"), "{zero}");
        let empty = PolicySet::from_str("p.yaml", &policy("  image_tiers: []"))
            .unwrap_err()
            .to_string();
        assert!(empty.contains("admission.image_tiers is empty"), "{empty}");
        let typo = PolicySet::from_str("p.yaml", &policy("  max_input_token: 5"))
            .unwrap_err()
            .to_string();
        assert!(typo.contains("max_input_token"), "{typo}");
        let tier = PolicySet::from_str("p.yaml", &policy("  image_tiers: [ultra]"))
            .unwrap_err()
            .to_string();
        assert!(tier.contains("ultra"), "{tier}");
        let resolution = PolicySet::from_str("p.yaml", &policy("  max_video_resolution: hd"))
            .unwrap_err()
            .to_string();
        assert!(
            resolution.contains("not a video resolution"),
            "{resolution}"
        );
    }

    #[test]
    fn the_estimated_cost_rule_refuses_more_than_is_left_and_needs_a_cost_unit() {
        let dec = |text: &str| text.parse::<rust_decimal::Decimal>().unwrap();
        assert_eq!(super::estimated_cost_refusal(dec("0.1"), dec("0.1")), None);
        let refusal = super::estimated_cost_refusal(dec("0.135"), dec("0.100")).unwrap();
        assert_eq!(
            refusal.to_string(),
            "estimated_cost asked for up to 0.135 USD, over the limit of 0.1 USD left"
        );
        let set = PolicySet::from_str("p.yaml", &policy("  estimated_cost: true")).unwrap();
        assert!(
            set.get("summaries")
                .unwrap()
                .admission()
                .unwrap()
                .estimated_cost
        );
        let requests = policy("  estimated_cost: true").replace("unit: cost_usd", "unit: requests");
        let error = PolicySet::from_str("p.yaml", &requests)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("admission.estimated_cost") && error.contains("not requests"),
            "{error}"
        );
    }
}
