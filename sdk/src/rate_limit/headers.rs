//! What a decision tells the client: the IETF `RateLimit-Policy` /
//! `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers), the
//! widespread `X-RateLimit-*` ones and `Retry-After`.

use super::{Decision, Policy};
use std::borrow::Cow;

/// Set when the decision was made without the cache:
/// `fail-open; reason=cache-unavailable` (let through) or `fail-closed;
/// reason=…` (refused), the reason one of `cache-unavailable`,
/// `cache-timeout`, `cache-error`, `contended`.
pub const DEGRADED_HEADER: &str = "x-ratelimit-degraded";

/// The headers every response under `policy` carries: `ratelimit-policy`,
/// `ratelimit`, `x-ratelimit-limit`, `x-ratelimit-remaining`,
/// `x-ratelimit-reset`, and [`DEGRADED_HEADER`] when the cache was not
/// used. A denied request adds [`retry_after`].
///
/// ```
/// use edge_cache_sdk::rate_limit::{self, Policy};
/// use edge_cache_sdk::testing::MemoryCache;
///
/// let host = MemoryCache::default();
/// let policy = Policy { limit: 2, ..Policy::seed_default() };
/// let decision = rate_limit::check(&host, &host, "ip:10.0.0.1", &policy, 1, 1_700_000_040_000)?;
/// let headers = rate_limit::headers(&decision, &policy);
/// assert_eq!(headers[0], ("ratelimit-policy", "\"default\";q=2;w=60".into()));
/// assert_eq!(headers[1], ("ratelimit", "\"default\";r=1;t=60".into()));
/// assert_eq!(headers[3], ("x-ratelimit-remaining", "1".into()));
/// # Ok::<(), rate_limit::RateLimitError>(())
/// ```
pub fn headers(decision: &Decision, policy: &Policy) -> Vec<(&'static str, Cow<'static, str>)> {
    // Every response carries these, so they are put together by hand:
    // `format!` costs several times as much in a component.
    let mut digits = itoa::Buffer::new();
    let limit = digits.format(decision.limit).to_owned();
    let remaining = digits.format(decision.remaining).to_owned();
    let reset = digits.format(decision.reset_after_ms.div_ceil(1000)).to_owned();
    let name = policy.display_name();
    let window = digits.format(policy.window_seconds);
    let ratelimit_policy = ["\"", name, "\";q=", &limit, ";w=", window].concat();
    let ratelimit = ["\"", name, "\";r=", &remaining, ";t=", &reset].concat();
    let mut headers = Vec::with_capacity(6);
    headers.extend([
        ("ratelimit-policy", Cow::Owned(ratelimit_policy)),
        ("ratelimit", Cow::Owned(ratelimit)),
        ("x-ratelimit-limit", Cow::Owned(limit)),
        ("x-ratelimit-remaining", Cow::Owned(remaining)),
        ("x-ratelimit-reset", Cow::Owned(reset)),
    ]);
    if let Some(why) = &decision.degraded {
        let outcome = if decision.allowed { "fail-open" } else { "fail-closed" };
        headers.push((
            DEGRADED_HEADER,
            Cow::Owned([outcome, "; reason=", why.reason.as_str()].concat()),
        ));
    }
    headers
}

/// Whole seconds a denied client should wait (`Retry-After`): at least 1.
pub fn retry_after(decision: &Decision) -> u64 {
    decision.retry_after_ms.div_ceil(1000).max(1)
}
