//! The cache contract (`wit/cache.wit`), run against every backend: a real
//! redis-server, a real Redis Cluster and the embedded store. Anything one backend does that the
//! other does not is a failure here. The cases live in `edge_cache_contract::conformance`, which
//! the SDK's in-memory host runs too; what only a host can check (namespaces, values of other
//! types written by other clients, eviction) stays here.

use edge_cache_contract::cache as contract;
use edge_cache_contract::conformance::{CacheUnderTest, Call, Outcome};
use edge_cache_harness::BackendConfig;
use edge_cache_harness::backend::memory::MemoryBackend;
use edge_cache_harness::backend::{Backend, CacheError, CasOutcome, Ttl};
use edge_cache_harness::cache::{Cache, Limits};
use edge_cache_tests::{RedisCluster, RedisServer};
use std::time::Duration;

/// One backend under test, and what keeps it alive.
struct Subject {
    cache: Cache,
    _server: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

impl Subject {
    async fn redis() -> Self {
        let server = RedisServer::start();
        let backend = server.backend().connect().await.expect("connect to the test server");
        Self {
            cache: Cache::new(backend, "conformance", Limits::default()).unwrap(),
            _server: Some(server),
            _cluster: None,
        }
    }

    fn memory() -> Self {
        let backend = Backend::Memory(MemoryBackend::new(16 << 20));
        Self {
            cache: Cache::new(backend, "conformance", Limits::default()).unwrap(),
            _server: None,
            _cluster: None,
        }
    }

    async fn cluster() -> Self {
        let cluster = RedisCluster::start(3, 0);
        let backend = cluster.backend().connect().await.expect("connect to the test cluster");
        Self {
            cache: Cache::new(backend, "conformance", Limits::default()).unwrap(),
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
struct Harnessed<'a>(&'a Cache);

fn contract_error(error: CacheError) -> contract::CacheError {
    match error {
        CacheError::Unavailable(why) => contract::CacheError::Unavailable(why),
        CacheError::Timeout(_) => contract::CacheError::Timeout,
        CacheError::InvalidKey(why) => contract::CacheError::InvalidKey(why),
        CacheError::ValueTooLarge { limit } => contract::CacheError::ValueTooLarge(limit),
        CacheError::WrongType => contract::CacheError::WrongType,
        CacheError::InvalidArgument(why) => contract::CacheError::InvalidArgument(why),
        CacheError::Other(why) => contract::CacheError::Other(why),
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

async fn namespaces_do_not_cross(cache: &Cache) {
    let other = Cache::new(cache.backend().clone(), "other", Limits::default()).unwrap();
    cache.set("shared-name", b"mine", None, false).await.unwrap();
    assert_eq!(other.get("shared-name").await.unwrap(), None);
    other.set("shared-name", b"theirs", None, false).await.unwrap();
    assert_eq!(cache.get("shared-name").await.unwrap().as_deref(), Some(&b"mine"[..]));
    assert_eq!(other.delete(&keys(&["shared-name"])).await.unwrap(), 1);
    assert_eq!(cache.get("shared-name").await.unwrap().as_deref(), Some(&b"mine"[..]));
}

/// Each case of the contract (`edge_cache_contract::conformance`), once per
/// backend; then the cases only a host can check.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let subject = super::Subject::redis().await;
                edge_cache_contract::conformance::$name(&super::Harnessed(&subject.cache)).await;
            })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let subject = super::Subject::memory();
                edge_cache_contract::conformance::$name(&super::Harnessed(&subject.cache)).await;
            })*
        }
        mod cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let subject = super::Subject::cluster().await;
                edge_cache_contract::conformance::$name(&super::Harnessed(&subject.cache)).await;
            })*
        }
    };
}

edge_cache_contract::for_each_case!(conformance);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_do_not_cross_on_redis() {
    namespaces_do_not_cross(&Subject::redis().await.cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_do_not_cross_in_memory() {
    namespaces_do_not_cross(&Subject::memory().cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_do_not_cross_on_a_cluster() {
    namespaces_do_not_cross(&Subject::cluster().await.cache).await;
}

/// A value of another type (a list, which only Redis can hold) at a key of
/// the namespace: reading and comparing calls answer `wrong-type`; `delete`
/// and `set` replace it.
async fn values_of_another_type(subject: &Subject) {
    let cache = &subject.cache;
    subject.push_list("list").await;
    assert_eq!(cache.get("list").await, Err(CacheError::WrongType));
    assert_eq!(
        cache.compare_and_swap("list", None, b"v", None).await,
        Err(CacheError::WrongType)
    );
    assert_eq!(cache.compare_and_delete("list", b"x").await, Err(CacheError::WrongType));
    assert_eq!(cache.incr_by("list", 1, 60).await, Err(CacheError::WrongType));
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
async fn values_of_another_type_on_a_cluster() {
    values_of_another_type(&Subject::cluster().await).await;
}

#[tokio::test]
async fn namespaces_are_validated() {
    let backend = Backend::Memory(MemoryBackend::new(1 << 20));
    for bad in ["", "a:b", "{tag}", "with space", &"n".repeat(65)] {
        assert!(Cache::new(backend.clone(), bad, Limits::default()).is_err(), "{bad:?}");
    }
    assert!(Cache::new(backend, "tenant-1.prod_eu", Limits::default()).is_ok());
}

#[tokio::test]
async fn redis_backend_config_connects() {
    let server = RedisServer::start();
    let BackendConfig::Redis(_) = server.backend() else {
        panic!("a Redis configuration")
    };
    assert_eq!(server.backend().connect().await.unwrap().kind(), "redis");
}

#[tokio::test]
async fn the_embedded_backend_evicts_least_recently_used_entries_at_its_bound() {
    let bound = 256 * 1024;
    let backend = MemoryBackend::new(bound);
    let cache = Cache::new(Backend::Memory(backend.clone()), "lru", Limits::default()).unwrap();
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
        backend.used_memory() <= bound,
        "{} bytes used, bound {bound}",
        backend.used_memory()
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
