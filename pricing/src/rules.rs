//! Configurable pricing choices: how the project's image tiers map to the catalog's quality rows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Choices the catalog does not make for us. Deserializable from service config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingRules {
    /// Image tier (`draft`, `preview`, `edit`, `final`) → catalog qualities to try, in order, as
    /// the first segment of a quality row `<quality>/<size>/<model>` (with the model row's provider
    /// prefix, e.g. `azure/high/1024-x-1024/gpt-image-1`). Default: draft → low, standard;
    /// preview → medium, standard; final → high, hd; edit → standard. (`standard` and `hd` are the
    /// qualities of DALL·E-style rows.) A tier not in the table is `Unpriced`.
    pub image_tiers: BTreeMap<String, Vec<String>>,
    /// The `<size>` segment used to find quality rows, as the catalog spells it; usage events do
    /// not carry the image size. Default `1024-x-1024`.
    pub default_image_size: String,
}

impl Default for PricingRules {
    fn default() -> Self {
        let table = [
            ("draft", &["low", "standard"][..]),
            ("preview", &["medium", "standard"][..]),
            ("final", &["high", "hd"][..]),
            ("edit", &["standard"][..]),
        ];
        PricingRules {
            image_tiers: table
                .iter()
                .map(|(tier, qualities)| {
                    (
                        (*tier).to_owned(),
                        qualities
                            .iter()
                            .map(|quality| (*quality).to_owned())
                            .collect(),
                    )
                })
                .collect(),
            default_image_size: "1024-x-1024".to_owned(),
        }
    }
}
