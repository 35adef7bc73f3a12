//! Startup errors say what is wrong, and never print a password.

use edge_cache_harness::store::redis::RedisConfig;
use edge_cache_harness::{Harness, HarnessConfig, StartupError, StoreConfig};
use std::time::Duration;

/// A configuration that refuses to start without Redis
/// (`--require-redis`).
fn redis(url: &str) -> HarnessConfig {
    HarnessConfig {
        store: StoreConfig::Redis(RedisConfig {
            connect_timeout: Duration::from_millis(300),
            required: true,
            ..RedisConfig::new(url)
        }),
        ..HarnessConfig::default()
    }
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_error(config: HarnessConfig) -> String {
    match Harness::start(&config).await {
        Ok(_) => panic!("the harness started"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn unreachable_redis_stops_a_start_that_requires_it_without_the_password() {
    let port = closed_port();
    let started = std::time::Instant::now();
    let message = start_error(redis(&format!("redis://user:hunter2@127.0.0.1:{port}"))).await;
    assert!(
        message.starts_with("cannot reach Redis at redis://user:***@127.0.0.1:"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unreachable_redis_does_not_stop_a_start_that_does_not_require_it() {
    let mut config = redis(&format!("redis://127.0.0.1:{}", closed_port()));
    let StoreConfig::Redis(redis) = &mut config.store else {
        unreachable!()
    };
    redis.required = false;
    let harness = Harness::start(&config).await.expect("the harness starts without Redis");
    let reason = harness.cache().store().readiness().unwrap_err();
    assert!(reason.starts_with("Redis at redis://127.0.0.1:"), "{reason}");
}

#[tokio::test]
async fn secrets_in_every_url_form_stay_out_of_errors() {
    let port = closed_port();
    for (url, shown) in [
        (
            "redis+unix:///nonexistent/redis.sock?pass=hunter2".to_owned(),
            "redis+unix:///nonexistent/redis.sock?pass=***",
        ),
        (
            "unix:///nonexistent/redis.sock?user=edge&pass=hunter2".to_owned(),
            "unix:///nonexistent/redis.sock?user=edge&pass=***",
        ),
        (
            format!("rediss://edge:hunter2@127.0.0.1:{port}"),
            "rediss://edge:***@127.0.0.1:",
        ),
    ] {
        let message = start_error(redis(&url)).await;
        assert!(message.contains(shown), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[tokio::test]
async fn bad_redis_url_is_reported() {
    let message = start_error(redis("http://:hunter2@example")).await;
    assert!(message.starts_with("invalid Redis URL"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
async fn missing_component_is_reported() {
    let config = HarnessConfig {
        component: Some("/nonexistent/edge.wasm".into()),
        ..HarnessConfig::default()
    };
    let error = Harness::start(&config).await.err().expect("no component, no harness");
    assert!(matches!(error, StartupError::ComponentMissing { .. }));
    assert!(error.to_string().contains("/nonexistent/edge.wasm"), "{error}");
}

#[tokio::test]
async fn a_non_component_file_is_reported() {
    let path = std::env::temp_dir().join(format!("edge-cache-not-a-component-{}.wasm", std::process::id()));
    std::fs::write(&path, b"definitely not wasm").unwrap();
    let config = HarnessConfig {
        component: Some(path.clone()),
        ..HarnessConfig::default()
    };
    let error = Harness::start(&config).await.err().expect("garbage is not a component");
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(error, StartupError::ComponentInvalid { .. }), "{error}");
}

#[tokio::test]
async fn bad_namespace_is_reported() {
    let config = HarnessConfig {
        namespace: "a:b".into(),
        ..HarnessConfig::default()
    };
    let message = start_error(config).await;
    assert!(message.contains("invalid namespace"), "{message}");
}

#[tokio::test]
async fn bad_guest_settings_stop_the_start() {
    for (name, value) in [
        ("RATE_LIMITS", "*/*=token-bucket:1/1s"),
        ("PROFILE_TTL_SECONDS", "soon"),
    ] {
        let config = HarnessConfig {
            guest_env: vec![(name.into(), value.into())],
            ..HarnessConfig::default()
        };
        let message = start_error(config).await;
        assert!(
            message.starts_with("invalid edge function setting: ") && message.contains(name),
            "{message}"
        );
    }
}
