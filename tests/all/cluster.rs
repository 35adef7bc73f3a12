//! Redis Cluster: the harness on a real local cluster (three primaries),
//! keys spread by slot while each caller's limiter keys share one, and a
//! primary killed mid-run.

use edge_cache_harness::HarnessConfig;
use edge_cache_harness::keyspace::{Keyspace, Limits};
use edge_cache_tests::{RedisCluster, Served, config, within_one_window};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_contract_holds_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let store = cluster.store().connect().await.expect("connect to the cluster");
    let cache = Keyspace::new(store, "cluster", Limits::default()).unwrap();
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
        ..config(cluster.store())
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

/// The hash tag under which the guest keeps the limiter keys of requests
/// carrying `api_key` (the guest's own function computes it).
fn limiter_tag(api_key: &str) -> String {
    let request = edge_cache_guest::http::Request {
        method: "GET".into(),
        path: "/".into(),
        headers: vec![("x-api-key".into(), api_key.as_bytes().to_vec())],
        body: edge_cache_guest::http::Body::Complete(Vec::new()),
    };
    format!("{{{}}}", edge_cache_guest::http::caller(&request).0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_dies_mid_run_and_service_resumes_after_failover() {
    let mut cluster = RedisCluster::start(3, 1);
    let guest_env = vec![(
        "RATE_LIMITS".to_owned(),
        "*/api-key=fixed-window:5/1h,fail=closed".to_owned(),
    )];
    let mut config = HarnessConfig {
        guest_env,
        ..config(cluster.store())
    };
    if let edge_cache_harness::StoreConfig::RedisCluster(cluster_config) = &mut config.store {
        cluster_config.command_timeout = Duration::from_millis(500);
    }
    let served = Served::start(config).await;
    within_one_window(3600, Duration::from_secs(60)).await;

    // One caller whose limiter lives on the primary about to die, one whose
    // limiter lives elsewhere.
    let victim = cluster.owner_of(&limiter_tag("victim"));
    let survivor_key = (0..100)
        .map(|n| format!("survivor-{n}"))
        .find(|key| cluster.owner_of(&limiter_tag(key)) != victim)
        .expect("some key lives on another primary");
    let get = |api_key: &str| {
        served
            .client
            .get(served.url("/profiles/alice"))
            .header("x-api-key", api_key)
            .send()
    };
    assert_eq!(get("victim").await.unwrap().status(), 200);

    cluster.kill(victim);
    // Unreachable slot: the fail-closed policy refuses, quickly.
    let started = Instant::now();
    let refused = get("victim").await.unwrap();
    assert_eq!(refused.status(), 429, "fail-closed while the primary is gone");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
    // Reachable slot: the limiter stays exact.
    let mut allowed = 0;
    for _ in 0..8 {
        let request_started = Instant::now();
        let status = get(&survivor_key).await.unwrap().status();
        assert!(request_started.elapsed() < Duration::from_secs(5), "a request hung");
        allowed += usize::from(status == 200);
    }
    assert_eq!(allowed, 5, "exact on the reachable primaries");

    cluster.wait_for_failover(3, 5);
    // Service resumes where the replica took over.
    let deadline = Instant::now() + Duration::from_secs(20);
    while get("victim").await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the victim's slot never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let source = served.get("/profiles/alice").await.headers()["x-cache"]
            .to_str()
            .unwrap()
            .to_owned();
        if source == "hit" {
            break;
        }
        assert!(Instant::now() < deadline, "no cache hit after the failover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
