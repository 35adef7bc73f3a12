//! Cache-aside profile lookup: cache first, the origin on a miss, the answer
//! stored with a TTL; writes go to the origin and then invalidate the copy.
//!
//! The cache is never the source of truth. Any cache failure turns into a
//! lookup at the origin (reported as [`Source::Bypass`]), and a cached value
//! that is not a JSON object is treated as a miss and overwritten.

use crate::host::{Cache, Origin, OriginError};

/// The default lifetime of a cached profile, in seconds.
pub const DEFAULT_TTL_SECONDS: u64 = 600;

/// The longest accepted profile id.
pub const MAX_ID_LEN: usize = 64;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Origin,
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

/// The cache key of a profile.
pub fn cache_key(id: &str) -> String {
    format!("profile:{id}")
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

/// Parses `text` as a JSON object and returns its compact form.
pub fn normalize_profile(text: &str) -> Result<String, ProfileError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ProfileError::InvalidProfile(format!("not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ProfileError::InvalidProfile(
            "a profile must be a JSON object".into(),
        ));
    }
    Ok(value.to_string())
}

/// A cached value is usable only if it is the UTF-8 text of a JSON object;
/// anything else (a foreign format, a truncated write) counts as a miss.
fn decode_cached(bytes: Vec<u8>) -> Option<String> {
    let text = String::from_utf8(bytes).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.is_object().then_some(text)
}

/// Profile lookups through a cache in front of an origin.
pub struct Profiles<'h, C, O> {
    pub cache: &'h C,
    pub origin: &'h O,
    pub ttl_seconds: u64,
}

impl<C: Cache, O: Origin> Profiles<'_, C, O> {
    /// Looks `id` up: the cached copy when there is a usable one, otherwise
    /// the origin's answer, stored in the cache for `ttl_seconds`.
    pub fn get(&self, id: &str) -> Result<Option<Lookup>, ProfileError> {
        validate_id(id)?;
        let key = cache_key(id);
        let cache_usable = match self.cache.get(&key) {
            Ok(Some(bytes)) => match decode_cached(bytes) {
                Some(profile) => {
                    return Ok(Some(Lookup {
                        profile,
                        source: Source::Cache,
                    }));
                }
                None => {
                    log(&format!("discarding an unreadable cached value at {key}"));
                    true
                }
            },
            Ok(None) => true,
            Err(error) => {
                log(&format!(
                    "cache read of {key} failed, asking the origin: {error}"
                ));
                false
            }
        };

        let Some(profile) = self.origin.fetch(id)? else {
            return Ok(None);
        };
        if !cache_usable {
            return Ok(Some(Lookup {
                profile,
                source: Source::Bypass,
            }));
        }
        if let Err(error) = self
            .cache
            .set(&key, profile.as_bytes(), Some(self.ttl_seconds))
        {
            log(&format!("could not cache {key}: {error}"));
        }
        Ok(Some(Lookup {
            profile,
            source: Source::Origin,
        }))
    }

    /// Stores `profile` at the origin, then drops the cached copy so that the
    /// next read goes to the origin. Returns the stored (compact) profile and
    /// whether it was created.
    pub fn update(&self, id: &str, profile: &str) -> Result<(String, bool), ProfileError> {
        validate_id(id)?;
        let profile = normalize_profile(profile)?;
        let created = self.origin.update(id, &profile)?;
        let key = cache_key(id);
        if let Err(error) = self.cache.delete(std::slice::from_ref(&key)) {
            // The origin has the new value; the stale copy ages out with its TTL.
            log(&format!(
                "could not invalidate {key} after an update: {error}"
            ));
        }
        Ok((profile, created))
    }
}

/// Guest diagnostics go to stderr, which the host attributes to the request.
fn log(message: &str) {
    eprintln!("edge-cache guest: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::CacheError;
    use crate::host::memory::{MemoryCache, MemoryOrigin};

    const ALICE: &str = r#"{"id":"alice","name":"Alice"}"#;

    fn profiles<'h>(
        cache: &'h MemoryCache,
        origin: &'h MemoryOrigin,
    ) -> Profiles<'h, MemoryCache, MemoryOrigin> {
        Profiles {
            cache,
            origin,
            ttl_seconds: DEFAULT_TTL_SECONDS,
        }
    }

    #[test]
    fn miss_then_hit_reads_the_origin_once() {
        let (cache, origin) = (
            MemoryCache::default(),
            MemoryOrigin::with(&[("alice", ALICE)]),
        );
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
        assert_eq!(
            cache.ttl_of("profile:alice"),
            Some(Some(DEFAULT_TTL_SECONDS))
        );
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let (cache, origin) = (
            MemoryCache::default(),
            MemoryOrigin::with(&[("alice", ALICE)]),
        );
        let profiles = Profiles {
            cache: &cache,
            origin: &origin,
            ttl_seconds: 5,
        };
        profiles.get("alice").unwrap();
        cache.now_secs.set(5);
        assert_eq!(
            profiles.get("alice").unwrap().unwrap().source,
            Source::Origin
        );
        assert_eq!(origin.reads.get(), 2);
    }

    #[test]
    fn unknown_ids_are_none() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::default());
        assert_eq!(profiles(&cache, &origin).get("nobody").unwrap(), None);
    }

    #[test]
    fn update_invalidates_the_cached_copy() {
        let (cache, origin) = (
            MemoryCache::default(),
            MemoryOrigin::with(&[("alice", ALICE)]),
        );
        let profiles = profiles(&cache, &origin);
        profiles.get("alice").unwrap();

        let (stored, created) = profiles
            .update("alice", r#"{ "id": "alice", "name": "Alicia" }"#)
            .unwrap();
        assert!(!created);
        assert_eq!(stored, r#"{"id":"alice","name":"Alicia"}"#);
        let after = profiles.get("alice").unwrap().unwrap();
        assert_eq!(
            after,
            Lookup {
                profile: stored,
                source: Source::Origin
            }
        );
    }

    #[test]
    fn update_creates_missing_profiles() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::default());
        let (_, created) = profiles(&cache, &origin)
            .update("bob", r#"{"name":"Bob"}"#)
            .unwrap();
        assert!(created);
    }

    #[test]
    fn update_rejects_non_objects_without_touching_the_origin() {
        let (cache, origin) = (
            MemoryCache::default(),
            MemoryOrigin::with(&[("alice", ALICE)]),
        );
        let profiles = profiles(&cache, &origin);
        for bad in ["[1,2]", "\"text\"", "{not json", ""] {
            assert!(
                matches!(
                    profiles.update("alice", bad),
                    Err(ProfileError::InvalidProfile(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(origin.profiles.borrow()["alice"], ALICE);
    }

    #[test]
    fn ids_are_validated_before_any_io() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::default());
        let profiles = profiles(&cache, &origin);
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad in ["", "a:b", "a b", "../x", "ü", long.as_str()] {
            assert!(
                matches!(profiles.get(bad), Err(ProfileError::InvalidId(_))),
                "{bad:?}"
            );
        }
        assert!(profiles.get(&"x".repeat(MAX_ID_LEN)).is_ok());
        assert_eq!(cache.calls.get(), 1);
    }

    #[test]
    fn cache_failure_falls_back_to_the_origin() {
        let (cache, origin) = (
            MemoryCache::default(),
            MemoryOrigin::with(&[("alice", ALICE)]),
        );
        *cache.failure.borrow_mut() = Some(CacheError::Timeout);
        let lookup = profiles(&cache, &origin).get("alice").unwrap().unwrap();
        assert_eq!(
            lookup,
            Lookup {
                profile: ALICE.into(),
                source: Source::Bypass
            }
        );
    }

    #[test]
    fn update_succeeds_when_the_cache_is_down() {
        let (cache, origin) = (
            MemoryCache::default(),
            MemoryOrigin::with(&[("alice", ALICE)]),
        );
        *cache.failure.borrow_mut() = Some(CacheError::Unavailable("refused".into()));
        profiles(&cache, &origin)
            .update("alice", r#"{"v":2}"#)
            .unwrap();
        assert_eq!(origin.profiles.borrow()["alice"], r#"{"v":2}"#);
    }

    #[test]
    fn corrupt_cached_values_are_replaced() {
        let (cache, origin) = (
            MemoryCache::default(),
            MemoryOrigin::with(&[("alice", ALICE)]),
        );
        for junk in [&b"\xff\xfe"[..], b"[1]", b"{trunc"] {
            cache.insert_raw("profile:alice", junk);
            let lookup = profiles(&cache, &origin).get("alice").unwrap().unwrap();
            assert_eq!(lookup.source, Source::Origin);
            assert_eq!(
                cache.get("profile:alice").unwrap().unwrap(),
                ALICE.as_bytes()
            );
        }
    }

    #[test]
    fn origin_failure_is_an_error() {
        let (cache, origin) = (
            MemoryCache::default(),
            MemoryOrigin::with(&[("alice", ALICE)]),
        );
        origin.down.set(true);
        assert!(matches!(
            profiles(&cache, &origin).get("alice"),
            Err(ProfileError::OriginUnavailable(_))
        ));
    }
}
