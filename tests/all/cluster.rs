//! Redis Cluster: the harness on a real local cluster (three primaries),
//! keys spread by slot while each caller's limiter keys share one, and a
//! primary killed mid-run.

use edge_cache_harness::HarnessConfig;
use edge_cache_harness::cache::{Cache, Limits};
use edge_cache_tests::{RedisCluster, Served, config, within_one_window};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_contract_holds_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let backend = cluster.backend().connect().await.expect("connect to the cluster");
    let cache = Cache::new(backend, "cluster", Limits::default()).unwrap();
    // Keys in many slots, in one call each way: no CROSSSLOT reaches us.
    let keys: Vec<String> = (0..20).map(|n| format!("k{n}")).collect();
    for key in &keys {
        cache.set(key, key.as_bytes(), Some(60), false).await.unwrap();
    }
    let values = cache.get_many(&keys).await.unwrap();
    assert_eq!(
        values,
        keys.iter().map(|key| Some(key.as_bytes().to_vec())).collect::<Vec<_>>()
    );
    assert_eq!(cache.delete(&keys).await.unwrap(), 20);
    assert_eq!(cache.get_many(&keys).await.unwrap(), vec![None; 20]);
    // Scripts run on whichever node owns their key.
    for key in &keys {
        assert_eq!(cache.incr_by(key, 2, 60).await.unwrap(), 2);
        assert!(cache.incr_by_bounded(key, 1, 60, 3).await.unwrap().applied);
        assert!(!cache.incr_by_bounded(key, 1, 60, 3).await.unwrap().applied);
    }
    assert!(
        cluster.keys_by_node().iter().filter(|keys| !keys.is_empty()).count() >= 2,
        "keys spread over nodes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_function_runs_on_a_cluster_with_each_callers_keys_in_one_slot() {
    let cluster = RedisCluster::start(3, 0);
    let guest_env = vec![("RATE_LIMITS".to_owned(), "*/*=sliding-window:50/1h".to_owned())];
    let served = Served::start(HarnessConfig {
        guest_env,
        ..config(cluster.backend())
    })
    .await;
    within_one_window(3600, Duration::from_secs(30)).await;

    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "miss");
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "hit");
    for id in ["bob", "carol"] {
        assert_eq!(served.get(&format!("/profiles/{id}")).await.status(), 200);
    }

    // Exact under a race, on a cluster too.
    let requests: Vec<_> = (0..120)
        .map(|_| {
            let request = served
                .client
                .get(served.url("/profiles/bob"))
                .header("x-api-key", "racer");
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut allowed = 0;
    for request in requests {
        allowed += usize::from(request.await.unwrap() == 200);
    }
    assert_eq!(allowed, 50);

    let keys_by_node = cluster.keys_by_node();
    let profile_nodes = keys_by_node
        .iter()
        .filter(|keys| keys.iter().any(|key| key.contains(":profile:")))
        .count();
    assert!(profile_nodes >= 2, "profiles spread over the cluster: {keys_by_node:?}");
    let racer_nodes: Vec<_> = keys_by_node
        .iter()
        .filter(|keys| keys.iter().any(|key| key.contains(":rl:{key:")))
        .collect();
    assert_eq!(
        racer_nodes.len(),
        1,
        "one caller's limiter keys live on one node: {keys_by_node:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_dies_mid_run_and_service_resumes_after_failover() {
    let mut cluster = RedisCluster::start(3, 1);
    let guest_env = vec![("RATE_LIMITS".to_owned(), "*/*=fixed-window:1000/1h".to_owned())];
    let mut config = HarnessConfig {
        guest_env,
        ..config(cluster.backend())
    };
    if let edge_cache_harness::BackendConfig::RedisCluster(cluster_config) = &mut config.backend {
        cluster_config.command_timeout = Duration::from_millis(500);
    }
    let served = Served::start(config).await;
    within_one_window(3600, Duration::from_secs(60)).await;
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "miss");

    let owner = cluster.owner_of("edge-cache:profile:v1:alice");
    cluster.kill(owner);
    // While the replica takes over: every request answers (from the origin
    // when its slot is unreachable) and none hangs past the timeouts.
    let started = Instant::now();
    let mut sources = Vec::new();
    while started.elapsed() < Duration::from_secs(4) {
        let request_started = Instant::now();
        let response = served.get("/profiles/alice").await;
        assert_eq!(response.status(), 200);
        assert!(
            request_started.elapsed() < Duration::from_secs(5),
            "a request hung for {:?}",
            request_started.elapsed()
        );
        sources.push(response.headers()["x-cache"].to_str().unwrap().to_owned());
    }
    cluster.wait_for_failover(3, 5);
    // Service resumes: the cache fills and hits again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let source = served.get("/profiles/alice").await.headers()["x-cache"]
            .to_str()
            .unwrap()
            .to_owned();
        if source == "hit" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cache hit after the failover; during it: {sources:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
