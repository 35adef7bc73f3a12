//! The near cache (`--near-cache`): values kept in the harness, coherent
//! with Redis through its client-side caching. Every write by any client
//! invalidates, a flush or a restart empties it, reads in flight never
//! bring a stale value back, and a hit costs no Redis round trip.

use edge_cache_harness::HarnessConfig;
use edge_cache_harness::StoreConfig;
use edge_cache_harness::keyspace::{Keyspace, Limits};
use edge_cache_harness::metrics::Metrics;
use edge_cache_harness::store::breaker::{CLUSTER_RANGES, key_slot};
use edge_cache_harness::store::near::{NearCache, NearCacheConfig};
use edge_cache_harness::store::{Store, StoreError};
use edge_cache_tests::{Monitor, RedisCluster, RedisServer, Served, config};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A near cache on `server`, seen through the namespace `near`.
async fn near_cache(server: &RedisServer, near: NearCacheConfig) -> (Arc<NearCache>, Keyspace) {
    let StoreConfig::Redis(redis) = server.store() else {
        panic!("a Redis configuration")
    };
    let store = Arc::new(NearCache::connect(&redis, near).await.expect("connect"));
    assert!(store.is_serving(), "tracking is on once connected to a live Redis");
    let keyspace = Keyspace::new(store.clone(), "near", Limits::default()).unwrap();
    (store, keyspace)
}

/// A counter or gauge of `/metrics` as the harness would render it.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("edge_cache_{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

fn keyspace_metric(keyspace: &Keyspace, name: &str) -> u64 {
    metric(&Metrics::new(keyspace.metrics(), &Default::default()).render(), name)
}

/// The commands clients sent while `monitor` watched, leaving out the
/// near cache's heartbeat.
fn commands_sent(monitor: Monitor) -> BTreeMap<String, u64> {
    let mut sent = monitor.finish();
    sent.remove("ping");
    sent
}

async fn plain(server: &RedisServer, command: &redis::Cmd) {
    let mut connection = server.connection().await;
    let _: redis::Value = command.query_async(&mut connection).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_is_read_from_redis_once_then_served_from_the_harness() {
    let server = RedisServer::start();
    let (_, keyspace) = near_cache(&server, NearCacheConfig::new(1 << 20)).await;
    keyspace.set("k", b"v1", None, false).await.unwrap();
    let monitor = server.monitor();
    for _ in 0..5 {
        assert_eq!(keyspace.get("k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    }
    let values = keyspace.get_many(&["k".to_owned(), "absent".to_owned()]).await.unwrap();
    assert_eq!(values, vec![Some(b"v1".to_vec()), None]);
    let ran = commands_sent(monitor);
    // The first read (GET and PTTL in one round trip), then the absent key
    // of get-many alone (absences are not kept).
    assert_eq!(
        ran,
        BTreeMap::from([("get".to_owned(), 1), ("mget".to_owned(), 1), ("pttl".to_owned(), 2)])
    );
    assert_eq!(keyspace_metric(&keyspace, "near_cache_hits_total"), 5);
    assert_eq!(keyspace_metric(&keyspace, "near_cache_misses_total"), 2);
    assert!(keyspace_metric(&keyspace, "near_cache_bytes") > 0);
    assert_eq!(keyspace_metric(&keyspace, "near_cache_connections"), 1);
    assert_eq!(keyspace_metric(&keyspace, "near_cache_primaries_unreachable"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_another_client_invalidate() {
    let server = RedisServer::start();
    let (near, keyspace) = near_cache(&server, NearCacheConfig::new(1 << 20)).await;
    keyspace.set("k", b"v1", None, false).await.unwrap();
    keyspace.get("k").await.unwrap();
    assert_eq!(keyspace.get("k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(keyspace_metric(&keyspace, "near_cache_hits_total"), 1);

    plain(&server, redis::cmd("SET").arg("near:k").arg("v2")).await;
    // Redis pushed the invalidation before answering that SET; once the
    // tracking connection answers a PING, it has been applied.
    assert!(near.caught_up().await);
    assert_eq!(keyspace.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
    assert_eq!(keyspace.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));

    plain(&server, redis::cmd("APPEND").arg("near:k").arg("+")).await;
    assert!(near.caught_up().await);
    assert_eq!(keyspace.get("k").await.unwrap().as_deref(), Some(&b"v2+"[..]));

    plain(&server, redis::cmd("DEL").arg("near:k")).await;
    assert!(near.caught_up().await);
    assert_eq!(keyspace.get("k").await.unwrap(), None);
    assert!(keyspace_metric(&keyspace, "near_cache_invalidations_total") >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_harness_are_read_back_at_once() {
    let server = RedisServer::start();
    let (_, keyspace) = near_cache(&server, NearCacheConfig::new(1 << 20)).await;
    keyspace.set("k", b"v1", None, false).await.unwrap();
    keyspace.get("k").await.unwrap();
    keyspace.get("k").await.unwrap();
    // No waiting for Redis' invalidation: the write invalidates here.
    keyspace.set("k", b"v2", None, false).await.unwrap();
    assert_eq!(keyspace.get("k").await.unwrap().as_deref(), Some(&b"v2"[..]));
    keyspace.compare_and_swap("k", Some(b"v2"), b"v3", None).await.unwrap();
    assert_eq!(keyspace.get("k").await.unwrap().as_deref(), Some(&b"v3"[..]));
    assert!(keyspace.compare_and_delete("k", b"v3").await.unwrap());
    assert_eq!(keyspace.get("k").await.unwrap(), None);
    keyspace.incr_by("n", 1, 60).await.unwrap();
    assert_eq!(keyspace.get("n").await.unwrap().as_deref(), Some(&b"1"[..]));
    keyspace.incr_by("n", 1, 60).await.unwrap();
    assert_eq!(keyspace.get("n").await.unwrap().as_deref(), Some(&b"2"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_empties_it() {
    let server = RedisServer::start();
    let (near, keyspace) = near_cache(&server, NearCacheConfig::new(1 << 20)).await;
    for key in ["a", "b"] {
        keyspace.set(key, b"v", None, false).await.unwrap();
        keyspace.get(key).await.unwrap();
    }
    let flushes = keyspace_metric(&keyspace, "near_cache_flushes_total");
    plain(&server, &redis::cmd("FLUSHALL")).await;
    assert!(near.caught_up().await);
    assert_eq!(keyspace_metric(&keyspace, "near_cache_flushes_total"), flushes + 1);
    assert_eq!(keyspace.get("a").await.unwrap(), None);
    assert_eq!(keyspace.get("b").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_over_the_cap_are_not_kept() {
    let server = RedisServer::start();
    let near = NearCacheConfig {
        max_bytes: 1 << 20,
        max_value_bytes: 100,
    };
    let (_, keyspace) = near_cache(&server, near).await;
    keyspace.set("big", &[7; 101], None, false).await.unwrap();
    keyspace.set("small", &[7; 100], None, false).await.unwrap();
    let monitor = server.monitor();
    for _ in 0..3 {
        assert_eq!(keyspace.get("big").await.unwrap().map(|v| v.len()), Some(101));
        assert_eq!(keyspace.get("small").await.unwrap().map(|v| v.len()), Some(100));
    }
    let ran = commands_sent(monitor);
    assert_eq!(ran.get("get"), Some(&4), "3 for big, 1 for small: {ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_expires_in_the_harness_when_it_does_in_redis() {
    let server = RedisServer::start();
    let (_, keyspace) = near_cache(&server, NearCacheConfig::new(1 << 20)).await;
    keyspace.set("t", b"v", Some(1), false).await.unwrap();
    keyspace.get("t").await.unwrap();
    assert_eq!(keyspace.get("t").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(keyspace_metric(&keyspace, "near_cache_hits_total"), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(keyspace.get("t").await.unwrap(), None);
}

/// A read racing writes by another client: whatever the interleaving,
/// once the writes stop and the invalidations are in, the near cache
/// holds the last value or nothing, never one a write replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_in_flight_never_bring_back_a_replaced_value() {
    let server = RedisServer::start();
    let (near, keyspace) = near_cache(&server, NearCacheConfig::new(1 << 20)).await;
    for round in 0..20 {
        let key = format!("race-{round}");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let keyspace = keyspace.clone();
                let key = key.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        keyspace.get(&key).await.unwrap();
                        // A near hit is ready at once: let the writer run.
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let mut connection = server.connection().await;
        for value in 0..50 {
            let _: () = redis::cmd("SET")
                .arg(format!("near:{key}"))
                .arg(value)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            reader.await.unwrap();
        }
        assert!(near.caught_up().await);
        assert_eq!(keyspace.get(&key).await.unwrap().as_deref(), Some(&b"49"[..]), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_leaves_nothing_stale() {
    let mut server = RedisServer::start();
    let (near, keyspace) = near_cache(&server, NearCacheConfig::new(1 << 20)).await;
    keyspace.set("k", b"before", None, false).await.unwrap();
    keyspace.get("k").await.unwrap();
    assert_eq!(keyspace.get("k").await.unwrap().as_deref(), Some(&b"before"[..]));
    assert_eq!(keyspace_metric(&keyspace, "near_cache_hits_total"), 1);

    // Killed and started empty: another client writes the key before the
    // harness reads it again.
    server.restart();
    plain(&server, redis::cmd("SET").arg("near:k").arg("after")).await;
    let mut answered = 0;
    for _ in 0..20 {
        // The shared connection may fail once while it reconnects; what
        // is answered is never the value from before the restart.
        match keyspace.get("k").await {
            Ok(value) => {
                assert_eq!(value.as_deref(), Some(&b"after"[..]));
                answered += 1;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(answered > 0, "the harness reads from the restarted Redis");

    // Tracking resumes on a new connection, and is on there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !near.is_serving() {
        assert!(Instant::now() < deadline, "the tracking connection came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    keyspace.get("k").await.unwrap();
    let hits = keyspace_metric(&keyspace, "near_cache_hits_total");
    assert_eq!(keyspace.get("k").await.unwrap().as_deref(), Some(&b"after"[..]));
    assert_eq!(keyspace_metric(&keyspace, "near_cache_hits_total"), hits + 1);
    plain(&server, redis::cmd("SET").arg("near:k").arg("later")).await;
    assert!(near.caught_up().await);
    assert_eq!(keyspace.get("k").await.unwrap().as_deref(), Some(&b"later"[..]));
}

/// Rate limits out of the way: these tests count cache reads.
fn harness_with_near_cache(server: &RedisServer) -> HarnessConfig {
    harness_on(server.store_with_near_cache(NearCacheConfig::new(16 << 20)))
}

fn harness_on(store: StoreConfig) -> HarnessConfig {
    HarnessConfig {
        guest_env: vec![("RATE_LIMIT_REQUESTS".to_owned(), "1000000".to_owned())],
        ..config(store)
    }
}

fn near_hits(served: &Served) -> u64 {
    metric(&served.harness.metrics().render(), "near_cache_hits_total")
}

/// The issue's coherence test: two harnesses on one Redis, each with its
/// near cache; a PUT through one, then a GET through the other sent within
/// 5 ms of the PUT's answer, sees the new value. (Two harnesses in one test
/// process: each has its own connections and near cache, as two processes
/// would.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_through_one_harness_is_seen_through_the_other() {
    let server = RedisServer::start();
    let writer = Served::start(harness_with_near_cache(&server)).await;
    let reader = Served::start(harness_with_near_cache(&server)).await;
    put_through_one_get_through_the_other(&writer, &reader).await;
}

/// The same on a Redis Cluster: each harness tracks every primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_put_through_one_harness_is_seen_through_the_other() {
    let cluster = RedisCluster::start(3, 0);
    let writer = Served::start(harness_on(
        cluster.store_with_near_cache(NearCacheConfig::new(16 << 20)),
    ))
    .await;
    let reader = Served::start(harness_on(
        cluster.store_with_near_cache(NearCacheConfig::new(16 << 20)),
    ))
    .await;
    put_through_one_get_through_the_other(&writer, &reader).await;
}

async fn put_through_one_get_through_the_other(writer: &Served, reader: &Served) {
    let mut checked = 0;
    for round in 0..20 {
        // The reader holds alice near (the first read of round 0 fills
        // Redis, the next brings it near): its third read is a near hit.
        reader.get("/profiles/alice").await;
        reader.get("/profiles/alice").await;
        let hits = near_hits(reader);
        assert_eq!(reader.get("/profiles/alice").await.headers()["x-cache"], "hit");
        assert_eq!(near_hits(reader), hits + 1, "round {round}: served from the near cache");

        let name = format!("Alice, round {round}");
        let put = writer
            .put("/profiles/alice", &format!(r#"{{"id":"alice","name":"{name}"}}"#))
            .await;
        assert!(put.status().is_success(), "{}", put.status());
        let answered = Instant::now();
        let request = reader.client.get(reader.url("/profiles/alice"));
        // Only a GET sent within the issue's 5 ms counts (a stalled test
        // machine is not the harness's fault); it must see the new value.
        if answered.elapsed() > Duration::from_millis(5) {
            continue;
        }
        let body = request.send().await.unwrap().text().await.unwrap();
        assert!(body.contains(&name), "round {round}: {body}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} rounds sent their GET within 5 ms");
}

/// A hit costs the fixed-window check alone: one Redis command, no GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_costs_one_redis_round_trip() {
    let server = RedisServer::start();
    let served = Served::start(harness_with_near_cache(&server)).await;
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "miss");
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "hit");
    let monitor = server.monitor();
    for _ in 0..50 {
        assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "hit");
    }
    let ran = commands_sent(monitor);
    assert_eq!(ran, BTreeMap::from([("evalsha".to_owned(), 50)]));
}

/// The near cache reads as the store behind it does: `get` of a value of
/// another type fails, `get-many` (Redis' `MGET`) answers nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_another_type_read_as_redis_reads_them() {
    let server = RedisServer::start();
    let (_, keyspace) = near_cache(&server, NearCacheConfig::new(1 << 20)).await;
    plain(&server, redis::cmd("RPUSH").arg("near:list").arg("x")).await;
    assert_eq!(keyspace.get("list").await, Err(StoreError::WrongType));
    assert_eq!(keyspace.get_many(&["list".to_owned()]).await.unwrap(), vec![None]);
}

/// Started while Redis is down, the harness serves from the origin, and
/// its near cache serves once Redis is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_without_redis_it_serves_once_redis_is_there() {
    let mut server = RedisServer::start();
    server.stop();
    let served = Served::start(harness_with_near_cache(&server)).await;
    assert_eq!(served.get("/profiles/alice").await.status(), 200);
    let (status, reason) = served.admin("/readyz").await;
    assert_eq!(status, 503, "{reason}");

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, note) = served.admin("/readyz").await;
        if status == 200 && note.contains("the near cache serves") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready with a near cache: {status} {note}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    served.get("/profiles/alice").await;
    served.get("/profiles/alice").await;
    let hits = near_hits(&served);
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "hit");
    assert_eq!(near_hits(&served), hits + 1);
}

/// A near cache on `cluster`, seen through the namespace `near`.
async fn near_cache_on_cluster(cluster: &RedisCluster) -> (Arc<NearCache>, Keyspace) {
    let StoreConfig::RedisCluster(config) = cluster.store() else {
        panic!("a Redis Cluster configuration")
    };
    let store = Arc::new(
        NearCache::connect_cluster(&config, NearCacheConfig::new(1 << 20))
            .await
            .expect("connect"),
    );
    assert!(store.is_serving(), "tracking is on once connected to a live cluster");
    let keyspace = Keyspace::new(store.clone(), "near", Limits::default()).unwrap();
    (store, keyspace)
}

/// Waits (polling, up to 20 s) until `read` gives `expected`.
async fn until_read(keyspace: &Keyspace, key: &str, expected: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = keyspace.get(key).await.unwrap();
        if value.as_deref() == Some(expected) {
            return;
        }
        assert!(Instant::now() < deadline, "{key} still reads {value:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The issue's figure on a cluster: a hot key is read from the primary
/// serving it once, then from the harness; no other primary reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_hot_key_is_read_from_its_primary_once() {
    let cluster = RedisCluster::start(3, 0);
    let (_, keyspace) = near_cache_on_cluster(&cluster).await;
    // Keys on every primary: each is read from its own, once.
    let keys: Vec<String> = (0..12).map(|n| format!("hot{n}")).collect();
    for key in &keys {
        keyspace.set(key, key.as_bytes(), None, false).await.unwrap();
    }
    let masters = cluster.masters();
    let owners: Vec<usize> = keys
        .iter()
        .map(|key| cluster.owner_of(&format!("near:{key}")))
        .collect();
    let monitors: Vec<_> = masters.iter().map(|&node| cluster.nodes[node].monitor()).collect();
    for _ in 0..20 {
        for key in &keys {
            assert_eq!(keyspace.get(key).await.unwrap().as_deref(), Some(key.as_bytes()));
        }
    }
    let values = keyspace.get_many(&keys).await.unwrap();
    assert_eq!(
        values,
        keys.iter().map(|key| Some(key.as_bytes().to_vec())).collect::<Vec<_>>()
    );
    let mut reads = 0;
    for (&node, monitor) in masters.iter().zip(monitors) {
        let mut ran = commands_sent(monitor);
        // The tracking task's heartbeat asks a node for the slots.
        ran.remove("cluster");
        let served = owners.iter().filter(|&&owner| owner == node).count() as u64;
        assert!(served > 0, "keys on every primary");
        let expected = BTreeMap::from([("get".to_owned(), served), ("pttl".to_owned(), served)]);
        assert_eq!(ran, expected, "node {node}");
        reads += served;
    }
    assert_eq!(reads, keys.len() as u64);
    assert_eq!(keyspace_metric(&keyspace, "near_cache_hits_total"), 19 * 12 + 12);
}

/// Any client's write to a node invalidates what was read from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_writes_by_another_client_invalidate() {
    let cluster = RedisCluster::start(3, 0);
    let (near, keyspace) = near_cache_on_cluster(&cluster).await;
    let mut other = cluster.client().await;
    let keys: Vec<String> = (0..6).map(|n| format!("k{n}")).collect();
    for key in &keys {
        keyspace.set(key, b"v1", None, false).await.unwrap();
        keyspace.get(key).await.unwrap();
        assert_eq!(keyspace.get(key).await.unwrap().as_deref(), Some(&b"v1"[..]));
    }
    for key in &keys {
        let _: () = redis::cmd("SET")
            .arg(format!("near:{key}"))
            .arg("v2")
            .query_async(&mut other)
            .await
            .unwrap();
    }
    assert!(near.caught_up().await);
    for key in &keys {
        assert_eq!(keyspace.get(key).await.unwrap().as_deref(), Some(&b"v2"[..]), "{key}");
    }
    let _: () = redis::cmd("FLUSHALL").query_async(&mut other).await.unwrap();
    assert!(near.caught_up().await);
    for key in &keys {
        assert_eq!(keyspace.get(key).await.unwrap(), None, "{key}");
    }
}

/// A slot moved to another primary while its key was held near: the
/// move invalidates it, reads sent to the old primary are redirected and
/// answered through the cluster client, and once the near cache has the
/// new map it reads the key from its new primary, once, and then holds it.
/// No step serves the value from before the move's later write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_moved_slot_leaves_nothing_stale() {
    let cluster = RedisCluster::start(3, 0);
    let (near, keyspace) = near_cache_on_cluster(&cluster).await;
    keyspace.set("moving", b"before", None, false).await.unwrap();
    keyspace.get("moving").await.unwrap();
    assert_eq!(keyspace.get("moving").await.unwrap().as_deref(), Some(&b"before"[..]));
    let hits = keyspace_metric(&keyspace, "near_cache_hits_total");
    assert_eq!(hits, 1);

    let from = cluster.owner_of("near:moving");
    let to = *cluster.masters().iter().find(|&&node| node != from).unwrap();
    cluster.move_slot_of("near:moving", to);
    // Written on its new primary by another client: the old one, which the
    // near cache may still believe serves the slot, never sees this write.
    let mut other = cluster.client().await;
    let _: () = redis::cmd("SET")
        .arg("near:moving")
        .arg("after")
        .query_async(&mut other)
        .await
        .unwrap();
    assert_eq!(keyspace.get("moving").await.unwrap().as_deref(), Some(&b"after"[..]));

    // Once the near cache follows the move, the key is read from its new
    // primary once and then served from the harness again.
    until_held_near(&cluster, to, &near, &keyspace, "moving", b"after").await;
    let _: () = redis::cmd("SET")
        .arg("near:moving")
        .arg("later")
        .query_async(&mut other)
        .await
        .unwrap();
    assert!(near.caught_up().await);
    until_read(&keyspace, "moving", b"later").await;
    assert_eq!(keyspace.get("moving").await.unwrap().as_deref(), Some(&b"later"[..]));
}

/// The edge function on a cluster with a near cache: a profile hit costs
/// the limiter's command alone, on whichever primary serves the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_hit_costs_one_redis_round_trip() {
    let cluster = RedisCluster::start(3, 0);
    let served = Served::start(harness_on(
        cluster.store_with_near_cache(NearCacheConfig::new(16 << 20)),
    ))
    .await;
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "miss");
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "hit");
    let masters = cluster.masters();
    let monitors: Vec<_> = masters.iter().map(|&node| cluster.nodes[node].monitor()).collect();
    for _ in 0..30 {
        assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "hit");
    }
    let mut all = BTreeMap::new();
    for monitor in monitors {
        for (command, count) in commands_sent(monitor) {
            if command != "cluster" {
                *all.entry(command).or_insert(0) += count;
            }
        }
    }
    assert_eq!(all, BTreeMap::from([("evalsha".to_owned(), 30)]));
}

/// Twelve keys, the first in the lowest slots (those of the store's first
/// breaker): the primary serving them is the one the fault tests take
/// away, so that its open breaker is seen not to stop the near cache from
/// reading the cluster's slot map.
fn keys_from_slot_zero_on() -> Vec<String> {
    let first = (0..)
        .map(|n| format!("low{n}"))
        .find(|key| usize::from(key_slot(format!("near:{key}").as_bytes())) < 16_384 / CLUSTER_RANGES)
        .unwrap();
    std::iter::once(first).chain((0..11).map(|n| format!("k{n}"))).collect()
}

/// The keys of [`keys_from_slot_zero_on`], each written with `v` and read
/// once, and the primary serving each.
async fn keys_held(cluster: &RedisCluster, keyspace: &Keyspace) -> (Vec<String>, Vec<usize>) {
    let keys = keys_from_slot_zero_on();
    let owners: Vec<usize> = keys
        .iter()
        .map(|key| cluster.owner_of(&format!("near:{key}")))
        .collect();
    for key in &keys {
        keyspace.set(key, b"v", None, false).await.unwrap();
        keyspace.get(key).await.unwrap();
    }
    (keys, owners)
}

/// Waits (polling, up to 30 s) until the near cache serves again after a
/// connection was lost: emptied then, and again once it serves.
async fn until_serving_again(near: &NearCache, keyspace: &Keyspace, flushes: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(near.is_serving() && keyspace_metric(keyspace, "near_cache_flushes_total") >= flushes + 2) {
        assert!(Instant::now() < deadline, "the near cache never served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads each key `owners` puts on primary `live` twice: `live` runs one
/// `GET` for each, the second read is the harness's.
async fn live_keys_read_once(
    cluster: &RedisCluster,
    keyspace: &Keyspace,
    keys: &[String],
    owners: &[usize],
    live: usize,
) {
    let monitor = cluster.nodes[live].monitor();
    let on_live: Vec<&String> = keys
        .iter()
        .zip(owners)
        .filter(|&(_, &owner)| owner == live)
        .map(|(key, _)| key)
        .collect();
    for key in &on_live {
        assert_eq!(keyspace.get(key).await.unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(keyspace.get(key).await.unwrap().as_deref(), Some(&b"v"[..]));
    }
    let gets = commands_sent(monitor).get("get").copied().unwrap_or(0);
    assert_eq!(
        gets,
        on_live.len() as u64,
        "each key of a live primary read from it once"
    );
}

/// Waits (polling, up to 30 s) until `key` reads `value` three times in a
/// row while node `node` runs at most one `GET`: the near cache serves and
/// holds the key again. Meanwhile a read may fail, but never give anything
/// else than `value`.
async fn until_held_near(
    cluster: &RedisCluster,
    node: usize,
    near: &NearCache,
    keyspace: &Keyspace,
    key: &str,
    value: &[u8],
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let monitor = cluster.nodes[node].monitor();
        let mut last = Ok(None);
        for _ in 0..3 {
            last = keyspace.get(key).await;
            // Failing while a primary is away is allowed; any other value is not.
            if let Ok(read) = &last {
                assert_eq!(read.as_deref(), Some(value), "{key} read something else");
            }
        }
        let gets = commands_sent(monitor).get("get").copied().unwrap_or(0);
        if last.as_ref().is_ok_and(|read| read.as_deref() == Some(value)) && gets <= 1 && near.is_serving() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} not held near: it reads {last:?}, with {gets} GETs in three reads"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A primary that dies costs the near cache its own keys only: the keys of
/// the other primaries are held near again at once, and the dead one's are
/// kept again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_dead_primary_costs_only_its_own_keys() {
    let mut cluster = RedisCluster::start(3, 0);
    let (near, keyspace) = near_cache_on_cluster(&cluster).await;
    let (keys, owners) = keys_held(&cluster, &keyspace).await;
    let dead = owners[0];
    let live = *owners.iter().find(|&&owner| owner != dead).unwrap();
    let flushes = keyspace_metric(&keyspace, "near_cache_flushes_total");
    cluster.kill(dead);

    // Losing one tracking connection empties the near cache, which then
    // serves again on the primaries that answer.
    until_serving_again(&near, &keyspace, flushes).await;
    assert_eq!(keyspace_metric(&keyspace, "near_cache_connections"), 2);
    assert_eq!(keyspace_metric(&keyspace, "near_cache_primaries_unreachable"), 1);
    let ready = near.readiness().unwrap();
    assert!(ready.contains("not the keys of 1 cluster primaries"), "{ready}");
    live_keys_read_once(&cluster, &keyspace, &keys, &owners, live).await;
    for (key, _) in keys.iter().zip(&owners).filter(|&(_, &owner)| owner == dead) {
        let read = keyspace.get(key).await;
        assert!(read.is_err(), "{key} on the dead primary: {read:?}");
    }

    // Reads of the dead primary's keys open the breaker of their slots
    // (the lowest ones). The slot map is read past breakers, so a slot
    // moved between the live primaries now is still followed.
    for _ in 0..3 {
        assert!(keyspace.get(&keys[0]).await.is_err());
    }
    let moving = keys.iter().zip(&owners).find(|&(_, &owner)| owner == live).unwrap().0;
    let other = *cluster
        .masters()
        .iter()
        .find(|&&node| node != live && node != dead)
        .unwrap();
    cluster.move_slot_of(&format!("near:{moving}"), other);
    until_held_near(&cluster, other, &near, &keyspace, moving, b"v").await;
    // Reading the slot map never passed for a probe of the dead primary's
    // slots: their breaker is still open.
    let still = keyspace.get(&keys[0]).await.unwrap_err().to_string();
    assert!(still.contains("circuit open"), "{still}");

    // Back (empty: no persistence), the primary's keys are kept again, once
    // its breaker's probe has found it.
    cluster.nodes[dead].restart();
    let key = &keys[0];
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(error) = keyspace.set(key, b"again", None, false).await {
        assert!(Instant::now() < deadline, "{key} still cannot be written: {error}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_held_near(&cluster, dead, &near, &keyspace, key, b"again").await;
    assert_eq!(keyspace_metric(&keyspace, "near_cache_connections"), 3);
    assert_eq!(keyspace_metric(&keyspace, "near_cache_primaries_unreachable"), 0);
}

/// A primary that stops answering without closing (SIGSTOP) is found by
/// the heartbeat; the near cache then serves the other primaries' keys
/// again, without waiting for it, and its own once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_frozen_primary_costs_only_its_own_keys() {
    let cluster = RedisCluster::start(3, 0);
    let StoreConfig::RedisCluster(config) = cluster.store() else {
        panic!("a Redis Cluster configuration")
    };
    let config = edge_cache_harness::store::redis::RedisClusterConfig {
        command_timeout: Duration::from_secs(1),
        ..config
    };
    let near = Arc::new(
        NearCache::connect_cluster(&config, NearCacheConfig::new(1 << 20))
            .await
            .expect("connect"),
    );
    let keyspace = Keyspace::new(near.clone(), "near", Limits::default()).unwrap();
    let (keys, owners) = keys_held(&cluster, &keyspace).await;
    let frozen = owners[0];
    let live = *owners.iter().find(|&&owner| owner != frozen).unwrap();
    let flushes = keyspace_metric(&keyspace, "near_cache_flushes_total");
    cluster.nodes[frozen].freeze();

    until_serving_again(&near, &keyspace, flushes).await;
    live_keys_read_once(&cluster, &keyspace, &keys, &owners, live).await;

    cluster.nodes[frozen].thaw();
    until_held_near(&cluster, frozen, &near, &keyspace, &keys[0], b"v").await;
}
