//! The embedded store: Redis semantics in process, on moka.
//!
//! Entries carry their own deadline (moka's per-entry expiry evicts them in
//! the background; reads also check it, so an expired entry is never
//! returned). Memory is bounded by a byte weigher with LRU eviction, the
//! counterpart of Redis `maxmemory` with `allkeys-lru`. Every read-modify-write
//! runs inside moka's per-key `and_compute_with`, which makes it atomic.

use super::{BoundedIncr, CasOutcome, KeyPage, SCAN_PAGE_KEYS, Store, StoreError, StoreFuture, Ttl};
use moka::Expiry;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default memory bound, like the seeds' smallest useful plan.
pub const DEFAULT_MAX_MEMORY: u64 = 64 * 1024 * 1024;

/// Bookkeeping bytes counted per entry on top of key and value, so that many
/// tiny entries cannot exceed the bound unnoticed.
const ENTRY_OVERHEAD: usize = 64;

#[derive(Clone)]
struct Stored {
    bytes: Arc<[u8]>,
    expires_at: Option<Instant>,
}

impl Stored {
    fn new(bytes: &[u8], ttl: Option<u64>, now: Instant) -> Self {
        Self {
            bytes: bytes.into(),
            expires_at: ttl.map(|ttl| now + Duration::from_secs(ttl)),
        }
    }

    fn is_live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

struct DeadlineExpiry;

impl Expiry<String, Stored> for DeadlineExpiry {
    fn expire_after_create(&self, _: &String, value: &Stored, created_at: Instant) -> Option<Duration> {
        value.expires_at.map(|at| at.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Stored,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        value.expires_at.map(|at| at.saturating_duration_since(updated_at))
    }
}

#[derive(Clone)]
pub struct MemoryStore {
    entries: Cache<String, Stored>,
}

impl MemoryStore {
    /// An empty store holding at most about `max_memory` bytes of keys and values.
    pub fn new(max_memory: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_memory)
            .weigher(|key: &String, value: &Stored| {
                u32::try_from(key.len() + value.bytes.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .expire_after(DeadlineExpiry)
            .eviction_policy(EvictionPolicy::lru())
            .build();
        Self { entries }
    }

    fn live(&self, key: &str, now: Instant) -> Option<Stored> {
        self.entries.get(key).filter(|stored| stored.is_live(now))
    }

    /// Adds `delta` to a counter, atomically, unless the result would pass
    /// `max`; a counter without expiry gets `ttl_if_new` seconds, if given.
    fn add(&self, key: &str, delta: i64, ttl_if_new: Option<u64>, max: Option<i64>) -> Result<BoundedIncr, StoreError> {
        let now = Instant::now();
        let mut outcome = Err(StoreError::Other("counter update did not run".into()));
        self.entries.entry_by_ref(key).and_compute_with(|current| {
            let current = current
                .map(|entry| entry.into_value())
                .filter(|stored| stored.is_live(now));
            let (count, expires_at) = match &current {
                None => (0, None),
                Some(stored) => match std::str::from_utf8(&stored.bytes)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                {
                    Some(count) => (count, stored.expires_at),
                    None => {
                        outcome = Err(StoreError::WrongType);
                        return Op::Nop;
                    }
                },
            };
            let Some(next) = count.checked_add(delta) else {
                outcome = Err(StoreError::InvalidArgument("increment would overflow".into()));
                return Op::Nop;
            };
            if max.is_some_and(|max| next > max) {
                outcome = Ok(BoundedIncr {
                    applied: false,
                    value: count,
                });
                return Op::Nop;
            }
            outcome = Ok(BoundedIncr {
                applied: true,
                value: next,
            });
            let expires_at = expires_at.or(ttl_if_new.map(|ttl| now + Duration::from_secs(ttl)));
            Op::Put(Stored {
                bytes: next.to_string().into_bytes().into(),
                expires_at,
            })
        });
        outcome
    }

    /// The weighted size of what is stored, after pending evictions ran.
    pub fn used_memory(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn readiness(&self) -> Result<String, String> {
        Ok("the embedded cache is in process".into())
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { Ok(self.live(key, Instant::now()).map(|stored| stored.bytes.to_vec())) })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            let now = Instant::now();
            Ok(keys
                .iter()
                .map(|key| self.live(key, now).map(|stored| stored.bytes.to_vec()))
                .collect())
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<u64>,
        only_if_absent: bool,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let now = Instant::now();
            let mut wrote = false;
            self.entries.entry_by_ref(key).and_compute_with(|current| {
                if only_if_absent && current.is_some_and(|entry| entry.value().is_live(now)) {
                    return Op::Nop;
                }
                wrote = true;
                Op::Put(Stored::new(value, ttl, now))
            });
            Ok(wrote)
        })
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, u32> {
        Box::pin(async move {
            let now = Instant::now();
            let removed = keys
                .iter()
                .filter_map(|key| self.entries.remove(key))
                .filter(|stored| stored.is_live(now))
                .count();
            Ok(u32::try_from(removed).unwrap_or(u32::MAX))
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move { Ok(self.live(key, Instant::now()).is_some()) })
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: u64) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let now = Instant::now();
            let mut found = false;
            self.entries
                .entry_by_ref(key)
                .and_compute_with(|current| match current {
                    Some(entry) if entry.value().is_live(now) => {
                        found = true;
                        let stored = entry.into_value();
                        Op::Put(Stored {
                            expires_at: Some(now + Duration::from_secs(ttl)),
                            ..stored
                        })
                    }
                    _ => Op::Nop,
                });
            Ok(found)
        })
    }

    fn ttl<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Ttl> {
        Box::pin(async move {
            let now = Instant::now();
            Ok(match self.live(key, now) {
                None => Ttl::Missing,
                Some(Stored { expires_at: None, .. }) => Ttl::Persistent,
                Some(Stored {
                    expires_at: Some(at), ..
                }) => {
                    let millis = at.saturating_duration_since(now).as_millis().max(1);
                    Ttl::ExpiresIn(u64::try_from(millis.div_ceil(1000)).unwrap_or(u64::MAX))
                }
            })
        })
    }

    fn incr_by<'a>(&'a self, key: &'a str, delta: i64, ttl_if_new: u64) -> StoreFuture<'a, i64> {
        Box::pin(async move {
            self.add(key, delta, Some(ttl_if_new), None)
                .map(|outcome| outcome.value)
        })
    }

    fn incr<'a>(&'a self, key: &'a str, delta: i64) -> StoreFuture<'a, i64> {
        Box::pin(async move { self.add(key, delta, None, None).map(|outcome| outcome.value) })
    }

    /// Pages through the live keys under `prefix` in the order of a fixed
    /// hash of each key; the cursor is the hash where the next page starts.
    /// Unlike a position in a list, that stays valid while keys come and
    /// go, so a key present for the whole scan is listed exactly once.
    fn scan_prefix<'a>(&'a self, prefix: &'a str, cursor: u64) -> StoreFuture<'a, KeyPage> {
        Box::pin(async move {
            let now = Instant::now();
            let mut found: Vec<(u64, String)> = self
                .entries
                .iter()
                .filter(|(key, stored)| key.starts_with(prefix) && stored.is_live(now))
                .map(|(key, _)| (scan_position(&key), String::clone(&key)))
                .filter(|(position, _)| *position >= cursor)
                .collect();
            found.sort_unstable();
            // A page never ends between keys of the same position: the next
            // page starts at a position, and would list them again.
            let mut end = found.len().min(SCAN_PAGE_KEYS);
            while end > 0 && end < found.len() && found[end].0 == found[end - 1].0 {
                end += 1;
            }
            let cursor = found.get(end).map(|(position, _)| *position);
            found.truncate(end);
            Ok(KeyPage {
                keys: found.into_iter().map(|(_, key)| key).collect(),
                cursor,
            })
        })
    }

    fn incr_by_bounded<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl_if_new: u64,
        max: i64,
    ) -> StoreFuture<'a, BoundedIncr> {
        Box::pin(async move { self.add(key, delta, Some(ttl_if_new), Some(max)) })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: &'a [u8],
        ttl: Option<u64>,
    ) -> StoreFuture<'a, CasOutcome> {
        Box::pin(async move {
            let now = Instant::now();
            let mut outcome = CasOutcome::Swapped;
            self.entries.entry_by_ref(key).and_compute_with(|current| {
                let current = current
                    .map(|entry| entry.into_value())
                    .filter(|stored| stored.is_live(now));
                if current.as_ref().map(|stored| &*stored.bytes) == expected {
                    Op::Put(Stored::new(new, ttl, now))
                } else {
                    outcome = CasOutcome::Conflict(current.map(|stored| stored.bytes.to_vec()));
                    Op::Nop
                }
            });
            Ok(outcome)
        })
    }

    fn compare_and_delete<'a>(&'a self, key: &'a str, expected: &'a [u8]) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let now = Instant::now();
            let mut deleted = false;
            self.entries
                .entry_by_ref(key)
                .and_compute_with(|current| match current {
                    Some(entry) if entry.value().is_live(now) && &*entry.value().bytes == expected => {
                        deleted = true;
                        Op::Remove
                    }
                    _ => Op::Nop,
                });
            Ok(deleted)
        })
    }
}

/// Where a key sits in a scan: FNV-1a of its bytes, fixed across runs and
/// Rust versions (unlike `DefaultHasher`).
fn scan_position(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
