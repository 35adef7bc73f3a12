//! `remember`-style cache-aside for any key and any loader, without
//! stampedes.
//!
//! - A hit returns the cached copy. Entries carry a soft expiry: past it (or
//!   a little before, by probabilistic early refresh, "XFetch"), one request
//!   refreshes from the source while the others keep getting the cached copy
//!   (`Source::Stale`). If the refresh fails, the stale copy is served.
//! - On a miss, one request fills the entry under a short lock key (set only
//!   if absent, with a TTL); the others poll the cache for the fill for up to
//!   `fill_wait_ms`, then go to the source themselves. So a burst of misses on
//!   one key reaches the source once, or once per waiter that outlasts the
//!   wait (bounded by the burst size, and in practice never with a healthy
//!   source).
//! - Absences (the loader answers `None`) are cached for
//!   `negative_ttl_seconds`.
//! - [`CacheAside::replace`] stores a changed value after a write to the
//!   source, so the next read sees it.
//! - The cache is never the source of truth: a cache failure means asking
//!   the source (`Source::Bypass`); a cached value that does not decode is a
//!   miss, overwritten by the fill, and a value the cache cannot even read
//!   as bytes (`wrong-type`: a Redis list written by someone else) is
//!   deleted, then filled like a miss.
//! - Fills store by compare-and-swap against what they read, so a slow
//!   fill never overwrites a newer [`replace`](CacheAside::replace).
//! - A lock holds a random token, and only a request holding that token
//!   releases it (`compare-and-delete`): one that outlived the lock's TTL
//!   cannot release its successor's lock.
//!
//! An entry is stored at its key as the JSON envelope
//! `{"fresh_until":ms,"compute_ms":ms,"value":…}` (`null` for an absence),
//! for fresh + stale seconds; its lock is `{key}:lock`.

use crate::host::{Cache, CacheError, CasOutcome, Clock};
pub use edge_cache_contract::cache_aside::Settings;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;

/// How long a fill or refresh lock lives if its holder dies.
const LOCK_TTL_SECONDS: u64 = 5;

/// The largest `-ln(r)` for the `r` that [`Clock::random`] returns (at least
/// 2^-53): how far ahead of expiry, in units of the refresh cost, XFetch can
/// ever refresh.
const MAX_EXPONENTIAL_DRAW: f64 = 53.0 * std::f64::consts::LN_2;

/// How often a waiting request looks for the fill.
const POLL_INTERVAL_MS: u64 = 20;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A fresh copy from the cache; the loader was not called.
    Cache,
    /// The loader answered (a miss, or a refresh this request made), and the
    /// answer was cached.
    Origin,
    /// A copy past its freshness, served while another request refreshes it,
    /// or because the refresh failed.
    Stale,
    /// The cache could not be used; the loader answered directly.
    Bypass,
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered<V> {
    /// The value.
    pub value: V,
    /// Where it came from.
    pub source: Source,
}

/// The cached form of a lookup.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry<V> {
    /// Fresh until this millisecond (Unix epoch).
    fresh_until: u64,
    /// How long the loader took, for early refresh.
    compute_ms: u64,
    /// The value; `None` caches its absence.
    value: Option<V>,
}

/// What a lookup found in the cache.
enum Cached<V> {
    Fresh(Entry<V>),
    /// Past freshness, or chosen for early refresh; with the stored bytes.
    Due(Entry<V>, Vec<u8>),
    /// Nothing usable: absent, or bytes that do not decode (given).
    Missing(Option<Vec<u8>>),
    /// A value the cache cannot read as bytes.
    WrongType,
    Unusable,
}

/// Lookups through a cache in front of a slower source of truth.
///
/// ```
/// use edge_cache_sdk::testing::MemoryCache;
/// use edge_cache_sdk::{CacheAside, Settings, Source};
///
/// let host = MemoryCache::default();
/// let users = CacheAside::new(&host, &host.clock, Settings { ttl_seconds: 60, ..Settings::default() });
/// let mut reads = 0;
/// let mut load = || {
///     reads += 1;
///     Ok::<_, String>(Some("Alice".to_owned())) // ask the database
/// };
/// assert_eq!(users.remember("user:1", &mut load)?.unwrap().source, Source::Origin);
/// assert_eq!(users.remember("user:1", &mut load)?.unwrap().value, "Alice");
/// host.clock.advance(60_000); // past freshness: refreshed by this request
/// assert_eq!(users.remember("user:1", &mut load)?.unwrap().source, Source::Origin);
/// assert_eq!(reads, 2);
/// # Ok::<(), String>(())
/// ```
pub struct CacheAside<'h, C: ?Sized, K: ?Sized> {
    cache: &'h C,
    clock: &'h K,
    settings: Settings,
}

impl<'h, C: Cache + ?Sized, K: Clock + ?Sized> CacheAside<'h, C, K> {
    /// Cache-aside on `cache`, timed by `clock`.
    pub fn new(cache: &'h C, clock: &'h K, settings: Settings) -> Self {
        Self { cache, clock, settings }
    }

    /// The lifetimes entries get.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Looks `key` up: from the cache when it holds a usable copy, otherwise
    /// from `load` (then caching its answer, `None` included). `load` is
    /// called at most once, and only by one of the requests that miss the
    /// same key at once; its error is returned only when no cached copy can
    /// stand in for it.
    pub fn remember<V, E>(
        &self,
        key: &str,
        mut load: impl FnMut() -> Result<Option<V>, E>,
    ) -> Result<Option<Remembered<V>>, E>
    where
        V: Serialize + DeserializeOwned,
        E: Debug,
    {
        match self.read(key) {
            Cached::Fresh(entry) => Ok(answer(entry, Source::Cache)),
            Cached::Due(entry, stored) => self.refresh(key, entry, &stored, &mut load),
            Cached::Missing(stored) => self.fill(key, stored.as_deref(), &mut load),
            Cached::WrongType => self.replace_unreadable(key, &mut load),
            Cached::Unusable => self.bypass(&mut load),
        }
    }

    /// Caches `value` as fresh at `key`, replacing whatever is cached: call
    /// it after writing the value to the source, so the next lookup sees
    /// it. If the cache cannot store it, the old copy is deleted; if it
    /// cannot do that either, the old copy ages out.
    pub fn replace<V: Serialize>(&self, key: &str, value: &V) {
        let entry = Entry {
            fresh_until: self.fresh_until(self.settings.ttl_seconds),
            compute_ms: 0,
            value: Some(value),
        };
        let (bytes, ttl) = self.encode(&entry);
        if let Err(error) = self.cache.set(key, &bytes, Some(ttl), false) {
            log(&format!("could not cache the new value of {key}: {error}"));
            if let Err(error) = self.cache.delete(&[key.to_owned()]) {
                log(&format!(
                    "could not invalidate {key} after an update; the old copy ages out: {error}"
                ));
            }
        }
    }

    /// Deletes the cached copy of `key`; whether there was one.
    pub fn forget(&self, key: &str) -> Result<bool, CacheError> {
        Ok(self.cache.delete(&[key.to_owned()])? > 0)
    }

    fn read<V: DeserializeOwned>(&self, key: &str) -> Cached<V> {
        let bytes = match self.cache.get(key) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Cached::Missing(None),
            Err(CacheError::WrongType) => {
                log(&format!("a value of another type is cached at {key}; replacing it"));
                return Cached::WrongType;
            }
            Err(error) => {
                // An outage is the host's to report (once, not per request).
                if !is_outage(&error) {
                    log(&format!("cache read of {key} failed, asking the source: {error}"));
                }
                return Cached::Unusable;
            }
        };
        let Ok(entry) = serde_json::from_slice::<Entry<V>>(&bytes) else {
            log(&format!("discarding an unreadable cached value at {key}"));
            return Cached::Missing(Some(bytes));
        };
        if self.due(&entry) {
            Cached::Due(entry, bytes)
        } else {
            Cached::Fresh(entry)
        }
    }

    /// XFetch: refresh with a probability that grows as expiry nears and with
    /// how long the source takes, so one request refreshes before everyone
    /// would have to.
    fn due<V>(&self, entry: &Entry<V>) -> bool {
        let now = self.clock.now_ms() as f64;
        let fresh_until = entry.fresh_until as f64;
        if now >= fresh_until {
            return true;
        }
        let scale = entry.compute_ms as f64 * self.settings.early_refresh_beta;
        // Far enough from expiry, no draw can make the entry due: most hits
        // then skip the draw, a host call.
        if now + scale * MAX_EXPONENTIAL_DRAW < fresh_until {
            return false;
        }
        now + scale * -self.clock.random().ln() >= fresh_until
    }

    /// One request refreshes a due entry; the others serve it as it is.
    fn refresh<V, E>(
        &self,
        key: &str,
        entry: Entry<V>,
        stored: &[u8],
        load: &mut impl FnMut() -> Result<Option<V>, E>,
    ) -> Result<Option<Remembered<V>>, E>
    where
        V: Serialize,
        E: Debug,
    {
        let expired = self.clock.now_ms() >= entry.fresh_until;
        let source_while_refreshing = if expired { Source::Stale } else { Source::Cache };
        let token = match self.try_lock(key) {
            Ok(Some(token)) => token,
            Ok(None) => return Ok(answer(entry, source_while_refreshing)),
            Err(error) => {
                log(&format!("cannot take the refresh lock of {key}: {error}"));
                return Ok(answer(entry, source_while_refreshing));
            }
        };
        let refreshed = self.load(key, Some(stored), load);
        self.unlock(key, &token);
        match refreshed {
            Ok(fresh) => Ok(answer(fresh, Source::Origin)),
            // Stale-if-error: the copy we have beats an error.
            Err(error) => {
                log(&format!("refreshing {key} failed, serving the cached copy: {error:?}"));
                Ok(answer(entry, Source::Stale))
            }
        }
    }

    /// On a miss: fill under the lock, or wait for whoever holds it.
    fn fill<V, E>(
        &self,
        key: &str,
        stored: Option<&[u8]>,
        load: &mut impl FnMut() -> Result<Option<V>, E>,
    ) -> Result<Option<Remembered<V>>, E>
    where
        V: Serialize + DeserializeOwned,
    {
        match self.try_lock(key) {
            Ok(Some(token)) => {
                let loaded = self.load(key, stored, load);
                self.unlock(key, &token);
                Ok(answer(loaded?, Source::Origin))
            }
            Ok(None) => {
                let deadline = self.clock.now_ms() + self.settings.fill_wait_ms;
                while self.clock.now_ms() < deadline {
                    self.clock.sleep_ms(POLL_INTERVAL_MS);
                    match self.read(key) {
                        Cached::Fresh(entry) | Cached::Due(entry, _) => {
                            return Ok(answer(entry, Source::Cache));
                        }
                        Cached::Missing(_) | Cached::WrongType => {}
                        Cached::Unusable => return self.bypass(load),
                    }
                }
                log(&format!(
                    "no fill of {key} within {} ms; asking the source",
                    self.settings.fill_wait_ms
                ));
                Ok(answer(self.load(key, stored, load)?, Source::Origin))
            }
            Err(error) => {
                log(&format!("cannot take the fill lock of {key}: {error}"));
                self.bypass(load)
            }
        }
    }

    /// Deletes a value the cache cannot read, then fills the entry as on a
    /// miss: without this, every lookup would bypass the cache until a
    /// replace overwrote the value.
    fn replace_unreadable<V, E>(
        &self,
        key: &str,
        load: &mut impl FnMut() -> Result<Option<V>, E>,
    ) -> Result<Option<Remembered<V>>, E>
    where
        V: Serialize + DeserializeOwned,
    {
        match self.cache.delete(&[key.to_owned()]) {
            Ok(_) => self.fill(key, None, load),
            Err(error) => {
                log(&format!("cannot delete the unreadable value at {key}: {error}"));
                self.bypass(load)
            }
        }
    }

    /// Without a usable cache: straight to the source, nothing stored.
    fn bypass<V, E>(&self, load: &mut impl FnMut() -> Result<Option<V>, E>) -> Result<Option<Remembered<V>>, E> {
        Ok(load()?.map(|value| Remembered {
            value,
            source: Source::Bypass,
        }))
    }

    /// Asks the source and caches what it says (including "absent"), unless
    /// the cached bytes changed from `previous` meanwhile: then a writer (a
    /// replace) got there first with something newer than this answer, and
    /// its copy stays.
    fn load<V: Serialize, E>(
        &self,
        key: &str,
        previous: Option<&[u8]>,
        load: &mut impl FnMut() -> Result<Option<V>, E>,
    ) -> Result<Entry<V>, E> {
        let started = self.clock.now_ms();
        let value = load()?;
        let compute_ms = self.clock.now_ms().saturating_sub(started);
        let ttl = if value.is_some() {
            self.settings.ttl_seconds
        } else {
            self.settings.negative_ttl_seconds
        };
        let entry = Entry {
            fresh_until: self.fresh_until(ttl),
            compute_ms,
            value,
        };
        let (bytes, ttl) = self.encode(&entry);
        match self.cache.compare_and_swap(key, previous, &bytes, Some(ttl)) {
            Ok(CasOutcome::Swapped) => {}
            Ok(CasOutcome::Conflict(_)) => log(&format!("a newer copy of {key} was cached meanwhile; keeping it")),
            Err(error) => log(&format!("could not cache {key}: {error}")),
        }
        Ok(entry)
    }

    /// An entry's bytes and the lifetime to store them for: values outlive
    /// freshness by the stale window; absences are not served stale.
    fn encode<V: Serialize>(&self, entry: &Entry<V>) -> (Vec<u8>, u64) {
        let bytes = serde_json::to_vec(entry).expect("an entry of serializable values always serializes");
        let ttl = match entry.value {
            Some(_) => self.settings.ttl_seconds + self.settings.stale_seconds,
            None => self.settings.negative_ttl_seconds,
        };
        (bytes, ttl)
    }

    fn fresh_until(&self, ttl_seconds: u64) -> u64 {
        self.clock.now_ms() + ttl_seconds * 1000
    }

    /// Takes the lock of `key`; its token when taken, `None` when another
    /// request holds it.
    fn try_lock(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        // 53 random bits and the time: unique among the lock's contenders.
        let bits = (self.clock.random() * (1u64 << 53) as f64) as u64;
        let token = format!("{bits:x}.{:x}", self.clock.now_ms()).into_bytes();
        let taken = self.cache.set(&lock_key(key), &token, Some(LOCK_TTL_SECONDS), true)?;
        Ok(taken.then_some(token))
    }

    fn unlock(&self, key: &str, token: &[u8]) {
        // A failed release only delays the next refresh by the lock's TTL;
        // a lock that holds another token is its successor's, and stays.
        let _ = self.cache.compare_and_delete(&lock_key(key), token);
    }
}

fn lock_key(key: &str) -> String {
    [key, ":lock"].concat()
}

fn answer<V>(entry: Entry<V>, source: Source) -> Option<Remembered<V>> {
    entry.value.map(|value| Remembered { value, source })
}

/// Whether a cache error says the cache is down or slow, rather than
/// something about this entry.
fn is_outage(error: &CacheError) -> bool {
    matches!(error, CacheError::Unavailable(_) | CacheError::Timeout)
}

/// Diagnostics go to stderr, which the host attributes to the request.
fn log(message: &str) {
    eprintln!("edge-cache guest: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::{ManualClock, MemoryCache};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    const ALICE: &str = r#"{"id":"alice","name":"Alice"}"#;

    /// The tests' source of truth: values by key, its reads counted.
    #[derive(Default)]
    struct Origin {
        values: RefCell<HashMap<String, String>>,
        reads: Cell<u32>,
        down: Cell<bool>,
    }

    impl Origin {
        fn with(values: &[(&str, &str)]) -> Self {
            let origin = Self::default();
            for (key, value) in values {
                origin
                    .values
                    .borrow_mut()
                    .insert((*key).to_owned(), (*value).to_owned());
            }
            origin
        }

        fn fetch(&self, key: &str) -> Result<Option<String>, String> {
            if self.down.get() {
                return Err("the origin is down".into());
            }
            self.reads.set(self.reads.get() + 1);
            Ok(self.values.borrow().get(key).cloned())
        }
    }

    /// Cache-aside in front of an [`Origin`], as a function would use it.
    struct Items<'h> {
        aside: CacheAside<'h, MemoryCache, ManualClock>,
        origin: &'h Origin,
    }

    impl Items<'_> {
        fn get(&self, key: &str) -> Result<Option<Remembered<String>>, String> {
            self.aside.remember(key, || self.origin.fetch(key))
        }

        /// Writes to the origin, then replaces the cached copy.
        fn update(&self, key: &str, value: &str) -> bool {
            let created = self
                .origin
                .values
                .borrow_mut()
                .insert(key.to_owned(), value.to_owned())
                .is_none();
            self.aside.replace(key, &value);
            created
        }
    }

    fn items<'h>(cache: &'h MemoryCache, origin: &'h Origin) -> Items<'h> {
        Items {
            aside: CacheAside::new(cache, &cache.clock, Settings::default()),
            origin,
        }
    }

    fn alice() -> (MemoryCache, Origin) {
        (MemoryCache::default(), Origin::with(&[("alice", ALICE)]))
    }

    fn source(lookup: Result<Option<Remembered<String>>, String>) -> Source {
        lookup.unwrap().unwrap().source
    }

    #[test]
    fn miss_then_hit_reads_the_origin_once() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        let first = items.get("alice").unwrap().unwrap();
        assert_eq!(
            first,
            Remembered {
                value: ALICE.into(),
                source: Source::Origin
            }
        );
        let second = items.get("alice").unwrap().unwrap();
        assert_eq!(
            second,
            Remembered {
                value: ALICE.into(),
                source: Source::Cache
            }
        );
        assert_eq!(origin.reads.get(), 1);
        // Fresh for 600 s, kept 60 s longer to serve stale.
        assert_eq!(cache.ttl_of("alice"), Some(Some(660)));
        assert_eq!(cache.keys(), ["alice"], "the fill lock is released");
    }

    #[test]
    fn stale_entries_are_served_while_one_request_refreshes() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        items.get("alice").unwrap();
        cache.clock.advance(600_000);
        // Another request holds the refresh lock: serve stale, no origin read.
        cache.set("alice:lock", b"1", Some(5), true).unwrap();
        assert_eq!(source(items.get("alice")), Source::Stale);
        assert_eq!(origin.reads.get(), 1);
        // Once the lock is free, the next request refreshes.
        cache.delete(&["alice:lock".into()]).unwrap();
        origin.values.borrow_mut().insert("alice".into(), r#"{"v":2}"#.into());
        let refreshed = items.get("alice").unwrap().unwrap();
        assert_eq!(
            refreshed,
            Remembered {
                value: r#"{"v":2}"#.into(),
                source: Source::Origin
            }
        );
        assert_eq!(source(items.get("alice")), Source::Cache);
        assert_eq!(origin.reads.get(), 2);
    }

    #[test]
    fn a_failed_refresh_serves_the_stale_copy() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        items.get("alice").unwrap();
        cache.clock.advance(601_000);
        origin.down.set(true);
        let lookup = items.get("alice").unwrap().unwrap();
        assert_eq!(
            lookup,
            Remembered {
                value: ALICE.into(),
                source: Source::Stale
            }
        );
    }

    #[test]
    fn past_the_stale_window_it_is_a_miss() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        items.get("alice").unwrap();
        cache.clock.advance(660_000);
        assert_eq!(source(items.get("alice")), Source::Origin);
    }

    /// Caches alice as fresh for `fresh_for_ms` more, read from an origin
    /// that took `compute_ms`.
    fn cache_alice(cache: &MemoryCache, fresh_for_ms: u64, compute_ms: u64) {
        let entry = Entry {
            fresh_until: cache.clock.now_ms() + fresh_for_ms,
            compute_ms,
            value: Some(ALICE.to_owned()),
        };
        let bytes = serde_json::to_vec(&entry).unwrap();
        cache.set("alice", &bytes, Some(100), false).unwrap();
    }

    #[test]
    fn xfetch_refreshes_early_with_probability_growing_near_expiry() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        // An origin read that took 2 s.
        cache_alice(&cache, 10_000, 2_000);
        // 10 s before expiry: refreshing early needs -2 s * ln(r) >= 10 s, r <= e^-5.
        cache.clock.random.set(0.01);
        assert_eq!(source(items.get("alice")), Source::Cache);
        cache.clock.random.set(0.006);
        assert_eq!(source(items.get("alice")), Source::Origin, "an early refresh");
        assert_eq!(origin.reads.get(), 1);
    }

    #[test]
    fn hits_far_from_expiry_draw_no_random_number() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        // An origin read that took 1 s: no draw refreshes more than ~37 s early.
        cache_alice(&cache, 60_000, 1_000);
        cache.clock.random.set(2f64.powi(-53));
        assert_eq!(source(items.get("alice")), Source::Cache);
        assert_eq!(cache.clock.draws.get(), 0);
        // 30 s before expiry, the least likely draw refreshes.
        cache.clock.advance(30_000);
        assert_eq!(source(items.get("alice")), Source::Origin);
        assert_eq!(
            cache.clock.draws.get(),
            2,
            "XFetch's draw, and the refresh lock's token"
        );
    }

    #[test]
    fn a_lock_is_released_only_by_its_holder() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        // The holder's lock expired during a slow origin read and another
        // request took it: the first holder's release leaves it alone.
        *cache.interleave.borrow_mut() = Some(Box::new(|cache: &MemoryCache| {
            if origin_is_being_read(cache) {
                cache.insert_raw("alice:lock", b"successor");
            }
        }));
        assert_eq!(source(items.get("alice")), Source::Origin);
        *cache.interleave.borrow_mut() = None;
        assert_eq!(cache.raw("alice:lock").as_deref(), Some(&b"successor"[..]));
    }

    /// Whether the fill lock is taken and the entry not yet written: the
    /// window of the origin read.
    fn origin_is_being_read(cache: &MemoryCache) -> bool {
        cache.raw("alice:lock").is_some() && cache.raw("alice").is_none()
    }

    #[test]
    fn a_value_of_another_type_is_replaced_by_the_next_fill() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        cache.insert_wrong_type("alice");
        assert_eq!(source(items.get("alice")), Source::Origin);
        assert_eq!(source(items.get("alice")), Source::Cache);
        assert_eq!(origin.reads.get(), 1);
    }

    #[test]
    fn xfetch_can_be_disabled() {
        let (cache, origin) = alice();
        let settings = Settings {
            early_refresh_beta: 0.0,
            ..Settings::default()
        };
        let items = Items {
            aside: CacheAside::new(&cache, &cache.clock, settings),
            origin: &origin,
        };
        items.get("alice").unwrap();
        cache.clock.random.set(f64::MIN_POSITIVE);
        cache.clock.advance(599_999);
        assert_eq!(source(items.get("alice")), Source::Cache);
    }

    #[test]
    fn misses_wait_for_the_fill_instead_of_reading_the_origin() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        // Another request holds the fill lock and fills after 100 ms.
        cache.set("alice:lock", b"1", Some(5), true).unwrap();
        let filled_at = cache.clock.now_ms() + 100;
        let entry = serde_json::to_vec(&Entry {
            fresh_until: filled_at + 600_000,
            compute_ms: 100,
            value: Some(ALICE.to_owned()),
        })
        .unwrap();
        *cache.interleave.borrow_mut() = Some(Box::new(move |cache: &MemoryCache| {
            if cache.clock.now_ms() >= filled_at && cache.raw("alice").is_none() {
                cache.insert_raw("alice", &entry);
            }
        }));
        let lookup = items.get("alice").unwrap().unwrap();
        assert_eq!(lookup.source, Source::Cache);
        assert_eq!(origin.reads.get(), 0);
    }

    #[test]
    fn waiting_is_bounded() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        cache.set("alice:lock", b"1", Some(5), true).unwrap();
        let started = cache.clock.now_ms();
        assert_eq!(source(items.get("alice")), Source::Origin);
        assert_eq!(origin.reads.get(), 1);
        let waited = cache.clock.now_ms() - started;
        assert!((1000..1000 + POLL_INTERVAL_MS).contains(&waited), "waited {waited} ms");
    }

    #[test]
    fn unknown_ids_are_remembered_as_absent() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        assert_eq!(items.get("nobody").unwrap(), None);
        assert_eq!(items.get("nobody").unwrap(), None);
        assert_eq!(origin.reads.get(), 1);
        assert_eq!(cache.ttl_of("nobody"), Some(Some(30)));
        cache.clock.advance(30_000);
        assert_eq!(items.get("nobody").unwrap(), None);
        assert_eq!(origin.reads.get(), 2);
    }

    #[test]
    fn update_replaces_the_cached_copy() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        items.get("alice").unwrap();
        let alicia = r#"{"id":"alice","name":"Alicia"}"#;
        assert!(!items.update("alice", alicia));
        assert_eq!(
            items.get("alice").unwrap().unwrap(),
            Remembered {
                value: alicia.to_owned(),
                source: Source::Cache
            }
        );
        assert_eq!(origin.reads.get(), 1);
    }

    #[test]
    fn a_slow_refresh_never_overwrites_a_newer_update() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        items.get("alice").unwrap();
        cache.clock.advance(600_000);
        // While this request refreshes (between its origin read and its
        // write), another instance updates the profile.
        *cache.interleave.borrow_mut() = Some(Box::new(|cache: &MemoryCache| {
            if cache.raw("alice:lock").is_some() && cache.raw("updated").is_none() {
                cache.insert_raw("updated", b"1");
                let entry = Entry {
                    fresh_until: cache.clock.now_ms() + 600_000,
                    compute_ms: 0,
                    value: Some(r#"{"v":2}"#.to_owned()),
                };
                cache.insert_raw("alice", &serde_json::to_vec(&entry).unwrap());
            }
        }));
        let refreshed = items.get("alice").unwrap().unwrap();
        assert_eq!(
            refreshed.source,
            Source::Origin,
            "the refresh answers with what the origin said"
        );
        *cache.interleave.borrow_mut() = None;
        assert_eq!(
            items.get("alice").unwrap().unwrap().value,
            r#"{"v":2}"#,
            "the update's copy stays"
        );
    }

    #[test]
    fn update_of_a_remembered_absence_creates_it() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        assert_eq!(items.get("bob").unwrap(), None);
        assert!(items.update("bob", r#"{"name":"Bob"}"#));
        assert_eq!(items.get("bob").unwrap().unwrap().value, r#"{"name":"Bob"}"#);
    }

    #[test]
    fn cache_failure_bypasses_to_the_origin() {
        let (cache, origin) = alice();
        *cache.failure.borrow_mut() = Some(CacheError::Timeout);
        let items = items(&cache, &origin);
        assert_eq!(
            items.get("alice").unwrap().unwrap(),
            Remembered {
                value: ALICE.into(),
                source: Source::Bypass
            }
        );
        assert_eq!(items.get("nobody").unwrap(), None);
        items.update("alice", r#"{"v":2}"#);
        assert_eq!(origin.values.borrow()["alice"], r#"{"v":2}"#);
    }

    #[test]
    fn corrupt_or_foreign_values_are_misses_and_overwritten() {
        let (cache, origin) = alice();
        let items = items(&cache, &origin);
        let envelope_of_an_array = br#"{"fresh_until":99999999999999,"compute_ms":0,"value":[1]}"#;
        for junk in [
            &b"\xff\xfe"[..],
            b"[1]",
            b"{trunc",
            br#"{"id":"alice"}"#,
            envelope_of_an_array,
        ] {
            cache.insert_raw("alice", junk);
            assert_eq!(source(items.get("alice")), Source::Origin, "{junk:?}");
            assert_eq!(source(items.get("alice")), Source::Cache);
        }
    }

    #[test]
    fn origin_failure_on_a_miss_is_an_error() {
        let (cache, origin) = alice();
        origin.down.set(true);
        assert_eq!(
            items(&cache, &origin).get("alice"),
            Err("the origin is down".to_owned())
        );
        assert!(cache.keys().is_empty(), "nothing cached, the lock released");
    }
}
