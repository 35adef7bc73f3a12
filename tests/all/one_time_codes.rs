//! `examples/one-time-codes`, a function written only with the SDK, built
//! for wasm32-wasip2 and served by the harness: its imports are the SDK's
//! world, and its codes work end to end on the embedded store and on Redis.

use edge_cache_tests::{ENGINE, RedisServer, Served, WorldNames, config};
use std::collections::BTreeSet;
use std::sync::LazyLock;
use wasmtime::component::Component;

const BUILT: &str = env!("ONE_TIME_CODES_COMPONENT");

static COMPONENT: LazyLock<Component> =
    LazyLock::new(|| Component::from_file(&ENGINE, BUILT).expect("the example compiles"));

#[test]
fn it_imports_the_cache_telemetry_and_penalty_box_and_serves_http() {
    let world = WorldNames::of(&std::fs::read(BUILT).unwrap());
    assert_eq!(
        world.own_imports(),
        BTreeSet::from([
            "edge:cache/cache@0.1.0",
            "edge:cache/penalty-box@0.1.0",
            "edge:cache/telemetry@0.1.0"
        ])
    );
    assert_eq!(
        world.exports,
        BTreeSet::from(["wasi:http/incoming-handler@0.2.12".to_owned()])
    );
}

async fn codes_verify_once(served: &Served) {
    let post = |path: &str, body: &str| served.client.post(served.url(path)).body(body.to_owned()).send();
    let issued = post("/codes/alice@example.com", "").await.unwrap();
    assert_eq!(issued.status(), 201);
    assert_eq!(issued.headers()["ratelimit-policy"], "\"codes\";q=30;w=60");
    let body: serde_json::Value = issued.json().await.unwrap();
    let code = body["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 6);

    let wrong = if code == "000000" { "111111" } else { "000000" };
    let refused = post("/codes/alice@example.com/verify", wrong).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    assert_eq!(
        post("/codes/alice@example.com/verify", &code).await.unwrap().status(),
        200
    );
    assert_eq!(
        post("/codes/alice@example.com/verify", &code).await.unwrap().status(),
        403,
        "a code verifies once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_verify_once_on_the_embedded_store() {
    let served = Served::start_component(config(Default::default()), &COMPONENT).await;
    codes_verify_once(&served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_verify_once_on_redis() {
    let server = RedisServer::start();
    let served = Served::start_component(config(server.store()), &COMPONENT).await;
    codes_verify_once(&served).await;
    let mut redis = server.connection().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg("edge-cache:otp:code:alice@example.com")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!exists, "a verified code is gone from the store");
}
