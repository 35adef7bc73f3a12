//! What a function needs from its host, as plain Rust traits.
//!
//! In a component, [`Host`](crate::Host) implements them on the WIT
//! imports; the logic only sees the traits, so `cargo test` runs it natively
//! against the in-memory host in [`memory`] (also [`crate::testing`]).

pub use edge_cache_contract::cache::{BoundedIncr, CacheError, CasOutcome, Ttl};

/// `edge:cache/cache` (`wit/cache.wit`, where each function's contract is
/// written out).
pub trait Cache {
    /// Reads a key; `None` when it does not exist.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError>;
    /// Reads several keys, answering in their order.
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError>;
    /// Writes a key (only if absent, if asked); whether it wrote.
    fn set(&self, key: &str, value: &[u8], ttl_seconds: Option<u64>, only_if_absent: bool) -> Result<bool, CacheError>;
    /// Removes keys; how many existed.
    fn delete(&self, keys: &[String]) -> Result<u32, CacheError>;
    /// Whether a key exists.
    fn exists(&self, key: &str) -> Result<bool, CacheError>;
    /// Sets a key's time-to-live; false when it does not exist.
    fn expire(&self, key: &str, ttl_seconds: u64) -> Result<bool, CacheError>;
    /// A key's remaining lifetime.
    fn ttl(&self, key: &str) -> Result<Ttl, CacheError>;
    /// Adds to a counter atomically, giving a key without expiry `ttl_if_new`.
    fn incr_by(&self, key: &str, delta: i64, ttl_if_new: u64) -> Result<i64, CacheError>;
    /// Like `incr_by`, unless the result would pass `max`.
    fn incr_by_bounded(&self, key: &str, delta: i64, ttl_if_new: u64, max: i64) -> Result<BoundedIncr, CacheError>;
    /// Replaces a value that equals `expected` (`None`: absent).
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

/// An entry of the penalty box: see [`PenaltyBox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// When the entry ends, in milliseconds since the Unix epoch.
    pub until_ms: u64,
    /// What the limiter kept with it (the cache state it decided from).
    pub note: Vec<u8>,
}

/// What [`PenaltyBox::look`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lookup {
    /// To pass to [`PenaltyBox::hold`], so that a hold made after a release
    /// of the same key is refused.
    pub ticket: u64,
    /// The entry, while it lasts.
    pub held: Option<Held>,
}

/// `edge:cache/penalty-box` (`wit/penalty-box.wit`): the host's
/// process-local memory of denials. It may forget anything at any time; it
/// only ever saves cache calls.
pub trait PenaltyBox {
    /// The entry at `key`, and a ticket for a later [`hold`](Self::hold).
    fn look(&self, key: &str) -> Lookup;
    /// Keeps `note` at `key` until `until_ms`, unless `key` was released
    /// since the look that gave `ticket`.
    fn hold(&self, key: &str, ticket: u64, until_ms: u64, note: &[u8]);
    /// Forgets `key` at once.
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

pub mod memory {
    //! An in-memory host for the native unit tests: the cache contract's
    //! semantics (TTL, atomic counters, CAS, the default key and value
    //! limits) on a controllable clock. It runs the contract's conformance
    //! suite, as the harness's backends do.

    use super::*;
    use edge_cache_contract::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// A value and the millisecond at which it expires, if it does.
    type Entry = (Vec<u8>, Option<u64>);

    /// Stands for another instance acting between two calls.
    type Interleave = Box<dyn Fn(&MemoryCache)>;

    /// A clock that only moves when told to (or when slept on).
    pub struct ManualClock {
        /// Milliseconds since the Unix epoch.
        pub now: Cell<u64>,
        /// What `random` answers.
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
        /// Moves the clock forward.
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

    /// `edge:cache/cache` in memory, with the contract's semantics and
    /// default limits, on a [`ManualClock`], with a [`MemoryBox`] as its
    /// penalty box; and levers for tests: a failure
    /// to answer every call with, a count of calls (round trips), and a hook
    /// that stands for other instances.
    #[derive(Default)]
    pub struct MemoryCache {
        entries: RefCell<HashMap<String, Entry>>,
        /// The clock its expiry follows.
        pub clock: ManualClock,
        /// When set, every call fails with it.
        pub failure: RefCell<Option<CacheError>>,
        /// How many calls were made.
        pub calls: Cell<u32>,
        /// The rate limit decisions reported to it, in order.
        pub decisions: RefCell<Vec<crate::rate_limit::Decision>>,
        /// Runs before each call, to simulate other instances writing.
        pub interleave: RefCell<Option<Interleave>>,
        /// Its `edge:cache/penalty-box`, which its [`PenaltyBox`] answers
        /// from (without counting in `calls`: the box is not the cache).
        pub penalty_box: MemoryBox,
        /// Keys holding a value of another type (a Redis list): every
        /// call but `set` and `delete` answers `wrong-type` for them.
        wrong_type: RefCell<std::collections::HashSet<String>>,
    }

    impl MemoryCache {
        /// Counts a call and lets other instances act, then checks its keys
        /// as a host does.
        fn begin(&self, keys: &[&str]) -> Result<(), CacheError> {
            self.calls.set(self.calls.get() + 1);
            if let Some(interleave) = self.interleave.borrow().as_ref() {
                interleave(self);
            }
            if let Some(error) = &*self.failure.borrow() {
                return Err(error.clone());
            }
            for key in keys {
                if key.is_empty() || key.len() > MAX_KEY_BYTES {
                    return Err(CacheError::InvalidKey(format!(
                        "a key has 1 to {MAX_KEY_BYTES} bytes, not {}",
                        key.len()
                    )));
                }
                if key.bytes().any(|byte| byte.is_ascii_control()) {
                    return Err(CacheError::InvalidKey("a key holds no control characters".into()));
                }
            }
            Ok(())
        }

        fn writable(value: &[u8], ttl: Option<u64>) -> Result<(), CacheError> {
            if value.len() > MAX_VALUE_BYTES {
                return Err(CacheError::ValueTooLarge(MAX_VALUE_BYTES as u64));
            }
            if ttl == Some(0) {
                return Err(CacheError::InvalidArgument(
                    "a time-to-live is at least 1 second".into(),
                ));
            }
            Ok(())
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

        /// Stores bytes without a call or an expiry, as another client would.
        pub fn insert_raw(&self, key: &str, value: &[u8]) {
            self.entries.borrow_mut().insert(key.to_owned(), (value.to_vec(), None));
        }

        /// The live value of `key`, without a call.
        pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
            self.live(key).map(|(value, _)| value)
        }

        /// The live keys, sorted, without a call.
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
            self.begin(&[key])?;
            self.readable(key)?;
            Ok(self.raw(key))
        }

        fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
            self.begin(&keys.iter().map(String::as_str).collect::<Vec<_>>())?;
            keys.iter().try_for_each(|key| self.readable(key))?;
            Ok(keys.iter().map(|key| self.raw(key)).collect())
        }

        fn set(&self, key: &str, value: &[u8], ttl: Option<u64>, only_if_absent: bool) -> Result<bool, CacheError> {
            self.begin(&[key])?;
            Self::writable(value, ttl)?;
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
            self.begin(&keys.iter().map(String::as_str).collect::<Vec<_>>())?;
            let mut removed = 0;
            for key in keys {
                if self.live(key).is_some() || self.wrong_type.borrow_mut().remove(key) {
                    removed += 1;
                }
                self.entries.borrow_mut().remove(key);
            }
            Ok(removed)
        }

        fn exists(&self, key: &str) -> Result<bool, CacheError> {
            self.begin(&[key])?;
            Ok(self.live(key).is_some() || self.wrong_type.borrow().contains(key))
        }

        fn expire(&self, key: &str, ttl_seconds: u64) -> Result<bool, CacheError> {
            self.begin(&[key])?;
            Self::writable(&[], Some(ttl_seconds))?;
            let Some((value, _)) = self.live(key) else {
                return Ok(false);
            };
            self.entries
                .borrow_mut()
                .insert(key.to_owned(), (value, self.deadline(Some(ttl_seconds))));
            Ok(true)
        }

        fn ttl(&self, key: &str) -> Result<Ttl, CacheError> {
            self.begin(&[key])?;
            Ok(match self.ttl_of(key) {
                None => Ttl::Missing,
                Some(None) => Ttl::Persistent,
                Some(Some(seconds)) => Ttl::ExpiresIn(seconds),
            })
        }

        fn incr_by(&self, key: &str, delta: i64, ttl_if_new: u64) -> Result<i64, CacheError> {
            // No bound an i64 can pass: overflow is refused before it.
            Ok(self.incr_by_bounded(key, delta, ttl_if_new, i64::MAX)?.value)
        }

        fn incr_by_bounded(&self, key: &str, delta: i64, ttl_if_new: u64, max: i64) -> Result<BoundedIncr, CacheError> {
            self.begin(&[key])?;
            Self::writable(&[], Some(ttl_if_new))?;
            self.readable(key)?;
            let (current, expires) = self.counter(key)?;
            let next = current
                .checked_add(delta)
                .ok_or_else(|| CacheError::InvalidArgument("the counter would overflow".into()))?;
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
            self.begin(&[key])?;
            Self::writable(new, ttl)?;
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
            self.begin(&[key])?;
            self.readable(key)?;
            if self.raw(key).as_deref() != Some(expected) {
                return Ok(false);
            }
            self.entries.borrow_mut().remove(key);
            Ok(true)
        }
    }

    /// The in-memory host is a whole host: its clock is the cache's.
    impl Clock for MemoryCache {
        fn now_ms(&self) -> u64 {
            self.clock.now_ms()
        }

        fn sleep_ms(&self, ms: u64) {
            self.clock.sleep_ms(ms);
        }

        fn random(&self) -> f64 {
            self.clock.random()
        }
    }

    impl crate::rate_limit::Telemetry for MemoryCache {
        fn report(&self, decision: &crate::rate_limit::Decision) {
            self.decisions.borrow_mut().push(decision.clone());
        }
    }

    /// The contract's cases call the same methods, through futures that are
    /// ready at once; time passes on the manual clock.
    impl edge_cache_contract::conformance::CacheUnderTest for MemoryCache {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
            Cache::get(self, key)
        }

        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
            Cache::get_many(self, keys)
        }

        async fn set(
            &self,
            key: &str,
            value: &[u8],
            ttl: Option<u64>,
            only_if_absent: bool,
        ) -> Result<bool, CacheError> {
            Cache::set(self, key, value, ttl, only_if_absent)
        }

        async fn delete(&self, keys: &[String]) -> Result<u32, CacheError> {
            Cache::delete(self, keys)
        }

        async fn exists(&self, key: &str) -> Result<bool, CacheError> {
            Cache::exists(self, key)
        }

        async fn expire(&self, key: &str, ttl_seconds: u64) -> Result<bool, CacheError> {
            Cache::expire(self, key, ttl_seconds)
        }

        async fn ttl(&self, key: &str) -> Result<Ttl, CacheError> {
            Cache::ttl(self, key)
        }

        async fn incr_by(&self, key: &str, delta: i64, ttl_if_new: u64) -> Result<i64, CacheError> {
            Cache::incr_by(self, key, delta, ttl_if_new)
        }

        async fn incr_by_bounded(
            &self,
            key: &str,
            delta: i64,
            ttl_if_new: u64,
            max: i64,
        ) -> Result<BoundedIncr, CacheError> {
            Cache::incr_by_bounded(self, key, delta, ttl_if_new, max)
        }

        async fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<&[u8]>,
            new: &[u8],
            ttl: Option<u64>,
        ) -> Result<CasOutcome, CacheError> {
            Cache::compare_and_swap(self, key, expected, new, ttl)
        }

        async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, CacheError> {
            Cache::compare_and_delete(self, key, expected)
        }

        async fn pass_time(&self, ms: u64) {
            self.clock.advance(ms);
        }
    }

    /// The contract's conformance suite, one test per case.
    impl PenaltyBox for MemoryCache {
        fn look(&self, key: &str) -> Lookup {
            self.penalty_box.look(key)
        }

        fn hold(&self, key: &str, ticket: u64, until_ms: u64, note: &[u8]) {
            self.penalty_box.hold(key, ticket, until_ms, note);
        }

        fn release(&self, key: &str) {
            self.penalty_box.release(key);
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
        /// How many looks were made.
        pub looks: Cell<u32>,
        /// How many holds were asked for.
        pub holds: Cell<u32>,
        /// Runs at the start of `hold`, to simulate a concurrent reset.
        pub before_hold: RefCell<Option<BeforeHold>>,
    }

    impl MemoryBox {
        /// The entry at `key`, ended or not.
        pub fn entry(&self, key: &str) -> Option<Held> {
            self.entries.borrow().get(key).cloned()
        }

        /// The keys held, sorted.
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

    /// A host that keeps nothing, as the contract allows: every check goes
    /// to the cache.
    pub struct Forgetful;

    impl PenaltyBox for Forgetful {
        fn look(&self, _: &str) -> Lookup {
            Lookup::default()
        }

        fn hold(&self, _: &str, _: u64, _: u64, _: &[u8]) {}

        fn release(&self, _: &str) {}
    }

    #[cfg(test)]
    mod conformance {
        use super::MemoryCache;
        use std::future::Future;
        use std::pin::pin;
        use std::task::{Context, Poll, Waker};

        /// Runs a case to its end: the in-memory host never makes it wait.
        fn run(case: impl Future<Output = ()>) {
            let mut context = Context::from_waker(Waker::noop());
            match pin!(case).poll(&mut context) {
                Poll::Ready(()) => {}
                Poll::Pending => panic!("the in-memory host never waits"),
            }
        }

        macro_rules! conformance {
            ($($case:ident),* $(,)?) => {
                $(#[test]
                fn $case() {
                    run(edge_cache_contract::conformance::$case(&MemoryCache::default()));
                })*
            };
        }

        edge_cache_contract::for_each_case!(conformance);
    }
}
