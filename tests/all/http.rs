//! The edge function end to end: HTTP in, the guest in wasmtime, the cache in
//! a real redis-server (or the embedded store), the origin behind it.

use ::redis::AsyncCommands;
use edge_cache_harness::{BackendConfig, HarnessConfig};
use edge_cache_tests::{RedisServer, Served, config, within_one_window};
use serde_json::Value;
use std::time::{Duration, Instant};

const ALICE: &str = r#"{"id":"alice","name":"Alice Liddell","plan":"pro","country":"GB"}"#;

async fn problem(response: reqwest::Response) -> Value {
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    response.json().await.unwrap()
}

async fn miss_then_hit_then_invalidate(served: &Served) {
    let first = served.get("/profiles/alice").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache"], "miss");
    assert_eq!(first.text().await.unwrap(), ALICE);
    assert_eq!(served.harness.origin().reads(), 1);

    let second = served.get("/profiles/alice").await;
    assert_eq!(second.headers()["x-cache"], "hit");
    assert_eq!(second.text().await.unwrap(), ALICE);
    assert_eq!(
        served.harness.origin().reads(),
        1,
        "a hit does not reach the origin"
    );

    let updated = served
        .put("/profiles/alice", r#"{"id": "alice", "name": "Alice II"}"#)
        .await;
    assert_eq!(updated.status(), 200);
    let after = served.get("/profiles/alice").await;
    assert_eq!(
        after.headers()["x-cache"],
        "miss",
        "the update invalidated the cached copy"
    );
    assert_eq!(
        after.text().await.unwrap(),
        r#"{"id":"alice","name":"Alice II"}"#
    );
    assert_eq!(served.harness.origin().reads(), 2);

    let created = served.put("/profiles/dave", r#"{"id":"dave"}"#).await;
    assert_eq!(created.status(), 201);
    assert_eq!(
        served.get("/profiles/dave").await.text().await.unwrap(),
        r#"{"id":"dave"}"#
    );
}

async fn errors_are_problem_bodies(served: &Served) {
    let missing = served.get("/profiles/nobody").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        problem(missing).await["type"],
        "urn:edge-cache:problem:not-found"
    );

    let invalid = served.get("/profiles/not%20valid").await;
    assert_eq!(invalid.status(), 400);
    assert_eq!(
        problem(invalid).await["type"],
        "urn:edge-cache:problem:invalid-id"
    );

    let not_json = served.put("/profiles/alice", "{oops").await;
    assert_eq!(not_json.status(), 400);
    assert_eq!(
        problem(not_json).await["type"],
        "urn:edge-cache:problem:invalid-profile"
    );
    let unchanged = served.get("/profiles/alice").await;
    assert_eq!(
        unchanged.text().await.unwrap(),
        ALICE,
        "a rejected update loses nothing"
    );

    let too_big = served
        .put(
            "/profiles/alice",
            &format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000)),
        )
        .await;
    assert_eq!(too_big.status(), 413);

    let method = served
        .client
        .delete(served.url("/profiles/alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(method.status(), 405);
    assert_eq!(method.headers()["allow"], "GET, PUT");
}

/// Every request counts against its caller; the 61st in a window is refused.
async fn the_61st_request_is_refused(served: &Served) {
    within_one_window(60, Duration::from_secs(10)).await;
    for n in 1..=60 {
        // The client address comes from the connection: a client-sent
        // x-edge-client-ip must not give it a fresh quota.
        let response = served
            .client
            .get(served.url("/profiles/alice"))
            .header("x-edge-client-ip", format!("10.0.0.{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {n}");
        assert_eq!(
            response.headers()["x-ratelimit-remaining"],
            (60 - n).to_string().as_str()
        );
    }
    let refused = served.get("/profiles/alice").await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        refused.headers()["ratelimit-policy"],
        r#""default";q=60;w=60"#
    );
    assert_eq!(
        problem(refused).await["type"],
        "urn:edge-cache:problem:quota-exceeded"
    );

    // Another caller, identified by API key, still has its own quota.
    let keyed = served
        .client
        .get(served.url("/profiles/alice"))
        .header("x-api-key", "k-123")
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 200);
}

async fn limiter_is_exact_under_concurrency(served: &Served) {
    within_one_window(60, Duration::from_secs(10)).await;
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let request = served
                .client
                .get(served.url("/profiles/bob"))
                .header("x-api-key", "concurrent");
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut allowed = 0;
    for request in requests {
        match request.await.unwrap() {
            200 => allowed += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(allowed, 60, "exactly the limit is let through");
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let server = edge_cache_tests::RedisServer::start();
                let served = edge_cache_tests::Served::start(edge_cache_tests::config(server.backend())).await;
                super::$name(&served).await;
            })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let served = edge_cache_tests::Served::start(edge_cache_tests::config(Default::default())).await;
                super::$name(&served).await;
            })*
        }
    };
}

both_backends!(
    miss_then_hit_then_invalidate,
    errors_are_problem_bodies,
    the_61st_request_is_refused,
    limiter_is_exact_under_concurrency,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_redis_carry_the_namespace_and_a_ttl() {
    let server = RedisServer::start();
    let served = Served::start(HarnessConfig {
        namespace: "tenant-a".into(),
        ..config(server.backend())
    })
    .await;
    assert_eq!(served.get("/profiles/carol").await.status(), 200);

    let mut redis = server.connection().await;
    let mut stored: Vec<String> = redis.keys("*").await.unwrap();
    stored.sort();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[0], "tenant-a:profile:carol");
    assert!(
        stored[1].starts_with("tenant-a:rl:{ip:127.0.0.1}:fw:60:"),
        "{stored:?}"
    );
    let profile_ttl: i64 = redis.ttl(&stored[0]).await.unwrap();
    assert!(
        (590..=600).contains(&profile_ttl),
        "profile TTL {profile_ttl}"
    );
    let counter_ttl: i64 = redis.ttl(&stored[1]).await.unwrap();
    assert!((1..=61).contains(&counter_ttl), "counter TTL {counter_ttl}");
    let cached: Vec<u8> = redis.get(&stored[0]).await.unwrap();
    assert_eq!(
        cached,
        br#"{"id":"carol","name":"Carol Danvers","plan":"team","country":"US"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_configuration_comes_from_the_environment() {
    let guest_env = vec![
        ("PROFILE_TTL_SECONDS".to_owned(), "42".to_owned()),
        ("RATE_LIMIT_REQUESTS".to_owned(), "2".to_owned()),
        ("RATE_LIMIT_WINDOW_SECONDS".to_owned(), "3600".to_owned()),
    ];
    let server = RedisServer::start();
    let served = Served::start(HarnessConfig {
        guest_env,
        ..config(server.backend())
    })
    .await;
    within_one_window(3600, Duration::from_secs(10)).await;
    let first = served.get("/profiles/alice").await;
    assert_eq!(
        first.headers()["ratelimit-policy"],
        r#""default";q=2;w=3600"#
    );
    assert_eq!(served.get("/profiles/alice").await.status(), 200);
    assert_eq!(served.get("/profiles/alice").await.status(), 429);
    let ttl: i64 = server
        .connection()
        .await
        .ttl("edge-cache:profile:alice")
        .await
        .unwrap();
    assert!((40..=42).contains(&ttl), "profile TTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_guest_configuration_is_a_clear_500() {
    let guest_env = vec![("RATE_LIMIT_REQUESTS".to_owned(), "lots".to_owned())];
    let served = Served::start(HarnessConfig {
        guest_env,
        ..config(BackendConfig::default())
    })
    .await;
    let response = served.get("/profiles/alice").await;
    assert_eq!(response.status(), 500);
    let body = problem(response).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("RATE_LIMIT_REQUESTS"),
        "{body}"
    );
}

/// The cache is never the source of truth: with Redis gone, answers still
/// come, from the origin, within the command timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_the_origin() {
    let server = RedisServer::start();
    let served = Served::start(config(server.backend())).await;
    assert_eq!(
        served.get("/profiles/alice").await.headers()["x-cache"],
        "miss"
    );
    assert_eq!(
        served.get("/profiles/alice").await.headers()["x-cache"],
        "hit"
    );

    drop(server);
    let started = Instant::now();
    for _ in 0..3 {
        let response = served.get("/profiles/alice").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-cache"], "bypass");
        assert_eq!(response.text().await.unwrap(), ALICE);
    }
    let updated = served
        .put("/profiles/alice", r#"{"id":"alice","v":2}"#)
        .await;
    assert_eq!(
        updated.status(),
        200,
        "writes reach the origin without the cache"
    );
    let elapsed = started.elapsed();
    // Each request makes at most two cache calls of at most 300 ms.
    assert!(
        elapsed < Duration::from_secs(8),
        "requests took {elapsed:?} with Redis down"
    );
}

/// The exported interfaces work without HTTP, as other components use them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_work_without_http() {
    use edge_cache_harness::bindings::{profiles, rate_limit};
    let server = RedisServer::start();
    let served = Served::start(config(server.backend())).await;

    let (mut store, instance) = served.harness.instantiate().await.unwrap();
    let profiles = instance.edge_cache_profiles();
    let first = profiles
        .call_get(&mut store, "bob")
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.source, profiles::Source::Origin);
    let second = profiles
        .call_get(&mut store, "bob")
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.source, profiles::Source::Cache);
    assert!(
        profiles
            .call_get(&mut store, "nobody")
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        profiles.call_get(&mut store, "b:ad").await.unwrap(),
        Err(profiles::Error::InvalidId(_))
    ));

    let limiter = instance.edge_cache_rate_limit();
    within_one_window(3600, Duration::from_secs(10)).await;
    let policy = rate_limit::Policy {
        algorithm: rate_limit::Algorithm::FixedWindow,
        limit: 3,
        window_seconds: 3600,
    };
    let mut decisions = Vec::new();
    for _ in 0..4 {
        decisions.push(
            limiter
                .call_check(&mut store, "export-caller", policy, 1)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let summary: Vec<_> = decisions.iter().map(|d| (d.allowed, d.remaining)).collect();
    assert_eq!(summary, [(true, 2), (true, 1), (true, 0), (false, 0)]);
    assert!(decisions[3].retry_after_ms > 0 && decisions[3].retry_after_ms <= 3_600_000);
    assert!(decisions.iter().all(|d| d.degraded.is_none()));
    let zero = rate_limit::Policy { limit: 0, ..policy };
    assert!(matches!(
        limiter.call_check(&mut store, "k", zero, 1).await.unwrap(),
        Err(rate_limit::Error::InvalidPolicy(_))
    ));
}
