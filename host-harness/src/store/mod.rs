//! Where cached bytes live: a [`Store`]. Redis (one server or a Cluster,
//! [`redis::RedisStore`]), Redis behind a near cache in the harness
//! ([`near::NearCache`]) and the embedded in-memory store
//! ([`memory::MemoryStore`]) are the ones there are; a new one is a type
//! that implements the trait, and a [`crate::StoreConfig`] case that opens
//! it. (Not wasmtime's `Store`, an instance's state: where both are in
//! scope, this one is named by its path.)
//!
//! Every store implements the same contract (see `wit/cache.wit`); the
//! conformance suite in `tests/` runs against each so they cannot drift.
//! Stores see full keys: namespacing and limits are applied above them, in
//! [`crate::keyspace::Keyspace`].

pub mod breaker;
pub mod memory;
pub mod near;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use thiserror::Error;

/// A failed store operation, before it is translated to the WIT `error`.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StoreError {
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

impl StoreError {
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

/// One page of the keys under a prefix (see [`Store::scan_prefix`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// Full keys, the prefix included, each at most once in the page.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` when the scan is complete.
    pub cursor: Option<u64>,
}

/// The most keys a page of [`Store::scan_prefix`] aims for: a few
/// hundred KiB at the longest keys, small enough for any guest's memory.
pub const SCAN_PAGE_KEYS: usize = 256;

/// What a [`Store`] call returns: a boxed future, so that the trait can be
/// used as `dyn Store`. One allocation per call, a few dozen instructions
/// against a request's ~150k.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A key-value store with Redis semantics: what `edge:cache/cache` needs of
/// one. Keys are full keys (namespaced); values and arguments were checked
/// against the limits above it.
pub trait Store: Send + Sync + 'static {
    /// A name for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Whether the store can serve: `Ok` with a note, or `Err` with the
    /// reason (for `/readyz`). A store in process always can.
    fn readiness(&self) -> Result<String, String> {
        Ok(format!("the {} store is in process", self.kind()))
    }

    /// The gauges of the circuit breakers in front of the store; none by
    /// default.
    fn breaker_gauges(&self) -> breaker::BreakerGauges {
        breaker::BreakerGauges::default()
    }

    /// Registers the store's own metrics, if it has any, on the harness's
    /// registry (prefixed `edge_cache_`).
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>>;

    /// Stores `value`, with a time-to-live in seconds or none; with
    /// `only_if_absent`, only when the key holds nothing. Whether it wrote.
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<u64>,
        only_if_absent: bool,
    ) -> StoreFuture<'a, bool>;

    /// Deletes the keys; how many existed.
    fn delete<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, u32>;

    fn exists<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;

    /// Gives a live key a time-to-live in seconds; whether it existed.
    fn expire<'a>(&'a self, key: &'a str, ttl: u64) -> StoreFuture<'a, bool>;

    fn ttl<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Ttl>;

    /// Adds `delta` to a counter, atomically; a counter without expiry gets
    /// `ttl_if_new` seconds. The value after.
    fn incr_by<'a>(&'a self, key: &'a str, delta: i64, ttl_if_new: u64) -> StoreFuture<'a, i64>;

    /// Adds `delta` to a counter, atomically, leaving its expiry (or its
    /// absence) as it is: `INCRBY`. A missing key counts as 0 and is
    /// created without expiry.
    fn incr<'a>(&'a self, key: &'a str, delta: i64) -> StoreFuture<'a, i64>;

    /// Lists the live keys starting with `prefix`, a page at a time, from
    /// `cursor` (0 to start). Every key present for the whole scan is
    /// listed at least once; keys written or removed meanwhile may or may
    /// not be. The cursor is the store's own; it means nothing to another.
    fn scan_prefix<'a>(&'a self, prefix: &'a str, cursor: u64) -> StoreFuture<'a, KeyPage>;

    /// [`Self::incr_by`], unless the result would pass `max`.
    fn incr_by_bounded<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl_if_new: u64,
        max: i64,
    ) -> StoreFuture<'a, BoundedIncr>;

    /// Writes `new` only if the key holds `expected` (`None`: nothing).
    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: &'a [u8],
        ttl: Option<u64>,
    ) -> StoreFuture<'a, CasOutcome>;

    /// Deletes the key only if it holds exactly `expected`; whether it did.
    fn compare_and_delete<'a>(&'a self, key: &'a str, expected: &'a [u8]) -> StoreFuture<'a, bool>;
}
