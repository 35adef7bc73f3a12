//! Rate limiting on the shared cache: fixed window, sliding window, GCRA.
//!
//! Every algorithm is exact under concurrency and never lets a denied
//! request consume quota:
//! - fixed window: one `incr-by-bounded` (the counter cannot pass the limit);
//! - sliding window: read the previous window's counter, then one
//!   `incr-by-bounded` on the current one with the budget that leaves;
//! - GCRA: read the theoretical arrival time (TAT), then `compare-and-swap`;
//!   a conflict returns the winner's value, so a retry costs one round trip,
//!   and retries are bounded.
//!
//! All keys of one caller share the hash tag `{key}`, so they live in one
//! Redis Cluster slot. Time comes in as `now_ms` (wall clock, milliseconds),
//! so every edge is testable.
//!
//! A denial is kept in the host's penalty box with what the cache held (a
//! [`Snapshot`]), until the decision can change or one window has passed.
//! Further checks decide from it without the cache while it still denies
//! them: the cache's state only moves towards denial meanwhile (counters in
//! a window only grow, a TAT only advances), so a denial from the snapshot is
//! one the cache would give, unless the state was reset, deleted or evicted
//! elsewhere, which this host learns when the entry ends. A `reset` through
//! this host releases the entry at once.

mod headers;
mod telemetry;

use crate::host::{Cache, CacheError, CasOutcome, Held, PenaltyBox};
pub use edge_cache_contract::policy::{Algorithm, FailMode, Policy};
pub use headers::{DEGRADED_HEADER, headers, retry_after};
pub use telemetry::Telemetry;

/// The longest accepted caller key, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// The longest accepted policy name.
pub const MAX_NAME_LEN: usize = 64;

/// How many compare-and-swap rounds a GCRA check may take. Each lost round
/// means another request was allowed meanwhile, so a request that loses this
/// many times is denied: more than any burst up to this size was spent.
pub const MAX_CAS_ATTEMPTS: u32 = 64;

/// Checks that a policy can be enforced, before any I/O.
fn validate_policy(policy: &Policy) -> Result<(), RateLimitError> {
    let invalid = |why: &str| Err(RateLimitError::InvalidPolicy(why.to_owned()));
    if policy.limit == 0 {
        return invalid("limit must be at least 1");
    }
    if policy.window_seconds == 0 {
        return invalid("window must be at least 1 second");
    }
    if policy.name.len() > MAX_NAME_LEN
        || !policy
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    {
        return invalid("a policy name has at most 64 characters of a-z 0-9 . _ -");
    }
    if let Algorithm::Gcra { burst } = policy.algorithm {
        if burst == Some(0) {
            return invalid("burst must be at least 1");
        }
        if emission_interval_us(policy) == 0 {
            return invalid("GCRA supports at most 1,000,000 units per second");
        }
    }
    Ok(())
}

/// The answer to a check (`edge:cache/rate-limit`'s `decision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The policy's limit.
    pub limit: u32,
    /// Units of cost still available.
    pub remaining: u32,
    /// Milliseconds until the quota is whole again.
    pub reset_after_ms: u64,
    /// When denied, milliseconds until the same cost can be allowed.
    pub retry_after_ms: u64,
    /// Why the decision was made without the cache, when it was.
    pub degraded: Option<Degraded>,
}

/// Why a decision was made without the cache: a reason of a few kinds (for
/// headers and the host's count) and the details (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    /// What kind of failure.
    pub reason: DegradedReason,
    /// The failure, for logs.
    pub detail: String,
}

/// Why a decision was made without the cache (`edge:cache/telemetry`'s
/// `degraded-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DegradedReason {
    /// The cache could not be reached.
    CacheUnavailable,
    /// The cache did not answer in time.
    CacheTimeout,
    /// Any other cache error, such as a value that is not a counter.
    CacheError,
    /// Concurrent writers kept winning the compare-and-swap.
    Contended,
}

impl DegradedReason {
    /// The reason as a token, as in `edge:cache/telemetry`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CacheUnavailable => "cache-unavailable",
            Self::CacheTimeout => "cache-timeout",
            Self::CacheError => "cache-error",
            Self::Contended => "contended",
        }
    }
}

impl From<&CacheError> for Degraded {
    fn from(error: &CacheError) -> Self {
        let reason = match error {
            CacheError::Unavailable(_) => DegradedReason::CacheUnavailable,
            CacheError::Timeout => DegradedReason::CacheTimeout,
            _ => DegradedReason::CacheError,
        };
        Self {
            reason,
            detail: error.to_string(),
        }
    }
}

/// Why a check could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitError {
    /// The policy is unusable; says why.
    InvalidPolicy(String),
    /// The key is empty or too long.
    InvalidKey(String),
    /// The cost is zero or more than the policy allows at once.
    InvalidCost(String),
    /// Only from [`reset`]: checks decide by the fail mode instead.
    Unavailable(String),
}

/// Counts `cost` for `key` under `policy` at `now_ms` and decides.
pub fn check(
    cache: &impl Cache,
    penalty_box: &impl PenaltyBox,
    key: &str,
    policy: &Policy,
    cost: u32,
    now_ms: u64,
) -> Result<Decision, RateLimitError> {
    validate(key, policy, cost)?;
    Ok(decide(cache, penalty_box, key, policy, cost, now_ms, true))
}

/// What [`check`] would decide for a cost of 1, without counting it.
pub fn peek(
    cache: &impl Cache,
    penalty_box: &impl PenaltyBox,
    key: &str,
    policy: &Policy,
    now_ms: u64,
) -> Result<Decision, RateLimitError> {
    validate(key, policy, 1)?;
    Ok(decide(cache, penalty_box, key, policy, 1, now_ms, false))
}

fn decide(
    cache: &impl Cache,
    penalty_box: &impl PenaltyBox,
    key: &str,
    policy: &Policy,
    cost: u32,
    now_ms: u64,
    consume: bool,
) -> Decision {
    let box_key = box_key(key, policy);
    let lookup = penalty_box.look(&box_key);
    if let Some(denial) = lookup
        .held
        .as_ref()
        .and_then(|held| denial_from_box(held, policy, cost, now_ms))
    {
        return denial;
    }
    let decided = match policy.algorithm {
        Algorithm::FixedWindow => fixed_window(cache, key, policy, cost, now_ms, consume),
        Algorithm::SlidingWindow => sliding_window(cache, key, policy, cost, now_ms, consume),
        Algorithm::Gcra { .. } => gcra(cache, key, policy, cost, now_ms, consume),
    };
    match decided {
        Ok((decision, snapshot)) => {
            // A degraded denial says nothing about the cache's state: only
            // counted ones are kept.
            if let Some(snapshot) = snapshot.filter(|_| !decision.allowed && decision.degraded.is_none()) {
                // Past one window, a sliding window snapshot would say
                // nothing (its counters have moved on), and the bound on
                // what a reset elsewhere waits for stays one window.
                let held_ms = decision.retry_after_ms.min(policy.window_ms());
                penalty_box.hold(&box_key, lookup.ticket, now_ms + held_ms, &snapshot.encode());
            }
            decision
        }
        Err(error) => degraded(policy, cost, Degraded::from(&error)),
    }
}

/// The decision an entry of the penalty box gives for `cost` at `now_ms`,
/// when it is a denial; `None` sends the check to the cache.
fn denial_from_box(held: &Held, policy: &Policy, cost: u32, now_ms: u64) -> Option<Decision> {
    if now_ms >= held.until_ms {
        return None;
    }
    let window_ms = policy.window_ms();
    let limit = i64::from(policy.limit);
    let cost_units = i64::from(cost);
    // The note comes back from the host, which may have mangled it: counts
    // the cache could not hold (a counter never passes a u32 limit) are
    // refused, so that no arithmetic below can overflow.
    let plausible = |count: i64| (0..=i64::from(u32::MAX)).contains(&count);
    match (Snapshot::decode(&held.note)?, policy.algorithm) {
        (Snapshot::Fixed { window, count }, Algorithm::FixedWindow) => {
            let denied = plausible(count) && now_ms / window_ms == window && count + cost_units > limit;
            denied.then(|| fixed_decision(policy, false, count, now_ms))
        }
        (
            Snapshot::Sliding {
                window,
                previous,
                current,
            },
            Algorithm::SlidingWindow,
        ) => {
            // In the next window, this one's count is the previous one's, at
            // least as large as seen; the new window's count is at least 0.
            if !plausible(previous) || !plausible(current) {
                return None;
            }
            let (previous, current) = match now_ms / window_ms {
                now if now == window => (previous, current),
                now if Some(now) == window.checked_add(1) => (current, 0),
                _ => return None,
            };
            let elapsed = now_ms % window_ms;
            (weighted(previous, window_ms, elapsed) + current + cost_units > limit)
                .then(|| sliding_decision(policy, cost, false, previous, current, now_ms))
        }
        (Snapshot::Gcra { tat_us }, Algorithm::Gcra { .. }) => gcra_denial(policy, cost, tat_us, now_ms),
        _ => None,
    }
}

/// What the cache held when a check was denied: enough to decide again
/// without it, for any cost, as long as the state can only have grown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Snapshot {
    Fixed { window: u64, count: i64 },
    Sliding { window: u64, previous: i64, current: i64 },
    Gcra { tat_us: u64 },
}

impl Snapshot {
    /// A tag byte, then each field as 8 little-endian bytes.
    fn encode(self) -> Vec<u8> {
        let (tag, fields): (u8, &[u64]) = match self {
            Self::Fixed { window, count } => (1, &[window, count as u64]),
            Self::Sliding {
                window,
                previous,
                current,
            } => (2, &[window, previous as u64, current as u64]),
            Self::Gcra { tat_us } => (3, &[tat_us]),
        };
        let mut note = Vec::with_capacity(1 + 8 * fields.len());
        note.push(tag);
        for field in fields {
            note.extend_from_slice(&field.to_le_bytes());
        }
        note
    }

    /// `None` for anything [`Self::encode`] did not write.
    fn decode(note: &[u8]) -> Option<Self> {
        let (&tag, rest) = note.split_first()?;
        let field = |index: usize| -> Option<u64> {
            let bytes = rest.get(index * 8..index * 8 + 8)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        };
        let fields = rest.len() / 8;
        if rest.len() % 8 != 0 {
            return None;
        }
        match (tag, fields) {
            (1, 2) => Some(Self::Fixed {
                window: field(0)?,
                count: field(1)? as i64,
            }),
            (2, 3) => Some(Self::Sliding {
                window: field(0)?,
                previous: field(1)? as i64,
                current: field(2)? as i64,
            }),
            (3, 1) => Some(Self::Gcra { tat_us: field(0)? }),
            _ => None,
        }
    }
}

/// The penalty box key of `key`'s state under `policy`: the same for every
/// window, so an entry outlives a window boundary (sliding window) and a
/// `reset` releases it whichever window it was made in.
fn box_key(key: &str, policy: &Policy) -> String {
    match policy.algorithm {
        Algorithm::FixedWindow => series_key(key, policy, "fw"),
        Algorithm::SlidingWindow => series_key(key, policy, "sw"),
        Algorithm::Gcra { .. } => gcra_key(key, policy),
    }
}

/// Forgets what was counted for `key` under `policy`.
pub fn reset(
    cache: &impl Cache,
    penalty_box: &impl PenaltyBox,
    key: &str,
    policy: &Policy,
    now_ms: u64,
) -> Result<(), RateLimitError> {
    validate(key, policy, 1)?;
    let keys = match policy.algorithm {
        Algorithm::FixedWindow => vec![window_key(key, policy, "fw", now_ms / policy.window_ms())],
        Algorithm::SlidingWindow => {
            let current = now_ms / policy.window_ms();
            vec![
                window_key(key, policy, "sw", current.saturating_sub(1)),
                window_key(key, policy, "sw", current),
            ]
        }
        Algorithm::Gcra { .. } => vec![gcra_key(key, policy)],
    };
    let deleted = cache.delete(&keys);
    // After the delete, never before: a check that read the old state
    // between a release and the delete could hold it again. A failed delete
    // releases too: the entry may be right, but forgetting is always safe.
    penalty_box.release(&box_key(key, policy));
    deleted
        .map(drop)
        .map_err(|error| RateLimitError::Unavailable(error.to_string()))
}

fn validate(key: &str, policy: &Policy, cost: u32) -> Result<(), RateLimitError> {
    validate_policy(policy)?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(RateLimitError::InvalidKey(format!(
            "a key has 1 to {MAX_KEY_LEN} bytes, not {}",
            key.len()
        )));
    }
    let capacity = policy.capacity();
    if cost == 0 || cost > capacity {
        return Err(RateLimitError::InvalidCost(format!(
            "cost must be between 1 and what the policy allows at once ({capacity}), not {cost}"
        )));
    }
    Ok(())
}

/// The decision when the cache could not be used: the policy's fail mode.
fn degraded(policy: &Policy, cost: u32, why: Degraded) -> Decision {
    let window_ms = policy.window_ms();
    match policy.fail_mode {
        FailMode::Open => Decision {
            allowed: true,
            limit: policy.limit,
            remaining: policy.limit.saturating_sub(cost),
            reset_after_ms: window_ms,
            retry_after_ms: 0,
            degraded: Some(why),
        },
        FailMode::Closed => Decision {
            allowed: false,
            limit: policy.limit,
            remaining: 0,
            reset_after_ms: window_ms,
            // Soon: the cache may be back in a moment.
            retry_after_ms: 1000,
            degraded: Some(why),
        },
    }
}

/// `rl:{key}:name:algo:window:index`: the caller key is the hash tag.
fn window_key(key: &str, policy: &Policy, algorithm: &str, window: u64) -> String {
    // Made on every check; cheaper by hand than through `format!`.
    let mut digits = itoa::Buffer::new();
    let seconds = digits.format(policy.window_seconds).to_owned();
    let index = digits.format(window);
    let name = policy.display_name();
    ["rl:{", key, "}:", name, ":", algorithm, ":", &seconds, ":", index].concat()
}

/// `rl:{key}:name:algo:window`: [`window_key`] without the window's index.
fn series_key(key: &str, policy: &Policy, algorithm: &str) -> String {
    let mut digits = itoa::Buffer::new();
    let seconds = digits.format(policy.window_seconds);
    let name = policy.display_name();
    ["rl:{", key, "}:", name, ":", algorithm, ":", seconds].concat()
}

fn to_u32(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

fn parse_count(bytes: Option<&Vec<u8>>) -> Result<i64, CacheError> {
    match bytes {
        None => Ok(0),
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or(CacheError::WrongType),
    }
}

fn fixed_window(
    cache: &impl Cache,
    key: &str,
    policy: &Policy,
    cost: u32,
    now_ms: u64,
    consume: bool,
) -> Result<(Decision, Option<Snapshot>), CacheError> {
    let window = now_ms / policy.window_ms();
    let counter = window_key(key, policy, "fw", window);
    let limit = i64::from(policy.limit);
    let (allowed, count) = if consume {
        // One extra second keeps the counter across small clock skew between
        // instances at the window's end.
        let ttl = u64::from(policy.window_seconds) + 1;
        let outcome = cache.incr_by_bounded(&counter, i64::from(cost), ttl, limit)?;
        (outcome.applied, outcome.value)
    } else {
        let count = parse_count(cache.get(&counter)?.as_ref())?;
        (count + i64::from(cost) <= limit, count)
    };
    let snapshot = Snapshot::Fixed { window, count };
    Ok((fixed_decision(policy, allowed, count, now_ms), Some(snapshot)))
}

/// A fixed window decision with `count` units counted in `now_ms`'s window.
fn fixed_decision(policy: &Policy, allowed: bool, count: i64, now_ms: u64) -> Decision {
    let window_ms = policy.window_ms();
    let reset_after_ms = (now_ms / window_ms + 1) * window_ms - now_ms;
    Decision {
        allowed,
        limit: policy.limit,
        remaining: to_u32(i64::from(policy.limit) - count),
        reset_after_ms,
        retry_after_ms: if allowed { 0 } else { reset_after_ms },
        degraded: None,
    }
}

fn sliding_window(
    cache: &impl Cache,
    key: &str,
    policy: &Policy,
    cost: u32,
    now_ms: u64,
    consume: bool,
) -> Result<(Decision, Option<Snapshot>), CacheError> {
    let window_ms = policy.window_ms();
    let window = now_ms / window_ms;
    let elapsed = now_ms - window * window_ms;
    let previous_key = window_key(key, policy, "sw", window.saturating_sub(1));
    let current_key = window_key(key, policy, "sw", window);
    let limit = i64::from(policy.limit);
    let units = i64::from(cost);

    let (allowed, previous, current) = if consume {
        let previous = parse_count(cache.get(&previous_key)?.as_ref())?;
        // The current counter is read as the previous one during the next
        // window: it lives two windows (plus skew).
        let ttl = 2 * u64::from(policy.window_seconds) + 1;
        let room = limit - weighted(previous, window_ms, elapsed);
        let outcome = cache.incr_by_bounded(&current_key, units, ttl, room)?;
        (outcome.applied, previous, outcome.value)
    } else {
        let counts = cache.get_many(&[previous_key, current_key])?;
        let previous = parse_count(counts.first().and_then(Option::as_ref))?;
        let current = parse_count(counts.get(1).and_then(Option::as_ref))?;
        let used = weighted(previous, window_ms, elapsed) + current;
        (used + units <= limit, previous, current)
    };
    let snapshot = Snapshot::Sliding {
        window,
        previous,
        current,
    };
    let decision = sliding_decision(policy, cost, allowed, previous, current, now_ms);
    Ok((decision, Some(snapshot)))
}

/// The previous window's share of the sliding window `elapsed` ms into the
/// current one, rounded down.
fn weighted(previous: i64, window_ms: u64, elapsed: u64) -> i64 {
    i64::try_from(i128::from(previous) * i128::from(window_ms - elapsed) / i128::from(window_ms)).unwrap_or(i64::MAX)
}

/// A sliding window decision with `previous` and `current` counted in the
/// windows before and of `now_ms`.
fn sliding_decision(policy: &Policy, cost: u32, allowed: bool, previous: i64, current: i64, now_ms: u64) -> Decision {
    let window_ms = policy.window_ms();
    let elapsed = now_ms % window_ms;
    let limit = i64::from(policy.limit);
    let used = weighted(previous, window_ms, elapsed) + current;
    let retry_after_ms = if allowed {
        0
    } else {
        sliding_retry_after(limit, i64::from(cost), previous, current, window_ms, elapsed)
    };
    Decision {
        allowed,
        limit: policy.limit,
        remaining: to_u32(limit - used),
        reset_after_ms: window_ms - elapsed,
        retry_after_ms,
        degraded: None,
    }
}

/// How long until `previous` (weighted, rounded down as in the check) +
/// `current` + `cost` fits in `limit`, assuming no other traffic: exact to
/// the millisecond.
fn sliding_retry_after(limit: i64, cost: i64, previous: i64, current: i64, window_ms: u64, elapsed: u64) -> u64 {
    let window = i128::from(window_ms);
    // The first millisecond of a window at which `count`, weighted by
    // (window - e) / window and rounded down, is at most `room`: the least e
    // with count * (window - e) < (room + 1) * window.
    let fits_at = |count: i64, room: i64| -> i128 {
        let excess = i128::from(count) - i128::from(room) - 1;
        if count <= 0 || excess < 0 {
            0
        } else {
            excess * window / i128::from(count) + 1
        }
    };
    let wait = if current + cost <= limit {
        fits_at(previous, limit - current - cost) - i128::from(elapsed)
    } else {
        // Only in the next window, where `current` becomes the previous one.
        window - i128::from(elapsed) + fits_at(current, limit - cost)
    };
    u64::try_from(wait.max(1)).unwrap_or(u64::MAX)
}

/// The steady-state spacing of GCRA units, in microseconds.
fn emission_interval_us(policy: &Policy) -> u64 {
    u64::from(policy.window_seconds) * 1_000_000 / u64::from(policy.limit)
}

fn gcra_key(key: &str, policy: &Policy) -> String {
    // The parameters are part of the key: a changed policy starts afresh
    // rather than misreading another policy's arrival time.
    format!(
        "rl:{{{key}}}:{}:gcra:{}:{}:{}",
        policy.display_name(),
        policy.limit,
        policy.window_seconds,
        policy.capacity()
    )
}

fn gcra(
    cache: &impl Cache,
    key: &str,
    policy: &Policy,
    cost: u32,
    now_ms: u64,
    consume: bool,
) -> Result<(Decision, Option<Snapshot>), CacheError> {
    let emission = emission_interval_us(policy);
    let now = now_ms * 1000;
    let tat_key = gcra_key(key, policy);
    let remaining = |tat: u64| gcra_remaining(policy, now, tat);
    let ms = |us: u64| us.div_ceil(1000);

    let mut stored = cache.get(&tat_key)?;
    for _ in 0..MAX_CAS_ATTEMPTS {
        // An unreadable value counts as no history; the CAS still expects it.
        let previous_tat = stored
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| t.parse().ok());
        let tat = previous_tat.unwrap_or(0).max(now);
        if let Some(denial) = gcra_denial(policy, cost, tat, now_ms) {
            return Ok((denial, Some(Snapshot::Gcra { tat_us: tat })));
        }
        let new_tat = tat + u64::from(cost) * emission;
        let decision = Decision {
            allowed: true,
            limit: policy.limit,
            remaining: remaining(if consume { new_tat } else { tat }),
            reset_after_ms: ms((if consume { new_tat } else { tat }) - now),
            retry_after_ms: 0,
            degraded: None,
        };
        if !consume {
            return Ok((decision, None));
        }
        let ttl = (new_tat - now).div_ceil(1_000_000).max(1);
        match cache.compare_and_swap(&tat_key, stored.as_deref(), new_tat.to_string().as_bytes(), Some(ttl))? {
            CasOutcome::Swapped => return Ok((decision, None)),
            CasOutcome::Conflict(current) => stored = current,
        }
    }
    let contended = Decision {
        allowed: false,
        limit: policy.limit,
        remaining: 0,
        reset_after_ms: policy.window_ms(),
        retry_after_ms: ms(emission),
        degraded: Some(Degraded {
            reason: DegradedReason::Contended,
            detail: format!("still contended after {MAX_CAS_ATTEMPTS} attempts"),
        }),
    };
    Ok((contended, None))
}

/// Whole units that fit before `tat_us` at `now_us`.
fn gcra_remaining(policy: &Policy, now_us: u64, tat_us: u64) -> u32 {
    let emission = emission_interval_us(policy);
    let capacity = u64::from(policy.capacity()) * emission;
    to_u32(i64::try_from((now_us + capacity).saturating_sub(tat_us) / emission).unwrap_or(0))
}

/// The denial of `cost` at `now_ms` with the theoretical arrival time
/// `tat_us`, if it is one.
fn gcra_denial(policy: &Policy, cost: u32, tat_us: u64, now_ms: u64) -> Option<Decision> {
    let emission = emission_interval_us(policy);
    let capacity = u64::from(policy.capacity()) * emission;
    let now = now_ms * 1000;
    let tat = tat_us.max(now);
    let allow_at = tat.saturating_add(u64::from(cost) * emission).saturating_sub(capacity);
    (now < allow_at).then(|| Decision {
        allowed: false,
        limit: policy.limit,
        remaining: gcra_remaining(policy, now, tat),
        reset_after_ms: (tat - now).div_ceil(1000),
        retry_after_ms: (allow_at - now).div_ceil(1000),
        degraded: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::{Forgetful, MemoryBox, MemoryCache};

    const T0: u64 = 1_700_000_000_000; // a window boundary for 10 s windows

    fn policy(algorithm: Algorithm, limit: u32, window_seconds: u32) -> Policy {
        Policy {
            name: String::new(),
            algorithm,
            limit,
            window_seconds,
            fail_mode: FailMode::Open,
        }
    }

    fn allowed_of(decisions: &[Decision]) -> Vec<bool> {
        decisions.iter().map(|d| d.allowed).collect()
    }

    mod fixed {
        use super::*;
        const P: fn() -> Policy = || policy(Algorithm::FixedWindow, 3, 10);

        #[test]
        fn allows_exactly_the_limit_and_denials_consume_nothing() {
            let cache = MemoryCache::default();
            let decisions: Vec<_> = (0..5)
                .map(|_| check(&cache, &Forgetful, "ip:1", &P(), 1, T0).unwrap())
                .collect();
            assert_eq!(allowed_of(&decisions), [true, true, true, false, false]);
            assert_eq!(
                decisions.iter().map(|d| d.remaining).collect::<Vec<_>>(),
                [2, 1, 0, 0, 0]
            );
            assert_eq!(cache.raw("rl:{ip:1}:default:fw:10:170000000"), Some(b"3".to_vec()));
        }

        #[test]
        fn one_round_trip_per_check_and_per_peek() {
            let cache = MemoryCache::default();
            check(&cache, &Forgetful, "k", &P(), 1, T0).unwrap();
            assert_eq!(cache.calls.get(), 1);
            peek(&cache, &Forgetful, "k", &P(), T0).unwrap();
            assert_eq!(cache.calls.get(), 2);
        }

        #[test]
        fn reset_and_retry_are_exact_at_window_edges() {
            let cache = MemoryCache::default();
            let first = check(&cache, &Forgetful, "k", &P(), 3, T0).unwrap();
            assert_eq!(
                (first.allowed, first.reset_after_ms, first.retry_after_ms),
                (true, 10_000, 0)
            );
            let last = check(&cache, &Forgetful, "k", &P(), 1, T0 + 9_999).unwrap();
            assert_eq!((last.allowed, last.reset_after_ms, last.retry_after_ms), (false, 1, 1));
            let next = check(&cache, &Forgetful, "k", &P(), 1, T0 + 10_000).unwrap();
            assert_eq!((next.allowed, next.remaining, next.reset_after_ms), (true, 2, 10_000));
        }

        #[test]
        fn a_large_cost_denied_leaves_the_rest_usable() {
            let cache = MemoryCache::default();
            check(&cache, &Forgetful, "k", &P(), 1, T0).unwrap();
            assert!(!check(&cache, &Forgetful, "k", &P(), 3, T0).unwrap().allowed);
            let small = check(&cache, &Forgetful, "k", &P(), 2, T0).unwrap();
            assert_eq!((small.allowed, small.remaining), (true, 0));
        }

        #[test]
        fn counters_expire_after_their_window() {
            let cache = MemoryCache::default();
            check(&cache, &Forgetful, "k", &P(), 1, T0).unwrap();
            assert_eq!(cache.ttl_of("rl:{k}:default:fw:10:170000000"), Some(Some(11)));
        }

        #[test]
        fn peek_does_not_consume_and_reset_forgets() {
            let cache = MemoryCache::default();
            check(&cache, &Forgetful, "k", &P(), 2, T0).unwrap();
            for _ in 0..3 {
                let peeked = peek(&cache, &Forgetful, "k", &P(), T0).unwrap();
                assert_eq!((peeked.allowed, peeked.remaining), (true, 1));
            }
            check(&cache, &Forgetful, "k", &P(), 1, T0).unwrap();
            assert!(!peek(&cache, &Forgetful, "k", &P(), T0).unwrap().allowed);
            reset(&cache, &Forgetful, "k", &P(), T0).unwrap();
            assert_eq!(check(&cache, &Forgetful, "k", &P(), 1, T0).unwrap().remaining, 2);
        }
    }

    mod sliding {
        use super::*;
        const P: fn() -> Policy = || policy(Algorithm::SlidingWindow, 10, 10);

        #[test]
        fn the_previous_window_counts_by_its_overlap() {
            let cache = MemoryCache::default();
            for _ in 0..10 {
                assert!(check(&cache, &Forgetful, "k", &P(), 1, T0 + 5_000).unwrap().allowed);
            }
            assert!(!check(&cache, &Forgetful, "k", &P(), 1, T0 + 9_000).unwrap().allowed);
            // 25 % into the next window, 75 % of the previous 10 still count.
            let decision = check(&cache, &Forgetful, "k", &P(), 1, T0 + 12_500).unwrap();
            assert_eq!((decision.allowed, decision.remaining), (true, 2));
            check(&cache, &Forgetful, "k", &P(), 2, T0 + 12_500).unwrap();
            let denied = check(&cache, &Forgetful, "k", &P(), 1, T0 + 12_500).unwrap();
            assert!(!denied.allowed);
            // 7 weighted + 3 current = 10: one more fits once the previous
            // window's weight rounds down to 6, just past 30 % (T0 + 13 001).
            assert_eq!(denied.retry_after_ms, 501);
            assert!(!check(&cache, &Forgetful, "k", &P(), 1, T0 + 13_000).unwrap().allowed);
            assert!(check(&cache, &Forgetful, "k", &P(), 1, T0 + 13_001).unwrap().allowed);
        }

        #[test]
        fn retry_after_when_the_current_window_is_full() {
            let cache = MemoryCache::default();
            check(&cache, &Forgetful, "k", &P(), 10, T0 + 2_000).unwrap();
            let denied = check(&cache, &Forgetful, "k", &P(), 1, T0 + 4_000).unwrap();
            // Wait for the next window (6 s), then until the 10 weighted round
            // down to 9 (1 ms).
            assert_eq!((denied.allowed, denied.retry_after_ms), (false, 6_001));
            assert!(!check(&cache, &Forgetful, "k", &P(), 1, T0 + 10_000).unwrap().allowed);
            assert!(check(&cache, &Forgetful, "k", &P(), 1, T0 + 10_001).unwrap().allowed);
        }

        #[test]
        fn two_round_trips_per_check_one_per_peek() {
            let cache = MemoryCache::default();
            check(&cache, &Forgetful, "k", &P(), 1, T0).unwrap();
            assert_eq!(cache.calls.get(), 2);
            peek(&cache, &Forgetful, "k", &P(), T0).unwrap();
            assert_eq!(cache.calls.get(), 3);
        }

        #[test]
        fn counters_live_two_windows_and_reset_clears_both() {
            let cache = MemoryCache::default();
            check(&cache, &Forgetful, "k", &P(), 4, T0 + 9_000).unwrap();
            assert_eq!(cache.ttl_of("rl:{k}:default:sw:10:170000000"), Some(Some(21)));
            check(&cache, &Forgetful, "k", &P(), 1, T0 + 10_000).unwrap();
            reset(&cache, &Forgetful, "k", &P(), T0 + 10_000).unwrap();
            assert!(cache.keys().is_empty());
            assert_eq!(
                check(&cache, &Forgetful, "k", &P(), 1, T0 + 10_000).unwrap().remaining,
                9
            );
        }

        #[test]
        fn peek_matches_check() {
            let cache = MemoryCache::default();
            check(&cache, &Forgetful, "k", &P(), 8, T0 + 5_000).unwrap();
            let peeked = peek(&cache, &Forgetful, "k", &P(), T0 + 15_000).unwrap();
            let checked = check(&cache, &Forgetful, "k", &P(), 1, T0 + 15_000).unwrap();
            assert_eq!((peeked.allowed, peeked.remaining), (true, 6));
            assert_eq!((checked.allowed, checked.remaining), (true, 5));
        }
    }

    mod gcra {
        use super::*;
        // 10 per 10 s (one unit per second), bursts of 3.
        const P: fn() -> Policy = || policy(Algorithm::Gcra { burst: Some(3) }, 10, 10);

        #[test]
        fn bursts_then_the_steady_rate() {
            let cache = MemoryCache::default();
            let burst: Vec<_> = (0..4)
                .map(|_| check(&cache, &Forgetful, "k", &P(), 1, T0).unwrap())
                .collect();
            assert_eq!(allowed_of(&burst), [true, true, true, false]);
            assert_eq!(burst.iter().map(|d| d.remaining).collect::<Vec<_>>(), [2, 1, 0, 0]);
            assert_eq!(burst[3].retry_after_ms, 1_000);
            assert_eq!(burst[2].reset_after_ms, 3_000);
            assert!(!check(&cache, &Forgetful, "k", &P(), 1, T0 + 999).unwrap().allowed);
            assert!(check(&cache, &Forgetful, "k", &P(), 1, T0 + 1_000).unwrap().allowed);
            assert!(!check(&cache, &Forgetful, "k", &P(), 1, T0 + 1_000).unwrap().allowed);
        }

        #[test]
        fn the_bucket_refills_fully_and_no_further() {
            let cache = MemoryCache::default();
            check(&cache, &Forgetful, "k", &P(), 3, T0).unwrap();
            let later = check(&cache, &Forgetful, "k", &P(), 1, T0 + 60_000).unwrap();
            assert_eq!((later.allowed, later.remaining), (true, 2));
        }

        #[test]
        fn costs_weigh_and_cost_over_burst_is_an_error() {
            let cache = MemoryCache::default();
            assert_eq!(check(&cache, &Forgetful, "k", &P(), 2, T0).unwrap().remaining, 1);
            let denied = check(&cache, &Forgetful, "k", &P(), 2, T0).unwrap();
            assert_eq!((denied.allowed, denied.retry_after_ms), (false, 1_000));
            assert!(matches!(
                check(&cache, &Forgetful, "k", &P(), 4, T0),
                Err(RateLimitError::InvalidCost(_))
            ));
        }

        #[test]
        fn a_conflict_retries_with_the_winners_value() {
            let cache = MemoryCache::default();
            // Another instance spends one unit between our read and our CAS.
            *cache.interleave.borrow_mut() = Some(Box::new(|cache: &MemoryCache| {
                if cache.calls.get() == 2 {
                    let winner = ((T0 + 1_000) * 1000).to_string();
                    cache.insert_raw("rl:{k}:default:gcra:10:10:3", winner.as_bytes());
                }
            }));
            let decision = check(&cache, &Forgetful, "k", &P(), 1, T0).unwrap();
            assert_eq!((decision.allowed, decision.remaining), (true, 1));
            assert_eq!(cache.calls.get(), 3, "read, lost CAS, won CAS");
        }

        #[test]
        fn endless_contention_is_bounded_and_denies() {
            let cache = MemoryCache::default();
            *cache.interleave.borrow_mut() = Some(Box::new(|cache: &MemoryCache| {
                let n = cache.calls.get().to_string();
                cache.insert_raw("rl:{k}:default:gcra:10:10:3", n.as_bytes());
            }));
            let decision = check(&cache, &Forgetful, "k", &P(), 1, T0).unwrap();
            assert!(!decision.allowed && decision.degraded.is_some());
            assert_eq!(cache.calls.get(), 1 + MAX_CAS_ATTEMPTS);
        }

        #[test]
        fn clock_skew_neither_panics_nor_overadmits() {
            let cache = MemoryCache::default();
            // An instance 5 s ahead spends the whole burst.
            check(&cache, &Forgetful, "k", &P(), 3, T0 + 5_000).unwrap();
            // One behind sees a TAT far in its future: denied until it is due.
            let behind = check(&cache, &Forgetful, "k", &P(), 1, T0).unwrap();
            assert!(!behind.allowed);
            assert_eq!(behind.retry_after_ms, 6_000);
            // A clock that goes backwards is the same case.
            assert!(!check(&cache, &Forgetful, "k", &P(), 1, T0 + 4_000).unwrap().allowed);
        }

        #[test]
        fn peek_and_reset() {
            let cache = MemoryCache::default();
            check(&cache, &Forgetful, "k", &P(), 2, T0).unwrap();
            assert_eq!(peek(&cache, &Forgetful, "k", &P(), T0).unwrap().remaining, 1);
            assert_eq!(peek(&cache, &Forgetful, "k", &P(), T0).unwrap().remaining, 1);
            reset(&cache, &Forgetful, "k", &P(), T0).unwrap();
            assert_eq!(peek(&cache, &Forgetful, "k", &P(), T0).unwrap().remaining, 3);
        }

        #[test]
        fn the_stored_state_expires_when_the_bucket_is_full_again() {
            let cache = MemoryCache::default();
            check(&cache, &Forgetful, "k", &P(), 3, T0).unwrap();
            assert_eq!(cache.ttl_of("rl:{k}:default:gcra:10:10:3"), Some(Some(3)));
        }
    }

    #[test]
    fn fail_modes_decide_when_the_cache_is_down() {
        let cache = MemoryCache::default();
        *cache.failure.borrow_mut() = Some(CacheError::Timeout);
        for algorithm in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::Gcra { burst: None },
        ] {
            let open = check(&cache, &Forgetful, "k", &policy(algorithm, 5, 10), 1, T0).unwrap();
            assert!(open.allowed, "{algorithm:?}");
            assert_eq!(
                open.degraded,
                Some(Degraded {
                    reason: DegradedReason::CacheTimeout,
                    detail: "cache timed out".into()
                })
            );
            let closed = Policy {
                fail_mode: FailMode::Closed,
                ..policy(algorithm, 5, 10)
            };
            let refused = check(&cache, &Forgetful, "k", &closed, 1, T0).unwrap();
            assert!(
                !refused.allowed && refused.retry_after_ms > 0 && refused.degraded.is_some(),
                "{algorithm:?}"
            );
        }
        assert!(matches!(
            reset(&cache, &Forgetful, "k", &policy(Algorithm::FixedWindow, 5, 10), T0),
            Err(RateLimitError::Unavailable(_))
        ));
    }

    #[test]
    fn named_policies_count_separately_under_one_hash_tag() {
        let cache = MemoryCache::default();
        let reads = Policy {
            name: "reads".into(),
            ..policy(Algorithm::FixedWindow, 1, 10)
        };
        let writes = Policy {
            name: "writes".into(),
            ..policy(Algorithm::FixedWindow, 1, 10)
        };
        assert!(check(&cache, &Forgetful, "k", &reads, 1, T0).unwrap().allowed);
        assert!(check(&cache, &Forgetful, "k", &writes, 1, T0).unwrap().allowed);
        assert!(!check(&cache, &Forgetful, "k", &reads, 1, T0).unwrap().allowed);
        assert!(cache.keys().iter().all(|key| key.starts_with("rl:{k}:")));
    }

    #[test]
    fn bad_input_is_rejected_before_any_io() {
        let cache = MemoryCache::default();
        let good = policy(Algorithm::FixedWindow, 3, 10);
        let bad_policies = [
            Policy {
                limit: 0,
                ..good.clone()
            },
            Policy {
                window_seconds: 0,
                ..good.clone()
            },
            Policy {
                name: "Upper".into(),
                ..good.clone()
            },
            Policy {
                name: "n".repeat(65),
                ..good.clone()
            },
            policy(Algorithm::Gcra { burst: Some(0) }, 3, 10),
            policy(Algorithm::Gcra { burst: None }, 3_000_000, 1),
        ];
        for bad in bad_policies {
            assert!(
                matches!(
                    check(&cache, &Forgetful, "k", &bad, 1, T0),
                    Err(RateLimitError::InvalidPolicy(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check(&cache, &Forgetful, "", &good, 1, T0),
            Err(RateLimitError::InvalidKey(_))
        ));
        assert!(matches!(
            check(&cache, &Forgetful, &"k".repeat(257), &good, 1, T0),
            Err(RateLimitError::InvalidKey(_))
        ));
        assert!(matches!(
            check(&cache, &Forgetful, "k", &good, 0, T0),
            Err(RateLimitError::InvalidCost(_))
        ));
        assert!(matches!(
            check(&cache, &Forgetful, "k", &good, 4, T0),
            Err(RateLimitError::InvalidCost(_))
        ));
        assert_eq!(cache.calls.get(), 0);
    }

    #[test]
    fn a_non_counter_value_is_degraded_not_a_failure() {
        let cache = MemoryCache::default();
        cache.insert_raw("rl:{k}:default:fw:10:170000000", b"not a number");
        let decision = check(&cache, &Forgetful, "k", &policy(Algorithm::FixedWindow, 3, 10), 1, T0).unwrap();
        assert!(decision.allowed);
        assert_eq!(
            decision.degraded.map(|why| why.reason),
            Some(DegradedReason::CacheError)
        );
    }

    mod penalty_box {
        use super::*;

        fn all_algorithms() -> [Policy; 3] {
            [
                policy(Algorithm::FixedWindow, 3, 10),
                policy(Algorithm::SlidingWindow, 3, 10),
                policy(Algorithm::Gcra { burst: None }, 3, 10),
            ]
        }

        /// A limiter with a penalty box and a twin without one, fed the
        /// same checks: the box may save cache calls, never change an answer.
        struct Twins {
            boxed: MemoryCache,
            penalty_box: MemoryBox,
            plain: MemoryCache,
        }

        impl Twins {
            fn new() -> Self {
                Self {
                    boxed: MemoryCache::default(),
                    penalty_box: MemoryBox::default(),
                    plain: MemoryCache::default(),
                }
            }

            /// Both decide at `at`; the same answer or a panic.
            fn check(&self, policy: &Policy, cost: u32, at: u64) -> Decision {
                self.boxed.clock.now.set(at);
                self.plain.clock.now.set(at);
                let boxed = check(&self.boxed, &self.penalty_box, "k", policy, cost, at).unwrap();
                let plain = check(&self.plain, &Forgetful, "k", policy, cost, at).unwrap();
                assert_eq!(boxed, plain, "{policy:?}: cost {cost} at T0 + {} ms", at - T0);
                boxed
            }

            fn peek(&self, policy: &Policy, at: u64) -> Decision {
                let boxed = peek(&self.boxed, &self.penalty_box, "k", policy, at).unwrap();
                let plain = peek(&self.plain, &Forgetful, "k", policy, at).unwrap();
                assert_eq!(boxed, plain, "{policy:?}: peek at T0 + {} ms", at - T0);
                boxed
            }
        }

        #[test]
        fn after_a_denial_checks_cost_the_cache_nothing_and_answer_the_same() {
            for policy in all_algorithms() {
                let twins = Twins::new();
                for _ in 0..3 {
                    assert!(twins.check(&policy, 1, T0).allowed);
                }
                assert!(!twins.check(&policy, 1, T0 + 100).allowed);
                let calls = twins.boxed.calls.get();
                for at in [T0 + 100, T0 + 101, T0 + 2_000, T0 + 3_332] {
                    assert!(!twins.check(&policy, 1, at).allowed, "{policy:?}");
                    assert!(!twins.check(&policy, 3, at).allowed, "{policy:?}");
                    assert!(!twins.peek(&policy, at).allowed, "{policy:?}");
                }
                assert_eq!(twins.boxed.calls.get(), calls, "{policy:?}: answered from the box");
            }
        }

        #[test]
        fn a_hold_ends_when_the_decision_can_change() {
            for policy in all_algorithms() {
                let twins = Twins::new();
                twins.check(&policy, 3, T0 + 5_000);
                let denied = twins.check(&policy, 1, T0 + 5_000);
                let until = twins.penalty_box.entry(&box_key("k", &policy)).unwrap().until_ms;
                assert_eq!(until, T0 + 5_000 + denied.retry_after_ms, "{policy:?}");
                assert!(!twins.check(&policy, 1, until - 1).allowed, "{policy:?}");
                let calls = twins.boxed.calls.get();
                assert!(twins.check(&policy, 1, until).allowed, "{policy:?}");
                assert!(twins.boxed.calls.get() > calls, "{policy:?}: the cache decides again");
            }
        }

        #[test]
        fn a_smaller_cost_that_fits_goes_to_the_cache() {
            for policy in all_algorithms() {
                let twins = Twins::new();
                twins.check(&policy, 1, T0);
                assert!(!twins.check(&policy, 3, T0).allowed, "{policy:?}");
                let small = twins.check(&policy, 2, T0);
                assert!(small.allowed && small.remaining == 0, "{policy:?}");
                // The entry still holds what the cache held then; the cache
                // has moved on, and the answer follows it.
                assert!(!twins.check(&policy, 1, T0).allowed, "{policy:?}");
            }
        }

        #[test]
        fn a_sliding_window_hold_stays_exact_across_the_window_boundary() {
            let policy = policy(Algorithm::SlidingWindow, 10, 10);
            let twins = Twins::new();
            twins.check(&policy, 10, T0 + 6_000);
            twins.check(&policy, 1, T0 + 6_000);
            let calls = twins.boxed.calls.get();
            // Held until the next window, where the 10 weigh 9.999 and
            // round down to 9: 6 001 ms.
            for at in [T0 + 9_999, T0 + 10_000, T0 + 10_000] {
                assert!(!twins.check(&policy, 1, at).allowed);
            }
            assert_eq!(twins.boxed.calls.get(), calls);
            assert!(twins.check(&policy, 1, T0 + 12_001).allowed);
            // A cost of 5, denied by the cache, then from the new entry
            // until the 10 weigh 4 (just past half the window).
            let calls = twins.boxed.calls.get();
            for at in [T0 + 12_001, T0 + 13_000, T0 + 15_000] {
                assert!(!twins.check(&policy, 5, at).allowed);
            }
            assert_eq!(twins.boxed.calls.get(), calls + 2, "one check reached the cache");
            assert!(twins.check(&policy, 5, T0 + 15_001).allowed);
        }

        #[test]
        fn a_hold_lasts_at_most_one_window() {
            // One unit per 10 s, bursts of 5: a denied burst waits 50 s.
            let policy = policy(Algorithm::Gcra { burst: Some(5) }, 1, 10);
            let twins = Twins::new();
            twins.check(&policy, 5, T0);
            let denied = twins.check(&policy, 5, T0);
            assert_eq!(denied.retry_after_ms, 50_000);
            let held = twins.penalty_box.entry(&box_key("k", &policy)).unwrap();
            assert_eq!(held.until_ms, T0 + 10_000);
        }

        #[test]
        fn reset_releases_at_once() {
            for policy in all_algorithms() {
                let (cache, penalty_box) = (MemoryCache::default(), MemoryBox::default());
                check(&cache, &penalty_box, "k", &policy, 3, T0).unwrap();
                assert!(!check(&cache, &penalty_box, "k", &policy, 1, T0).unwrap().allowed);
                reset(&cache, &penalty_box, "k", &policy, T0).unwrap();
                assert!(penalty_box.keys().is_empty(), "{policy:?}");
                let after = check(&cache, &penalty_box, "k", &policy, 1, T0).unwrap();
                assert_eq!((after.allowed, after.remaining), (true, 2), "{policy:?}");
            }
        }

        #[test]
        fn a_denial_read_before_a_concurrent_reset_is_not_held_after_it() {
            let policy = policy(Algorithm::FixedWindow, 3, 10);
            let (cache, penalty_box) = (MemoryCache::default(), MemoryBox::default());
            check(&cache, &penalty_box, "k", &policy, 3, T0).unwrap();
            // Another instance resets between this check's read and its hold.
            *penalty_box.before_hold.borrow_mut() = Some(Box::new(|penalty_box: &MemoryBox| {
                penalty_box.release("rl:{k}:default:fw:10");
            }));
            assert!(!check(&cache, &penalty_box, "k", &policy, 1, T0).unwrap().allowed);
            assert!(penalty_box.keys().is_empty());
        }

        #[test]
        fn degraded_denials_are_never_held() {
            let closed = Policy {
                fail_mode: FailMode::Closed,
                ..policy(Algorithm::FixedWindow, 3, 10)
            };
            let (cache, penalty_box) = (MemoryCache::default(), MemoryBox::default());
            *cache.failure.borrow_mut() = Some(CacheError::Timeout);
            assert!(!check(&cache, &penalty_box, "k", &closed, 1, T0).unwrap().allowed);
            assert_eq!(penalty_box.holds.get(), 0);
            *cache.failure.borrow_mut() = None;
            assert!(check(&cache, &penalty_box, "k", &closed, 1, T0).unwrap().allowed);
        }

        #[test]
        fn an_entry_of_another_shape_or_out_of_its_window_is_ignored() {
            let fixed = policy(Algorithm::FixedWindow, 3, 10);
            let penalty_box = MemoryBox::default();
            let key = box_key("k", &fixed);
            let garbage: [&[u8]; 6] = [
                b"",
                &[1, 2, 3],
                &Snapshot::Gcra { tat_us: u64::MAX }.encode(),
                // Full, but for the previous window.
                &Snapshot::Fixed {
                    window: T0 / 10_000 - 1,
                    count: 3,
                }
                .encode(),
                // Counts no counter can reach.
                &Snapshot::Fixed {
                    window: T0 / 10_000,
                    count: i64::MAX,
                }
                .encode(),
                &Snapshot::Fixed {
                    window: T0 / 10_000,
                    count: -1,
                }
                .encode(),
            ];
            for note in garbage {
                let cache = MemoryCache::default();
                penalty_box.hold(&key, 0, T0 + 10_000, note);
                assert!(check(&cache, &penalty_box, "k", &fixed, 1, T0).unwrap().allowed);
            }
        }

        #[test]
        fn a_mangled_entry_never_traps() {
            let penalty_box = MemoryBox::default();
            let extremes = [
                Snapshot::Sliding {
                    window: u64::MAX,
                    previous: i64::MAX,
                    current: i64::MIN,
                },
                Snapshot::Sliding {
                    window: T0 / 10_000,
                    previous: i64::MAX,
                    current: i64::MAX,
                },
                Snapshot::Gcra { tat_us: u64::MAX },
            ];
            for policy in all_algorithms() {
                for snapshot in extremes {
                    let cache = MemoryCache::default();
                    penalty_box.hold(&box_key("k", &policy), 0, T0 + 10_000, &snapshot.encode());
                    check(&cache, &penalty_box, "k", &policy, 3, T0).unwrap();
                }
            }
        }

        #[test]
        fn snapshots_round_trip() {
            for snapshot in [
                Snapshot::Fixed { window: 7, count: 3 },
                Snapshot::Sliding {
                    window: u64::MAX,
                    previous: 0,
                    current: i64::MAX,
                },
                Snapshot::Gcra { tat_us: 42 },
            ] {
                assert_eq!(Snapshot::decode(&snapshot.encode()), Some(snapshot));
            }
        }
    }
}
