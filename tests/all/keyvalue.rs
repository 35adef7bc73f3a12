//! A component written for the standard `wasi:keyvalue`, as a Spin or
//! wasmCloud user writes one (`tests/guests/keyvalue`: `wasi:keyvalue` and
//! `wasi:http` only), served by the harness over HTTP on each store.

use edge_cache_harness::keyspace::Limits;
use edge_cache_harness::keyvalue::bucket_scope;
use edge_cache_harness::{Harness, HarnessConfig, StoreConfig};
use edge_cache_tests::{ENGINE, RedisCluster, RedisServer, Served, WorldNames, config};
use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;
use wasmtime::component::Component;

const KEYVALUE_GUEST: &str = env!("KEYVALUE_GUEST");

static NOTES: LazyLock<Component> =
    LazyLock::new(|| Component::from_file(&ENGINE, KEYVALUE_GUEST).expect("the keyvalue guest compiles"));

/// The largest value these tests' harnesses accept: small enough to send
/// a larger one in a request body.
const MAX_VALUE: usize = 1000;

fn notes_config(store: StoreConfig) -> HarnessConfig {
    HarnessConfig {
        limits: Limits {
            max_value_bytes: MAX_VALUE,
            ..Limits::default()
        },
        ..config(store)
    }
}

async fn call(served: &Served, method: &str, path: &str, body: &str) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = served
        .client
        .request(method, served.url(path))
        .body(body.to_owned())
        .send()
        .await
        .expect("the harness answers");
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Everything the app does, on whatever store `served` has.
async fn the_app_works(served: &Served) {
    // The classic counter, in the default bucket (opened as "").
    assert_eq!(call(served, "GET", "/hits", "").await, (200, "1".into()));
    assert_eq!(call(served, "GET", "/hits", "").await, (200, "2".into()));
    assert_eq!(call(served, "GET", "/kv/default/hits", "").await, (200, "2".into()));

    // store
    assert_eq!(call(served, "GET", "/kv/notes/alpha", "").await, (404, "absent".into()));
    assert_eq!(call(served, "PUT", "/kv/notes/alpha", "first").await.0, 204);
    assert_eq!(call(served, "GET", "/kv/notes/alpha", "").await, (200, "first".into()));
    assert_eq!(
        call(served, "GET", "/kv/notes/alpha?exists", "").await,
        (200, "true".into())
    );
    assert_eq!(
        call(served, "GET", "/kv/other/alpha?exists", "").await,
        (200, "false".into())
    );
    assert_eq!(call(served, "PUT", "/kv/notes/alpha", "second").await.0, 204);
    assert_eq!(call(served, "GET", "/kv/notes/alpha", "").await, (200, "second".into()));

    // atomics
    assert_eq!(
        call(served, "POST", "/incr/counters/visits?by=5", "").await,
        (200, "5".into())
    );
    assert_eq!(
        call(served, "POST", "/incr/counters/visits", "").await,
        (200, "6".into())
    );
    assert_eq!(call(served, "GET", "/kv/counters/visits", "").await, (200, "6".into()));

    // batch
    assert_eq!(
        call(served, "POST", "/batch/notes", "b1=one\nb2=two\nb3=three").await.0,
        204
    );
    assert_eq!(
        call(served, "GET", "/batch/notes?keys=b1,nope,b3", "").await,
        (200, "b1=one\nnope (none)\nb3=three".into())
    );
    assert_eq!(call(served, "DELETE", "/batch/notes?keys=b1,nope,b3", "").await.0, 204);
    assert_eq!(
        call(served, "GET", "/batch/notes?keys=b1,b2,b3", "").await,
        (200, "b1 (none)\nb2=two\nb3 (none)".into())
    );

    // list-keys, through every page
    assert_eq!(
        call(served, "GET", "/keys/notes", "").await,
        (200, "alpha\nb2\n".into())
    );
    let lines: Vec<String> = (0..1000).map(|n| format!("n{n:03}=v")).collect();
    assert_eq!(call(served, "POST", "/batch/many", &lines.join("\n")).await.0, 204);
    let response = served.get("/keys/many").await;
    let pages: u32 = response.headers()["x-pages"].to_str().unwrap().parse().unwrap();
    let listed = response.text().await.unwrap();
    let expected: BTreeSet<String> = (0..1000).map(|n| format!("n{n:03}")).collect();
    assert_eq!(listed.lines().map(str::to_owned).collect::<BTreeSet<_>>(), expected);
    assert!(pages >= 2, "1000 keys in one page: the cursor was not exercised");

    assert_eq!(call(served, "DELETE", "/kv/notes/alpha", "").await.0, 204);
    assert_eq!(call(served, "GET", "/kv/notes/alpha", "").await.0, 404);
    assert_eq!(call(served, "DELETE", "/kv/notes/alpha", "").await.0, 204);

    // Bad input: the WIT's error with the host's reason, never a trap.
    let long_key = "k".repeat(600);
    let (status, body) = call(served, "PUT", &format!("/kv/notes/{long_key}"), "v").await;
    assert_eq!(status, 500);
    assert!(body.contains("a key has at most 512 bytes, this one has 600"), "{body}");
    let (status, body) = call(served, "PUT", "/kv/notes/big", &"x".repeat(MAX_VALUE + 1)).await;
    assert_eq!(
        (status, body.as_str()),
        (500, "other: value too large: the limit is 1000 bytes")
    );
    let oversize_batch = format!("fits=1\nbig={}", "x".repeat(MAX_VALUE + 1));
    assert_eq!(call(served, "POST", "/batch/notes", &oversize_batch).await.0, 500);
    assert_eq!(
        call(served, "GET", "/kv/notes/fits", "").await.0,
        404,
        "a batch with a bad entry writes nothing"
    );
    assert_eq!(call(served, "PUT", "/kv/notes/text", "abc").await.0, 204);
    let (status, body) = call(served, "POST", "/incr/notes/text", "").await;
    assert_eq!(status, 500);
    assert!(body.contains("not a decimal 64-bit integer"), "{body}");
    let (status, body) = call(served, "POST", &format!("/incr/notes/n?by={}", u64::MAX), "").await;
    assert_eq!(status, 500);
    assert!(body.contains("signed 64-bit"), "{body}");
    for bad_bucket in ["bad:name", &"b".repeat(65), "with%20space"] {
        assert_eq!(
            call(served, "GET", &format!("/kv/{bad_bucket}/k"), "").await,
            (404, "no-such-store".into()),
            "{bad_bucket}"
        );
    }
    // The instance survived all of it.
    assert_eq!(call(served, "GET", "/hits", "").await, (200, "3".into()));
    assert_eq!(served.harness.metrics().guest_failures.get(), 0);

    // The same data, as the host's cache sees it: in the namespace, under
    // the bucket's prefix, out of reach of edge:cache keys.
    let cache = served.harness.cache();
    assert_eq!(
        cache.within(&bucket_scope("notes")).get("b2").await.unwrap().as_deref(),
        Some(&b"two"[..])
    );
    assert_eq!(cache.get("b2").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_keyvalue_app_runs_on_redis() {
    let server = RedisServer::start();
    let served = Served::start_component(notes_config(server.store()), &NOTES).await;
    the_app_works(&served).await;

    let mut redis = server.connection().await;
    let value: Option<String> = redis::cmd("GET")
        .arg("edge-cache:\u{1f}kv:notes:b2")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("two"), "the layout README.md documents");
    for counter in [
        "edge-cache:\u{1f}kv:default:hits",
        "edge-cache:\u{1f}kv:counters:visits",
    ] {
        let ttl: i64 = redis::cmd("TTL").arg(counter).query_async(&mut redis).await.unwrap();
        assert_eq!(ttl, -1, "{counter:?}: increment forces no expiry");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_keyvalue_app_runs_on_the_embedded_store() {
    let served = Served::start_component(notes_config(StoreConfig::default()), &NOTES).await;
    the_app_works(&served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_keyvalue_app_runs_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let served = Served::start_component(notes_config(cluster.store()), &NOTES).await;
    the_app_works(&served).await;
    let nodes_with_notes = cluster
        .keys_by_node()
        .iter()
        .filter(|keys| keys.iter().any(|key| key.starts_with("edge-cache:\u{1f}kv:many:")))
        .count();
    assert!(
        nodes_with_notes >= 2,
        "a bucket spreads over the cluster, and list-keys visited every node"
    );
}

/// `edge-cache serve --component app.wasm` takes a file: the same start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_a_wasi_keyvalue_component_from_a_file() {
    let harness = Harness::start(&HarnessConfig {
        component: Some(KEYVALUE_GUEST.into()),
        ..config(StoreConfig::default())
    })
    .await
    .expect("a component importing wasi:keyvalue and wasi:http only is served");
    let served = Served::serve(harness).await;
    assert_eq!(call(&served, "GET", "/hits", "").await, (200, "1".into()));
    let error = served
        .harness
        .instantiate()
        .await
        .err()
        .expect("no edge-function exports");
    assert!(error.to_string().contains("edge-function world"), "{error}");
}

/// A Redis ACL that does not grant the namespace is `access-denied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_acl_refuses_is_access_denied() {
    let server = RedisServer::start_with(&["--user", "default", "on", "nopass", "~edge-cache:*", "+@all"]);
    let served = Served::start_component(
        HarnessConfig {
            namespace: "other".into(),
            ..notes_config(server.store_with_timeout(Duration::from_secs(3)))
        },
        &NOTES,
    )
    .await;
    assert_eq!(
        call(&served, "GET", "/kv/notes/k", "").await,
        (403, "access-denied".into())
    );
    assert_eq!(call(&served, "GET", "/hits", "").await, (403, "access-denied".into()));
}

#[test]
fn the_app_imports_wasi_keyvalue_and_wasi_only() {
    let world = WorldNames::of(&std::fs::read(KEYVALUE_GUEST).expect("the keyvalue guest was built"));
    assert!(world.own_imports().is_empty(), "{:?}", world.own_imports());
    for interface in ["store", "atomics", "batch"] {
        let name = format!("wasi:keyvalue/{interface}@0.2.0-draft");
        assert!(world.imports.contains(&name), "{name} not in {:?}", world.imports);
    }
    assert!(
        !world.imports.iter().any(|name| name.starts_with("edge:")),
        "{:?}",
        world.imports
    );
    assert_eq!(
        world.exports,
        BTreeSet::from(["wasi:http/incoming-handler@0.2.12".to_owned()])
    );
}
