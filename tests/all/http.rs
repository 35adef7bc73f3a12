//! The edge function end to end: HTTP in, the guest in wasmtime, the cache in
//! a real redis-server (or the embedded store), the origin behind it.

use ::redis::AsyncCommands;
use edge_cache_harness::origin::OriginConfig;
use edge_cache_harness::overload::QueueLimits;
use edge_cache_harness::{HarnessConfig, StoreConfig};
use edge_cache_tests::{RedisServer, Served, config, within_one_window};
use serde_json::Value;
use std::time::{Duration, Instant};

const ALICE: &str = r#"{"id":"alice","name":"Alice Liddell","plan":"pro","country":"GB"}"#;
const CAROL: &str = r#"{"id":"carol","name":"Carol Danvers","plan":"team","country":"US"}"#;

async fn problem(response: reqwest::Response) -> Value {
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    response.json().await.unwrap()
}

async fn miss_then_hit_then_update(store: StoreConfig) {
    let served = Served::start(config(store)).await;
    let served = &served;
    let first = served.get("/profiles/alice").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache"], "miss");
    assert_eq!(first.text().await.unwrap(), ALICE);
    assert_eq!(served.harness.origin().reads(), 1);

    let second = served.get("/profiles/alice").await;
    assert_eq!(second.headers()["x-cache"], "hit");
    assert_eq!(second.text().await.unwrap(), ALICE);
    assert_eq!(served.harness.origin().reads(), 1, "a hit does not reach the origin");

    let updated = served
        .put("/profiles/alice", r#"{"id": "alice", "name": "Alice II"}"#)
        .await;
    assert_eq!(updated.status(), 200);
    let after = served.get("/profiles/alice").await;
    assert_eq!(after.headers()["x-cache"], "hit", "the update replaced the cached copy");
    assert_eq!(after.text().await.unwrap(), r#"{"id":"alice","name":"Alice II"}"#);
    assert_eq!(served.harness.origin().reads(), 1);

    // Unknown ids are remembered: the origin is asked once.
    for _ in 0..3 {
        assert_eq!(served.get("/profiles/nobody").await.status(), 404);
    }
    assert_eq!(served.harness.origin().reads(), 2);

    let created = served.put("/profiles/dave", r#"{"id":"dave"}"#).await;
    assert_eq!(created.status(), 201);
    assert_eq!(
        served.get("/profiles/dave").await.text().await.unwrap(),
        r#"{"id":"dave"}"#
    );
}

async fn errors_are_problem_bodies(store: StoreConfig) {
    let served = Served::start(config(store)).await;
    let served = &served;
    let missing = served.get("/profiles/nobody").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(problem(missing).await["type"], "urn:edge-cache:problem:not-found");

    let invalid = served.get("/profiles/not%20valid").await;
    assert_eq!(invalid.status(), 400);
    assert_eq!(problem(invalid).await["type"], "urn:edge-cache:problem:invalid-id");

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
        .put("/profiles/alice", &format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000)))
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
async fn the_61st_request_is_refused(store: StoreConfig) {
    let served = Served::start(config(store)).await;
    let served = &served;
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
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(refused.headers()["ratelimit-policy"], r#""default";q=60;w=60"#);
    assert_eq!(problem(refused).await["type"], "urn:edge-cache:problem:quota-exceeded");

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

/// 200 requests race for 50 units: each algorithm lets exactly 50 through.
async fn limiters_are_exact_under_concurrency(store: StoreConfig) {
    for algorithm in ["fixed-window", "sliding-window", "gcra"] {
        let rules = format!("*/*={algorithm}:50/1h");
        let guest_env = vec![("RATE_LIMITS".to_owned(), rules)];
        let mut harness = HarnessConfig {
            guest_env,
            ..config(store.clone())
        };
        // Exactness, not overload, is tested: on a loaded machine a debug
        // build may hold 200 concurrent requests past the default 1 s queue
        // wait, and a shed request would prove nothing about the limiter.
        harness.serving.queue = QueueLimits {
            queue_timeout: Duration::from_secs(60),
            ..QueueLimits::default()
        };
        let served = Served::start(harness).await;
        within_one_window(3600, Duration::from_secs(30)).await;
        let requests: Vec<_> = (0..200)
            .map(|_| {
                let request = served
                    .client
                    .get(served.url("/profiles/bob"))
                    .header("x-api-key", algorithm);
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
        let metrics = served.harness.metrics().render();
        assert!(
            !metrics.contains("edge_cache_store_errors_total{"),
            "{algorithm}: decisions without the cache:\n{metrics}"
        );
        assert_eq!(allowed, 50, "{algorithm}: exactly the limit is let through");
        // The headers agree with the decision that was made.
        let refused = served
            .client
            .get(served.url("/profiles/bob"))
            .header("x-api-key", algorithm)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 429);
        let headers = refused.headers();
        assert_eq!(headers["ratelimit-policy"], r#""default";q=50;w=3600"#, "{algorithm}");
        assert_eq!(headers["x-ratelimit-remaining"], "0", "{algorithm}");
        let reset: u64 = headers["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert_eq!(
            headers["ratelimit"].to_str().unwrap(),
            format!(r#""default";r=0;t={reset}"#)
        );
        let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(
            (1..=3600).contains(&retry_after),
            "{algorithm}: Retry-After {retry_after}"
        );
    }
}

/// A burst of concurrent misses on one key reaches the origin once: one
/// request fills, the others wait for the fill (the wait, 1 s by default,
/// outlasts the origin's 300 ms).
async fn a_stampede_reaches_the_origin_once(store: StoreConfig) {
    let origin = OriginConfig {
        latency: Duration::from_millis(300),
        ..OriginConfig::default()
    };
    let guest_env = vec![("RATE_LIMIT_REQUESTS".to_owned(), "1000".to_owned())];
    let served = Served::start(HarnessConfig {
        origin,
        guest_env,
        ..config(store)
    })
    .await;
    let requests: Vec<_> = (0..40)
        .map(|_| {
            let request = served.client.get(served.url("/profiles/carol"));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                (
                    response.status().as_u16(),
                    response.headers()["x-cache"].to_str().unwrap().to_owned(),
                )
            })
        })
        .collect();
    let mut sources = Vec::new();
    for request in requests {
        let (status, source) = request.await.unwrap();
        assert_eq!(status, 200);
        sources.push(source);
    }
    assert_eq!(served.harness.origin().reads(), 1, "{sources:?}");
    assert_eq!(sources.iter().filter(|s| *s == "miss").count(), 1, "{sources:?}");
}

/// Past freshness, one request refreshes while the others are served the
/// stale copy at once.
async fn stale_copies_are_served_while_one_request_refreshes(store: StoreConfig) {
    let origin = OriginConfig {
        latency: Duration::from_millis(300),
        ..OriginConfig::default()
    };
    let guest_env = vec![
        ("PROFILE_TTL_SECONDS".to_owned(), "1".to_owned()),
        ("RATE_LIMIT_REQUESTS".to_owned(), "1000".to_owned()),
    ];
    let served = Served::start(HarnessConfig {
        origin,
        guest_env,
        ..config(store)
    })
    .await;
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "miss");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let started = Instant::now();
    let requests: Vec<_> = (0..10)
        .map(|_| {
            let request = served.client.get(served.url("/profiles/alice"));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let source = response.headers()["x-cache"].to_str().unwrap().to_owned();
                (source, response.text().await.unwrap())
            })
        })
        .collect();
    let mut sources = Vec::new();
    for request in requests {
        let (source, body) = request.await.unwrap();
        assert_eq!(body, ALICE);
        sources.push(source);
    }
    sources.sort();
    assert_eq!(
        sources.iter().filter(|s| *s == "miss").count(),
        1,
        "one refresh: {sources:?}"
    );
    assert_eq!(sources.iter().filter(|s| *s == "stale").count(), 9, "{sources:?}");
    assert_eq!(served.harness.origin().reads(), 2);
    assert!(started.elapsed() < Duration::from_secs(3));
    // The refreshed copy is fresh for 1 s: a request inside it is a hit, or
    // (in a few percent of runs: the origin takes 300 ms, and XFetch may
    // refresh that far ahead) an early refresh, which reads the origin again.
    let after = served.get("/profiles/alice").await;
    if started.elapsed() < Duration::from_millis(900) {
        let source = after.headers()["x-cache"].to_str().unwrap().to_owned();
        let reads = served.harness.origin().reads();
        assert!(
            (source == "hit" && reads == 2) || (source == "miss" && reads == 3),
            "x-cache {source} after {reads} origin reads"
        );
    }
}

/// Each end-to-end test on a real redis-server, a real Redis Cluster and the
/// embedded store.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let server = edge_cache_tests::RedisServer::start();
                super::$name(server.store()).await;
            })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(Default::default()).await;
            })*
        }
        mod cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let cluster = edge_cache_tests::RedisCluster::start(3, 0);
                super::$name(cluster.store()).await;
            })*
        }
    };
}

both_backends!(
    miss_then_hit_then_update,
    errors_are_problem_bodies,
    the_61st_request_is_refused,
    limiters_are_exact_under_concurrency,
    a_stampede_reaches_the_origin_once,
    stale_copies_are_served_while_one_request_refreshes,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_redis_carry_the_namespace_and_a_ttl() {
    let server = RedisServer::start();
    let served = Served::start(HarnessConfig {
        namespace: "tenant-a".into(),
        ..config(server.store())
    })
    .await;
    assert_eq!(served.get("/profiles/carol").await.status(), 200);

    let mut redis = server.connection().await;
    let mut stored: Vec<String> = redis.keys("*").await.unwrap();
    stored.sort();
    assert_eq!(stored.len(), 2, "the fill lock is gone: {stored:?}");
    assert_eq!(stored[0], "tenant-a:profile:v1:carol");
    assert!(
        stored[1].starts_with("tenant-a:rl:{ip:127.0.0.1}:default:fw:60:"),
        "{stored:?}"
    );
    // Fresh for 600 s, kept 60 s more to be served stale while refreshed.
    let profile_ttl: i64 = redis.ttl(&stored[0]).await.unwrap();
    assert!((650..=660).contains(&profile_ttl), "profile TTL {profile_ttl}");
    let counter_ttl: i64 = redis.ttl(&stored[1]).await.unwrap();
    assert!((1..=61).contains(&counter_ttl), "counter TTL {counter_ttl}");
    let cached: Value = serde_json::from_slice(&redis.get::<_, Vec<u8>>(&stored[0]).await.unwrap()).unwrap();
    assert_eq!(cached["profile"], serde_json::from_str::<Value>(CAROL).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_configuration_comes_from_the_environment() {
    let guest_env = vec![
        ("PROFILE_TTL_SECONDS".to_owned(), "42".to_owned()),
        ("PROFILE_STALE_SECONDS".to_owned(), "8".to_owned()),
        ("RATE_LIMIT_REQUESTS".to_owned(), "2".to_owned()),
        ("RATE_LIMIT_WINDOW_SECONDS".to_owned(), "3600".to_owned()),
        ("RATE_LIMITS".to_owned(), "*/api-key=gcra:10/1h,burst=1".to_owned()),
    ];
    let server = RedisServer::start();
    let served = Served::start(HarnessConfig {
        guest_env,
        ..config(server.store())
    })
    .await;
    within_one_window(3600, Duration::from_secs(10)).await;
    let first = served.get("/profiles/alice").await;
    assert_eq!(first.headers()["ratelimit-policy"], r#""default";q=2;w=3600"#);
    assert_eq!(served.get("/profiles/alice").await.status(), 200);
    assert_eq!(served.get("/profiles/alice").await.status(), 429);
    let ttl: i64 = server
        .connection()
        .await
        .ttl("edge-cache:profile:v1:alice")
        .await
        .unwrap();
    assert!((48..=50).contains(&ttl), "profile TTL {ttl}");

    let keyed = || {
        served
            .client
            .get(served.url("/profiles/alice"))
            .header("x-api-key", "k")
            .send()
    };
    let first_keyed = keyed().await.unwrap();
    assert_eq!(first_keyed.headers()["ratelimit-policy"], r#""api-key";q=10;w=3600"#);
    assert_eq!(keyed().await.unwrap().status(), 429, "a burst of 1");
}

/// The cache is never the source of truth: with Redis gone, answers still
/// come, from the origin, within the command timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_the_origin() {
    let server = RedisServer::start();
    let served = Served::start(config(server.store_with_timeout(Duration::from_millis(300)))).await;
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "miss");
    assert_eq!(served.get("/profiles/alice").await.headers()["x-cache"], "hit");

    drop(server);
    let started = Instant::now();
    for _ in 0..3 {
        let response = served.get("/profiles/alice").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-cache"], "bypass");
        assert_eq!(response.text().await.unwrap(), ALICE);
    }
    let updated = served.put("/profiles/alice", r#"{"id":"alice","v":2}"#).await;
    assert_eq!(updated.status(), 200, "writes reach the origin without the cache");
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
    let served = Served::start(config(server.store())).await;

    let (mut store, instance) = served.harness.instantiate().await.unwrap();
    let profiles = instance.edge_cache_profiles();
    let first = profiles.call_get(&mut store, "bob").await.unwrap().unwrap().unwrap();
    assert_eq!(first.source, profiles::Source::Origin);
    let second = profiles.call_get(&mut store, "bob").await.unwrap().unwrap().unwrap();
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
    let policy = |algorithm| rate_limit::Policy {
        name: "exports".into(),
        algorithm,
        limit: 3,
        window_seconds: 3600,
        fail_mode: rate_limit::FailMode::Open,
    };
    for algorithm in [
        rate_limit::Algorithm::FixedWindow,
        rate_limit::Algorithm::SlidingWindow,
        rate_limit::Algorithm::Gcra(None),
    ] {
        let policy = policy(algorithm);
        let peeked = limiter.call_peek(&mut store, "caller", &policy).await.unwrap().unwrap();
        assert_eq!((peeked.allowed, peeked.remaining), (true, 3), "{algorithm:?}");
        let mut decisions = Vec::new();
        for _ in 0..4 {
            decisions.push(
                limiter
                    .call_check(&mut store, "caller", &policy, 1)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let summary: Vec<_> = decisions.iter().map(|d| (d.allowed, d.remaining)).collect();
        assert_eq!(summary, [(true, 2), (true, 1), (true, 0), (false, 0)], "{algorithm:?}");
        assert!(decisions[3].retry_after_ms > 0 && decisions[3].retry_after_ms <= 3_600_000);
        assert!(decisions.iter().all(|d| d.degraded.is_none()));
        let peeked = limiter.call_peek(&mut store, "caller", &policy).await.unwrap().unwrap();
        assert!(!peeked.allowed, "{algorithm:?}: peek sees the spent quota");
        limiter
            .call_reset(&mut store, "caller", &policy)
            .await
            .unwrap()
            .unwrap();
        let after_reset = limiter
            .call_check(&mut store, "caller", &policy, 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (after_reset.allowed, after_reset.remaining),
            (true, 2),
            "{algorithm:?}: reset"
        );
    }
    let zero = rate_limit::Policy {
        limit: 0,
        ..policy(rate_limit::Algorithm::FixedWindow)
    };
    assert!(matches!(
        limiter.call_check(&mut store, "k", &zero, 1).await.unwrap(),
        Err(rate_limit::Error::InvalidPolicy(_))
    ));
}

/// `/metrics` on the admin listener counts what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_requests_made() {
    let server = RedisServer::start();
    let guest_env = vec![("RATE_LIMIT_REQUESTS".to_owned(), "4".to_owned())];
    let served = Served::start(HarnessConfig {
        guest_env,
        ..config(server.store())
    })
    .await;
    let admin_address = served.admin;

    within_one_window(60, Duration::from_secs(10)).await;
    for path in [
        "/profiles/alice",
        "/profiles/alice",
        "/profiles/alice",
        "/profiles/nobody",
        "/profiles/bob",
    ] {
        served.get(path).await;
    }
    let response = served
        .client
        .get(format!("http://{admin_address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(value(r#"edge_cache_http_responses_total{status="200"}"#), 3.0);
    assert_eq!(value(r#"edge_cache_http_responses_total{status="404"}"#), 1.0);
    assert_eq!(value(r#"edge_cache_http_responses_total{status="429"}"#), 1.0);
    // Counted as the guest reported them, not from status codes.
    assert_eq!(
        value(r#"edge_cache_rate_limit_decisions_total{result="allowed",degraded="no"}"#),
        4.0
    );
    assert_eq!(
        value(r#"edge_cache_rate_limit_decisions_total{result="denied",degraded="no"}"#),
        1.0
    );
    assert_eq!(value(r#"edge_cache_cache_lookups_total{result="hit"}"#), 2.0);
    assert_eq!(value(r#"edge_cache_cache_lookups_total{result="miss"}"#), 1.0);
    assert!((value("edge_cache_cache_hit_ratio") - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(value("edge_cache_origin_reads_total"), 2.0);
    // Every request made one limiter round trip; lookups made theirs.
    assert_eq!(
        value(r#"edge_cache_store_operation_duration_seconds_count{op="incr-by-bounded"}"#),
        5.0
    );
    assert!(value(r#"edge_cache_store_operation_duration_seconds_count{op="get"}"#) >= 4.0);
    assert!(
        !text.contains("edge_cache_store_errors_total{"),
        "no store errors:\n{text}"
    );

    for path in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(served.admin(path).await.0, 200, "{path}");
    }
}

/// A draining harness is not ready (the platform stops routing to it),
/// while it is still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_harness_is_alive_but_not_ready() {
    let mut served = Served::start(config(StoreConfig::default())).await;
    assert_eq!(served.admin("/readyz").await.0, 200);
    served.stop();
    served.stopped().await;
    let (status, reason) = served.admin("/readyz").await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("draining"), "{reason}");
    assert_eq!(served.admin("/livez").await.0, 200);
}
