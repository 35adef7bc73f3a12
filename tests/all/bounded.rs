//! A guest that loops, hoards memory, panics or never answers is contained:
//! its request gets a 5xx problem body and everything else keeps working.
//! Instances serve a bounded number of requests, and one that failed never
//! serves another.

use edge_cache_harness::HarnessConfig;
use edge_cache_harness::engine::GuestLimits;
use edge_cache_tests::{ENGINE, Served};
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use wasmtime::component::Component;

static MISBEHAVING: LazyLock<Component> =
    LazyLock::new(|| Component::from_file(&ENGINE, env!("MISBEHAVING_GUEST")).expect("the misbehaving guest compiles"));

async fn serve_misbehaving() -> Served {
    serve_misbehaving_reusing(GuestLimits::default().instance_reuse).await
}

async fn serve_misbehaving_reusing(instance_reuse: u32) -> Served {
    let guest_limits = GuestLimits {
        request_timeout: Duration::from_millis(500),
        instance_reuse,
        ..GuestLimits::default()
    };
    Served::start_component(
        HarnessConfig {
            guest_limits,
            ..HarnessConfig::default()
        },
        &MISBEHAVING,
    )
    .await
}

async fn problem_status(served: &Served, path: &str) -> (u16, serde_json::Value) {
    let response = served.get(path).await;
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/problem+json", "{path}");
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_stuck_in_a_loop_is_stopped_while_others_are_served() {
    let served = serve_misbehaving().await;
    let looping = {
        let request = served.client.get(served.url("/loop"));
        tokio::spawn(async move {
            let started = Instant::now();
            let response = request.send().await.unwrap();
            (response.status().as_u16(), started.elapsed())
        })
    };
    // While it spins, other requests are answered.
    for _ in 0..20 {
        let response = served.get("/ok").await;
        assert_eq!(response.status(), 200);
    }
    let (status, took) = looping.await.unwrap();
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "stopped after {took:?}"
    );
    let (status, body) = problem_status(&served, "/loop").await;
    assert_eq!(
        (status, body["type"].as_str()),
        (504, Some("urn:edge-cache:problem:deadline-exceeded"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_hoarding_memory_is_stopped_at_its_cap() {
    let served = serve_misbehaving().await;
    let started = Instant::now();
    let (status, body) = problem_status(&served, "/hoard").await;
    assert_eq!(
        (status, body["type"].as_str()),
        (500, Some("urn:edge-cache:problem:guest-failure"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the cap, not the deadline, stopped it"
    );
    assert_eq!(served.get("/ok").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_missing_responses_are_500s() {
    let served = serve_misbehaving().await;
    for path in ["/panic", "/silent", "/panic"] {
        let (status, body) = problem_status(&served, path).await;
        assert_eq!(
            (status, body["type"].as_str()),
            (500, Some("urn:edge-cache:problem:guest-failure")),
            "{path}"
        );
    }
    assert_eq!(served.get("/ok").await.status(), 200);
}

/// How many requests the instance that answers this one has served.
async fn served_by_instance(served: &Served) -> u32 {
    let response = served.get("/count").await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serves_at_most_instance_reuse_requests() {
    let served = serve_misbehaving_reusing(3).await;
    let mut counts = Vec::new();
    for _ in 0..7 {
        counts.push(served_by_instance(&served).await);
    }
    assert_eq!(counts, [1, 2, 3, 1, 2, 3, 1]);

    let served = serve_misbehaving_reusing(1).await;
    for _ in 0..3 {
        assert_eq!(served_by_instance(&served).await, 1, "a fresh instance every time");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_failed_never_serves_again() {
    let served = serve_misbehaving().await;
    assert_eq!(served_by_instance(&served).await, 1);
    assert_eq!(served_by_instance(&served).await, 2);
    for failing in ["/panic", "/silent", "/hoard", "/loop"] {
        let (status, _) = problem_status(&served, failing).await;
        assert!(status >= 500, "{failing}: {status}");
        assert_eq!(served_by_instance(&served).await, 1, "after {failing}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_instance_gets_a_deadline_of_its_own_for_each_request() {
    // The timeout is 500 ms: past its first request's deadline, the same
    // instance still serves the next request in full.
    let served = serve_misbehaving().await;
    assert_eq!(served_by_instance(&served).await, 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(served_by_instance(&served).await, 2);
}
