//! The Redis store as operations see it: credentials, outages, script
//! cache flushes.

use edge_cache_harness::keyspace::{Keyspace, Limits};
use edge_cache_harness::store::StoreError;
use edge_cache_harness::store::redis::RedisConfig;
use edge_cache_harness::{Harness, HarnessConfig, StoreConfig};
use edge_cache_tests::{RedisServer, Served, config};
use std::time::{Duration, Instant};

/// `default` off; `edge` with a password, confined to `edge-cache:*` keys.
const ACL: [&str; 9] = [
    "--user",
    "default",
    "off",
    "--user",
    "edge",
    "on",
    ">s3cret-pass",
    "~edge-cache:*",
    "+@all",
];

fn acl_url(server: &RedisServer, user_password: &str) -> StoreConfig {
    let url = format!("redis://{user_password}@127.0.0.1:{}", server.port());
    StoreConfig::Redis(RedisConfig {
        connect_timeout: Duration::from_millis(500),
        ..RedisConfig::new(url)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_and_password_are_used_and_never_shown() {
    let server = RedisServer::start_with(&ACL);
    let served = Served::start(config(acl_url(&server, "edge:s3cret-pass"))).await;
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "miss");
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "hit");

    let wrong = HarnessConfig {
        store: acl_url(&server, "edge:wrong-pass"),
        ..HarnessConfig::default()
    };
    let error = Harness::start(&wrong)
        .await
        .err()
        .expect("a wrong password is refused")
        .to_string();
    assert!(error.contains("redis://edge:***@127.0.0.1"), "{error}");
    assert!(!error.contains("wrong-pass") && !error.contains("s3cret"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_key_patterns_confine_the_namespace() {
    // The ACL allows `edge-cache:*` only: another namespace is refused by
    // Redis itself, and the guest still answers (from the origin).
    let server = RedisServer::start_with(&ACL);
    let served = Served::start(HarnessConfig {
        namespace: "other".into(),
        ..config(acl_url(&server, "edge:s3cret-pass"))
    })
    .await;
    let response = served.get("/profiles/alice").await;
    assert_eq!(
        (
            response.status().as_u16(),
            response.headers()["x-cache"].to_str().unwrap()
        ),
        (200, "bypass")
    );
    let error = served.harness.cache().get("k").await.unwrap_err();
    assert!(
        matches!(error, StoreError::AccessDenied(ref why) if why.to_lowercase().contains("perm")),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_gives_typed_errors_quickly_and_service_recovers() {
    let mut server = RedisServer::start();
    let store = server
        .store_with_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let cache = Keyspace::new(store, "outage", Limits::default()).unwrap();
    cache.set("k", b"v", None, false).await.unwrap();

    server.stop();
    for _ in 0..5 {
        let started = Instant::now();
        let error = cache.get("k").await.unwrap_err();
        assert!(
            matches!(error, StoreError::Unavailable(_) | StoreError::Timeout(_)),
            "{error:?}"
        );
        // The command timeout of the test store is 300 ms.
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "took {:?}",
            started.elapsed()
        );
    }

    server.restart();
    // The shared connection reconnects by itself (the restarted server is empty).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cache.set("k", b"again", None, false).await {
            Ok(_) => break,
            Err(error) if Instant::now() < deadline => {
                eprintln!("waiting for the reconnection: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("no recovery within 10 s: {error}"),
        }
    }
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"again"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_survive_a_script_cache_flush() {
    let server = RedisServer::start();
    let store = server.store().connect().await.unwrap();
    assert_eq!(store.kind(), "redis");
    let cache = Keyspace::new(store, "scripts", Limits::default()).unwrap();
    assert_eq!(cache.incr_by("n", 1, 60).await.unwrap(), 1);
    let mut admin = server.connection().await;
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    // EVALSHA now answers NOSCRIPT; the script is loaded again and run.
    assert_eq!(cache.incr_by("n", 1, 60).await.unwrap(), 2);
    assert!(cache.incr_by_bounded("n", 1, 60, 10).await.unwrap().applied);
}
