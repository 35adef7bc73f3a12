//! Where cached bytes live: a real Redis, or the embedded in-memory store.
//!
//! Both backends implement the same contract (see `wit/cache.wit`); the
//! conformance suite in `tests/` runs against both so they cannot drift.
//! Backends see full keys: namespacing and limits are applied above them, in
//! [`crate::cache::Cache`].

pub mod breaker;
pub mod memory;
pub mod redis;

use std::time::Duration;
use thiserror::Error;

/// A failed cache operation, before it is translated to the WIT `error`.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CacheError {
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    /// The store refused the command for this client (a Redis ACL that does
    /// not grant the key or the command): a setting to fix, not an outage.
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("cache command timed out after {0:?}")]
    Timeout(Duration),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("value too large: the limit is {limit} bytes")]
    ValueTooLarge { limit: u64 },
    #[error("the key holds a value of another type")]
    WrongType,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("cache error: {0}")]
    Other(String),
}

impl CacheError {
    /// A short name of the kind of error, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::AccessDenied(_) => "access-denied",
            Self::Timeout(_) => "timeout",
            Self::InvalidKey(_) => "invalid-key",
            Self::ValueTooLarge { .. } => "value-too-large",
            Self::WrongType => "wrong-type",
            Self::InvalidArgument(_) => "invalid-argument",
            Self::Other(_) => "other",
        }
    }
}

/// A key's remaining lifetime, as `TTL` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    Missing,
    Persistent,
    /// Whole seconds left, rounded up so that a live key never reports 0.
    ExpiresIn(u64),
}

/// The result of a bounded increment: whether it applied, and the value after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundedIncr {
    pub applied: bool,
    pub value: i64,
}

/// The result of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    Swapped,
    Conflict(Option<Vec<u8>>),
}

/// One page of the keys under a prefix (see [`Backend::scan_prefix`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// Full keys, the prefix included, each at most once in the page.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` when the scan is complete.
    pub cursor: Option<u64>,
}

/// The most keys a page of [`Backend::scan_prefix`] aims for: a few
/// hundred KiB at the longest keys, small enough for any guest's memory.
pub const SCAN_PAGE_KEYS: usize = 256;

/// One of the two stores.
#[derive(Clone)]
pub enum Backend {
    Redis(redis::RedisBackend),
    Memory(memory::MemoryBackend),
}

/// Forwards each call to the backend in use: a closed set, so a `match`
/// rather than a trait object.
macro_rules! dispatch {
    ($self:ident, $backend:ident => $call:expr) => {
        match $self {
            Backend::Redis($backend) => $call.await,
            Backend::Memory($backend) => $call.await,
        }
    };
}

impl Backend {
    /// A name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Memory(_) => "memory",
        }
    }

    /// Whether the store can serve: `Ok` with a note, or `Err` with the
    /// reason (for `/readyz`).
    pub fn readiness(&self) -> Result<String, String> {
        match self {
            Self::Redis(redis) => redis.readiness(),
            Self::Memory(_) => Ok("the embedded cache is in process".into()),
        }
    }

    /// The gauges of the circuit breakers in front of Redis; none for the
    /// embedded store.
    pub fn breaker_gauges(&self) -> breaker::BreakerGauges {
        match self {
            Self::Redis(redis) => redis.breaker_gauges().clone(),
            Self::Memory(_) => breaker::BreakerGauges::default(),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        dispatch!(self, b => b.get(key))
    }

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        dispatch!(self, b => b.get_many(keys))
    }

    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<u64>,
        only_if_absent: bool,
    ) -> Result<bool, CacheError> {
        dispatch!(self, b => b.set(key, value, ttl, only_if_absent))
    }

    pub async fn delete(&self, keys: &[String]) -> Result<u32, CacheError> {
        dispatch!(self, b => b.delete(keys))
    }

    pub async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        dispatch!(self, b => b.exists(key))
    }

    pub async fn expire(&self, key: &str, ttl: u64) -> Result<bool, CacheError> {
        dispatch!(self, b => b.expire(key, ttl))
    }

    pub async fn ttl(&self, key: &str) -> Result<Ttl, CacheError> {
        dispatch!(self, b => b.ttl(key))
    }

    pub async fn incr_by(&self, key: &str, delta: i64, ttl_if_new: u64) -> Result<i64, CacheError> {
        dispatch!(self, b => b.incr_by(key, delta, ttl_if_new))
    }

    /// Adds `delta` to a counter, atomically, leaving its expiry (or its
    /// absence) as it is: `INCRBY`. A missing key counts as 0 and is
    /// created without expiry.
    pub async fn incr(&self, key: &str, delta: i64) -> Result<i64, CacheError> {
        dispatch!(self, b => b.incr(key, delta))
    }

    /// Lists the live keys starting with `prefix`, a page at a time, from
    /// `cursor` (0 to start). Every key present for the whole scan is
    /// listed at least once; keys written or removed meanwhile may or may
    /// not be. The cursor is the backend's own; it means nothing to another.
    pub async fn scan_prefix(&self, prefix: &str, cursor: u64) -> Result<KeyPage, CacheError> {
        dispatch!(self, b => b.scan_prefix(prefix, cursor))
    }

    pub async fn incr_by_bounded(
        &self,
        key: &str,
        delta: i64,
        ttl_if_new: u64,
        max: i64,
    ) -> Result<BoundedIncr, CacheError> {
        dispatch!(self, b => b.incr_by_bounded(key, delta, ttl_if_new, max))
    }

    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<u64>,
    ) -> Result<CasOutcome, CacheError> {
        dispatch!(self, b => b.compare_and_swap(key, expected, new, ttl))
    }

    pub async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, CacheError> {
        dispatch!(self, b => b.compare_and_delete(key, expected))
    }
}
