//! The typed cache handle: one prefix of keys, with bytes and JSON values,
//! time-to-lives, counters and compare-and-swap.

use crate::host::{BoundedIncr, Cache, CacheError, CasOutcome, Ttl};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How many compare-and-swap rounds [`Keyspace::update_json`] takes before
/// it gives up: each lost round means another writer succeeded meanwhile.
pub const MAX_UPDATE_ATTEMPTS: u32 = 16;

/// Keys under one prefix, with typed values.
///
/// Every name is prefixed (`Keyspace::new(&cache, "session:")` stores `abc`
/// at `session:abc`), so the parts of a function keep apart. Values are
/// bytes, or JSON through the `_json` methods; a stored value that does not
/// decode as the type asked for is [`CacheError::WrongType`].
///
/// ```
/// use edge_cache_sdk::Keyspace;
/// use edge_cache_sdk::testing::MemoryCache;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, PartialEq, Debug)]
/// struct Session { user: String }
///
/// let cache = MemoryCache::default();
/// let sessions = Keyspace::new(&cache, "session:");
/// sessions.set_json("abc", &Session { user: "alice".into() }, Some(1800))?;
/// assert_eq!(sessions.get_json::<Session>("abc")?, Some(Session { user: "alice".into() }));
/// assert_eq!(cache.ttl_of("session:abc"), Some(Some(1800)));
///
/// let visits = Keyspace::new(&cache, "visits:");
/// assert_eq!(visits.incr("home", 1, 86_400)?, 1);
/// assert_eq!(visits.incr("home", 1, 86_400)?, 2);
/// # Ok::<(), edge_cache_sdk::CacheError>(())
/// ```
pub struct Keyspace<'h, C: ?Sized> {
    cache: &'h C,
    prefix: String,
}

impl<'h, C: Cache + ?Sized> Keyspace<'h, C> {
    /// Keys of `cache` that start with `prefix`.
    pub fn new(cache: &'h C, prefix: &str) -> Self {
        Self {
            cache,
            prefix: prefix.to_owned(),
        }
    }

    /// The cache key of `name`.
    pub fn key(&self, name: &str) -> String {
        [self.prefix.as_str(), name].concat()
    }

    /// The cache this keyspace is part of.
    pub fn cache(&self) -> &'h C {
        self.cache
    }

    /// Reads `name`'s bytes.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, CacheError> {
        self.cache.get(&self.key(name))
    }

    /// Writes `name`, replacing any value and time-to-live it had; `None`
    /// keeps it until it is deleted or evicted.
    pub fn set(&self, name: &str, value: &[u8], ttl_seconds: Option<u64>) -> Result<(), CacheError> {
        self.cache.set(&self.key(name), value, ttl_seconds, false).map(drop)
    }

    /// Writes `name` only if it does not exist yet; whether it wrote.
    pub fn add(&self, name: &str, value: &[u8], ttl_seconds: Option<u64>) -> Result<bool, CacheError> {
        self.cache.set(&self.key(name), value, ttl_seconds, true)
    }

    /// Reads `name` as JSON.
    pub fn get_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, CacheError> {
        self.get(name)?.map(|bytes| decode(&bytes)).transpose()
    }

    /// Writes `value` as JSON.
    pub fn set_json<T: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
        ttl_seconds: Option<u64>,
    ) -> Result<(), CacheError> {
        self.set(name, &encode(value)?, ttl_seconds)
    }

    /// Writes `value` as JSON only if `name` does not exist yet; whether it
    /// wrote.
    pub fn add_json<T: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
        ttl_seconds: Option<u64>,
    ) -> Result<bool, CacheError> {
        self.add(name, &encode(value)?, ttl_seconds)
    }

    /// Changes the JSON value of `name` atomically: `change` gets the
    /// current value (`None`: absent) and returns the new one, which is
    /// written only if nobody wrote meanwhile; otherwise `change` runs again
    /// on what they wrote (at most [`MAX_UPDATE_ATTEMPTS`] times, then
    /// [`CacheError::Other`]). Returns the value written.
    ///
    /// ```
    /// # use edge_cache_sdk::{Keyspace, testing::MemoryCache};
    /// let cache = MemoryCache::default();
    /// let carts = Keyspace::new(&cache, "cart:");
    /// let add = |item: &str| carts.update_json("alice", Some(3600), |cart: Option<Vec<String>>| {
    ///     let mut cart = cart.unwrap_or_default();
    ///     cart.push(item.to_owned());
    ///     cart
    /// });
    /// add("tea")?;
    /// assert_eq!(add("milk")?, ["tea", "milk"]);
    /// # Ok::<(), edge_cache_sdk::CacheError>(())
    /// ```
    pub fn update_json<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        ttl_seconds: Option<u64>,
        mut change: impl FnMut(Option<T>) -> T,
    ) -> Result<T, CacheError> {
        let key = self.key(name);
        let mut stored = self.cache.get(&key)?;
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let current = stored.as_deref().map(decode).transpose()?;
            let new = change(current);
            let bytes = encode(&new)?;
            match self
                .cache
                .compare_and_swap(&key, stored.as_deref(), &bytes, ttl_seconds)?
            {
                CasOutcome::Swapped => return Ok(new),
                CasOutcome::Conflict(found) => stored = found,
            }
        }
        Err(CacheError::Other(format!(
            "{key} kept changing: {MAX_UPDATE_ATTEMPTS} writers won in a row"
        )))
    }

    /// Removes `name`; whether it existed.
    pub fn delete(&self, name: &str) -> Result<bool, CacheError> {
        Ok(self.cache.delete(&[self.key(name)])? > 0)
    }

    /// Whether `name` exists.
    pub fn exists(&self, name: &str) -> Result<bool, CacheError> {
        self.cache.exists(&self.key(name))
    }

    /// `name`'s remaining lifetime.
    pub fn ttl(&self, name: &str) -> Result<Ttl, CacheError> {
        self.cache.ttl(&self.key(name))
    }

    /// Sets `name`'s time-to-live; false when it does not exist.
    pub fn expire(&self, name: &str, ttl_seconds: u64) -> Result<bool, CacheError> {
        self.cache.expire(&self.key(name), ttl_seconds)
    }

    /// Adds `delta` to the counter `name` (absent counts as 0) and returns
    /// the new value; a counter without expiry gets `ttl_if_new` seconds in
    /// the same atomic step.
    pub fn incr(&self, name: &str, delta: i64, ttl_if_new: u64) -> Result<i64, CacheError> {
        self.cache.incr_by(&self.key(name), delta, ttl_if_new)
    }

    /// Like [`incr`](Self::incr), unless the result would pass `max`: then
    /// nothing changes.
    pub fn incr_bounded(&self, name: &str, delta: i64, ttl_if_new: u64, max: i64) -> Result<BoundedIncr, CacheError> {
        self.cache.incr_by_bounded(&self.key(name), delta, ttl_if_new, max)
    }

    /// Replaces `name`'s value with `new` if it is `expected` (`None`:
    /// absent), with a new time-to-live.
    pub fn compare_and_swap(
        &self,
        name: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_seconds: Option<u64>,
    ) -> Result<CasOutcome, CacheError> {
        self.cache.compare_and_swap(&self.key(name), expected, new, ttl_seconds)
    }

    /// Deletes `name` if it holds `expected`; whether it did. Spends a
    /// one-time value exactly once, however many callers race for it.
    pub fn compare_and_delete(&self, name: &str, expected: &[u8]) -> Result<bool, CacheError> {
        self.cache.compare_and_delete(&self.key(name), expected)
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CacheError> {
    serde_json::from_slice(bytes).map_err(|_| CacheError::WrongType)
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CacheError> {
    serde_json::to_vec(value).map_err(|e| CacheError::InvalidArgument(format!("not serializable as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryCache;

    #[test]
    fn update_json_retries_on_what_another_writer_wrote() {
        let cache = MemoryCache::default();
        let counts = Keyspace::new(&cache, "n:");
        counts.set_json("k", &1, None).unwrap();
        // Another instance writes 10 between this read and its swap, once.
        *cache.interleave.borrow_mut() = Some(Box::new(|cache: &MemoryCache| {
            if cache.calls.get() == 3 {
                cache.insert_raw("n:k", b"10");
            }
        }));
        let written = counts
            .update_json("k", None, |n: Option<i64>| n.unwrap_or(0) + 1)
            .unwrap();
        assert_eq!(written, 11, "the change ran again on the other writer's value");
        assert_eq!(cache.raw("n:k").as_deref(), Some(&b"11"[..]));
    }

    #[test]
    fn endless_contention_gives_up() {
        let cache = MemoryCache::default();
        let counts = Keyspace::new(&cache, "n:");
        *cache.interleave.borrow_mut() = Some(Box::new(|cache: &MemoryCache| {
            cache.insert_raw("n:k", cache.calls.get().to_string().as_bytes());
        }));
        let error = counts.update_json("k", None, |n: Option<i64>| n.unwrap_or(0) + 1);
        assert!(matches!(error, Err(CacheError::Other(_))), "{error:?}");
        assert_eq!(cache.calls.get(), 1 + MAX_UPDATE_ATTEMPTS);
    }

    #[test]
    fn a_value_of_another_shape_is_wrong_type() {
        let cache = MemoryCache::default();
        let names = Keyspace::new(&cache, "name:");
        names.set("k", b"not json", None).unwrap();
        assert_eq!(names.get_json::<String>("k"), Err(CacheError::WrongType));
        assert_eq!(names.get_json::<String>("absent"), Ok(None));
    }

    #[test]
    fn add_writes_once_and_compare_and_delete_spends_once() {
        let cache = MemoryCache::default();
        let tokens = Keyspace::new(&cache, "token:");
        assert!(tokens.add("t", b"1", Some(60)).unwrap());
        assert!(!tokens.add("t", b"2", Some(60)).unwrap());
        assert!(!tokens.compare_and_delete("t", b"2").unwrap());
        assert!(tokens.compare_and_delete("t", b"1").unwrap());
        assert!(!tokens.exists("t").unwrap());
    }
}
