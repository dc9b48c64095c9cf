//! Typed errors of the crate. Every variant is a configuration error: none is worth retrying.

use chrono::{DateTime, Utc};

/// Why a window specification or a campaign id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// Campaign ids are keys in ClickHouse and in window ids: 1 to 64 characters of
    /// `A-Z a-z 0-9 . _ -`.
    #[error("invalid campaign id {0:?}: expected 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    InvalidCampaignId(String),
    /// A campaign is the half-open interval `[start, end)`, so it needs `start < end`.
    #[error("campaign {id} is empty: start {start} is not before end {end}")]
    EmptyCampaign {
        /// The campaign.
        id: String,
        /// Its first instant.
        start: DateTime<Utc>,
        /// Its first instant after the campaign.
        end: DateTime<Utc>,
    },
    /// A campaign kind was given without the campaign's bounds (use [`crate::WindowSpec::campaign`]).
    #[error("window kind campaign:{0} needs the campaign's start and end")]
    CampaignWithoutBounds(String),
    /// Bounds were given for a calendar kind, which has none.
    #[error("window kind {0} is a calendar window: it takes no campaign, start or end")]
    BoundsOnCalendarKind(String),
    /// A window kind name that is not `minute`, `hour`, `day`, `week`, `month` or `campaign`.
    #[error("unknown window kind {0:?}: expected minute, hour, day, week, month or campaign")]
    UnknownKind(String),
}
