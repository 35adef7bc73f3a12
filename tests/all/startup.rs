//! Startup errors say what is wrong, and never print a password.

use edge_cache_harness::backend::redis::RedisConfig;
use edge_cache_harness::{BackendConfig, Harness, HarnessConfig, StartupError};
use std::time::Duration;

fn redis(url: &str) -> HarnessConfig {
    HarnessConfig {
        backend: BackendConfig::Redis(RedisConfig {
            connect_timeout: Duration::from_millis(300),
            ..RedisConfig::new(url)
        }),
        ..HarnessConfig::default()
    }
}

async fn start_error(config: HarnessConfig) -> String {
    match Harness::start(&config).await {
        Ok(_) => panic!("the harness started"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn unreachable_redis_is_reported_without_the_password() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
