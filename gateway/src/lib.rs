//! Gateway enforcement client: obeys the alerter's block/allow/degrade decisions.
//!
//! - [`view`]: [`DecisionView`], the decisions in force and the per-request [`DecisionView::check`]
//!   (pure, allocation-free, well under a microsecond).
//! - [`follow`]: following a compacted topic from its beginning on a thread (control, totals).
//! - [`follower`]: [`Gateway`] and its follower of the control topic, which reads the compacted control
//!   topic from the beginning into a shared view and applies the [`FailureMode`] while the view is
//!   not trustworthy (not caught up yet, or the topic unreachable for too long).
//! - [`admission`]: [`Admission`], the policies' request-time admission rules (context size,
//!   output limit, image tiers, video length and resolution) checked before a request is sent.
//! - [`error`]: [`GatewayError`], with `is_retryable`.
//!
//! It depends on the lean client layer (`quotaflow-client`: Kafka settings, retry rules), never on
//! the service runtime `infra`, so a gateway embedding it links no HTTP server, ClickHouse client,
//! metrics exporter or config loader (`tests/dependency_tree.rs` checks it).
//!
//! ```no_run
//! use gateway::{Gateway, GatewayConfig, RequestAttributes, Verdict};
//!
//! let gateway = Gateway::start(GatewayConfig::default()).expect("valid config");
//! let request = RequestAttributes { team: "search", model: "gpt-4o", ..Default::default() };
//! match gateway.check(&request) {
//!     Verdict::Allow => { /* forward as asked */ }
//!     Verdict::Degrade { to, .. } => { /* forward to `to` */ let _ = to; }
//!     Verdict::Block { reason, .. } => { /* refuse, showing `reason` */ let _ = reason; }
//! }
//! gateway.shutdown();
//! ```

pub mod admission;
pub mod error;
pub mod follow;
pub mod follower;
pub mod scopes;
pub mod view;

pub use admission::{Admission, AdmissionRefusal};
pub use error::GatewayError;
pub use follower::{ControlApplier, FailureMode, Gateway, GatewayConfig};
pub use scopes::{DecisionLookup, Scopes};
pub use view::{ApplyOutcome, DecisionView, InForce, RequestAttributes, Verdict};
