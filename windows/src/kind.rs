//! What a window is: [`WindowKind`] and the [`CampaignId`] of campaign windows.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::WindowError;

/// The longest accepted campaign id, so window ids stay compact keys.
const CAMPAIGN_ID_MAX_CHARS: usize = 64;

/// The id of a campaign: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
///
/// Shared (`Arc<str>`), so cloning a campaign [`crate::Window`] on the hot path does not allocate.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CampaignId(Arc<str>);

impl CampaignId {
    /// Checks and wraps a campaign id.
    pub fn new(id: impl Into<String>) -> Result<Self, WindowError> {
        let id: String = id.into();
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if id.is_empty() || id.len() > CAMPAIGN_ID_MAX_CHARS || !id.chars().all(allowed) {
            return Err(WindowError::InvalidCampaignId(id));
        }
        Ok(Self(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CampaignId {
    type Error = WindowError;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

impl From<CampaignId> for String {
    fn from(id: CampaignId) -> Self {
        id.0.as_ref().to_owned()
    }
}

impl fmt::Display for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The kind of a window: a calendar period in a time zone, or a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// A local clock minute (`hh:mm:00` to the next minute).
    Minute,
    /// A local clock hour (`hh:00` to the next hour); see the crate docs for DST.
    Hour,
    /// A local calendar day, 00:00 to the next day's 00:00 (23 or 25 hours on DST days).
    Day,
    /// An ISO week: Monday 00:00 local to the next Monday 00:00.
    Week,
    /// A calendar month: the 1st 00:00 local to the next month's 1st 00:00.
    Month,
    /// One explicit interval `[start, end)` of UTC instants, given by the [`crate::WindowSpec`].
    Campaign(CampaignId),
}

impl WindowKind {
    /// The kind's name as used in window ids and configuration: `minute`, `hour`, `day`, `week`,
    /// `month` or `campaign`.
    pub fn name(&self) -> &'static str {
        match self {
            WindowKind::Minute => "minute",
            WindowKind::Hour => "hour",
            WindowKind::Day => "day",
            WindowKind::Week => "week",
            WindowKind::Month => "month",
            WindowKind::Campaign(_) => "campaign",
        }
    }

    /// Whether this is a calendar kind (every instant has a window), not a campaign.
    pub fn is_calendar(&self) -> bool {
        !matches!(self, WindowKind::Campaign(_))
    }
}

impl fmt::Display for WindowKind {
    /// `day`, …; a campaign shows as `campaign:<id>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowKind::Campaign(id) => write!(f, "campaign:{id}"),
            other => f.write_str(other.name()),
        }
    }
}

impl FromStr for WindowKind {
    type Err = WindowError;

    /// Parses what [`fmt::Display`] writes: `minute` … `month`, or `campaign:<id>`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "minute" => Ok(WindowKind::Minute),
            "hour" => Ok(WindowKind::Hour),
            "day" => Ok(WindowKind::Day),
            "week" => Ok(WindowKind::Week),
            "month" => Ok(WindowKind::Month),
            _ => match text.strip_prefix("campaign:") {
                Some(id) => Ok(WindowKind::Campaign(CampaignId::new(id)?)),
                None => Err(WindowError::UnknownKind(text.to_owned())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_ids_are_checked() {
        assert!(CampaignId::new("spring-2026_v1.2").is_ok());
        for bad in ["", "has space", "a@b", "a:b", &"x".repeat(65)] {
            assert!(CampaignId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn kinds_round_trip_through_text() {
        let campaign = WindowKind::Campaign(CampaignId::new("launch").unwrap());
        for kind in [
            WindowKind::Minute,
            WindowKind::Hour,
            WindowKind::Day,
            WindowKind::Week,
            WindowKind::Month,
            campaign,
        ] {
            assert_eq!(kind.to_string().parse::<WindowKind>().unwrap(), kind);
        }
        assert!("fortnight".parse::<WindowKind>().is_err());
    }
}
