//! [`WindowSpec`]: which windows a quota counts in, and [`WindowSpec::window_of`].

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::calendar::{calendar_window, CalendarUnit};
use crate::error::WindowError;
use crate::kind::{CampaignId, WindowKind};
use crate::window::Window;

/// A window kind in a time zone; for a campaign, also its UTC bounds.
///
/// Configuration form (`deny_unknown_fields`; `time_zone` defaults to `UTC`):
/// `{ kind = "day", time_zone = "America/New_York" }` or
/// `{ kind = "campaign", campaign = "launch", start = "2026-05-01T00:00:00Z", end = "2026-06-01T00:00:00Z" }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "WindowSpecConfig", into = "WindowSpecConfig")]
pub struct WindowSpec {
    /// Which windows.
    kind: WindowKind,
    /// The zone whose local calendar the windows follow (informational for campaigns).
    time_zone: Tz,
    /// `[start, end)` of a campaign, always `Some` for [`WindowKind::Campaign`] and `None` else,
    /// with `start < end`.
    campaign_bounds: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl WindowSpec {
    /// A calendar window spec (minute, hour, day, week or month) in `time_zone`. A campaign kind
    /// is refused: it needs bounds, use [`WindowSpec::campaign`].
    pub fn calendar(kind: WindowKind, time_zone: Tz) -> Result<Self, WindowError> {
        if let WindowKind::Campaign(id) = kind {
            return Err(WindowError::CampaignWithoutBounds(id.to_string()));
        }
        Ok(Self {
            kind,
            time_zone,
            campaign_bounds: None,
        })
    }

    /// A campaign: the single window `[start, end)`; needs `start < end`.
    pub fn campaign(
        id: CampaignId,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        time_zone: Tz,
    ) -> Result<Self, WindowError> {
        if start >= end {
            return Err(WindowError::EmptyCampaign {
                id: id.to_string(),
                start,
                end,
            });
        }
        Ok(Self {
            kind: WindowKind::Campaign(id),
            time_zone,
            campaign_bounds: Some((start, end)),
        })
    }

    /// The kind of window.
    pub fn kind(&self) -> &WindowKind {
        &self.kind
    }

    /// The time zone of the windows.
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// `(start, end)` of a campaign; `None` for calendar kinds.
    pub fn campaign_bounds(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        self.campaign_bounds
    }

    /// The window containing `occurred_at` (event time): `start <= occurred_at < end`.
    ///
    /// `None` for a campaign when `occurred_at` is outside `[start, end)`, and for calendar kinds
    /// only within about a month of the limits of `chrono`'s dates (around ±262,000 years).
    /// Costs a few time zone look-ups (150–200 ns, `docs/windows.md`); on a stream, use a
    /// [`crate::WindowCache`].
    pub fn window_of(&self, occurred_at: DateTime<Utc>) -> Option<Window> {
        window_of(
            &self.kind,
            self.time_zone,
            self.campaign_bounds,
            occurred_at,
        )
    }
}

/// The window of `kind` containing `occurred_at`; shared with [`Window::next`].
pub(crate) fn window_of(
    kind: &WindowKind,
    time_zone: Tz,
    campaign_bounds: Option<(DateTime<Utc>, DateTime<Utc>)>,
    occurred_at: DateTime<Utc>,
) -> Option<Window> {
    let unit = match kind {
        WindowKind::Minute => CalendarUnit::Minute,
        WindowKind::Hour => CalendarUnit::Hour,
        WindowKind::Day => CalendarUnit::Day,
        WindowKind::Week => CalendarUnit::Week,
        WindowKind::Month => CalendarUnit::Month,
        WindowKind::Campaign(_) => {
            let (start, end) = campaign_bounds?;
            return (start <= occurred_at && occurred_at < end)
                .then(|| Window::campaign(kind.clone(), time_zone, start, end));
        }
    };
    calendar_window(unit, time_zone, occurred_at)
        .map(|computed| Window::calendar(kind.clone(), time_zone, computed))
}

/// The configuration form of a [`WindowSpec`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSpecConfig {
    /// `minute`, `hour`, `day`, `week`, `month` or `campaign`.
    kind: String,
    /// IANA zone name; calendar windows follow its local calendar.
    #[serde(default = "utc")]
    time_zone: Tz,
    /// The campaign id, for `kind = "campaign"` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    campaign: Option<CampaignId>,
    /// The campaign's first instant (inclusive), for `kind = "campaign"` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<DateTime<Utc>>,
    /// The first instant after the campaign (exclusive), for `kind = "campaign"` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<DateTime<Utc>>,
}

fn utc() -> Tz {
    Tz::UTC
}

impl TryFrom<WindowSpecConfig> for WindowSpec {
    type Error = WindowError;

    fn try_from(config: WindowSpecConfig) -> Result<Self, Self::Error> {
        if config.kind == "campaign" {
            let id = config
                .campaign
                .ok_or_else(|| WindowError::CampaignWithoutBounds(String::new()))?;
            return match (config.start, config.end) {
                (Some(start), Some(end)) => Self::campaign(id, start, end, config.time_zone),
                _ => Err(WindowError::CampaignWithoutBounds(id.to_string())),
            };
        }
        let kind: WindowKind = config.kind.parse()?;
        if config.campaign.is_some() || config.start.is_some() || config.end.is_some() {
            return Err(WindowError::BoundsOnCalendarKind(kind.to_string()));
        }
        Self::calendar(kind, config.time_zone)
    }
}

impl From<WindowSpec> for WindowSpecConfig {
    fn from(spec: WindowSpec) -> Self {
        let (campaign, start, end) = match (spec.kind, spec.campaign_bounds) {
            (WindowKind::Campaign(id), Some((start, end))) => (Some(id), Some(start), Some(end)),
            (kind, _) => {
                return Self {
                    kind: kind.name().to_owned(),
                    time_zone: spec.time_zone,
                    campaign: None,
                    start: None,
                    end: None,
                }
            }
        };
        Self {
            kind: "campaign".to_owned(),
            time_zone: spec.time_zone,
            campaign,
            start,
            end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_form_round_trips_and_is_checked() {
        let day: WindowSpec =
            serde_json::from_str(r#"{"kind":"day","time_zone":"America/New_York"}"#).unwrap();
        assert_eq!(
            day,
            WindowSpec::calendar(WindowKind::Day, chrono_tz::America::New_York).unwrap()
        );
        let campaign: WindowSpec = serde_json::from_str(
            r#"{"kind":"campaign","campaign":"launch","start":"2026-05-01T00:00:00Z","end":"2026-06-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(campaign.time_zone(), Tz::UTC);
        for spec in [day, campaign] {
            let text = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<WindowSpec>(&text).unwrap(), spec);
        }
        for bad in [
            r#"{"kind":"fortnight"}"#,
            r#"{"kind":"day","start":"2026-05-01T00:00:00Z"}"#,
            r#"{"kind":"day","timezone":"UTC"}"#,
            r#"{"kind":"campaign","campaign":"launch","start":"2026-05-01T00:00:00Z"}"#,
            r#"{"kind":"campaign","campaign":"x","start":"2026-05-01T00:00:00Z","end":"2026-05-01T00:00:00Z"}"#,
        ] {
            assert!(
                serde_json::from_str::<WindowSpec>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn calendar_refuses_a_campaign_kind() {
        let kind = WindowKind::Campaign(CampaignId::new("launch").unwrap());
        assert!(WindowSpec::calendar(kind, Tz::UTC).is_err());
    }
}
