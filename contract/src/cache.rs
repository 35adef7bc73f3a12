//! The values of `edge:cache/cache` (`wit/cache.wit`), as plain Rust types:
//! what every implementation of the contract answers with.

use std::fmt;

/// A failed cache operation, mirroring `edge:cache/cache.error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheError {
    /// The store cannot be reached right now; says why.
    Unavailable(String),
    /// The store did not answer within the host's deadline.
    Timeout,
    /// The key is empty, too long or holds bytes the host rejects.
    InvalidKey(String),
    /// The value is larger than the host accepts; carries the limit in bytes.
    ValueTooLarge(u64),
    /// The key holds a value the operation cannot work on.
    WrongType,
    /// An argument is out of range, such as a zero time-to-live.
    InvalidArgument(String),
    /// Any other failure, described for logs.
    Other(String),
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "cache unavailable: {why}"),
            Self::Timeout => f.write_str("cache timed out"),
            Self::InvalidKey(why) => write!(f, "invalid cache key: {why}"),
            Self::ValueTooLarge(limit) => {
                write!(f, "value larger than the cache limit of {limit} bytes")
            }
            Self::WrongType => f.write_str("cache value has the wrong type"),
            Self::InvalidArgument(why) => write!(f, "invalid cache argument: {why}"),
            Self::Other(why) => write!(f, "cache error: {why}"),
        }
    }
}

impl std::error::Error for CacheError {}

/// A key's remaining lifetime, as `TTL` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The key does not exist.
    Missing,
    /// The key never expires.
    Persistent,
    /// Whole seconds left, rounded up: a live key never reports 0.
    ExpiresIn(u64),
}

/// The outcome of a bounded increment: whether it applied, and the value after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundedIncr {
    /// Whether `delta` was added.
    pub applied: bool,
    /// The value after the call (unchanged when not applied).
    pub value: i64,
}

/// The outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The stored value matched and was replaced.
    Swapped,
    /// It did not; carries the value found (`None`: the key was absent).
    Conflict(Option<Vec<u8>>),
}
