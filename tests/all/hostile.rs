//! Hostile and overloaded clients: stalled bodies, slow heads, floods of
//! connections and requests, invented API keys and forged forwarding
//! headers. The harness keeps serving everyone else and answers every
//! request it gives up on with a real status, never a 500. Small scale here;
//! `bench/chaos` runs the same at full scale (RELIABILITY.md).

use edge_cache_harness::caller::{ApiKeys, TrustedProxies, digest_hex, parse_network};
use edge_cache_harness::engine::GuestLimits;
use edge_cache_harness::listener::ConnectionLimits;
use edge_cache_harness::origin::OriginConfig;
use edge_cache_harness::overload::QueueLimits;
use edge_cache_harness::{HarnessConfig, ServingConfig};
use edge_cache_tests::Served;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn guest_env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A connection of the test's own that has sent `bytes` and waits.
async fn send_raw(served: &Served, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(served.address).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// What the server sent before it closed the connection (or `within`
/// passed), as text.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

/// A client that opens a new connection for every request.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

/// A GET that must succeed within `within`.
async fn probe(client: &reqwest::Client, served: &Served, within: Duration) {
    let started = Instant::now();
    let response = tokio::time::timeout(within, client.get(served.url("/profiles/alice")).send())
        .await
        .unwrap_or_else(|_| panic!("a probe was not answered within {within:?}"))
        .expect("the probe is answered");
    assert_eq!(response.status(), 200, "after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_hold_no_instance_and_end_with_408() {
    let timeout = Duration::from_millis(1000);
    let served = Served::start(HarnessConfig {
        guest_env: guest_env(&[("RATE_LIMIT_REQUESTS", "1000")]),
        guest_limits: GuestLimits {
            max_instances: 4,
            request_timeout: timeout,
            ..GuestLimits::default()
        },
        ..HarnessConfig::default()
    })
    .await;
    let started = Instant::now();
    let head = b"PUT /profiles/slow HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"id\":\"slo";
    let mut stalled = Vec::new();
    for _ in 0..12 {
        stalled.push(send_raw(&served, head).await);
    }
    // Three times as many stalled bodies as instances: everyone else is
    // still served at once.
    let client = fresh_connections();
    for _ in 0..10 {
        probe(&client, &served, Duration::from_secs(1)).await;
    }
    for stream in &mut stalled {
        let answer = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
    }
    let took = started.elapsed();
    assert!(took < timeout + Duration::from_millis(1500), "answered after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_bound_slow_heads_give_way() {
    let served = Served::start(HarnessConfig {
        guest_env: guest_env(&[("RATE_LIMIT_REQUESTS", "1000")]),
        serving: ServingConfig {
            connections: ConnectionLimits {
                max_connections: 16,
                ..ConnectionLimits::default()
            },
            ..ServingConfig::default()
        },
        ..HarnessConfig::default()
    })
    .await;
    // Forty connections trickle a head, more than the bound holds.
    let mut slow = Vec::new();
    for _ in 0..40 {
        slow.push(send_raw(&served, b"GET /profiles/alice HTTP/1.1\r\nhost: t\r\nx-slow: ").await);
    }
    let client = fresh_connections();
    for _ in 0..10 {
        probe(&client, &served, Duration::from_secs(2)).await;
    }
    assert!(served.harness.connections().open() <= 16);
    let metrics = served.harness.metrics().render();
    let evicted = metric(&metrics, "edge_cache_connections_closed_total{reason=\"evicted\"}");
    assert!(evicted >= 24.0, "{evicted} evicted\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_connections_are_closed_at_their_timeouts() {
    let served = Served::start(HarnessConfig {
        serving: ServingConfig {
            connections: ConnectionLimits {
                header_read_timeout: Duration::from_millis(300),
                keep_alive_timeout: Duration::from_millis(500),
                ..ConnectionLimits::default()
            },
            ..ServingConfig::default()
        },
        ..HarnessConfig::default()
    })
    .await;
    let started = Instant::now();
    let mut trickling = send_raw(&served, b"GET /profiles/alice HTTP/1.1\r\nhost:").await;
    assert_eq!(read_until_closed(&mut trickling, Duration::from_secs(3)).await, "");
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(300) && closed_after < Duration::from_secs(2),
        "closed after {closed_after:?}"
    );

    let mut idle = send_raw(&served, b"GET /profiles/alice HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let started = Instant::now();
    let answer = read_until_closed(&mut idle, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(500) && closed_after < Duration::from_secs(2),
        "closed after {closed_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_503_and_retry_after_never_500() {
    let served = Served::start(HarnessConfig {
        guest_env: guest_env(&[("RATE_LIMIT_REQUESTS", "1000")]),
        // Every lookup of an unknown id reads the origin: 200 ms an instance.
        origin: OriginConfig {
            latency: Duration::from_millis(200),
            ..OriginConfig::default()
        },
        guest_limits: GuestLimits {
            max_instances: 2,
            ..GuestLimits::default()
        },
        serving: ServingConfig {
            queue: QueueLimits {
                max_queued: 4,
                queue_timeout: Duration::from_millis(300),
            },
            ..ServingConfig::default()
        },
        ..HarnessConfig::default()
    })
    .await;
    let requests: Vec<_> = (0..30)
        .map(|n| {
            let request = served.client.get(served.url(&format!("/profiles/nobody{n}")));
            tokio::spawn(async move { request.send().await.unwrap() })
        })
        .collect();
    let (mut served_count, mut shed) = (0, 0);
    for request in requests {
        let response = request.await.unwrap();
        match response.status().as_u16() {
            404 => served_count += 1,
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                assert_eq!(response.headers()["content-type"], "application/problem+json");
                shed += 1;
            }
            other => panic!("{other}: {}", response.text().await.unwrap()),
        }
    }
    assert!(served_count >= 2 && shed >= 10, "{served_count} served, {shed} shed");
    let metrics = served.harness.metrics().render();
    assert_eq!(
        metric(&metrics, "edge_cache_requests_shed_total"),
        shed as f64,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_api_keys_get_no_quota_of_their_own() {
    let served = Served::start(HarnessConfig {
        guest_env: guest_env(&[("RATE_LIMIT_REQUESTS", "3"), ("RATE_LIMIT_WINDOW_SECONDS", "3600")]),
        serving: ServingConfig {
            api_keys: ApiKeys::from_digests([digest_hex(b"issued-key").as_str()]).unwrap(),
            ..ServingConfig::default()
        },
        ..HarnessConfig::default()
    })
    .await;
    let mut allowed = 0;
    for n in 0..20 {
        let response = served
            .client
            .get(served.url("/profiles/alice"))
            .header("x-api-key", format!("invented-{n}-{}", std::process::id()))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => allowed += 1,
            401 => {
                assert_eq!(response.headers()["content-type"], "application/problem+json");
                assert!(response.headers().contains_key("www-authenticate"));
            }
            other => panic!("{other}"),
        }
    }
    assert!(allowed <= 3, "{allowed} allowed");
    // Nothing was counted for them: the address still has its 3.
    for _ in 0..3 {
        assert_eq!(served.get("/profiles/alice").await.status(), 200);
    }
    assert_eq!(served.get("/profiles/alice").await.status(), 429);
    // An issued key has a quota of its own.
    let keyed = served
        .client
        .get(served.url("/profiles/alice"))
        .header("x-api-key", "issued-key")
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 200);
}

async fn get_from(served: &Served, forwarded_for: &str) -> u16 {
    served
        .client
        .get(served.url("/profiles/alice"))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let limit = guest_env(&[("RATE_LIMIT_REQUESTS", "1"), ("RATE_LIMIT_WINDOW_SECONDS", "3600")]);
    // Not behind a trusted proxy: a forged header changes nothing.
    let direct = Served::start(HarnessConfig {
        guest_env: limit.clone(),
        ..HarnessConfig::default()
    })
    .await;
    assert_eq!(get_from(&direct, "203.0.113.1").await, 200);
    assert_eq!(get_from(&direct, "203.0.113.2").await, 429);

    // Behind one (the test is the proxy, on loopback): each client its own.
    let proxied = Served::start(HarnessConfig {
        guest_env: limit,
        serving: ServingConfig {
            trusted_proxies: TrustedProxies::new(vec![parse_network("127.0.0.0/8").unwrap()]),
            ..ServingConfig::default()
        },
        ..HarnessConfig::default()
    })
    .await;
    assert_eq!(get_from(&proxied, "203.0.113.1").await, 200);
    assert_eq!(get_from(&proxied, "203.0.113.1").await, 429);
    assert_eq!(get_from(&proxied, "203.0.113.2").await, 200);
    // A client forging a hop left of the proxy's entry gains nothing.
    assert_eq!(get_from(&proxied, "198.51.100.9, 203.0.113.2").await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_host_gets_a_400_problem() {
    let served = Served::start(HarnessConfig::default()).await;
    let mut stream = send_raw(&served, b"GET /profiles/alice HTTP/1.0\r\n\r\n").await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    assert!(answer.contains("urn:edge-cache:problem:missing-host"), "{answer}");
    // Where hyper answers itself, its status stands.
    let huge = format!("GET /{} HTTP/1.1\r\nhost: t\r\n\r\n", "a".repeat(70_000));
    let mut stream = send_raw(&served, huge.as_bytes()).await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded() {
    let served = Served::start(HarnessConfig {
        serving: ServingConfig {
            bodies: edge_cache_harness::BodyLimits {
                max_body_bytes: 1000,
                ..Default::default()
            },
            ..ServingConfig::default()
        },
        ..HarnessConfig::default()
    })
    .await;
    let response = served.put("/profiles/alice", &"x".repeat(1001)).await;
    assert_eq!(response.status(), 413);
    let body = format!("{{\"id\":\"alice\",\"name\":\"{}\"}}", "A".repeat(900));
    assert_eq!(served.put("/profiles/alice", &body).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_instances_go_when_idle() {
    let served = Served::start(HarnessConfig {
        guest_env: guest_env(&[("RATE_LIMIT_REQUESTS", "1000")]),
        guest_limits: GuestLimits {
            warm_idle: Duration::from_millis(200),
            ..GuestLimits::default()
        },
        ..HarnessConfig::default()
    })
    .await;
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let request = fresh_connections().get(served.url("/profiles/alice"));
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert!(served.harness.warm_instances() >= 1);
    let deadline = Instant::now() + Duration::from_secs(3);
    while served.harness.warm_instances() > 0 {
        assert!(Instant::now() < deadline, "warm instances were kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_request_already_sent() {
    let mut served = Served::start(HarnessConfig {
        guest_env: guest_env(&[("RATE_LIMIT_REQUESTS", "1000")]),
        origin: OriginConfig {
            latency: Duration::from_millis(300),
            ..OriginConfig::default()
        },
        ..HarnessConfig::default()
    })
    .await;
    // A keep-alive connection that served one request and sits idle.
    let mut idle = send_raw(&served, b"GET /profiles/nobody HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let mut first = [0; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 404");
    let mut rest = vec![0; 4096];
    let _ = idle.read(&mut rest).await.unwrap();
    // Requests in flight (each reads the slow origin).
    let in_flight: Vec<_> = (0..5)
        .map(|n| {
            let request = fresh_connections().get(served.url(&format!("/profiles/gone{n}")));
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A request written on the idle connection just before the stop.
    idle.write_all(b"GET /profiles/alice HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    served.stop();
    for request in in_flight {
        let response = request.await.unwrap().expect("answered, not cut");
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()["connection"], "close");
        response.text().await.expect("the whole body");
    }
    let answer = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    // The listener is closed: new connections are refused.
    served.stopped().await;
    assert!(TcpStream::connect(served.address).await.is_err());
}

/// The value of one sample in an OpenMetrics exposition.
fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}
