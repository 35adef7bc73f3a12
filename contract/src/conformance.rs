//! The cache contract (`wit/cache.wit`) as executable cases: every
//! implementation runs them, so anything one does that another does not is a
//! failure. The harness runs them against Redis, a Redis Cluster and its
//! embedded store (`tests/all/conformance.rs`); the SDK against its in-memory
//! test host.
//!
//! The cases are async functions over [`CacheUnderTest`]: the harness's
//! stores are async, and a synchronous host answers with futures that are
//! ready at once. What differs between hosts stays with them: time passes by
//! a sleep or a test clock's step ([`CacheUnderTest::pass_time`]), and
//! concurrent callers are tasks or a loop ([`CacheUnderTest::race`]).
//! Properties only a host can observe (namespaces, values of other types
//! written by other clients) are tested by that host.
//!
//! A host's test suite runs each case as a test of its own with
//! [`for_each_case!`](crate::for_each_case).

use crate::cache::{BoundedIncr, CacheError, CasOutcome, Ttl};
use crate::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// An implementation of `edge:cache/cache` under test, with its host's ways
/// of letting time pass and of racing callers.
// The cases await each call on one task, so no `Send` bound is needed on
// the futures (which is what the lint warns about).
#[allow(async_fn_in_trait)]
pub trait CacheUnderTest {
    /// Reads a key.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError>;
    /// Reads several keys, in order.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError>;
    /// Writes a key; whether it wrote.
    async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl_seconds: Option<u64>,
        only_if_absent: bool,
    ) -> Result<bool, CacheError>;
    /// Removes keys; how many existed.
    async fn delete(&self, keys: &[String]) -> Result<u32, CacheError>;
    /// Whether a key exists.
    async fn exists(&self, key: &str) -> Result<bool, CacheError>;
    /// Sets a key's time-to-live; false when it does not exist.
    async fn expire(&self, key: &str, ttl_seconds: u64) -> Result<bool, CacheError>;
    /// A key's remaining lifetime.
    async fn ttl(&self, key: &str) -> Result<Ttl, CacheError>;
    /// Adds to a counter, giving it `ttl_if_new` when it has no expiry.
    async fn incr_by(&self, key: &str, delta: i64, ttl_if_new: u64) -> Result<i64, CacheError>;
    /// Adds to a counter unless the result would pass `max`.
    async fn incr_by_bounded(
        &self,
        key: &str,
        delta: i64,
        ttl_if_new: u64,
        max: i64,
    ) -> Result<BoundedIncr, CacheError>;
    /// Replaces a value that equals `expected` (`None`: absent).
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_seconds: Option<u64>,
    ) -> Result<CasOutcome, CacheError>;
    /// Deletes a key that holds `expected`; whether it did.
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, CacheError>;

    /// Lets `ms` milliseconds pass for the store's expiry.
    async fn pass_time(&self, ms: u64);

    /// Makes `copies` of `call` as concurrently as the host can (as many
    /// instances would) and returns their outcomes, in any order. A host
    /// without concurrency makes them one after the other.
    async fn race(&self, copies: usize, call: Call) -> Vec<Result<Outcome, CacheError>> {
        let mut outcomes = Vec::with_capacity(copies);
        for _ in 0..copies {
            outcomes.push(call.run(self).await);
        }
        outcomes
    }
}

/// A call that concurrent callers race on; owned, so that a host can hand
/// a copy to each of its tasks.
#[derive(Debug, Clone)]
pub enum Call {
    /// [`CacheUnderTest::incr_by`].
    IncrBy { key: String, delta: i64, ttl_if_new: u64 },
    /// [`CacheUnderTest::incr_by_bounded`].
    IncrByBounded {
        key: String,
        delta: i64,
        ttl_if_new: u64,
        max: i64,
    },
    /// [`CacheUnderTest::compare_and_delete`].
    CompareAndDelete { key: String, expected: Vec<u8> },
}

/// What a [`Call`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The counter's new value.
    Counted(i64),
    /// A bounded increment's outcome.
    Bounded(BoundedIncr),
    /// Whether a compare-and-delete deleted.
    Deleted(bool),
}

impl Call {
    /// Makes the call once.
    pub async fn run(&self, cache: &(impl CacheUnderTest + ?Sized)) -> Result<Outcome, CacheError> {
        match self {
            Self::IncrBy { key, delta, ttl_if_new } => {
                cache.incr_by(key, *delta, *ttl_if_new).await.map(Outcome::Counted)
            }
            Self::IncrByBounded {
                key,
                delta,
                ttl_if_new,
                max,
            } => cache
                .incr_by_bounded(key, *delta, *ttl_if_new, *max)
                .await
                .map(Outcome::Bounded),
            Self::CompareAndDelete { key, expected } => {
                cache.compare_and_delete(key, expected).await.map(Outcome::Deleted)
            }
        }
    }
}

/// Calls `$callback!` with the name of every case, so that a host's suite
/// runs each as a test of its own and never misses one:
///
/// ```text
/// macro_rules! conformance {
///     ($($case:ident),*) => { $(#[test] fn $case() { run(edge_cache_contract::conformance::$case) })* };
/// }
/// edge_cache_contract::for_each_case!(conformance);
/// ```
#[macro_export]
macro_rules! for_each_case {
    ($callback:ident) => {
        $callback!(
            get_set_delete,
            only_if_absent,
            ttl_and_expiry,
            get_many,
            counters,
            bounded_counters,
            concurrent_bounded_counters_never_pass_the_bound,
            concurrent_counters_are_atomic,
            compare_and_swap,
            compare_and_delete,
            invalid_input_is_typed_and_changes_nothing,
        );
    };
}

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

/// Values are bytes, kept as written, replaced by `set` and removed by `delete`.
pub async fn get_set_delete(cache: &impl CacheUnderTest) {
    assert_eq!(cache.get("k").await.unwrap(), None);
    assert!(cache.set("k", b"\x00binary\xff", None, false).await.unwrap());
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"\x00binary\xff"[..]));
    assert!(cache.exists("k").await.unwrap());
    assert_eq!(cache.ttl("k").await.unwrap(), Ttl::Persistent);
    // Overwriting replaces the value; an empty value is a value.
    assert!(cache.set("k", b"", None, false).await.unwrap());
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b""[..]));
    cache.set("other", b"x", None, false).await.unwrap();
    assert_eq!(cache.delete(&keys(&["k", "other", "never"])).await.unwrap(), 2);
    assert_eq!(cache.delete(&[]).await.unwrap(), 0);
    assert!(!cache.exists("k").await.unwrap());
    assert_eq!(cache.ttl("k").await.unwrap(), Ttl::Missing);
}

/// `only-if-absent` writes once.
pub async fn only_if_absent(cache: &impl CacheUnderTest) {
    assert!(cache.set("nx", b"first", Some(60), true).await.unwrap());
    assert!(!cache.set("nx", b"second", Some(60), true).await.unwrap());
    assert_eq!(cache.get("nx").await.unwrap().as_deref(), Some(&b"first"[..]));
}

/// Time-to-live as Redis keeps it; an expired key is absent for every function.
pub async fn ttl_and_expiry(cache: &impl CacheUnderTest) {
    cache.set("t", b"v", Some(100), false).await.unwrap();
    assert!(matches!(cache.ttl("t").await.unwrap(), Ttl::ExpiresIn(99..=100)));
    // A plain set without TTL makes the key persistent again, as in Redis.
    cache.set("t", b"v", None, false).await.unwrap();
    assert_eq!(cache.ttl("t").await.unwrap(), Ttl::Persistent);
    assert!(cache.expire("t", 1).await.unwrap());
    assert_eq!(cache.ttl("t").await.unwrap(), Ttl::ExpiresIn(1));
    assert!(!cache.expire("missing", 10).await.unwrap());
    cache.pass_time(1100).await;
    assert_eq!(cache.get("t").await.unwrap(), None);
    assert!(!cache.exists("t").await.unwrap());
    assert_eq!(cache.ttl("t").await.unwrap(), Ttl::Missing);
}

/// `get-many` answers in the order of its keys.
pub async fn get_many(cache: &impl CacheUnderTest) {
    cache.set("a", b"1", None, false).await.unwrap();
    cache.set("c", b"3", None, false).await.unwrap();
    let values = cache.get_many(&keys(&["a", "b", "c"])).await.unwrap();
    assert_eq!(values, vec![Some(b"1".to_vec()), None, Some(b"3".to_vec())]);
    assert_eq!(cache.get_many(&[]).await.unwrap(), Vec::<Option<Vec<u8>>>::new());
}

/// `incr-by` counts atomically, attaches a TTL only to keys without one, and refuses non-numbers and overflow.
pub async fn counters(cache: &impl CacheUnderTest) {
    assert_eq!(cache.incr_by("n", 5, 60).await.unwrap(), 5);
    assert_eq!(cache.incr_by("n", -2, 60).await.unwrap(), 3);
    assert!(matches!(cache.ttl("n").await.unwrap(), Ttl::ExpiresIn(59..=60)));
    assert_eq!(cache.get("n").await.unwrap().as_deref(), Some(&b"3"[..]));
    // A counter without expiry gets one: it can never outlive its window.
    cache.set("forever", b"10", None, false).await.unwrap();
    assert_eq!(cache.incr_by("forever", 1, 30).await.unwrap(), 11);
    assert!(matches!(cache.ttl("forever").await.unwrap(), Ttl::ExpiresIn(29..=30)));
    // An existing expiry is kept, not extended.
    cache.expire("n", 5).await.unwrap();
    cache.incr_by("n", 1, 60).await.unwrap();
    assert!(matches!(cache.ttl("n").await.unwrap(), Ttl::ExpiresIn(4..=5)));
    // Not a number.
    cache.set("text", b"abc", None, false).await.unwrap();
    assert_eq!(cache.incr_by("text", 1, 60).await, Err(CacheError::WrongType));
    assert_eq!(cache.get("text").await.unwrap().as_deref(), Some(&b"abc"[..]));
    // Overflow is refused and changes nothing.
    cache
        .set("big", i64::MAX.to_string().as_bytes(), None, false)
        .await
        .unwrap();
    assert!(matches!(
        cache.incr_by("big", 1, 60).await,
        Err(CacheError::InvalidArgument(_))
    ));
    assert_eq!(cache.get("big").await.unwrap(), Some(i64::MAX.to_string().into_bytes()));
}

/// `incr-by-bounded` never passes its bound and changes nothing when refused.
pub async fn bounded_counters(cache: &impl CacheUnderTest) {
    let first = cache.incr_by_bounded("b", 3, 60, 5).await.unwrap();
    assert_eq!((first.applied, first.value), (true, 3));
    assert!(matches!(cache.ttl("b").await.unwrap(), Ttl::ExpiresIn(59..=60)));
    let refused = cache.incr_by_bounded("b", 3, 60, 5).await.unwrap();
    assert_eq!(
        (refused.applied, refused.value),
        (false, 3),
        "past the bound nothing changes"
    );
    let fits = cache.incr_by_bounded("b", 2, 60, 5).await.unwrap();
    assert_eq!((fits.applied, fits.value), (true, 5));
    // A missing key counts as 0; a negative bound refuses even that.
    let negative = cache.incr_by_bounded("fresh", 1, 60, 0).await.unwrap();
    assert_eq!((negative.applied, negative.value), (false, 0));
    assert!(
        !cache.exists("fresh").await.unwrap(),
        "a refused increment creates nothing"
    );
    cache.set("text", b"abc", None, false).await.unwrap();
    assert_eq!(
        cache.incr_by_bounded("text", 1, 60, 10).await,
        Err(CacheError::WrongType)
    );
    cache.set("persistent", b"1", None, false).await.unwrap();
    cache.incr_by_bounded("persistent", 1, 30, 10).await.unwrap();
    assert!(matches!(
        cache.ttl("persistent").await.unwrap(),
        Ttl::ExpiresIn(29..=30)
    ));
}

/// Racing bounded increments let exactly the bound through.
pub async fn concurrent_bounded_counters_never_pass_the_bound(cache: &impl CacheUnderTest) {
    let call = Call::IncrByBounded {
        key: "race".into(),
        delta: 1,
        ttl_if_new: 60,
        max: 25,
    };
    let applied = cache
        .race(60, call)
        .await
        .into_iter()
        .filter(|outcome| matches!(outcome, Ok(Outcome::Bounded(BoundedIncr { applied: true, .. }))))
        .count();
    assert_eq!(applied, 25);
    assert_eq!(cache.get("race").await.unwrap().as_deref(), Some(&b"25"[..]));
}

/// Racing increments each see a distinct count.
pub async fn concurrent_counters_are_atomic(cache: &impl CacheUnderTest) {
    let call = Call::IncrBy {
        key: "race".into(),
        delta: 1,
        ttl_if_new: 60,
    };
    let mut seen: Vec<i64> = cache
        .race(50, call)
        .await
        .into_iter()
        .map(|outcome| match outcome {
            Ok(Outcome::Counted(value)) => value,
            other => panic!("an increment answered {other:?}"),
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=50).collect::<Vec<_>>(),
        "every increment sees a distinct count"
    );
}

/// `compare-and-swap` replaces only the expected value and reports the one found.
pub async fn compare_and_swap(cache: &impl CacheUnderTest) {
    assert_eq!(
        cache.compare_and_swap("cas", None, b"v1", Some(60)).await.unwrap(),
        CasOutcome::Swapped
    );
    assert!(matches!(cache.ttl("cas").await.unwrap(), Ttl::ExpiresIn(59..=60)));
    assert_eq!(
        cache.compare_and_swap("cas", None, b"v2", None).await.unwrap(),
        CasOutcome::Conflict(Some(b"v1".to_vec()))
    );
    assert_eq!(
        cache
            .compare_and_swap("cas", Some(b"wrong"), b"v2", None)
            .await
            .unwrap(),
        CasOutcome::Conflict(Some(b"v1".to_vec()))
    );
    assert_eq!(
        cache.compare_and_swap("cas", Some(b"v1"), b"v2", None).await.unwrap(),
        CasOutcome::Swapped
    );
    assert_eq!(cache.get("cas").await.unwrap().as_deref(), Some(&b"v2"[..]));
    assert_eq!(cache.ttl("cas").await.unwrap(), Ttl::Persistent);
    assert_eq!(
        cache
            .compare_and_swap("absent", Some(b"v1"), b"v2", None)
            .await
            .unwrap(),
        CasOutcome::Conflict(None)
    );
    assert!(!cache.exists("absent").await.unwrap());
}

/// `compare-and-delete` deletes only the expected value, once.
pub async fn compare_and_delete(cache: &impl CacheUnderTest) {
    cache.set("lock", b"token-1", Some(60), false).await.unwrap();
    assert!(!cache.compare_and_delete("lock", b"token-2").await.unwrap());
    assert_eq!(cache.get("lock").await.unwrap().as_deref(), Some(&b"token-1"[..]));
    assert!(cache.compare_and_delete("lock", b"token-1").await.unwrap());
    assert!(!cache.exists("lock").await.unwrap());
    assert!(
        !cache.compare_and_delete("lock", b"token-1").await.unwrap(),
        "absent: nothing to delete"
    );
    // Concurrent holders of the same token: exactly one deletes.
    cache.set("lock", b"t", None, false).await.unwrap();
    let call = Call::CompareAndDelete {
        key: "lock".into(),
        expected: b"t".to_vec(),
    };
    let deleted = cache
        .race(20, call)
        .await
        .into_iter()
        .filter(|outcome| matches!(outcome, Ok(Outcome::Deleted(true))))
        .count();
    assert_eq!(deleted, 1);
}

/// Bad keys, values over the limit and zero TTLs are typed errors that change nothing.
pub async fn invalid_input_is_typed_and_changes_nothing(cache: &impl CacheUnderTest) {
    assert!(matches!(cache.get("").await, Err(CacheError::InvalidKey(_))));
    assert!(matches!(
        cache.set(&"k".repeat(MAX_KEY_BYTES + 1), b"v", None, false).await,
        Err(CacheError::InvalidKey(_))
    ));
    assert!(matches!(cache.get("line\nbreak").await, Err(CacheError::InvalidKey(_))));
    assert!(matches!(
        cache.get_many(&keys(&["ok", ""])).await,
        Err(CacheError::InvalidKey(_))
    ));
    let big = vec![0u8; MAX_VALUE_BYTES + 1];
    assert_eq!(
        cache.set("big", &big, None, false).await,
        Err(CacheError::ValueTooLarge(MAX_VALUE_BYTES as u64))
    );
    assert_eq!(
        cache.compare_and_swap("big", None, &big, None).await,
        Err(CacheError::ValueTooLarge(MAX_VALUE_BYTES as u64))
    );
    assert!(!cache.exists("big").await.unwrap());
    assert!(
        cache.set("max", &big[1..], None, false).await.unwrap(),
        "exactly the limit is accepted"
    );
    for zero_ttl in [
        cache.set("z", b"v", Some(0), false).await.err(),
        cache.expire("max", 0).await.err(),
        cache.incr_by("z", 1, 0).await.err(),
    ] {
        assert!(matches!(zero_ttl, Some(CacheError::InvalidArgument(_))), "{zero_ttl:?}");
    }
    assert!(!cache.exists("z").await.unwrap());
}
