//! The guest as a building block: an app importing `edge:cache/profiles` and
//! `edge:cache/rate-limit` (examples/gateway), composed with the guest by
//! wac-graph, is served by the harness unchanged.

use edge_cache_harness::BUILT_GUEST;
use edge_cache_harness::compose;
use edge_cache_tests::{ENGINE, RedisServer, Served, WorldNames, config};
use redis::AsyncCommands;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::LazyLock;
use wasmtime::component::Component;

static COMPOSED_BYTES: LazyLock<Vec<u8>> = LazyLock::new(|| {
    compose::plug(Path::new(env!("GATEWAY_COMPONENT")), &[Path::new(BUILT_GUEST)]).expect("the gateway composes")
});

static COMPOSED: LazyLock<Component> =
    LazyLock::new(|| Component::new(&ENGINE, &*COMPOSED_BYTES).expect("the composition compiles"));

#[test]
fn the_composition_imports_only_the_cache_the_origin_telemetry_the_penalty_box_and_wasi() {
    let world = WorldNames::of(&COMPOSED_BYTES);
    assert_eq!(
        world.own_imports(),
        BTreeSet::from([
            "edge:cache/cache@0.1.0",
            "edge:cache/origin@0.1.0",
            "edge:cache/penalty-box@0.1.0",
            "edge:cache/telemetry@0.1.0"
        ])
    );
    assert_eq!(
        world.exports,
        BTreeSet::from(["wasi:http/incoming-handler@0.2.12".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_composed_gateway_serves_its_routes_on_redis() {
    let server = RedisServer::start();
    let served = Served::start_component(config(server.store()), &COMPOSED).await;
    let get = |key: &str, id: &str| {
        let mut request = served.client.get(served.url(&format!("/api/users/{id}")));
        if !key.is_empty() {
            request = request.header("x-api-key", key);
        }
        request.send()
    };

    assert_eq!(get("", "alice").await.unwrap().status(), 401);

    let first = get("k1", "alice").await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-cache"], "miss");
    assert_eq!(first.text().await.unwrap(), r#"{"id":"alice","name":"Alice Liddell"}"#);
    let second = get("k1", "alice").await.unwrap();
    assert_eq!(
        (
            second.headers()["x-cache"].to_str().unwrap(),
            second.headers()["x-ratelimit-remaining"].to_str().unwrap()
        ),
        ("hit", "1")
    );
    assert_eq!(
        served.harness.origin().reads(),
        1,
        "the guest's cache serves the gateway"
    );

    // GCRA, 10 a minute with bursts of 3: the third passes, the fourth waits
    // one emission interval (6 s).
    assert_eq!(get("k1", "alice").await.unwrap().status(), 200);
    let limited = get("k1", "alice").await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((5..=6).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        get("k2", "alice").await.unwrap().status(),
        200,
        "another key has its own bucket"
    );
    assert_eq!(get("k2", "nobody").await.unwrap().status(), 404);

    let mut redis = server.connection().await;
    let keys: Vec<String> = redis.keys("*").await.unwrap();
    assert!(keys.contains(&"edge-cache:profile:v2:alice".to_owned()), "{keys:?}");
    let gcra: Vec<_> = keys
        .iter()
        .filter(|key| key.contains(":gateway:gcra:10:60:3"))
        .collect();
    assert_eq!(gcra.len(), 2, "one bucket per API key: {keys:?}");
    assert!(
        gcra.iter().all(|key| key.starts_with("edge-cache:rl:{gateway:")),
        "{gcra:?}"
    );
}

#[tokio::test]
async fn a_component_without_the_edge_exports_serves_http_but_not_exports() {
    let served = Served::start_component(config(Default::default()), &COMPOSED).await;
    let error = served
        .harness
        .instantiate()
        .await
        .err()
        .expect("no profiles export to call");
    assert!(error.to_string().contains("edge-function world"), "{error}");
}
