//! Rate limiting on the shared cache.
//!
//! Fixed window: one counter per caller and window, the window aligned to the
//! wall clock so every instance agrees on its bounds. A check is one atomic
//! `incr-by` that also gives a new counter its expiry, so a counter can never
//! be left without a TTL.

use crate::host::Cache;

/// The longest accepted caller key, in bytes.
pub const MAX_KEY_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    FixedWindow,
}

/// `limit` units of cost per `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub algorithm: Algorithm,
    pub limit: u32,
    pub window_seconds: u32,
}

impl Policy {
    /// The seeds' default: 60 requests a minute.
    pub const DEFAULT: Policy = Policy {
        algorithm: Algorithm::FixedWindow,
        limit: 60,
        window_seconds: 60,
    };

    fn validate(&self) -> Result<(), RateLimitError> {
        if self.limit == 0 {
            return Err(RateLimitError::InvalidPolicy(
                "limit must be at least 1".into(),
            ));
        }
        if self.window_seconds == 0 {
            return Err(RateLimitError::InvalidPolicy(
                "window must be at least 1 second".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub reset_after_ms: u64,
    pub retry_after_ms: u64,
    /// Why the cache was not consulted, when it was not.
    pub degraded: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitError {
    InvalidPolicy(String),
    InvalidKey(String),
    InvalidCost(String),
}

/// Counts `cost` for `key` at `now_ms` (milliseconds since the Unix epoch).
pub fn check(
    cache: &impl Cache,
    key: &str,
    policy: &Policy,
    cost: u32,
    now_ms: u64,
) -> Result<Decision, RateLimitError> {
    policy.validate()?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(RateLimitError::InvalidKey(format!(
            "a key has 1 to {MAX_KEY_LEN} bytes, not {}",
            key.len()
        )));
    }
    if cost == 0 || cost > policy.limit {
        return Err(RateLimitError::InvalidCost(format!(
            "cost must be between 1 and the limit ({}), not {cost}",
            policy.limit
        )));
    }
    match policy.algorithm {
        Algorithm::FixedWindow => Ok(fixed_window(cache, key, policy, cost, now_ms)),
    }
}

fn fixed_window(
    cache: &impl Cache,
    key: &str,
    policy: &Policy,
    cost: u32,
    now_ms: u64,
) -> Decision {
    let window_ms = u64::from(policy.window_seconds) * 1000;
    let window = now_ms / window_ms;
    let reset_after_ms = (window + 1) * window_ms - now_ms;
    // The caller key is the hash tag, so all of a caller's counters share one
    // Redis Cluster slot.
    let counter = format!("rl:{{{key}}}:fw:{}:{window}", policy.window_seconds);
    // One extra second keeps the counter alive across small clock skew
    // between instances at the window's end.
    let ttl = u64::from(policy.window_seconds) + 1;
    match cache.incr_by(&counter, i64::from(cost), ttl) {
        Ok(count) => {
            let count = u64::try_from(count).unwrap_or(0);
            let allowed = count <= u64::from(policy.limit);
            let remaining = u64::from(policy.limit).saturating_sub(count);
            Decision {
                allowed,
                limit: policy.limit,
                remaining: u32::try_from(remaining).unwrap_or(policy.limit),
                reset_after_ms,
                retry_after_ms: if allowed { 0 } else { reset_after_ms },
                degraded: None,
            }
        }
        Err(error) => Decision {
            // Fail open: the limiter protects the origin, but an outage of the
            // cache must not become an outage of the function.
            allowed: true,
            limit: policy.limit,
            remaining: policy.limit - cost,
            reset_after_ms,
            retry_after_ms: 0,
            degraded: Some(error.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::CacheError;
    use crate::host::memory::MemoryCache;

    const POLICY: Policy = Policy {
        algorithm: Algorithm::FixedWindow,
        limit: 3,
        window_seconds: 10,
    };

    #[test]
    fn allows_exactly_the_limit_per_window() {
        let cache = MemoryCache::default();
        let remaining: Vec<_> = (0..5)
            .map(|_| check(&cache, "ip:1", &POLICY, 1, 1_000).unwrap())
            .map(|d| (d.allowed, d.remaining))
            .collect();
        assert_eq!(
            remaining,
            [(true, 2), (true, 1), (true, 0), (false, 0), (false, 0)]
        );
    }

    #[test]
    fn one_cache_call_per_check() {
        let cache = MemoryCache::default();
        check(&cache, "ip:1", &POLICY, 1, 0).unwrap();
        assert_eq!(cache.calls.get(), 1);
    }

    #[test]
    fn reset_and_retry_are_exact_at_window_edges() {
        let cache = MemoryCache::default();
        // First millisecond of a window: the whole window remains.
        let first = check(&cache, "k", &POLICY, 3, 20_000).unwrap();
        assert_eq!(
            (first.allowed, first.reset_after_ms, first.retry_after_ms),
            (true, 10_000, 0)
        );
        // Last millisecond of the same window: denied, retry in 1 ms.
        let last = check(&cache, "k", &POLICY, 1, 29_999).unwrap();
        assert_eq!(
            (last.allowed, last.reset_after_ms, last.retry_after_ms),
            (false, 1, 1)
        );
        // The next window starts fresh.
        let next = check(&cache, "k", &POLICY, 1, 30_000).unwrap();
        assert_eq!(
            (next.allowed, next.remaining, next.reset_after_ms),
            (true, 2, 10_000)
        );
    }

    #[test]
    fn counters_get_a_ttl_covering_their_window() {
        let cache = MemoryCache::default();
        check(&cache, "k", &POLICY, 1, 0).unwrap();
        assert_eq!(cache.ttl_of("rl:{k}:fw:10:0"), Some(Some(11)));
    }

    #[test]
    fn keys_are_separate() {
        let cache = MemoryCache::default();
        check(&cache, "a", &POLICY, 3, 0).unwrap();
        assert!(!check(&cache, "a", &POLICY, 1, 0).unwrap().allowed);
        assert!(check(&cache, "b", &POLICY, 1, 0).unwrap().allowed);
    }

    #[test]
    fn cost_counts_in_units() {
        let cache = MemoryCache::default();
        assert_eq!(check(&cache, "k", &POLICY, 2, 0).unwrap().remaining, 1);
        let denied = check(&cache, "k", &POLICY, 2, 0).unwrap();
        assert_eq!((denied.allowed, denied.remaining), (false, 0));
    }

    #[test]
    fn bad_input_is_rejected_before_counting() {
        let cache = MemoryCache::default();
        let zero_limit = Policy { limit: 0, ..POLICY };
        let zero_window = Policy {
            window_seconds: 0,
            ..POLICY
        };
        assert!(matches!(
            check(&cache, "k", &zero_limit, 1, 0),
            Err(RateLimitError::InvalidPolicy(_))
        ));
        assert!(matches!(
            check(&cache, "k", &zero_window, 1, 0),
            Err(RateLimitError::InvalidPolicy(_))
        ));
        assert!(matches!(
            check(&cache, "", &POLICY, 1, 0),
            Err(RateLimitError::InvalidKey(_))
        ));
        assert!(matches!(
            check(&cache, &"k".repeat(257), &POLICY, 1, 0),
            Err(RateLimitError::InvalidKey(_))
        ));
        assert!(matches!(
            check(&cache, "k", &POLICY, 0, 0),
            Err(RateLimitError::InvalidCost(_))
        ));
        assert!(matches!(
            check(&cache, "k", &POLICY, 4, 0),
            Err(RateLimitError::InvalidCost(_))
        ));
        assert_eq!(cache.calls.get(), 0);
    }

    #[test]
    fn cache_failure_fails_open_and_says_so() {
        let cache = MemoryCache::default();
        *cache.failure.borrow_mut() = Some(CacheError::Timeout);
        let decision = check(&cache, "k", &POLICY, 1, 0).unwrap();
        assert!(decision.allowed);
        assert_eq!(decision.degraded.as_deref(), Some("cache timed out"));
    }

    #[test]
    fn a_non_counter_value_fails_open() {
        let cache = MemoryCache::default();
        cache.insert_raw("rl:{k}:fw:10:0", b"not a number");
        let decision = check(&cache, "k", &POLICY, 1, 0).unwrap();
        assert!(decision.allowed && decision.degraded.is_some());
    }
}
