//! The penalty box on a real Redis: once a caller is denied, its further
//! requests cost Redis nothing until the decision can change, and are
//! answered exactly as Redis would have them answered; a `reset` through the
//! harness takes effect at once.
//!
//! Redis commands are counted from `INFO commandstats` (every command the
//! harness sends, and those its scripts run), so the counts are exact.

use edge_cache_harness::HarnessConfig;
use edge_cache_harness::bindings::rate_limit;
use edge_cache_tests::{RedisServer, Served, config, within_one_window};
use redis::aio::MultiplexedConnection;
use std::time::Duration;

const ALGORITHMS: [&str; 3] = ["fixed-window", "sliding-window", "gcra"];

/// How HTTP callers on loopback are keyed by the edge function.
const LOOPBACK_CALLER: &str = "ip:127.0.0.1";

/// Commands Redis has run, but for the `INFO` calls that ask.
async fn commands_run(redis: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(redis).await.unwrap();
    info.lines()
        .filter(|line| line.starts_with("cmdstat_") && !line.starts_with("cmdstat_info:"))
        .map(|line| {
            let calls = line.split_once(":calls=").expect("a commandstats line").1;
            calls.split(',').next().unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

/// A harness on `server` limiting everyone to 3 requests an hour with
/// `algorithm`, its penalty box bounded to `entries`.
async fn limited(server: &RedisServer, algorithm: &str, entries: u64) -> Served {
    let rules = format!("*/*={algorithm}:3/1h");
    Served::start(HarnessConfig {
        guest_env: vec![("RATE_LIMITS".to_owned(), rules)],
        penalty_box_entries: entries,
        ..config(server.store())
    })
    .await
}

/// A response as a client sees it, but for the `date` header.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

async fn seen(served: &Served) -> Seen {
    let response = served.get("/profiles/alice").await;
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    Seen {
        status,
        headers,
        body: response.text().await.unwrap(),
    }
}

fn policy(algorithm: &str, limit: u32, window_seconds: u32) -> rate_limit::Policy {
    rate_limit::Policy {
        name: String::new(),
        algorithm: match algorithm {
            "fixed-window" => rate_limit::Algorithm::FixedWindow,
            "sliding-window" => rate_limit::Algorithm::SlidingWindow,
            _ => rate_limit::Algorithm::Gcra(None),
        },
        limit,
        window_seconds,
        fail_mode: rate_limit::FailMode::Open,
    }
}

/// After the first denial, N further requests make no Redis command, are
/// all 429, and are counted as held lookups and as denied decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_first_denial_requests_cost_redis_nothing() {
    const FURTHER: usize = 50;
    for algorithm in ALGORITHMS {
        let server = RedisServer::start();
        let mut redis = server.connection().await;
        let served = limited(&server, algorithm, 100).await;
        within_one_window(3600, Duration::from_secs(30)).await;
        for _ in 0..3 {
            assert_eq!(seen(&served).await.status, 200, "{algorithm}");
        }
        let before_denial = commands_run(&mut redis).await;
        assert_eq!(seen(&served).await.status, 429, "{algorithm}");
        let after_denial = commands_run(&mut redis).await;
        assert!(after_denial > before_denial, "{algorithm}: the first denial asks Redis");
        for _ in 0..FURTHER {
            assert_eq!(seen(&served).await.status, 429, "{algorithm}");
        }
        assert_eq!(
            commands_run(&mut redis).await,
            after_denial,
            "{algorithm}: {FURTHER} denials from the penalty box"
        );
        let metrics = served.harness.metrics().render();
        let held = format!("edge_cache_penalty_box_lookups_total{{result=\"held\"}} {FURTHER}\n");
        assert!(metrics.contains(&held), "{algorithm}:\n{metrics}");
        let denied = format!(
            "edge_cache_rate_limit_decisions_total{{result=\"denied\",degraded=\"no\"}} {}\n",
            FURTHER + 1
        );
        assert!(metrics.contains(&denied), "{algorithm}:\n{metrics}");
    }
}

/// A denial from the penalty box is the response Redis gives: a harness
/// without a box, on the same Redis, answers the same. Reset times count
/// down, so each comparison is made between two answers of the boxless
/// harness that agree: nothing ticked in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_from_the_box_are_the_responses_redis_gives() {
    for algorithm in ALGORITHMS {
        let server = RedisServer::start();
        let boxed = limited(&server, algorithm, 100).await;
        let plain = limited(&server, algorithm, 0).await;
        within_one_window(3600, Duration::from_secs(30)).await;
        for _ in 0..3 {
            assert_eq!(seen(&boxed).await.status, 200, "{algorithm}");
        }
        assert_eq!(seen(&boxed).await.status, 429, "{algorithm}: held from now on");
        let mut compared = 0;
        while compared < 5 {
            let before = seen(&plain).await;
            let from_box = seen(&boxed).await;
            let after = seen(&plain).await;
            assert_eq!(before.status, 429, "{algorithm}");
            if before == after {
                assert_eq!(from_box, before, "{algorithm}");
                compared += 1;
            }
        }
        let refused = seen(&boxed).await;
        let header = |name: &str| refused.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(header("x-ratelimit-remaining"), Some("0"), "{algorithm}");
        assert!(header("retry-after").is_some(), "{algorithm}");
    }
}

/// `reset` through the exported interface releases the caller at once on
/// the harness that made it, whichever window the hold was made in; one made
/// elsewhere (here FLUSHALL) is seen when the hold ends, as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_here_takes_effect_at_once_one_elsewhere_when_the_hold_ends() {
    for algorithm in ALGORITHMS {
        let server = RedisServer::start();
        let mut redis = server.connection().await;
        let served = limited(&server, algorithm, 100).await;
        let plain = limited(&server, algorithm, 0).await;
        within_one_window(3600, Duration::from_secs(30)).await;
        for _ in 0..3 {
            seen(&served).await;
        }
        assert_eq!(seen(&served).await.status, 429, "{algorithm}");

        // Elsewhere: the box still denies, though Redis would allow.
        let _: () = redis::cmd("FLUSHALL").query_async(&mut redis).await.unwrap();
        assert_eq!(
            seen(&served).await.status,
            429,
            "{algorithm}: held past a flush elsewhere"
        );
        assert_eq!(seen(&plain).await.status, 200, "{algorithm}: Redis allows");
        for _ in 0..2 {
            seen(&plain).await;
        }
        assert_eq!(seen(&plain).await.status, 429, "{algorithm}");

        // Here: released at once.
        let (mut store, instance) = served.harness.instantiate().await.unwrap();
        let limiter = instance.edge_cache_rate_limit();
        let policy = policy(algorithm, 3, 3600);
        limiter
            .call_reset(&mut store, LOOPBACK_CALLER, &policy)
            .await
            .unwrap()
            .unwrap();
        let after_reset = seen(&served).await;
        assert_eq!(after_reset.status, 200, "{algorithm}: the reset took effect at once");
        let remaining = after_reset
            .headers
            .iter()
            .find(|(name, _)| name == "x-ratelimit-remaining")
            .map(|(_, value)| value.as_str());
        assert_eq!(remaining, Some("2"), "{algorithm}");
    }
}

/// Through the exports: a denial is held for any cost at least as large,
/// a hold ends when the decision can change (the retry-after it gave), and
/// the next check then reaches Redis and is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_ends_when_the_decision_can_change() {
    let server = RedisServer::start();
    let mut redis = server.connection().await;
    let served = limited(&server, "fixed-window", 100).await;
    let (mut store, instance) = served.harness.instantiate().await.unwrap();
    let limiter = instance.edge_cache_rate_limit();
    for algorithm in ALGORITHMS {
        // One unit per 2 s: the decision changes within a window.
        let policy = policy(algorithm, 2, 2);
        let key = format!("roll-{algorithm}");
        let mut check = async |cost: u32| {
            limiter
                .call_check(&mut store, &key, &policy, cost)
                .await
                .unwrap()
                .unwrap()
        };
        // Spend until denied: a window may roll in between, never twice.
        let mut denied = check(2).await;
        while denied.allowed {
            denied = check(1).await;
        }
        let after_denial = commands_run(&mut redis).await;
        for cost in [1, 2, 1] {
            let held = check(cost).await;
            assert!(!held.allowed, "{algorithm}: cost {cost}");
            if cost == 1 {
                assert!(held.retry_after_ms <= denied.retry_after_ms, "{algorithm}");
            }
        }
        assert_eq!(commands_run(&mut redis).await, after_denial, "{algorithm}: held");

        tokio::time::sleep(Duration::from_millis(denied.retry_after_ms)).await;
        let allowed = check(1).await;
        assert!(allowed.allowed, "{algorithm}: allowed once the retry-after passed");
        assert!(commands_run(&mut redis).await > after_denial, "{algorithm}: by Redis");
    }
}
