//! Cache-aside profile lookup that never stampedes.
//!
//! - A hit returns the cached copy. Entries carry a soft expiry: past it (or
//!   a little before, by probabilistic early refresh, "XFetch"), one request
//!   refreshes from the origin while the others keep getting the cached copy
//!   (`Source::Stale`). If the refresh fails, the stale copy is served.
//! - On a miss, one request fills the entry under a short lock key (set only
//!   if absent, with a TTL); the others poll the cache for the fill for up to
//!   `fill_wait_ms`, then go to the origin themselves. So a burst of misses on
//!   one key reaches the origin once, or once per waiter that outlasts the
//!   wait (bounded by the burst size, and in practice never with a healthy
//!   origin).
//! - Unknown ids are cached as absent for `negative_ttl_seconds`.
//! - Writes go to the origin, then replace the cached copy.
//! - The cache is never the source of truth: a cache failure means asking
//!   the origin (`Source::Bypass`); a cached value that does not decode is a
//!   miss, overwritten by the fill, and a value the cache cannot even read
//!   as bytes (`wrong-type`: a Redis list written by someone else) is
//!   deleted, then filled like a miss.
//! - A lock holds a random token, and only a request holding that token
//!   releases it (`compare-and-delete`): one that outlived the lock's TTL
//!   cannot release its successor's lock.

use crate::host::{Cache, CacheError, CasOutcome, Clock, Origin, OriginError};
pub use edge_cache_contract::cache_aside::Settings;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// The longest accepted profile id.
pub const MAX_ID_LEN: usize = 64;

/// Cache keys carry a format version: a new entry format gets new keys and
/// can never misread old entries.
pub const KEY_PREFIX: &str = "profile:v1:";

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
    Cache,
    Origin,
    Stale,
    Bypass,
}

/// A profile (the text of a JSON object) and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub profile: String,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileError {
    InvalidId(String),
    InvalidProfile(String),
    OriginUnavailable(String),
}

impl From<OriginError> for ProfileError {
    fn from(error: OriginError) -> Self {
        match error {
            OriginError::Unavailable(why) => Self::OriginUnavailable(why),
            OriginError::InvalidProfile(why) => Self::InvalidProfile(why),
        }
    }
}

/// The cached form of a lookup.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// Fresh until this millisecond (Unix epoch).
    fresh_until: u64,
    /// How long the origin took to answer, for early refresh.
    compute_ms: u64,
    /// The profile; `None` caches its absence.
    profile: Option<ProfileJson>,
}

/// A profile: the compact text of a JSON object. Kept as text in the cached
/// entry, so a hit answers with it as it is instead of rebuilding the object
/// and printing it again.
pub type ProfileJson = Box<RawValue>;

impl Entry {
    /// Whether a decoded entry is one this module wrote: its profile, if
    /// any, is an object.
    fn is_well_formed(&self) -> bool {
        self.profile
            .as_ref()
            .is_none_or(|profile| profile.get().starts_with('{'))
    }
}

/// The cache key of a profile.
pub fn cache_key(id: &str) -> String {
    [KEY_PREFIX, id].concat()
}

fn lock_key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}:lock")
}

/// Checks that `id` is 1 to 64 characters of `A-Z a-z 0-9 _ -`, so it can
/// neither escape its key prefix nor smuggle separators into the cache.
pub fn validate_id(id: &str) -> Result<(), ProfileError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ProfileError::InvalidId(format!(
            "a profile id has 1 to {MAX_ID_LEN} characters, not {}",
            id.len()
        )));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(c) => Err(ProfileError::InvalidId(format!(
            "a profile id may only contain A-Z, a-z, 0-9, '_' and '-', not {c:?}"
        ))),
        None => Ok(()),
    }
}

/// Parses `text` as a JSON object and returns it in compact form.
pub fn parse_profile(text: &str) -> Result<ProfileJson, ProfileError> {
    match serde_json::from_str::<Value>(text) {
        Ok(object @ Value::Object(_)) => {
            Ok(serde_json::value::to_raw_value(&object).expect("a JSON value always serializes"))
        }
        Ok(_) => Err(ProfileError::InvalidProfile("a profile must be a JSON object".into())),
        Err(e) => Err(ProfileError::InvalidProfile(format!("not valid JSON: {e}"))),
    }
}

/// What a lookup found in the cache.
enum Cached {
    Fresh(Entry),
    /// Past freshness, or chosen for early refresh; with the stored bytes.
    Due(Entry, Vec<u8>),
    /// Nothing usable: absent, or bytes that do not decode (given).
    Missing(Option<Vec<u8>>),
    /// A value the cache cannot read as bytes.
    WrongType,
    Unusable,
}

/// Profile lookups through a cache in front of an origin.
pub struct Profiles<'h, C, O, K> {
    pub cache: &'h C,
    pub origin: &'h O,
    pub clock: &'h K,
    pub settings: Settings,
}

impl<C: Cache, O: Origin, K: Clock> Profiles<'_, C, O, K> {
    /// Looks `id` up; `None` when the origin has no such profile.
    pub fn get(&self, id: &str) -> Result<Option<Lookup>, ProfileError> {
        validate_id(id)?;
        match self.read(id) {
            Cached::Fresh(entry) => Ok(answer(entry, Source::Cache)),
            Cached::Due(entry, stored) => self.refresh(id, entry, &stored),
            Cached::Missing(stored) => self.fill(id, stored.as_deref()),
            Cached::WrongType => self.replace_unreadable(id),
            Cached::Unusable => self.bypass(id),
        }
    }

    /// Stores `profile` at the origin, then replaces the cached copy, so the
    /// next read sees it. Returns the stored (compact) profile and whether it
    /// was created.
    pub fn update(&self, id: &str, profile: &str) -> Result<(String, bool), ProfileError> {
        validate_id(id)?;
        let profile = parse_profile(profile)?;
        let text = profile.get().to_owned();
        let created = self.origin.update(id, &text)?;
        let entry = Entry {
            fresh_until: self.fresh_until(self.settings.ttl_seconds),
            compute_ms: 0,
            profile: Some(profile),
        };
        if let Err(error) = self.store(id, &entry) {
            // Replacing failed; at least drop the old copy.
            log(&format!("could not cache the update of {id}: {error}"));
            if let Err(error) = self.cache.delete(&[cache_key(id)]) {
                log(&format!(
                    "could not invalidate {id} after an update; the old copy ages out: {error}"
                ));
            }
        }
        Ok((text, created))
    }

    fn read(&self, id: &str) -> Cached {
        let bytes = match self.cache.get(&cache_key(id)) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Cached::Missing(None),
            Err(CacheError::WrongType) => {
                log(&format!("a value of another type is cached for {id}; replacing it"));
                return Cached::WrongType;
            }
            Err(error) => {
                // An outage is the host's to report (once, not per request).
                if !is_outage(&error) {
                    log(&format!("cache read of {id} failed, asking the origin: {error}"));
                }
                return Cached::Unusable;
            }
        };
        let Some(entry) = serde_json::from_slice::<Entry>(&bytes)
            .ok()
            .filter(Entry::is_well_formed)
        else {
            log(&format!("discarding an unreadable cached value for {id}"));
            return Cached::Missing(Some(bytes));
        };
        if self.due(&entry) {
            Cached::Due(entry, bytes)
        } else {
            Cached::Fresh(entry)
        }
    }

    /// XFetch: refresh with a probability that grows as expiry nears and with
    /// how long the origin takes, so one request refreshes before everyone
    /// would have to.
    fn due(&self, entry: &Entry) -> bool {
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
    fn refresh(&self, id: &str, entry: Entry, stored: &[u8]) -> Result<Option<Lookup>, ProfileError> {
        let expired = self.clock.now_ms() >= entry.fresh_until;
        let source_while_refreshing = if expired { Source::Stale } else { Source::Cache };
        let token = match self.try_lock(id) {
            Ok(Some(token)) => token,
            Ok(None) => return Ok(answer(entry, source_while_refreshing)),
            Err(error) => {
                log(&format!("cannot take the refresh lock of {id}: {error}"));
                return Ok(answer(entry, source_while_refreshing));
            }
        };
        let refreshed = self.load(id, Some(stored));
        self.unlock(id, &token);
        match refreshed {
            Ok(fresh) => Ok(answer(fresh, Source::Origin)),
            // Stale-if-error: the copy we have beats an error.
            Err(error) => {
                log(&format!("refreshing {id} failed, serving the cached copy: {error:?}"));
                Ok(answer(entry, Source::Stale))
            }
        }
    }

    /// On a miss: fill under the lock, or wait for whoever holds it.
    fn fill(&self, id: &str, stored: Option<&[u8]>) -> Result<Option<Lookup>, ProfileError> {
        match self.try_lock(id) {
            Ok(Some(token)) => {
                let loaded = self.load(id, stored);
                self.unlock(id, &token);
                Ok(answer(loaded?, Source::Origin))
            }
            Ok(None) => {
                let deadline = self.clock.now_ms() + self.settings.fill_wait_ms;
                while self.clock.now_ms() < deadline {
                    self.clock.sleep_ms(POLL_INTERVAL_MS);
                    match self.read(id) {
                        Cached::Fresh(entry) | Cached::Due(entry, _) => {
                            return Ok(answer(entry, Source::Cache));
                        }
                        Cached::Missing(_) | Cached::WrongType => {}
                        Cached::Unusable => return self.bypass(id),
                    }
                }
                log(&format!(
                    "no fill of {id} within {} ms; asking the origin",
                    self.settings.fill_wait_ms
                ));
                Ok(answer(self.load(id, stored)?, Source::Origin))
            }
            Err(error) => {
                log(&format!("cannot take the fill lock of {id}: {error}"));
                self.bypass(id)
            }
        }
    }

    /// Deletes a value the cache cannot read, then fills the entry as on a
    /// miss: without this, every lookup would bypass the cache until an
    /// update replaced the value.
    fn replace_unreadable(&self, id: &str) -> Result<Option<Lookup>, ProfileError> {
        match self.cache.delete(&[cache_key(id)]) {
            Ok(_) => self.fill(id, None),
            Err(error) => {
                log(&format!("cannot delete the unreadable value of {id}: {error}"));
                self.bypass(id)
            }
        }
    }

    /// Without a usable cache: straight to the origin, nothing stored.
    fn bypass(&self, id: &str) -> Result<Option<Lookup>, ProfileError> {
        let profile = self.fetch(id)?.0;
        Ok(profile.map(|profile| Lookup {
            profile: profile_text(profile),
            source: Source::Bypass,
        }))
    }

    /// Asks the origin and caches what it says (including "absent"), unless
    /// the cached bytes changed from `previous` meanwhile: then a writer (an
    /// update) got there first with something newer than this answer, and
    /// its copy stays.
    fn load(&self, id: &str, previous: Option<&[u8]>) -> Result<Entry, ProfileError> {
        let (profile, compute_ms) = self.fetch(id)?;
        let ttl = if profile.is_some() {
            self.settings.ttl_seconds
        } else {
            self.settings.negative_ttl_seconds
        };
        let entry = Entry {
            fresh_until: self.fresh_until(ttl),
            compute_ms,
            profile,
        };
        let (bytes, ttl) = self.encode(&entry);
        match self.cache.compare_and_swap(&cache_key(id), previous, &bytes, Some(ttl)) {
            Ok(CasOutcome::Swapped) => {}
            Ok(CasOutcome::Conflict(_)) => log(&format!("a newer copy of {id} was cached meanwhile; keeping it")),
            Err(error) => log(&format!("could not cache {id}: {error}")),
        }
        Ok(entry)
    }

    fn fetch(&self, id: &str) -> Result<(Option<ProfileJson>, u64), ProfileError> {
        let started = self.clock.now_ms();
        let text = self.origin.fetch(id)?;
        let compute_ms = self.clock.now_ms().saturating_sub(started);
        let profile = match text {
            None => None,
            Some(text) => Some(parse_profile(&text).map_err(|_| {
                ProfileError::OriginUnavailable(format!(
                    "the origin returned a profile for {id} that is not a JSON object"
                ))
            })?),
        };
        Ok((profile, compute_ms))
    }

    /// Writes `entry`, replacing whatever is cached.
    fn store(&self, id: &str, entry: &Entry) -> Result<(), CacheError> {
        let (bytes, ttl) = self.encode(entry);
        self.cache.set(&cache_key(id), &bytes, Some(ttl), false).map(drop)
    }

    /// An entry's bytes and the lifetime to store them for: positive entries
    /// outlive freshness by the stale window; absences are not served stale.
    fn encode(&self, entry: &Entry) -> (Vec<u8>, u64) {
        let bytes = serde_json::to_vec(entry).expect("an entry of JSON values always serializes");
        let ttl = match entry.profile {
            Some(_) => self.settings.ttl_seconds + self.settings.stale_seconds,
            None => self.settings.negative_ttl_seconds,
        };
        (bytes, ttl)
    }

    fn fresh_until(&self, ttl_seconds: u64) -> u64 {
        self.clock.now_ms() + ttl_seconds * 1000
    }

    /// Takes the lock of `id`; its token when taken, `None` when another
    /// request holds it.
    fn try_lock(&self, id: &str) -> Result<Option<Vec<u8>>, CacheError> {
        // 53 random bits and the time: unique among the lock's contenders.
        let bits = (self.clock.random() * (1u64 << 53) as f64) as u64;
        let token = format!("{bits:x}.{:x}", self.clock.now_ms()).into_bytes();
        let taken = self.cache.set(&lock_key(id), &token, Some(LOCK_TTL_SECONDS), true)?;
        Ok(taken.then_some(token))
    }

    fn unlock(&self, id: &str, token: &[u8]) {
        // A failed release only delays the next refresh by the lock's TTL;
        // a lock that holds another token is its successor's, and stays.
        let _ = self.cache.compare_and_delete(&lock_key(id), token);
    }
}

fn answer(entry: Entry, source: Source) -> Option<Lookup> {
    entry.profile.map(|profile| Lookup {
        profile: profile_text(profile),
        source,
    })
}

fn profile_text(profile: ProfileJson) -> String {
    Box::<str>::from(profile).into_string()
}

/// Whether a cache error says the cache is down or slow, rather than
/// something about this entry.
fn is_outage(error: &CacheError) -> bool {
    matches!(error, CacheError::Unavailable(_) | CacheError::Timeout)
}

/// Guest diagnostics go to stderr, which the host attributes to the request.
fn log(message: &str) {
    eprintln!("edge-cache guest: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::memory::{MemoryCache, MemoryOrigin};

    const ALICE: &str = r#"{"id":"alice","name":"Alice"}"#;

    fn profiles<'h>(
        cache: &'h MemoryCache,
        origin: &'h MemoryOrigin,
    ) -> Profiles<'h, MemoryCache, MemoryOrigin, crate::host::memory::ManualClock> {
        Profiles {
            cache,
            origin,
            clock: &cache.clock,
            settings: Settings::default(),
        }
    }

    fn alice() -> (MemoryCache, MemoryOrigin) {
        (MemoryCache::default(), MemoryOrigin::with(&[("alice", ALICE)]))
    }

    fn source(lookup: Result<Option<Lookup>, ProfileError>) -> Source {
        lookup.unwrap().unwrap().source
    }

    #[test]
    fn miss_then_hit_reads_the_origin_once() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        let first = profiles.get("alice").unwrap().unwrap();
        assert_eq!(
            first,
            Lookup {
                profile: ALICE.into(),
                source: Source::Origin
            }
        );
        let second = profiles.get("alice").unwrap().unwrap();
        assert_eq!(
            second,
            Lookup {
                profile: ALICE.into(),
                source: Source::Cache
            }
        );
        assert_eq!(origin.reads.get(), 1);
        // Fresh for 600 s, kept 60 s longer to serve stale.
        assert_eq!(cache.ttl_of("profile:v1:alice"), Some(Some(660)));
        assert_eq!(cache.keys(), ["profile:v1:alice"], "the fill lock is released");
    }

    #[test]
    fn stale_entries_are_served_while_one_request_refreshes() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        profiles.get("alice").unwrap();
        cache.clock.advance(600_000);
        // Another request holds the refresh lock: serve stale, no origin read.
        cache.set("profile:v1:alice:lock", b"1", Some(5), true).unwrap();
        assert_eq!(source(profiles.get("alice")), Source::Stale);
        assert_eq!(origin.reads.get(), 1);
        // Once the lock is free, the next request refreshes.
        cache.delete(&["profile:v1:alice:lock".into()]).unwrap();
        origin.profiles.borrow_mut().insert("alice".into(), r#"{"v":2}"#.into());
        let refreshed = profiles.get("alice").unwrap().unwrap();
        assert_eq!(
            refreshed,
            Lookup {
                profile: r#"{"v":2}"#.into(),
                source: Source::Origin
            }
        );
        assert_eq!(source(profiles.get("alice")), Source::Cache);
        assert_eq!(origin.reads.get(), 2);
    }

    #[test]
    fn a_failed_refresh_serves_the_stale_copy() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        profiles.get("alice").unwrap();
        cache.clock.advance(601_000);
        origin.down.set(true);
        let lookup = profiles.get("alice").unwrap().unwrap();
        assert_eq!(
            lookup,
            Lookup {
                profile: ALICE.into(),
                source: Source::Stale
            }
        );
    }

    #[test]
    fn past_the_stale_window_it_is_a_miss() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        profiles.get("alice").unwrap();
        cache.clock.advance(660_000);
        assert_eq!(source(profiles.get("alice")), Source::Origin);
    }

    /// Caches alice as fresh for `fresh_for_ms` more, read from an origin
    /// that took `compute_ms`.
    fn cache_alice(cache: &MemoryCache, fresh_for_ms: u64, compute_ms: u64) {
        let entry = Entry {
            fresh_until: cache.clock.now_ms() + fresh_for_ms,
            compute_ms,
            profile: Some(parse_profile(ALICE).unwrap()),
        };
        let bytes = serde_json::to_vec(&entry).unwrap();
        cache.set("profile:v1:alice", &bytes, Some(100), false).unwrap();
    }

    #[test]
    fn xfetch_refreshes_early_with_probability_growing_near_expiry() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        // An origin read that took 2 s.
        cache_alice(&cache, 10_000, 2_000);
        // 10 s before expiry: refreshing early needs -2 s * ln(r) >= 10 s, r <= e^-5.
        cache.clock.random.set(0.01);
        assert_eq!(source(profiles.get("alice")), Source::Cache);
        cache.clock.random.set(0.006);
        assert_eq!(source(profiles.get("alice")), Source::Origin, "an early refresh");
        assert_eq!(origin.reads.get(), 1);
    }

    #[test]
    fn hits_far_from_expiry_draw_no_random_number() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        // An origin read that took 1 s: no draw refreshes more than ~37 s early.
        cache_alice(&cache, 60_000, 1_000);
        cache.clock.random.set(2f64.powi(-53));
        assert_eq!(source(profiles.get("alice")), Source::Cache);
        assert_eq!(cache.clock.draws.get(), 0);
        // 30 s before expiry, the least likely draw refreshes.
        cache.clock.advance(30_000);
        assert_eq!(source(profiles.get("alice")), Source::Origin);
        assert_eq!(
            cache.clock.draws.get(),
            2,
            "XFetch's draw, and the refresh lock's token"
        );
    }

    #[test]
    fn a_lock_is_released_only_by_its_holder() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        // The holder's lock expired during a slow origin read and another
        // request took it: the first holder's release leaves it alone.
        *cache.interleave.borrow_mut() = Some(Box::new(|cache: &MemoryCache| {
            if origin_is_being_read(cache) {
                cache.insert_raw("profile:v1:alice:lock", b"successor");
            }
        }));
        assert_eq!(source(profiles.get("alice")), Source::Origin);
        *cache.interleave.borrow_mut() = None;
        assert_eq!(cache.raw("profile:v1:alice:lock").as_deref(), Some(&b"successor"[..]));
    }

    /// Whether the fill lock is taken and the entry not yet written: the
    /// window of the origin read.
    fn origin_is_being_read(cache: &MemoryCache) -> bool {
        cache.raw("profile:v1:alice:lock").is_some() && cache.raw("profile:v1:alice").is_none()
    }

    #[test]
    fn a_value_of_another_type_is_replaced_by_the_next_fill() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        cache.insert_wrong_type("profile:v1:alice");
        assert_eq!(source(profiles.get("alice")), Source::Origin);
        assert_eq!(source(profiles.get("alice")), Source::Cache);
        assert_eq!(origin.reads.get(), 1);
    }

    #[test]
    fn xfetch_can_be_disabled() {
        let (cache, origin) = alice();
        let profiles = Profiles {
            settings: Settings {
                early_refresh_beta: 0.0,
                ..Settings::default()
            },
            ..profiles(&cache, &origin)
        };
        profiles.get("alice").unwrap();
        cache.clock.random.set(f64::MIN_POSITIVE);
        cache.clock.advance(599_999);
        assert_eq!(source(profiles.get("alice")), Source::Cache);
    }

    #[test]
    fn misses_wait_for_the_fill_instead_of_reading_the_origin() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        // Another request holds the fill lock and fills after 100 ms.
        cache.set("profile:v1:alice:lock", b"1", Some(5), true).unwrap();
        let filled_at = cache.clock.now_ms() + 100;
        let entry = serde_json::to_vec(&Entry {
            fresh_until: filled_at + 600_000,
            compute_ms: 100,
            profile: Some(parse_profile(ALICE).unwrap()),
        })
        .unwrap();
        *cache.interleave.borrow_mut() = Some(Box::new(move |cache: &MemoryCache| {
            if cache.clock.now_ms() >= filled_at && cache.raw("profile:v1:alice").is_none() {
                cache.insert_raw("profile:v1:alice", &entry);
            }
        }));
        let lookup = profiles.get("alice").unwrap().unwrap();
        assert_eq!(lookup.source, Source::Cache);
        assert_eq!(origin.reads.get(), 0);
    }

    #[test]
    fn waiting_is_bounded() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        cache.set("profile:v1:alice:lock", b"1", Some(5), true).unwrap();
        let started = cache.clock.now_ms();
        assert_eq!(source(profiles.get("alice")), Source::Origin);
        assert_eq!(origin.reads.get(), 1);
        let waited = cache.clock.now_ms() - started;
        assert!((1000..1000 + POLL_INTERVAL_MS).contains(&waited), "waited {waited} ms");
    }

    #[test]
    fn unknown_ids_are_remembered_as_absent() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        assert_eq!(profiles.get("nobody").unwrap(), None);
        assert_eq!(profiles.get("nobody").unwrap(), None);
        assert_eq!(origin.reads.get(), 1);
        assert_eq!(cache.ttl_of("profile:v1:nobody"), Some(Some(30)));
        cache.clock.advance(30_000);
        assert_eq!(profiles.get("nobody").unwrap(), None);
        assert_eq!(origin.reads.get(), 2);
    }

    #[test]
    fn update_replaces_the_cached_copy() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        profiles.get("alice").unwrap();
        let (stored, created) = profiles
            .update("alice", r#"{ "id": "alice", "name": "Alicia" }"#)
            .unwrap();
        assert!(!created);
        assert_eq!(stored, r#"{"id":"alice","name":"Alicia"}"#);
        assert_eq!(
            profiles.get("alice").unwrap().unwrap(),
            Lookup {
                profile: stored,
                source: Source::Cache
            }
        );
        assert_eq!(origin.reads.get(), 1);
    }

    #[test]
    fn a_slow_refresh_never_overwrites_a_newer_update() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        profiles.get("alice").unwrap();
        cache.clock.advance(600_000);
        // While this request refreshes (between its origin read and its
        // write), another instance updates the profile.
        *cache.interleave.borrow_mut() = Some(Box::new(|cache: &MemoryCache| {
            if cache.raw("profile:v1:alice:lock").is_some() && cache.raw("updated").is_none() {
                cache.insert_raw("updated", b"1");
                let entry = Entry {
                    fresh_until: cache.clock.now_ms() + 600_000,
                    compute_ms: 0,
                    profile: Some(parse_profile(r#"{"v":2}"#).unwrap()),
                };
                cache.insert_raw("profile:v1:alice", &serde_json::to_vec(&entry).unwrap());
            }
        }));
        let refreshed = profiles.get("alice").unwrap().unwrap();
        assert_eq!(
            refreshed.source,
            Source::Origin,
            "the refresh answers with what the origin said"
        );
        *cache.interleave.borrow_mut() = None;
        assert_eq!(
            profiles.get("alice").unwrap().unwrap().profile,
            r#"{"v":2}"#,
            "the update's copy stays"
        );
    }

    #[test]
    fn update_of_a_remembered_absence_creates_it() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        assert_eq!(profiles.get("bob").unwrap(), None);
        let (_, created) = profiles.update("bob", r#"{"name":"Bob"}"#).unwrap();
        assert!(created);
        assert_eq!(profiles.get("bob").unwrap().unwrap().profile, r#"{"name":"Bob"}"#);
    }

    #[test]
    fn update_rejects_non_objects_without_touching_anything() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        for bad in ["[1,2]", "\"text\"", "{not json", ""] {
            assert!(
                matches!(profiles.update("alice", bad), Err(ProfileError::InvalidProfile(_))),
                "{bad}"
            );
        }
        assert_eq!(origin.profiles.borrow()["alice"], ALICE);
        assert_eq!(cache.calls.get(), 0);
    }

    #[test]
    fn ids_are_validated_before_any_io() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad in ["", "a:b", "a b", "../x", "ü", long.as_str()] {
            assert!(matches!(profiles.get(bad), Err(ProfileError::InvalidId(_))), "{bad:?}");
        }
        assert_eq!(cache.calls.get(), 0);
        assert!(profiles.get(&"x".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn cache_failure_bypasses_to_the_origin() {
        let (cache, origin) = alice();
        *cache.failure.borrow_mut() = Some(CacheError::Timeout);
        let profiles = profiles(&cache, &origin);
        assert_eq!(
            profiles.get("alice").unwrap().unwrap(),
            Lookup {
                profile: ALICE.into(),
                source: Source::Bypass
            }
        );
        assert_eq!(profiles.get("nobody").unwrap(), None);
        profiles.update("alice", r#"{"v":2}"#).unwrap();
        assert_eq!(origin.profiles.borrow()["alice"], r#"{"v":2}"#);
    }

    #[test]
    fn corrupt_or_foreign_values_are_misses_and_overwritten() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        let envelope_of_an_array = br#"{"fresh_until":99999999999999,"compute_ms":0,"profile":[1]}"#;
        for junk in [
            &b"\xff\xfe"[..],
            b"[1]",
            b"{trunc",
            br#"{"id":"alice"}"#,
            envelope_of_an_array,
        ] {
            cache.insert_raw("profile:v1:alice", junk);
            assert_eq!(source(profiles.get("alice")), Source::Origin, "{junk:?}");
            assert_eq!(source(profiles.get("alice")), Source::Cache);
        }
    }

    #[test]
    fn origin_failure_on_a_miss_is_an_error() {
        let (cache, origin) = alice();
        origin.down.set(true);
        assert!(matches!(
            profiles(&cache, &origin).get("alice"),
            Err(ProfileError::OriginUnavailable(_))
        ));
        assert!(cache.keys().is_empty(), "nothing cached, the lock released");
    }
}
