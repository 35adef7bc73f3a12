//! Profile lookup: the SDK's cache-aside in front of the origin, for ids
//! that are checked before any I/O and profiles that are JSON objects.
//!
//! Profiles are cached at `profile:v2:{id}` (see
//! [`edge_cache_sdk::cache_aside`] for the envelope, the lock and the
//! lifetimes). The `v2` is the format version: a new format gets new keys and
//! can never misread old entries (`v1` named the envelope's value `profile`).

use crate::origin::{Origin, OriginError};
use edge_cache_sdk::cache_aside::{CacheAside, Settings, Source};
use edge_cache_sdk::{Cache, Clock};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// The longest accepted profile id.
pub const MAX_ID_LEN: usize = 64;

/// What every profile's cache key starts with.
pub const KEY_PREFIX: &str = "profile:v2:";

/// A profile and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The text of a JSON object.
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

/// A profile: the compact text of a JSON object. Kept as text in the cached
/// entry, so a hit answers with it as it is instead of rebuilding the object
/// and printing it again. A cached value that is not an object does not
/// decode, so it is a miss, replaced by the fill.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ProfileJson(Box<RawValue>);

impl<'de> Deserialize<'de> for ProfileJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        match raw.get().starts_with('{') {
            true => Ok(Self(raw)),
            false => Err(D::Error::custom("a profile is a JSON object")),
        }
    }
}

impl ProfileJson {
    fn into_string(self) -> String {
        Box::<str>::from(self.0).into_string()
    }
}

/// The cache key of a profile.
pub fn cache_key(id: &str) -> String {
    [KEY_PREFIX, id].concat()
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
        Ok(object @ Value::Object(_)) => Ok(ProfileJson(
            serde_json::value::to_raw_value(&object).expect("a JSON value always serializes"),
        )),
        Ok(_) => Err(ProfileError::InvalidProfile("a profile must be a JSON object".into())),
        Err(e) => Err(ProfileError::InvalidProfile(format!("not valid JSON: {e}"))),
    }
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
        let found = self.cache_aside().remember(&cache_key(id), || self.fetch(id))?;
        Ok(found.map(|found| Lookup {
            profile: found.value.into_string(),
            source: found.source,
        }))
    }

    /// Stores `profile` at the origin, then replaces the cached copy, so the
    /// next read sees it. Returns the stored (compact) profile and whether it
    /// was created.
    pub fn update(&self, id: &str, profile: &str) -> Result<(String, bool), ProfileError> {
        validate_id(id)?;
        let profile = parse_profile(profile)?;
        let text = profile.0.get().to_owned();
        let created = self.origin.update(id, &text)?;
        self.cache_aside().replace(&cache_key(id), &profile);
        Ok((text, created))
    }

    fn cache_aside(&self) -> CacheAside<'_, C, K> {
        CacheAside::new(self.cache, self.clock, self.settings)
    }

    fn fetch(&self, id: &str) -> Result<Option<ProfileJson>, ProfileError> {
        let Some(text) = self.origin.fetch(id)? else {
            return Ok(None);
        };
        let profile = parse_profile(&text).map_err(|_| {
            ProfileError::OriginUnavailable(format!(
                "the origin returned a profile for {id} that is not a JSON object"
            ))
        })?;
        Ok(Some(profile))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::memory::MemoryOrigin;
    use edge_cache_sdk::testing::{ManualClock, MemoryCache};

    const ALICE: &str = r#"{"id":"alice","name":"Alice"}"#;

    fn profiles<'h>(
        cache: &'h MemoryCache,
        origin: &'h MemoryOrigin,
    ) -> Profiles<'h, MemoryCache, MemoryOrigin, ManualClock> {
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

    #[test]
    fn miss_then_hit_reads_the_origin_once() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        let first = profiles.get("alice").unwrap().unwrap();
        assert_eq!((first.profile.as_str(), first.source), (ALICE, Source::Origin));
        assert_eq!(profiles.get("alice").unwrap().unwrap().source, Source::Cache);
        assert_eq!(origin.reads.get(), 1);
        // Fresh for 600 s, kept 60 s longer to serve stale.
        assert_eq!(cache.ttl_of("profile:v2:alice"), Some(Some(660)));
        assert_eq!(cache.keys(), ["profile:v2:alice"], "the fill lock is released");
    }

    #[test]
    fn update_replaces_the_cached_copy_with_the_compact_profile() {
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
    fn a_cached_profile_that_is_not_an_object_is_a_miss() {
        let (cache, origin) = alice();
        let profiles = profiles(&cache, &origin);
        let envelope_of_an_array = br#"{"fresh_until":99999999999999,"compute_ms":0,"value":[1]}"#;
        cache.insert_raw("profile:v2:alice", envelope_of_an_array);
        assert_eq!(profiles.get("alice").unwrap().unwrap().source, Source::Origin);
        assert_eq!(profiles.get("alice").unwrap().unwrap().source, Source::Cache);
    }

    #[test]
    fn an_origin_answer_that_is_not_an_object_is_an_origin_failure() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::with(&[("alice", "[1]")]));
        assert!(matches!(
            profiles(&cache, &origin).get("alice"),
            Err(ProfileError::OriginUnavailable(_))
        ));
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
