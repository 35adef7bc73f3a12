//! How long cache-aside entries live: the settings of the SDK's `remember`
//! and of the profile lookup, which reads them from `PROFILE_*` variables.

/// How long an entry is fresh, by default, in seconds.
pub const DEFAULT_TTL_SECONDS: u64 = 600;

/// How long past freshness an entry may be served while refreshed, by
/// default, in seconds.
pub const DEFAULT_STALE_SECONDS: u64 = 60;

/// How long an absence is remembered, by default, in seconds.
pub const DEFAULT_NEGATIVE_TTL_SECONDS: u64 = 30;

/// How long a miss waits for another request's fill, by default, in
/// milliseconds.
pub const DEFAULT_FILL_WAIT_MS: u64 = 1000;

/// The lifetimes of cache-aside entries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// How long an entry is fresh, in seconds (at least 1).
    pub ttl_seconds: u64,
    /// How long past freshness an entry may still be served while one
    /// request refreshes it (stale-while-revalidate), in seconds.
    pub stale_seconds: u64,
    /// How long an absence is remembered, in seconds (at least 1).
    pub negative_ttl_seconds: u64,
    /// How long a request that missed waits for another request's fill
    /// before asking the source itself, in milliseconds.
    pub fill_wait_ms: u64,
    /// XFetch's β: 0 disables early refresh, 1 is the usual setting, larger
    /// values refresh earlier.
    pub early_refresh_beta: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ttl_seconds: DEFAULT_TTL_SECONDS,
            stale_seconds: DEFAULT_STALE_SECONDS,
            negative_ttl_seconds: DEFAULT_NEGATIVE_TTL_SECONDS,
            fill_wait_ms: DEFAULT_FILL_WAIT_MS,
            early_refresh_beta: 1.0,
        }
    }
}
