//! What the guest needs from its host, as plain Rust traits.
//!
//! The WIT imports are implemented on these traits in the export layer; the
//! logic modules only see the traits, so `cargo test` can run them natively
//! against an in-memory host.

use std::fmt;

/// A failed cache operation, mirroring `edge:cache/cache.error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheError {
    Unavailable(String),
    Timeout,
    InvalidKey(String),
    ValueTooLarge(u64),
    WrongType,
    InvalidArgument(String),
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

/// The subset of `edge:cache/cache` the guest's algorithms use.
pub trait Cache {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError>;
    fn set(&self, key: &str, value: &[u8], ttl_seconds: Option<u64>) -> Result<bool, CacheError>;
    fn delete(&self, keys: &[String]) -> Result<u32, CacheError>;
    fn incr_by(&self, key: &str, delta: i64, ttl_if_new: u64) -> Result<i64, CacheError>;
}

/// A failed origin operation, mirroring `edge:cache/origin.error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginError {
    Unavailable(String),
    InvalidProfile(String),
}

/// `edge:cache/origin`: the source of truth for profiles.
pub trait Origin {
    fn fetch(&self, id: &str) -> Result<Option<String>, OriginError>;
    fn update(&self, id: &str, profile: &str) -> Result<bool, OriginError>;
}

#[cfg(test)]
pub mod memory {
    //! An in-memory host for the native unit tests: the real semantics of the
    //! cache contract (TTL, atomic counters) on a controllable clock.

    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// A value and the second at which it expires, if it does.
    type Entry = (Vec<u8>, Option<u64>);

    #[derive(Default)]
    pub struct MemoryCache {
        entries: RefCell<HashMap<String, Entry>>,
        pub now_secs: Cell<u64>,
        pub failure: RefCell<Option<CacheError>>,
        pub calls: Cell<u32>,
    }

    impl MemoryCache {
        fn begin(&self) -> Result<(), CacheError> {
            self.calls.set(self.calls.get() + 1);
            match &*self.failure.borrow() {
                Some(error) => Err(error.clone()),
                None => Ok(()),
            }
        }

        fn live(&self, key: &str) -> Option<Vec<u8>> {
            let entries = self.entries.borrow();
            let (value, expires) = entries.get(key)?;
            match expires {
                Some(at) if *at <= self.now_secs.get() => None,
                _ => Some(value.clone()),
            }
        }

        pub fn ttl_of(&self, key: &str) -> Option<Option<u64>> {
            self.live(key)?;
            let expires = self.entries.borrow()[key].1;
            Some(expires.map(|at| at - self.now_secs.get()))
        }

        pub fn insert_raw(&self, key: &str, value: &[u8]) {
            self.entries
                .borrow_mut()
                .insert(key.to_owned(), (value.to_vec(), None));
        }
    }

    impl Cache for MemoryCache {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
            self.begin()?;
            Ok(self.live(key))
        }

        fn set(&self, key: &str, value: &[u8], ttl: Option<u64>) -> Result<bool, CacheError> {
            self.begin()?;
            let expires = ttl.map(|ttl| self.now_secs.get() + ttl);
            self.entries
                .borrow_mut()
                .insert(key.to_owned(), (value.to_vec(), expires));
            Ok(true)
        }

        fn delete(&self, keys: &[String]) -> Result<u32, CacheError> {
            self.begin()?;
            let mut removed = 0;
            for key in keys {
                if self.live(key).is_some() {
                    removed += 1;
                }
                self.entries.borrow_mut().remove(key);
            }
            Ok(removed)
        }

        fn incr_by(&self, key: &str, delta: i64, ttl_if_new: u64) -> Result<i64, CacheError> {
            self.begin()?;
            let (current, expires) = match self.live(key) {
                Some(value) => {
                    let text = String::from_utf8(value).map_err(|_| CacheError::WrongType)?;
                    let current: i64 = text.parse().map_err(|_| CacheError::WrongType)?;
                    (current, self.entries.borrow()[key].1)
                }
                None => (0, None),
            };
            let next = current + delta;
            let expires = expires.or(Some(self.now_secs.get() + ttl_if_new));
            self.entries
                .borrow_mut()
                .insert(key.to_owned(), (next.to_string().into_bytes(), expires));
            Ok(next)
        }
    }

    #[derive(Default)]
    pub struct MemoryOrigin {
        pub profiles: RefCell<HashMap<String, String>>,
        pub reads: Cell<u32>,
        pub down: Cell<bool>,
    }

    impl MemoryOrigin {
        pub fn with(profiles: &[(&str, &str)]) -> Self {
            let origin = Self::default();
            for (id, json) in profiles {
                origin
                    .profiles
                    .borrow_mut()
                    .insert((*id).to_owned(), (*json).to_owned());
            }
            origin
        }
    }

    impl Origin for MemoryOrigin {
        fn fetch(&self, id: &str) -> Result<Option<String>, OriginError> {
            if self.down.get() {
                return Err(OriginError::Unavailable("origin is down".into()));
            }
            self.reads.set(self.reads.get() + 1);
            Ok(self.profiles.borrow().get(id).cloned())
        }

        fn update(&self, id: &str, profile: &str) -> Result<bool, OriginError> {
            if self.down.get() {
                return Err(OriginError::Unavailable("origin is down".into()));
            }
            Ok(self
                .profiles
                .borrow_mut()
                .insert(id.to_owned(), profile.to_owned())
                .is_none())
        }
    }
}
