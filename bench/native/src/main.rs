//! The native alternative to the edge function, as a user would write it
//! without WebAssembly: axum + one redis-rs `ConnectionManager`.
//!
//! It is the baseline of `bench/run`, so it does the same work as the guest
//! on the paths the benchmark drives, with the same Redis keys, values,
//! scripts and responses:
//! - the default fixed-window limit per caller (`RATE_LIMIT_REQUESTS` per
//!   `RATE_LIMIT_WINDOW_SECONDS`, one `incr-by-bounded` script call,
//!   fail-open), with the same headers and 429 problem;
//! - `GET /profiles/{id}`: cache-aside with the guest's JSON envelope; a miss
//!   fills under the same lock key and stores by compare-and-swap.
//!
//! Left out, because the benchmark does not drive them: `PUT`, `RATE_LIMITS`
//! rules, and serving stale entries while one request refreshes (an entry
//! past freshness is simply refilled here).

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use edge_cache_origin::{Origin, OriginConfig};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script, SetExpiry, SetOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The harness's own scripts, so both sides make identical Redis calls.
const INCR_BY_BOUNDED_SCRIPT: &str = include_str!("../../../host-harness/src/store/scripts/incr_by_bounded.lua");
const COMPARE_AND_SWAP_SCRIPT: &str = include_str!("../../../host-harness/src/store/scripts/compare_and_swap.lua");

const LOCK_TTL_SECONDS: u64 = 5;
const POLL_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Parser)]
#[command(
    name = "edge-cache-native",
    about = "The edge function's endpoints as a native axum service"
)]
struct Args {
    #[arg(long, env = "EDGE_CACHE_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    #[arg(long, env = "REDIS_CONNECT_TIMEOUT_MS", default_value_t = 2000)]
    redis_connect_timeout_ms: u64,
    #[arg(long, env = "REDIS_COMMAND_TIMEOUT_MS", default_value_t = 500)]
    redis_command_timeout_ms: u64,
    #[arg(long, env = "EDGE_CACHE_NAMESPACE", default_value = "edge-cache")]
    namespace: String,
    #[arg(long, env = "EDGE_CACHE_ORIGIN_DB")]
    origin_db: Option<PathBuf>,
    #[arg(long, env = "EDGE_CACHE_ORIGIN_LATENCY_MS", default_value_t = 0)]
    origin_latency_ms: u64,
    #[arg(long, env = "PROFILE_TTL_SECONDS", default_value_t = 600)]
    profile_ttl: u64,
    #[arg(long, env = "PROFILE_STALE_SECONDS", default_value_t = 60)]
    profile_stale: u64,
    #[arg(long, env = "PROFILE_NEGATIVE_TTL_SECONDS", default_value_t = 30)]
    profile_negative_ttl: u64,
    #[arg(long, env = "PROFILE_FILL_WAIT_MS", default_value_t = 1000)]
    profile_fill_wait_ms: u64,
    #[arg(long, env = "RATE_LIMIT_REQUESTS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit_requests: u32,
    #[arg(long, env = "RATE_LIMIT_WINDOW_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit_window: u32,
}

struct App {
    redis: ConnectionManager,
    command_timeout: Duration,
    origin: Origin,
    prefix: String,
    limit: u32,
    window_seconds: u32,
    ttl_seconds: u64,
    stale_seconds: u64,
    negative_ttl_seconds: u64,
    fill_wait: Duration,
    incr_by_bounded: Script,
    compare_and_swap: Script,
}

/// The guest's cache entry, byte for byte; like the guest, it keeps the
/// profile as the compact text it answers with.
#[derive(Serialize, Deserialize)]
struct Entry {
    fresh_until: u64,
    compute_ms: u64,
    profile: Option<Box<RawValue>>,
}

struct Decision {
    allowed: bool,
    remaining: u32,
    reset_after_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let command_timeout = Duration::from_millis(args.redis_command_timeout_ms);
    let connect_timeout = Duration::from_millis(args.redis_connect_timeout_ms);
    let client = redis::Client::open(args.redis_url.as_str()).context("invalid REDIS_URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(command_timeout));
    let redis = tokio::time::timeout(connect_timeout * 2, client.get_connection_manager_with_config(config))
        .await
        .context("Redis did not answer in time")?
        .context("cannot connect to Redis")?;
    let origin = Origin::open(&OriginConfig {
        database: args.origin_db,
        latency: Duration::from_millis(args.origin_latency_ms),
    })?;
    let app = Arc::new(App {
        redis,
        command_timeout,
        origin,
        prefix: format!("{}:", args.namespace),
        limit: args.rate_limit_requests,
        window_seconds: args.rate_limit_window,
        ttl_seconds: args.profile_ttl,
        stale_seconds: args.profile_stale,
        negative_ttl_seconds: args.profile_negative_ttl,
        fill_wait: Duration::from_millis(args.profile_fill_wait_ms),
        incr_by_bounded: Script::new(INCR_BY_BOUNDED_SCRIPT),
        compare_and_swap: Script::new(COMPARE_AND_SWAP_SCRIPT),
    });
    let router = Router::new().route("/profiles/{id}", get(get_profile)).with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("edge-cache-native listening on {}", listener.local_addr()?);
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await?;
    Ok(())
}

async fn get_profile(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let decision = app.check_limit(&caller(&headers, peer)).await;
    let mut response = if decision.allowed {
        app.lookup(&id).await
    } else {
        let retry_after = decision.reset_after_ms.div_ceil(1000).max(1);
        let detail = format!(
            "the \"default\" quota allows {} requests per {} s; retry in {retry_after} s",
            app.limit, app.window_seconds
        );
        let mut response = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "quota-exceeded",
            "Too many requests",
            &detail,
        );
        insert(&mut response, "retry-after", retry_after.to_string());
        response
    };
    let reset = decision.reset_after_ms.div_ceil(1000);
    let (limit, window, remaining) = (app.limit, app.window_seconds, decision.remaining);
    insert(
        &mut response,
        "ratelimit-policy",
        format!("\"default\";q={limit};w={window}"),
    );
    insert(
        &mut response,
        "ratelimit",
        format!("\"default\";r={remaining};t={reset}"),
    );
    insert(&mut response, "x-ratelimit-limit", limit.to_string());
    insert(&mut response, "x-ratelimit-remaining", remaining.to_string());
    insert(&mut response, "x-ratelimit-reset", reset.to_string());
    response
}

/// A digest of the API key when there is one, else the client address.
fn caller(headers: &HeaderMap, peer: SocketAddr) -> String {
    match headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim) {
        Some(key) if !key.is_empty() => {
            let digest = Sha256::digest(key.as_bytes());
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("key:{hex}")
        }
        _ => format!("ip:{}", peer.ip()),
    }
}

impl App {
    /// Runs one Redis call under the command deadline.
    async fn redis<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
        Ok(tokio::time::timeout(self.command_timeout, call).await??)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn check_limit(&self, caller: &str) -> Decision {
        let window_ms = u64::from(self.window_seconds) * 1000;
        let now = now_ms();
        let window = now / window_ms;
        let reset_after_ms = (window + 1) * window_ms - now;
        let key = self.key(&format!("rl:{{{caller}}}:default:fw:{}:{window}", self.window_seconds));
        let mut invocation = self.incr_by_bounded.key(key);
        invocation.arg(1).arg(self.window_seconds + 1).arg(self.limit);
        let mut redis = self.redis.clone();
        match self.redis(invocation.invoke_async::<(i64, i64)>(&mut redis)).await {
            Ok((applied, count)) => Decision {
                allowed: applied == 1,
                remaining: u32::try_from((i64::from(self.limit) - count).max(0)).unwrap_or(0),
                reset_after_ms,
            },
            // Fail open, as the default policy does.
            Err(_) => Decision {
                allowed: true,
                remaining: self.limit - 1,
                reset_after_ms: window_ms,
            },
        }
    }

    async fn lookup(&self, id: &str) -> Response {
        if let Err(why) = validate_id(id) {
            return problem(StatusCode::BAD_REQUEST, "invalid-id", "Invalid profile id", &why);
        }
        let key = self.key(&format!("profile:v1:{id}"));
        let mut redis = self.redis.clone();
        let (entry, source) = match self.redis(redis.get::<_, Option<Vec<u8>>>(&key)).await {
            Ok(stored) => match stored.as_deref().and_then(fresh) {
                Some(entry) => (Ok(entry), "hit"),
                None => self.fill(id, &key, stored).await,
            },
            Err(_) => (self.fetch(id).await, "bypass"),
        };
        match entry {
            Ok(Entry {
                profile: Some(profile), ..
            }) => {
                let mut response = (StatusCode::OK, Box::<str>::from(profile).into_string()).into_response();
                insert(&mut response, "content-type", "application/json".into());
                insert(&mut response, "x-cache", source.into());
                response
            }
            Ok(Entry { profile: None, .. }) => problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Profile not found",
                &format!("no profile with id {id:?}"),
            ),
            Err(why) => {
                let mut response = problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "origin-unavailable",
                    "Origin unavailable",
                    &why,
                );
                insert(&mut response, "retry-after", "1".into());
                response
            }
        }
    }

    /// Fills the entry under the lock, or waits for whoever holds it.
    async fn fill(&self, id: &str, key: &str, previous: Option<Vec<u8>>) -> (Result<Entry, String>, &'static str) {
        let lock = format!("{key}:lock");
        let options = SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(SetExpiry::EX(LOCK_TTL_SECONDS));
        let mut redis = self.redis.clone();
        match self
            .redis(redis.set_options::<_, _, Option<String>>(&lock, "1", options))
            .await
        {
            Ok(Some(_)) => {
                let loaded = self.load(id, key, previous).await;
                let _ = self.redis(redis.del::<_, i64>(&lock)).await;
                (loaded, "miss")
            }
            Ok(None) => {
                let deadline = tokio::time::Instant::now() + self.fill_wait;
                while tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    match self.redis(redis.get::<_, Option<Vec<u8>>>(key)).await {
                        Ok(stored) => {
                            if let Some(entry) = stored.as_deref().and_then(decode) {
                                return (Ok(entry), "hit");
                            }
                        }
                        Err(_) => return (self.fetch(id).await, "bypass"),
                    }
                }
                (self.load(id, key, previous).await, "miss")
            }
            Err(_) => (self.fetch(id).await, "bypass"),
        }
    }

    /// Asks the origin and stores its answer unless the entry changed meanwhile.
    async fn load(&self, id: &str, key: &str, previous: Option<Vec<u8>>) -> Result<Entry, String> {
        let entry = self.fetch(id).await?;
        let ttl = match entry.profile {
            Some(_) => self.ttl_seconds + self.stale_seconds,
            None => self.negative_ttl_seconds,
        };
        let bytes = serde_json::to_vec(&entry).expect("an entry of JSON values always serializes");
        let mut invocation = self.compare_and_swap.key(key);
        match &previous {
            Some(previous) => invocation.arg("1").arg(previous.as_slice()),
            None => invocation.arg("0").arg(""),
        };
        invocation.arg(bytes).arg(ttl);
        let mut redis = self.redis.clone();
        let _ = self.redis(invocation.invoke_async::<redis::Value>(&mut redis)).await;
        Ok(entry)
    }

    async fn fetch(&self, id: &str) -> Result<Entry, String> {
        let started = now_ms();
        let text = self.origin.fetch(id).await.map_err(|e| e.to_string())?;
        let compute_ms = now_ms().saturating_sub(started);
        let profile = match text {
            None => None,
            Some(text) => match serde_json::from_str(&text) {
                Ok(object @ Value::Object(_)) => {
                    Some(serde_json::value::to_raw_value(&object).expect("a JSON value always serializes"))
                }
                _ => {
                    return Err(format!(
                        "the origin returned a profile for {id} that is not a JSON object"
                    ));
                }
            },
        };
        let ttl = if profile.is_some() {
            self.ttl_seconds
        } else {
            self.negative_ttl_seconds
        };
        Ok(Entry {
            fresh_until: now_ms() + ttl * 1000,
            compute_ms,
            profile,
        })
    }
}

fn decode(bytes: &[u8]) -> Option<Entry> {
    serde_json::from_slice::<Entry>(bytes).ok().filter(|entry| {
        entry
            .profile
            .as_ref()
            .is_none_or(|profile| profile.get().starts_with('{'))
    })
}

fn fresh(bytes: &[u8]) -> Option<Entry> {
    decode(bytes).filter(|entry| now_ms() < entry.fresh_until)
}

fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("a profile id has 1 to 64 characters, not {}", id.len()));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(c) => Err(format!(
            "a profile id may only contain A-Z, a-z, 0-9, '_' and '-', not {c:?}"
        )),
        None => Ok(()),
    }
}

fn problem(status: StatusCode, kind: &str, title: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": format!("urn:edge-cache:problem:{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = (status, body.to_string()).into_response();
    insert(&mut response, "content-type", "application/problem+json".into());
    response
}

fn insert(response: &mut Response, name: &'static str, value: String) {
    let value = HeaderValue::try_from(value).expect("headers made here are valid");
    response.headers_mut().insert(HeaderName::from_static(name), value);
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
