//! What the guest needs from its host, as plain Rust traits.
//!
//! The WIT imports are implemented on these traits in the export layer; the
//! logic modules only see the traits, so `cargo test` runs them natively
//! against the in-memory host in [`memory`].

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

/// The outcome of [`Cache::incr_by_bounded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundedIncr {
    pub applied: bool,
    pub value: i64,
}

/// The outcome of [`Cache::compare_and_swap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    Swapped,
    Conflict(Option<Vec<u8>>),
}

/// `edge:cache/cache`, as far as the guest's algorithms use it.
pub trait Cache {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError>;
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError>;
    fn set(&self, key: &str, value: &[u8], ttl_seconds: Option<u64>, only_if_absent: bool) -> Result<bool, CacheError>;
    fn delete(&self, keys: &[String]) -> Result<u32, CacheError>;
    fn incr_by_bounded(&self, key: &str, delta: i64, ttl_if_new: u64, max: i64) -> Result<BoundedIncr, CacheError>;
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_seconds: Option<u64>,
    ) -> Result<CasOutcome, CacheError>;
    /// Deletes `key` only while it holds `expected`; whether it did.
    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, CacheError>;
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

/// An entry of the penalty box: see [`PenaltyBox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub until_ms: u64,
    pub note: Vec<u8>,
}

/// What [`PenaltyBox::look`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lookup {
    /// To pass to [`PenaltyBox::hold`].
    pub ticket: u64,
    pub held: Option<Held>,
}

/// `edge:cache/penalty-box`: the host's process-local memory of denials.
/// It may forget anything at any time; it only ever saves cache calls.
pub trait PenaltyBox {
    fn look(&self, key: &str) -> Lookup;
    /// Kept unless `key` was released since the look that gave `ticket`.
    fn hold(&self, key: &str, ticket: u64, until_ms: u64, note: &[u8]);
    fn release(&self, key: &str);
}

/// Time and chance, from WASI in the component and controllable in tests.
pub trait Clock {
    /// Milliseconds since the Unix epoch (wall clock: instances agree on it).
    fn now_ms(&self) -> u64;
    /// Blocks this request for `ms` milliseconds.
    fn sleep_ms(&self, ms: u64);
    /// A uniformly distributed number in (0, 1], at least 2^-53.
    fn random(&self) -> f64;
}

#[cfg(test)]
pub mod memory {
    //! An in-memory host for the native unit tests: the cache contract's
    //! semantics (TTL, atomic counters, CAS) on a controllable clock.

    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// A value and the millisecond at which it expires, if it does.
    type Entry = (Vec<u8>, Option<u64>);

    /// Stands for another instance acting between two calls.
    type Interleave = Box<dyn Fn(&MemoryCache)>;

    /// A clock that only moves when told to (or when slept on).
    pub struct ManualClock {
        pub now: Cell<u64>,
        pub random: Cell<f64>,
        /// How many times `random` was asked.
        pub draws: Cell<u32>,
    }

    impl Default for ManualClock {
        fn default() -> Self {
            Self {
                now: Cell::new(1_700_000_000_000),
                random: Cell::new(1.0),
                draws: Cell::new(0),
            }
        }
    }

    impl ManualClock {
        pub fn advance(&self, ms: u64) {
            self.now.set(self.now.get() + ms);
        }
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.now.get()
        }

        fn sleep_ms(&self, ms: u64) {
            self.advance(ms);
        }

        fn random(&self) -> f64 {
            self.draws.set(self.draws.get() + 1);
            self.random.get()
        }
    }

    #[derive(Default)]
    pub struct MemoryCache {
        entries: RefCell<HashMap<String, Entry>>,
        pub clock: ManualClock,
        pub failure: RefCell<Option<CacheError>>,
        pub calls: Cell<u32>,
        /// Runs before each call, to simulate other instances writing.
        pub interleave: RefCell<Option<Interleave>>,
        /// Keys holding a value of another type (a Redis list): every
        /// call but `set` and `delete` answers `wrong-type` for them.
        wrong_type: RefCell<std::collections::HashSet<String>>,
    }

    impl MemoryCache {
        fn begin(&self) -> Result<(), CacheError> {
            self.calls.set(self.calls.get() + 1);
            if let Some(interleave) = self.interleave.borrow().as_ref() {
                interleave(self);
            }
            match &*self.failure.borrow() {
                Some(error) => Err(error.clone()),
                None => Ok(()),
            }
        }

        fn live(&self, key: &str) -> Option<Entry> {
            let entries = self.entries.borrow();
            let (value, expires) = entries.get(key)?;
            match expires {
                Some(at) if *at <= self.clock.now_ms() => None,
                _ => Some((value.clone(), *expires)),
            }
        }

        /// Seconds left before `key` expires: `None` if missing, `Some(None)`
        /// if it never does.
        pub fn ttl_of(&self, key: &str) -> Option<Option<u64>> {
            let (_, expires) = self.live(key)?;
            Some(expires.map(|at| (at - self.clock.now_ms()).div_ceil(1000)))
        }

        /// Stores a value the cache contract cannot read, as a Redis list.
        pub fn insert_wrong_type(&self, key: &str) {
            self.entries.borrow_mut().remove(key);
            self.wrong_type.borrow_mut().insert(key.to_owned());
        }

        fn readable(&self, key: &str) -> Result<(), CacheError> {
            match self.wrong_type.borrow().contains(key) {
                true => Err(CacheError::WrongType),
                false => Ok(()),
            }
        }

        pub fn insert_raw(&self, key: &str, value: &[u8]) {
            self.entries.borrow_mut().insert(key.to_owned(), (value.to_vec(), None));
        }

        pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
            self.live(key).map(|(value, _)| value)
        }

        pub fn keys(&self) -> Vec<String> {
            let mut keys: Vec<String> = self
                .entries
                .borrow()
                .keys()
                .filter(|k| self.live(k).is_some())
                .cloned()
                .collect();
            keys.sort();
            keys
        }

        fn deadline(&self, ttl: Option<u64>) -> Option<u64> {
            ttl.map(|ttl| self.clock.now_ms() + ttl * 1000)
        }

        fn counter(&self, key: &str) -> Result<(i64, Option<u64>), CacheError> {
            match self.live(key) {
                None => Ok((0, None)),
                Some((value, expires)) => {
                    let text = String::from_utf8(value).map_err(|_| CacheError::WrongType)?;
                    Ok((text.parse().map_err(|_| CacheError::WrongType)?, expires))
                }
            }
        }
    }

    impl Cache for MemoryCache {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
            self.begin()?;
            self.readable(key)?;
            Ok(self.raw(key))
        }

        fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
            self.begin()?;
            keys.iter().try_for_each(|key| self.readable(key))?;
            Ok(keys.iter().map(|key| self.raw(key)).collect())
        }

        fn set(&self, key: &str, value: &[u8], ttl: Option<u64>, only_if_absent: bool) -> Result<bool, CacheError> {
            self.begin()?;
            if only_if_absent && (self.live(key).is_some() || self.wrong_type.borrow().contains(key)) {
                return Ok(false);
            }
            self.wrong_type.borrow_mut().remove(key);
            self.entries
                .borrow_mut()
                .insert(key.to_owned(), (value.to_vec(), self.deadline(ttl)));
            Ok(true)
        }

        fn delete(&self, keys: &[String]) -> Result<u32, CacheError> {
            self.begin()?;
            let mut removed = 0;
            for key in keys {
                if self.live(key).is_some() || self.wrong_type.borrow_mut().remove(key) {
                    removed += 1;
                }
                self.entries.borrow_mut().remove(key);
            }
            Ok(removed)
        }

        fn incr_by_bounded(&self, key: &str, delta: i64, ttl_if_new: u64, max: i64) -> Result<BoundedIncr, CacheError> {
            self.begin()?;
            self.readable(key)?;
            let (current, expires) = self.counter(key)?;
            let next = current + delta;
            if next > max {
                return Ok(BoundedIncr {
                    applied: false,
                    value: current,
                });
            }
            let expires = expires.or(self.deadline(Some(ttl_if_new)));
            self.entries
                .borrow_mut()
                .insert(key.to_owned(), (next.to_string().into_bytes(), expires));
            Ok(BoundedIncr {
                applied: true,
                value: next,
            })
        }

        fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<&[u8]>,
            new: &[u8],
            ttl: Option<u64>,
        ) -> Result<CasOutcome, CacheError> {
            self.begin()?;
            self.readable(key)?;
            let current = self.raw(key);
            if current.as_deref() != expected {
                return Ok(CasOutcome::Conflict(current));
            }
            self.entries
                .borrow_mut()
                .insert(key.to_owned(), (new.to_vec(), self.deadline(ttl)));
            Ok(CasOutcome::Swapped)
        }

        fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, CacheError> {
            self.begin()?;
            self.readable(key)?;
            if self.raw(key).as_deref() != Some(expected) {
                return Ok(false);
            }
            self.entries.borrow_mut().remove(key);
            Ok(true)
        }
    }

    /// Stands for another instance acting while a check is under way.
    type BeforeHold = Box<dyn Fn(&MemoryBox)>;

    /// A penalty box as the harness keeps one: entries until their end,
    /// holds refused across a release. Counts its calls.
    #[derive(Default)]
    pub struct MemoryBox {
        entries: RefCell<HashMap<String, Held>>,
        releases: Cell<u64>,
        pub looks: Cell<u32>,
        pub holds: Cell<u32>,
        /// Runs at the start of `hold`, to simulate a concurrent reset.
        pub before_hold: RefCell<Option<BeforeHold>>,
    }

    impl MemoryBox {
        pub fn entry(&self, key: &str) -> Option<Held> {
            self.entries.borrow().get(key).cloned()
        }

        pub fn keys(&self) -> Vec<String> {
            let mut keys: Vec<String> = self.entries.borrow().keys().cloned().collect();
            keys.sort();
            keys
        }
    }

    impl PenaltyBox for MemoryBox {
        fn look(&self, key: &str) -> Lookup {
            self.looks.set(self.looks.get() + 1);
            Lookup {
                ticket: self.releases.get(),
                held: self.entry(key),
            }
        }

        fn hold(&self, key: &str, ticket: u64, until_ms: u64, note: &[u8]) {
            self.holds.set(self.holds.get() + 1);
            if let Some(before) = self.before_hold.borrow().as_ref() {
                before(self);
            }
            if ticket == self.releases.get() {
                let held = Held {
                    until_ms,
                    note: note.to_vec(),
                };
                self.entries.borrow_mut().insert(key.to_owned(), held);
            }
        }

        fn release(&self, key: &str) {
            self.releases.set(self.releases.get() + 1);
            self.entries.borrow_mut().remove(key);
        }
    }

    /// A host that keeps nothing, as the contract allows.
    pub struct Forgetful;

    impl PenaltyBox for Forgetful {
        fn look(&self, _: &str) -> Lookup {
            Lookup::default()
        }

        fn hold(&self, _: &str, _: u64, _: u64, _: &[u8]) {}

        fn release(&self, _: &str) {}
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
