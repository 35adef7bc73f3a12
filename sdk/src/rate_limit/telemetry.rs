//! Where decisions are counted: `edge:cache/telemetry`.

use super::Decision;

/// Tells the host about each rate limit decision, where it is made, so the
/// host counts decisions made without the cache apart from counted ones (a
/// response's status cannot tell them apart). Report every check that
/// decides a request; a peek decides nothing.
///
/// [`Host`](crate::Host) reports through `edge:cache/telemetry`; the
/// in-memory host keeps the outcomes for tests to look at.
pub trait Telemetry {
    /// Reports one decision.
    fn report(&self, decision: &Decision);
}
