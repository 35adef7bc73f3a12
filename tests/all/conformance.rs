//! The cache contract (`wit/cache.wit`) and the host's `wasi:keyvalue`
//! (`wit/deps/keyvalue`), run against every store: a real redis-server and a
//! real Redis Cluster (each with and without a near cache), and the embedded
//! store.
//! Anything one store does that another does not is a failure here. The
//! contract's cases live in `edge_cache_contract::conformance`, which the
//! SDK's in-memory host runs too; what only a host can check (namespaces,
//! `wasi:keyvalue`, values of other types written by other clients,
//! eviction) is here.

use edge_cache_contract::cache as contract;
use edge_cache_contract::conformance::{CacheUnderTest, Call, Outcome};
use edge_cache_harness::StoreConfig;
use edge_cache_harness::keyspace::{Keyspace, Limits};
use edge_cache_harness::keyvalue::atomics::Host as _;
use edge_cache_harness::keyvalue::batch::Host as _;
use edge_cache_harness::keyvalue::store::{self, Host as _, HostBucket as _};
use edge_cache_harness::keyvalue::{Bucket, KeyValue, bucket_scope};
use edge_cache_harness::store::memory::MemoryStore;
use edge_cache_harness::store::near::NearCacheConfig;
use edge_cache_harness::store::{CasOutcome, StoreError, Ttl};
use edge_cache_tests::{RedisCluster, RedisServer};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Resource, ResourceTable};

/// One store under test, and what keeps it alive.
struct Subject {
    cache: Keyspace,
    _server: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

impl Subject {
    async fn redis() -> Self {
        let server = RedisServer::start();
        let store = server.store().connect().await.expect("connect to the test server");
        Self {
            cache: Keyspace::new(store, "conformance", Limits::default()).unwrap(),
            _server: Some(server),
            _cluster: None,
        }
    }

    /// Redis with a near cache in front of its reads.
    async fn near_cache() -> Self {
        let server = RedisServer::start();
        let store = server
            .store_with_near_cache(NearCacheConfig::new(1 << 20))
            .connect()
            .await
            .expect("connect to the test server");
        Self {
            cache: Keyspace::new(store, "conformance", Limits::default()).unwrap(),
            _server: Some(server),
            _cluster: None,
        }
    }

    fn memory() -> Self {
        let store = Arc::new(MemoryStore::new(16 << 20));
        Self {
            cache: Keyspace::new(store, "conformance", Limits::default()).unwrap(),
            _server: None,
            _cluster: None,
        }
    }

    /// A Redis Cluster with a near cache in front of its reads.
    async fn near_cache_cluster() -> Self {
        let cluster = RedisCluster::start(3, 0);
        let store = cluster
            .store_with_near_cache(NearCacheConfig::new(1 << 20))
            .connect()
            .await
            .expect("connect to the test cluster");
        Self {
            cache: Keyspace::new(store, "conformance", Limits::default()).unwrap(),
            _server: None,
            _cluster: Some(cluster),
        }
    }

    async fn cluster() -> Self {
        let cluster = RedisCluster::start(3, 0);
        let store = cluster.store().connect().await.expect("connect to the test cluster");
        Self {
            cache: Keyspace::new(store, "conformance", Limits::default()).unwrap(),
            _server: None,
            _cluster: Some(cluster),
        }
    }
}

impl Subject {
    /// Writes a Redis list at `key` of the namespace, with a client of the
    /// test's own (the contract has no way to).
    async fn push_list(&self, key: &str) {
        let mut command = ::redis::cmd("RPUSH");
        command.arg(format!("conformance:{key}")).arg("x");
        if let Some(server) = &self._server {
            let mut connection = server.connection().await;
            let _: ::redis::Value = command.query_async(&mut connection).await.unwrap();
        } else if let Some(cluster) = &self._cluster {
            let client = ::redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
            let mut connection = client.get_async_connection().await.unwrap();
            let _: ::redis::Value = command.query_async(&mut connection).await.unwrap();
        } else {
            panic!("the embedded store holds bytes only");
        }
    }
}

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

/// The harness's cache as the contract's cases call it.
struct Harnessed<'a>(&'a Keyspace);

fn contract_error(error: StoreError) -> contract::CacheError {
    match error {
        StoreError::Unavailable(why) => contract::CacheError::Unavailable(why),
        // As the guest sees it (host.rs): a setting to fix, reported as unavailable.
        StoreError::AccessDenied(why) => contract::CacheError::Unavailable(format!("permission denied: {why}")),
        StoreError::Timeout(_) => contract::CacheError::Timeout,
        StoreError::InvalidKey(why) => contract::CacheError::InvalidKey(why),
        StoreError::ValueTooLarge { limit } => contract::CacheError::ValueTooLarge(limit),
        StoreError::WrongType => contract::CacheError::WrongType,
        StoreError::InvalidArgument(why) => contract::CacheError::InvalidArgument(why),
        StoreError::Other(why) => contract::CacheError::Other(why),
    }
}

fn contract_cas(outcome: CasOutcome) -> contract::CasOutcome {
    match outcome {
        CasOutcome::Swapped => contract::CasOutcome::Swapped,
        CasOutcome::Conflict(found) => contract::CasOutcome::Conflict(found),
    }
}

type Answer<T> = Result<T, contract::CacheError>;

impl CacheUnderTest for Harnessed<'_> {
    async fn get(&self, key: &str) -> Answer<Option<Vec<u8>>> {
        self.0.get(key).await.map_err(contract_error)
    }

    async fn get_many(&self, keys: &[String]) -> Answer<Vec<Option<Vec<u8>>>> {
        self.0.get_many(keys).await.map_err(contract_error)
    }

    async fn set(&self, key: &str, value: &[u8], ttl_seconds: Option<u64>, only_if_absent: bool) -> Answer<bool> {
        self.0
            .set(key, value, ttl_seconds, only_if_absent)
            .await
            .map_err(contract_error)
    }

    async fn delete(&self, keys: &[String]) -> Answer<u32> {
        self.0.delete(keys).await.map_err(contract_error)
    }

    async fn exists(&self, key: &str) -> Answer<bool> {
        self.0.exists(key).await.map_err(contract_error)
    }

    async fn expire(&self, key: &str, ttl_seconds: u64) -> Answer<bool> {
        self.0.expire(key, ttl_seconds).await.map_err(contract_error)
    }

    async fn ttl(&self, key: &str) -> Answer<contract::Ttl> {
        Ok(match self.0.ttl(key).await.map_err(contract_error)? {
            Ttl::Missing => contract::Ttl::Missing,
            Ttl::Persistent => contract::Ttl::Persistent,
            Ttl::ExpiresIn(seconds) => contract::Ttl::ExpiresIn(seconds),
        })
    }

    async fn incr_by(&self, key: &str, delta: i64, ttl_if_new: u64) -> Answer<i64> {
        self.0.incr_by(key, delta, ttl_if_new).await.map_err(contract_error)
    }

    async fn incr_by_bounded(&self, key: &str, delta: i64, ttl_if_new: u64, max: i64) -> Answer<contract::BoundedIncr> {
        let outcome = self
            .0
            .incr_by_bounded(key, delta, ttl_if_new, max)
            .await
            .map_err(contract_error)?;
        Ok(contract::BoundedIncr {
            applied: outcome.applied,
            value: outcome.value,
        })
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_seconds: Option<u64>,
    ) -> Answer<contract::CasOutcome> {
        self.0
            .compare_and_swap(key, expected, new, ttl_seconds)
            .await
            .map(contract_cas)
            .map_err(contract_error)
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Answer<bool> {
        self.0.compare_and_delete(key, expected).await.map_err(contract_error)
    }

    async fn pass_time(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// One task per call, on a multi-threaded runtime: as many instances
    /// calling at once.
    async fn race(&self, copies: usize, call: Call) -> Vec<Answer<Outcome>> {
        let tasks: Vec<_> = (0..copies)
            .map(|_| {
                let (cache, call) = (self.0.clone(), call.clone());
                tokio::spawn(async move { call.run(&Harnessed(&cache)).await })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(copies);
        for task in tasks {
            outcomes.push(task.await.expect("a racing call panicked"));
        }
        outcomes
    }
}

async fn namespaces_do_not_cross(cache: &Keyspace) {
    let other = Keyspace::new(cache.store().clone(), "other", Limits::default()).unwrap();
    cache.set("shared-name", b"mine", None, false).await.unwrap();
    assert_eq!(other.get("shared-name").await.unwrap(), None);
    other.set("shared-name", b"theirs", None, false).await.unwrap();
    assert_eq!(cache.get("shared-name").await.unwrap().as_deref(), Some(&b"mine"[..]));
    assert_eq!(other.delete(&keys(&["shared-name"])).await.unwrap(), 1);
    assert_eq!(cache.get("shared-name").await.unwrap().as_deref(), Some(&b"mine"[..]));
}

/// A guest's `wasi:keyvalue` calls, made on the host's implementation
/// directly: the same code the linker calls, without an instance.
struct Guest {
    cache: Keyspace,
    table: ResourceTable,
}

impl Guest {
    fn new(cache: &Keyspace) -> Self {
        Self {
            cache: cache.clone(),
            table: ResourceTable::new(),
        }
    }

    fn kv(&mut self) -> KeyValue<'_> {
        KeyValue::new(&self.cache, &mut self.table)
    }

    async fn open(&mut self, identifier: &str) -> Result<Resource<Bucket>, store::Error> {
        self.kv().open(identifier.into()).await.expect("open does not trap")
    }
}

/// A `borrow<bucket>` of an open bucket, as the guest passes it to each call.
fn lend(bucket: &Resource<Bucket>) -> Resource<Bucket> {
    Resource::new_borrow(bucket.rep())
}

fn other(error: store::Error) -> String {
    match error {
        store::Error::Other(why) => why,
        unexpected => panic!("expected other(…), got {unexpected:?}"),
    }
}

async fn kv_store_round_trip(cache: &Keyspace) {
    let mut guest = Guest::new(cache);
    let notes = guest.open("notes").await.unwrap();
    let mut kv = guest.kv();
    assert_eq!(kv.get(lend(&notes), "k".into()).await.unwrap().unwrap(), None);
    assert!(!kv.exists(lend(&notes), "k".into()).await.unwrap().unwrap());
    kv.set(lend(&notes), "k".into(), b"\x00binary\xff".to_vec())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kv.get(lend(&notes), "k".into()).await.unwrap().unwrap().as_deref(),
        Some(&b"\x00binary\xff"[..])
    );
    assert!(kv.exists(lend(&notes), "k".into()).await.unwrap().unwrap());
    kv.set(lend(&notes), "k".into(), Vec::new()).await.unwrap().unwrap();
    assert_eq!(
        kv.get(lend(&notes), "k".into()).await.unwrap().unwrap().as_deref(),
        Some(&b""[..]),
        "an empty value is a value"
    );
    kv.delete(lend(&notes), "k".into()).await.unwrap().unwrap();
    kv.delete(lend(&notes), "k".into())
        .await
        .unwrap()
        .expect("deleting an absent key is no error");
    assert!(!kv.exists(lend(&notes), "k".into()).await.unwrap().unwrap());
    store::HostBucket::drop(&mut kv, notes).await.unwrap();
    assert!(
        kv.get(Resource::new_borrow(0), "k".into()).await.is_err(),
        "a handle the guest does not hold traps"
    );
}

async fn kv_buckets_are_prefixes_apart(cache: &Keyspace) {
    let mut guest = Guest::new(cache);
    let a = guest.open("a").await.unwrap();
    let b = guest.open("b").await.unwrap();
    let mut kv = guest.kv();
    kv.set(lend(&a), "k".into(), b"in a".to_vec()).await.unwrap().unwrap();
    assert_eq!(kv.get(lend(&b), "k".into()).await.unwrap().unwrap(), None);
    // The bucket lives in the namespace, apart from edge:cache keys, which
    // cannot name it (a control character leads its prefix).
    assert_eq!(cache.get("k").await.unwrap(), None);
    assert_eq!(cache.get("kv:a:k").await.unwrap(), None);
    assert!(matches!(
        cache.get(&format!("{}k", bucket_scope("a"))).await,
        Err(StoreError::InvalidKey(_))
    ));
    assert_eq!(
        cache.within(&bucket_scope("a")).get("k").await.unwrap().as_deref(),
        Some(&b"in a"[..])
    );
    cache.set("k", b"edge", None, false).await.unwrap();
    assert_eq!(
        kv.get(lend(&a), "k".into()).await.unwrap().unwrap().as_deref(),
        Some(&b"in a"[..])
    );
    // The empty identifier is the default bucket.
    let mut guest = Guest::new(cache);
    let empty = guest.open("").await.unwrap();
    let default = guest.open("default").await.unwrap();
    let mut kv = guest.kv();
    kv.set(lend(&empty), "shared".into(), b"1".to_vec())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kv.get(lend(&default), "shared".into())
            .await
            .unwrap()
            .unwrap()
            .as_deref(),
        Some(&b"1"[..])
    );
}

async fn kv_bucket_identifiers_are_checked(cache: &Keyspace) {
    let mut guest = Guest::new(cache);
    for bad in ["a:b", "{tag}", "with space", "tab\t", "*", &"b".repeat(65)] {
        assert!(
            matches!(guest.open(bad).await, Err(store::Error::NoSuchStore)),
            "{bad:?}"
        );
    }
    assert!(guest.open(&"b".repeat(64)).await.is_ok());
}

async fn kv_increment(cache: &Keyspace) {
    let mut guest = Guest::new(cache);
    let counters = guest.open("counters").await.unwrap();
    let mut kv = guest.kv();
    assert_eq!(kv.increment(lend(&counters), "n".into(), 5).await.unwrap().unwrap(), 5);
    assert_eq!(kv.increment(lend(&counters), "n".into(), 2).await.unwrap().unwrap(), 7);
    assert_eq!(kv.increment(lend(&counters), "n".into(), 0).await.unwrap().unwrap(), 7);
    assert_eq!(
        kv.get(lend(&counters), "n".into()).await.unwrap().unwrap().as_deref(),
        Some(&b"7"[..])
    );
    // Unlike edge:cache's incr-by, no expiry is forced on the counter, and
    // one it has is kept.
    let scoped = cache.within(&bucket_scope("counters"));
    assert_eq!(scoped.ttl("n").await.unwrap(), Ttl::Persistent);
    scoped.expire("n", 100).await.unwrap();
    kv.increment(lend(&counters), "n".into(), 1).await.unwrap().unwrap();
    assert!(matches!(scoped.ttl("n").await.unwrap(), Ttl::ExpiresIn(99..=100)));

    kv.set(lend(&counters), "text".into(), b"abc".to_vec())
        .await
        .unwrap()
        .unwrap();
    let why = other(
        kv.increment(lend(&counters), "text".into(), 1)
            .await
            .unwrap()
            .unwrap_err(),
    );
    assert!(why.contains("not a decimal 64-bit integer"), "{why}");
    let why = other(
        kv.increment(lend(&counters), "n".into(), u64::MAX)
            .await
            .unwrap()
            .unwrap_err(),
    );
    assert!(why.contains("signed 64-bit"), "{why}");
    kv.set(lend(&counters), "big".into(), i64::MAX.to_string().into_bytes())
        .await
        .unwrap()
        .unwrap();
    let why = other(
        kv.increment(lend(&counters), "big".into(), 1)
            .await
            .unwrap()
            .unwrap_err(),
    );
    assert!(why.contains("overflow"), "{why}");

    // Atomic: concurrent increments from separate instances lose nothing.
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut guest = Guest::new(&cache);
                let counters = guest.open("counters").await.unwrap();
                guest.kv().increment(counters, "race".into(), 1).await.unwrap().unwrap()
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=40).collect::<Vec<u64>>());
}

async fn kv_batch(cache: &Keyspace) {
    let mut guest = Guest::new(cache);
    let notes = guest.open("notes").await.unwrap();
    let mut kv = guest.kv();
    let entries = |pairs: &[(&str, &[u8])]| -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_vec()))
            .collect()
    };
    kv.set_many(lend(&notes), entries(&[("a", b"1"), ("b", b"2"), ("c", b"3")]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kv.get_many(lend(&notes), keys(&["a", "missing", "c"]))
            .await
            .unwrap()
            .unwrap(),
        vec![
            Some(("a".to_owned(), b"1".to_vec())),
            None,
            Some(("c".to_owned(), b"3".to_vec()))
        ]
    );
    kv.delete_many(lend(&notes), keys(&["a", "missing", "b"]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kv.get_many(lend(&notes), keys(&["a", "b", "c"]))
            .await
            .unwrap()
            .unwrap(),
        vec![None, None, Some(("c".to_owned(), b"3".to_vec()))]
    );
    for empty in [
        kv.set_many(lend(&notes), Vec::new()).await.unwrap(),
        kv.delete_many(lend(&notes), Vec::new()).await.unwrap(),
    ] {
        empty.unwrap();
    }
    assert_eq!(kv.get_many(lend(&notes), Vec::new()).await.unwrap().unwrap(), vec![]);
    // Checked before anything is written: one bad entry writes none.
    let big = vec![0u8; 1024 * 1024 + 1];
    let why = other(
        kv.set_many(lend(&notes), entries(&[("first", b"1"), ("big", &big)]))
            .await
            .unwrap()
            .unwrap_err(),
    );
    assert!(why.contains("1048576 bytes"), "{why}");
    assert!(!kv.exists(lend(&notes), "first".into()).await.unwrap().unwrap());
    let why = other(kv.get_many(lend(&notes), keys(&["ok", ""])).await.unwrap().unwrap_err());
    assert!(why.contains("invalid key"), "{why}");
}

async fn kv_bad_input_is_the_wit_error(cache: &Keyspace) {
    let mut guest = Guest::new(cache);
    let notes = guest.open("notes").await.unwrap();
    let mut kv = guest.kv();
    let long = "k".repeat(513);
    let why = other(
        kv.set(lend(&notes), long.clone(), b"v".to_vec())
            .await
            .unwrap()
            .unwrap_err(),
    );
    assert!(why.contains("at most 512 bytes, this one has 513"), "{why}");
    // The limit is on the key as the guest names it, not on the prefix.
    kv.set(lend(&notes), "k".repeat(512), b"v".to_vec())
        .await
        .unwrap()
        .unwrap();
    let why = other(kv.get(lend(&notes), String::new()).await.unwrap().unwrap_err());
    assert!(why.contains("must not be empty"), "{why}");
    let why = other(
        kv.exists(lend(&notes), "line\nbreak".into())
            .await
            .unwrap()
            .unwrap_err(),
    );
    assert!(why.contains("control characters"), "{why}");
    let why = other(
        kv.set(lend(&notes), "big".into(), vec![0; 1024 * 1024 + 1])
            .await
            .unwrap()
            .unwrap_err(),
    );
    assert!(why.contains("value too large: the limit is 1048576 bytes"), "{why}");
    let why = other(kv.increment(lend(&notes), long, 1).await.unwrap().unwrap_err());
    assert!(why.contains("invalid key"), "{why}");
}

/// Every key of a bucket, through every page; the pages as counted.
async fn list_all(kv: &mut KeyValue<'_>, bucket: &Resource<Bucket>) -> (BTreeSet<String>, usize) {
    let (mut all, mut pages, mut cursor) = (BTreeSet::new(), 0, None);
    loop {
        let page = kv.list_keys(lend(bucket), cursor).await.unwrap().unwrap();
        pages += 1;
        assert!(page.keys.len() <= 4 * 256, "a page of {} keys", page.keys.len());
        all.extend(page.keys);
        cursor = page.cursor;
        if cursor.is_none() {
            return (all, pages);
        }
        assert!(pages < 1000, "the cursor never ends");
    }
}

async fn kv_list_keys(cache: &Keyspace) {
    let mut guest = Guest::new(cache);
    let many = guest.open("many").await.unwrap();
    let near = guest.open("man").await.unwrap();
    let empty = guest.open("empty").await.unwrap();
    let mut kv = guest.kv();
    let expected: BTreeSet<String> = (0..600).map(|n| format!("key-{n}")).collect();
    let entries: Vec<(String, Vec<u8>)> = expected.iter().map(|key| (key.clone(), b"v".to_vec())).collect();
    kv.set_many(lend(&many), entries).await.unwrap().unwrap();
    // Neighbours that a careless prefix match would list.
    kv.set(lend(&near), "y:key-0".into(), b"v".to_vec())
        .await
        .unwrap()
        .unwrap();
    cache.set("many:key-1", b"edge", None, false).await.unwrap();
    let (listed, pages) = list_all(&mut kv, &many).await;
    assert_eq!(listed, expected);
    assert!(pages >= 2, "600 keys in {pages} page(s)");
    let (listed, _) = list_all(&mut kv, &near).await;
    assert_eq!(listed, BTreeSet::from(["y:key-0".to_owned()]));
    assert_eq!(list_all(&mut kv, &empty).await, (BTreeSet::new(), 1));
    // Deleted keys go from the listing; new ones join it.
    kv.delete_many(lend(&many), keys(&["key-0", "key-1"]))
        .await
        .unwrap()
        .unwrap();
    kv.set(lend(&many), "late".into(), b"v".to_vec())
        .await
        .unwrap()
        .unwrap();
    let (listed, _) = list_all(&mut kv, &many).await;
    assert_eq!(listed.len(), 599);
    assert!(listed.contains("late") && !listed.contains("key-0"));
}

/// A scope with glob characters lists its own keys only: the `SCAN MATCH`
/// pattern is escaped.
async fn list_keys_matches_the_scope_literally(cache: &Keyspace) {
    let globby = cache.within("g[a]*?\\:");
    let plain = cache.within("ga");
    globby.set("mine", b"v", None, false).await.unwrap();
    plain.set("x:theirs", b"v", None, false).await.unwrap();
    cache.within("gaXYZ\\:").set("theirs", b"v", None, false).await.unwrap();
    let page = globby.list_keys(0).await.unwrap();
    assert_eq!(page.keys, vec!["mine".to_owned()]);
    assert_eq!(page.cursor, None);
}

/// Each case of the contract (`edge_cache_contract::conformance`) and each
/// case only a host can check, once per backend.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        backends!(
            contract: [$($case),*],
            host: [
                namespaces_do_not_cross,
                kv_store_round_trip,
                kv_buckets_are_prefixes_apart,
                kv_bucket_identifiers_are_checked,
                kv_increment,
                kv_batch,
                kv_bad_input_is_the_wit_error,
                kv_list_keys,
                list_keys_matches_the_scope_literally,
            ]
        );
    };
}

macro_rules! backends {
    (contract: [$($case:ident),*], host: [$($host:ident),* $(,)?]) => {
        backends!(@backend redis, super::Subject::redis().await, [$($case),*], [$($host),*]);
        backends!(@backend near_cache, super::Subject::near_cache().await, [$($case),*], [$($host),*]);
        backends!(@backend memory, super::Subject::memory(), [$($case),*], [$($host),*]);
        backends!(@backend cluster, super::Subject::cluster().await, [$($case),*], [$($host),*]);
        backends!(@backend near_cache_cluster, super::Subject::near_cache_cluster().await, [$($case),*], [$($host),*]);
    };
    (@backend $backend:ident, $subject:expr, [$($case:ident),*], [$($host:ident),*]) => {
        mod $backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let subject = $subject;
                edge_cache_contract::conformance::$case(&super::Harnessed(&subject.cache)).await;
            })*
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $host() {
                let subject = $subject;
                super::$host(&subject.cache).await;
            })*
        }
    };
}

edge_cache_contract::for_each_case!(conformance);

/// A value of another type (a list, which only Redis can hold) at a key of
/// the namespace: reading and comparing calls answer `wrong-type`; `delete`
/// and `set` replace it.
async fn values_of_another_type(subject: &Subject) {
    let cache = &subject.cache;
    subject.push_list("list").await;
    assert_eq!(cache.get("list").await, Err(StoreError::WrongType));
    assert_eq!(
        cache.compare_and_swap("list", None, b"v", None).await,
        Err(StoreError::WrongType)
    );
    assert_eq!(cache.compare_and_delete("list", b"x").await, Err(StoreError::WrongType));
    assert_eq!(cache.incr_by("list", 1, 60).await, Err(StoreError::WrongType));
    assert_eq!(cache.delete(&keys(&["list"])).await.unwrap(), 1);
    assert_eq!(
        cache.compare_and_swap("list", None, b"v", None).await.unwrap(),
        CasOutcome::Swapped
    );
    subject.push_list("other").await;
    assert!(cache.set("other", b"v", None, false).await.unwrap());
    assert_eq!(cache.get("other").await.unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_another_type_on_redis() {
    values_of_another_type(&Subject::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_another_type_behind_a_near_cache() {
    values_of_another_type(&Subject::near_cache().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_another_type_on_a_cluster() {
    values_of_another_type(&Subject::cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_another_type_on_a_cluster_behind_a_near_cache() {
    values_of_another_type(&Subject::near_cache_cluster().await).await;
}

#[tokio::test]
async fn namespaces_are_validated() {
    let store = Arc::new(MemoryStore::new(1 << 20));
    for bad in ["", "a:b", "{tag}", "with space", &"n".repeat(65)] {
        assert!(Keyspace::new(store.clone(), bad, Limits::default()).is_err(), "{bad:?}");
    }
    assert!(Keyspace::new(store, "tenant-1.prod_eu", Limits::default()).is_ok());
}

#[tokio::test]
async fn redis_backend_config_connects() {
    let server = RedisServer::start();
    let StoreConfig::Redis(_) = server.store() else {
        panic!("a Redis configuration")
    };
    assert_eq!(server.store().connect().await.unwrap().kind(), "redis");
}

#[tokio::test]
async fn the_embedded_backend_evicts_least_recently_used_entries_at_its_bound() {
    let bound = 256 * 1024;
    let store = MemoryStore::new(bound);
    let cache = Keyspace::new(Arc::new(store.clone()), "lru", Limits::default()).unwrap();
    cache.set("hot", &[7u8; 1024], None, false).await.unwrap();
    for n in 0..1000 {
        cache
            .set(&format!("cold-{n}"), &[0u8; 1024], None, false)
            .await
            .unwrap();
        // Reading "hot" keeps it recently used.
        assert!(cache.get("hot").await.unwrap().is_some(), "hot was evicted at {n}");
    }
    assert!(
        store.used_memory() <= bound,
        "{} bytes used, bound {bound}",
        store.used_memory()
    );
    assert_eq!(
        cache.get("cold-0").await.unwrap(),
        None,
        "the oldest entries were evicted"
    );
    assert!(
        cache.get("cold-999").await.unwrap().is_some(),
        "the newest entry is kept"
    );
}
