//! Redis failing under the harness: killed, frozen (SIGSTOP), absent at
//! start, one cluster primary dead, a value of the wrong type. Answers stay
//! correct and service goes on: once the circuit breaker has seen Redis
//! fail, requests stop waiting for it, and they find it again when it is
//! back.

use edge_cache_harness::StoreConfig;
use edge_cache_harness::keyspace::{Keyspace, Limits};
use edge_cache_harness::store::StoreError;
use edge_cache_harness::store::breaker::{CLUSTER_RANGES, key_slot};
use edge_cache_harness::store::redis::{RedisClusterConfig, RedisConfig};
use edge_cache_tests::{RedisCluster, RedisServer, Served, config};
use std::time::{Duration, Instant};

/// Long enough that a request which waited for Redis cannot pass for one
/// that did not (see [`FAST`]), whatever the load on the test machine.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Well under [`COMMAND_TIMEOUT`]: a request answered this fast did not
/// wait for a command deadline.
const FAST: Duration = Duration::from_millis(500);

/// How long service may take to find Redis again: the issue's figure is
/// 2 s for the first hit and 5 s for `/readyz`; the margin is for a loaded
/// machine.
const RECOVERY: Duration = Duration::from_secs(5);

fn store(server: &RedisServer) -> StoreConfig {
    StoreConfig::Redis(RedisConfig {
        connect_timeout: Duration::from_millis(500),
        command_timeout: COMMAND_TIMEOUT,
        ..RedisConfig::new(server.url())
    })
}

struct Answer {
    status: u16,
    x_cache: String,
    degraded: Option<String>,
    took: Duration,
}

async fn get(served: &Served, path: &str) -> Answer {
    let started = Instant::now();
    let response = served.get(path).await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    };
    Answer {
        status: response.status().as_u16(),
        x_cache: header("x-cache").unwrap_or_default(),
        degraded: header("x-ratelimit-degraded"),
        took: started.elapsed(),
    }
}

/// The value of one series in `/metrics`, 0 when absent.
async fn metric(served: &Served, series: &str) -> f64 {
    let (_, text) = served.admin("/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Once Redis is down: a few requests open the breaker (sent together, so
/// they wait for it once), then every request is answered from the origin
/// at once, with the degraded decision said in a header and counted.
async fn assert_served_without_waiting(served: &Served) {
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let request = served.client.get(served.url("/profiles/alice"));
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    for request in opening {
        assert_eq!(request.await.unwrap(), 200);
    }
    let degraded_before = metric(
        served,
        r#"edge_cache_rate_limit_decisions_total{result="allowed",degraded="cache-unavailable"}"#,
    )
    .await;
    for n in 0..10 {
        let answer = get(served, "/profiles/alice").await;
        assert_eq!((answer.status, answer.x_cache.as_str()), (200, "bypass"), "request {n}");
        assert!(answer.took < FAST, "request {n} waited {:?} for Redis", answer.took);
        assert_eq!(
            answer.degraded.as_deref(),
            Some("fail-open; reason=cache-unavailable"),
            "request {n}"
        );
    }
    let degraded_after = metric(
        served,
        r#"edge_cache_rate_limit_decisions_total{result="allowed",degraded="cache-unavailable"}"#,
    )
    .await;
    assert_eq!(degraded_after - degraded_before, 10.0);
    assert_eq!(
        metric(served, r#"edge_cache_store_breakers{state="closed"}"#).await,
        0.0
    );
    let (status, reason) = served.admin("/readyz").await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("circuit open"), "{reason}");
    assert_eq!(served.admin("/livez").await.0, 200);
}

/// After Redis is back: hits resume and `/readyz` is 200 within
/// [`RECOVERY`], and no request failed meanwhile.
async fn assert_recovers(served: &Served) {
    let back = Instant::now();
    loop {
        let answer = get(served, "/profiles/alice").await;
        assert_eq!(answer.status, 200);
        if answer.x_cache == "hit" {
            break;
        }
        assert!(
            back.elapsed() < RECOVERY,
            "no hit {:?} after Redis came back",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = served.admin("/readyz").await;
    assert_eq!(status, 200, "{body}");
    for state in ["open", "half-open"] {
        let series = format!(r#"edge_cache_store_breakers{{state="{state}"}}"#);
        assert_eq!(metric(served, &series).await, 0.0, "{series}");
    }
}

/// For a harness that started without Redis, once Redis is there:
/// `/readyz` turns 200 within [`RECOVERY`], then hits resume.
async fn assert_ready_and_recovers(served: &Served) {
    let back = Instant::now();
    while served.admin("/readyz").await.0 != 200 {
        let waited = back.elapsed();
        assert!(waited < RECOVERY, "not ready {waited:?} after Redis appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_recovers(served).await;
}

/// Starts a harness on `store`, which cannot be reached: it starts at
/// once, answers from the origin without waiting, and is not ready; the
/// reason is returned.
async fn start_unready(store: StoreConfig) -> (Served, String) {
    let started = Instant::now();
    let served = Served::start(config(store)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "started in {:?}",
        started.elapsed()
    );
    let answer = get(&served, "/profiles/alice").await;
    assert_eq!((answer.status, answer.x_cache.as_str()), (200, "bypass"));
    assert!(answer.took < FAST, "took {:?}", answer.took);
    let (status, reason) = served.admin("/readyz").await;
    assert_eq!(status, 503, "{reason}");
    for alive in ["/livez", "/healthz"] {
        assert_eq!(served.admin(alive).await, (200, "ok\n".to_owned()), "{alive}");
    }
    (served, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_is_not_waited_for_and_is_found_again() {
    let mut server = RedisServer::start();
    let served = Served::start(config(store(&server))).await;
    assert_eq!(get(&served, "/profiles/alice").await.x_cache, "miss");
    assert_eq!(get(&served, "/profiles/alice").await.x_cache, "hit");
    assert_eq!(served.admin("/readyz").await.0, 200);

    server.stop();
    assert_served_without_waiting(&served).await;
    server.restart();
    assert_recovers(&served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_not_waited_for_and_is_found_again() {
    let server = RedisServer::start();
    let served = Served::start(config(store(&server))).await;
    assert_eq!(get(&served, "/profiles/alice").await.x_cache, "miss");

    server.freeze();
    assert_served_without_waiting(&served).await;
    // Probes went on meanwhile, each bounded by the command timeout.
    server.thaw();
    assert_recovers(&served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_starts_without_redis_and_connects_when_it_appears() {
    let mut server = RedisServer::start();
    server.stop();
    let (served, reason) = start_unready(store(&server)).await;
    assert!(
        reason.contains(&format!("redis://127.0.0.1:{}", server.port())),
        "{reason}"
    );

    server.restart();
    assert_ready_and_recovers(&served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_of_another_type_is_replaced_by_the_next_fill() {
    let server = RedisServer::start();
    let served = Served::start(config(store(&server))).await;
    let mut redis = server.connection().await;
    let key = "edge-cache:profile:v1:alice";
    let _: () = redis::cmd("RPUSH")
        .arg(key)
        .arg("not a profile")
        .query_async(&mut redis)
        .await
        .unwrap();

    let first = get(&served, "/profiles/alice").await;
    assert_eq!((first.status, first.x_cache.as_str()), (200, "miss"));
    assert_eq!(get(&served, "/profiles/alice").await.x_cache, "hit");
    let kind: String = redis::cmd("TYPE").arg(key).query_async(&mut redis).await.unwrap();
    assert_eq!(kind, "string");
    assert_eq!(served.harness.origin().reads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_cluster_primary_opens_only_its_own_breakers() {
    let mut cluster = RedisCluster::start(3, 0);
    let store = StoreConfig::RedisCluster(RedisClusterConfig {
        connect_timeout: Duration::from_millis(500),
        command_timeout: COMMAND_TIMEOUT,
        ..RedisClusterConfig::new(cluster.urls())
    })
    .connect()
    .await
    .expect("connect to the cluster");
    let cache = Keyspace::new(store, "faults", Limits::default()).unwrap();
    // `redis-cli --cluster create` splits the slots evenly: the slot
    // ranges of two breakers (21 and 42 of 64) straddle two primaries, and
    // a key in them would see both. Keys elsewhere have one owner.
    let straddles = |key: &str| {
        let range = usize::from(key_slot(format!("faults:{key}").as_bytes())) * CLUSTER_RANGES / 16_384;
        [21, 42].contains(&range)
    };
    let keys: Vec<String> = (0..200)
        .map(|n| format!("k{n}"))
        .filter(|key| !straddles(key))
        .collect();
    let victim = cluster.owner_of(&format!("faults:{}", keys[0]));
    let (dead, alive): (Vec<&String>, Vec<&String>) = keys
        .iter()
        .partition(|key| cluster.owner_of(&format!("faults:{key}")) == victim);
    for key in alive.iter().chain(&dead) {
        cache.set(key, b"v", Some(60), false).await.unwrap();
    }

    cluster.kill(victim);
    let dead_key = dead[0];
    // The first answers may be redirections to the dead node (not an
    // outage in themselves); the refusals that follow open the breaker.
    let circuit_open =
        |error: &StoreError| matches!(error, StoreError::Unavailable(why) if why.contains("circuit open"));
    let mut attempts = 0;
    while !circuit_open(&cache.get(dead_key).await.unwrap_err()) {
        attempts += 1;
        assert!(attempts < 10, "the breaker of {dead_key} did not open");
    }
    let started = Instant::now();
    let error = cache.get(dead_key).await.unwrap_err();
    assert!(circuit_open(&error), "{error:?}");
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    // The other primaries' keys are served as before.
    for key in alive.iter().take(20) {
        let started = Instant::now();
        assert_eq!(cache.get(key).await.unwrap().as_deref(), Some(&b"v"[..]), "{key}");
        assert!(started.elapsed() < FAST, "{key} took {:?}", started.elapsed());
    }
    let readiness = cache.store().readiness();
    assert!(
        readiness.as_ref().is_ok_and(|note| note.contains("slot ranges")),
        "{readiness:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_starts_without_a_cluster_and_connects_when_it_appears() {
    let mut cluster = RedisCluster::start(3, 0);
    for node in 0..cluster.nodes.len() {
        cluster.kill(node);
    }
    let (served, reason) = start_unready(StoreConfig::RedisCluster(RedisClusterConfig {
        connect_timeout: Duration::from_millis(500),
        command_timeout: COMMAND_TIMEOUT,
        ..RedisClusterConfig::new(cluster.urls())
    }))
    .await;
    assert!(reason.contains("not connected to Redis"), "{reason}");

    // The nodes come back with their cluster configuration (kept in their
    // directories), empty.
    for node in &mut cluster.nodes {
        node.restart();
    }
    cluster.wait_for_failover(3, 3);
    assert_ready_and_recovers(&served).await;
}
