//! `edge-cache`: serve the edge function locally.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use edge_cache_contract::config as guest;
use edge_cache_contract::{cache_aside, limits, policy};
use edge_cache_harness::caller::{ApiKeys, TrustedProxies, digest_hex, parse_network};
use edge_cache_harness::compose;
use edge_cache_harness::engine::{DEFAULT_INSTANCE_REUSE, GuestLimits};
use edge_cache_harness::keyspace::{DEFAULT_NAMESPACE, Limits};
use edge_cache_harness::listener::{self, ConnectionLimits};
use edge_cache_harness::origin::OriginConfig;
use edge_cache_harness::overload::QueueLimits;
use edge_cache_harness::penalty_box;
use edge_cache_harness::store::near::NearCacheConfig;
use edge_cache_harness::store::redis::{RedisClusterConfig, RedisConfig, TlsFiles, redact_url};
use edge_cache_harness::{BodyLimits, EMBEDDED_GUEST, Harness, HarnessConfig, ServingConfig, StoreConfig};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

// A request allocates and frees a few hundred small blocks (headers, wasi:http
// resources, Redis replies); glibc's malloc spent about a sixth of a
// request's instructions on them, mimalloc's per-thread free lists a
// fraction of that (BENCHMARKS.md). It gives freed memory back on its own,
// after a short delay, so memory after a burst still returns.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "edge-cache",
    version,
    about = "Run the edge-cache edge function under wasmtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the edge function over HTTP.
    Serve(Box<ServeArgs>),
    /// Print the SHA-256 digest of an API key read from standard input, as
    /// `--api-key-sha256` and `--api-keys-file` take it.
    ApiKeyDigest,
    /// Compose an app with the edge function: plug the exports of `--plug`
    /// components into the app's imports (as `wac plug` does).
    Compose(ComposeArgs),
}

#[derive(Args)]
struct ComposeArgs {
    /// The component whose imports are satisfied (e.g. an edge-app).
    app: PathBuf,
    /// A component whose exports satisfy them (repeatable); defaults to the
    /// edge function embedded in this binary.
    #[arg(long = "plug")]
    plugs: Vec<PathBuf>,
    /// Where to write the composed component.
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "EDGE_CACHE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Address of the admin listener serving /metrics (Prometheus), /livez
    /// (alias /healthz) and /readyz; none when absent.
    #[arg(long, env = "EDGE_CACHE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,

    /// The edge function component (.wasm); without it, the edge function
    /// embedded in this binary.
    #[arg(long, env = "EDGE_CACHE_COMPONENT")]
    component: Option<PathBuf>,

    /// Redis to use as the cache, e.g. redis://user:password@host:6379/0 or
    /// rediss://… for TLS. Without it, the embedded in-memory cache is used.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,

    /// A Redis Cluster seed node (repeat the flag, or give a comma-separated
    /// list in the environment), e.g. redis://user:password@10.0.0.1:7000.
    #[arg(
        long = "redis-cluster-url",
        env = "REDIS_CLUSTER_URLS",
        value_delimiter = ',',
        hide_env_values = true,
        conflicts_with = "redis_url"
    )]
    redis_cluster_urls: Vec<String>,

    /// Refuse to start while Redis cannot be reached. Without it, the
    /// harness starts anyway, serves from the origin (rate limits decide by
    /// their fail mode) and connects in the background; /readyz tells when.
    #[arg(long, env = "EDGE_CACHE_REQUIRE_REDIS")]
    require_redis: bool,

    /// PEM file of the CA to trust for rediss:// (a private CA), instead of
    /// the system's roots.
    #[arg(long, env = "REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,

    /// PEM client certificate for mutual TLS with Redis (with
    /// --redis-client-key).
    #[arg(long, env = "REDIS_CLIENT_CERT_FILE", requires = "redis_client_key")]
    redis_client_cert: Option<PathBuf>,

    /// PEM private key of --redis-client-cert.
    #[arg(long, env = "REDIS_CLIENT_KEY_FILE", requires = "redis_client_cert")]
    redis_client_key: Option<PathBuf>,

    /// Redis database number (overrides the one in the URL).
    #[arg(long, env = "REDIS_DB")]
    redis_db: Option<i64>,

    /// Longest wait for a Redis connection, in milliseconds.
    #[arg(long, env = "REDIS_CONNECT_TIMEOUT_MS", default_value_t = 2000)]
    redis_connect_timeout_ms: u64,

    /// Longest wait for one Redis command, in milliseconds; past it the guest
    /// gets a `timeout` error and answers from the origin.
    #[arg(long, env = "REDIS_COMMAND_TIMEOUT_MS", default_value_t = 500)]
    redis_command_timeout_ms: u64,

    /// Times a lost Redis connection is retried before commands report it.
    #[arg(long, env = "REDIS_RECONNECT_RETRIES", default_value_t = 3)]
    redis_reconnect_retries: usize,

    /// Longest wait between two reconnection attempts, in milliseconds.
    #[arg(long, env = "REDIS_MAX_RECONNECT_DELAY_MS", default_value_t = 2000)]
    redis_max_reconnect_delay_ms: u64,

    /// Keep recently read values in the harness too, up to this size (e.g.
    /// 16MB), coherent with Redis through its client-side caching (CLIENT
    /// TRACKING): a write by any client invalidates. Needs --redis-url or
    /// --redis-cluster-url (a connection per primary). Off by default.
    #[arg(long, env = "EDGE_CACHE_NEAR_CACHE", value_parser = parse_size)]
    near_cache: Option<u64>,

    /// The largest value a guest may store, e.g. 1MB.
    #[arg(long, env = "EDGE_CACHE_MAX_VALUE_SIZE", default_value_t = limits::MAX_VALUE_BYTES as u64, value_parser = parse_size)]
    max_value_size: u64,

    /// Namespace prefixed to every cache key of this function.
    #[arg(long, env = "EDGE_CACHE_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    namespace: String,

    /// Memory bound of the embedded cache, e.g. 16MB, 64MB, 1GB.
    #[arg(long, env = "EDGE_CACHE_MAX_MEMORY", default_value = "64MB", value_parser = parse_size)]
    max_memory: u64,

    /// SQLite file holding the profile origin; in memory when absent.
    #[arg(long, env = "EDGE_CACHE_ORIGIN_DB")]
    origin_db: Option<PathBuf>,

    /// Latency added to every origin call, in milliseconds (to mimic a remote origin).
    #[arg(long, env = "EDGE_CACHE_ORIGIN_LATENCY_MS", default_value_t = 0)]
    origin_latency_ms: u64,

    /// How long a cached profile is fresh, in seconds.
    #[arg(long, env = guest::PROFILE_TTL_SECONDS, default_value_t = cache_aside::DEFAULT_TTL_SECONDS, value_parser = clap::value_parser!(u64).range(1..))]
    profile_ttl: u64,

    /// How long past freshness a profile may be served while one request
    /// refreshes it, in seconds.
    #[arg(long, env = guest::PROFILE_STALE_SECONDS, default_value_t = cache_aside::DEFAULT_STALE_SECONDS)]
    profile_stale: u64,

    /// How long an unknown profile id is remembered as absent, in seconds.
    #[arg(long, env = guest::PROFILE_NEGATIVE_TTL_SECONDS, default_value_t = cache_aside::DEFAULT_NEGATIVE_TTL_SECONDS, value_parser = clap::value_parser!(u64).range(1..))]
    profile_negative_ttl: u64,

    /// How long a request that missed waits for another's fill, in milliseconds.
    #[arg(long, env = guest::PROFILE_FILL_WAIT_MS, default_value_t = cache_aside::DEFAULT_FILL_WAIT_MS)]
    profile_fill_wait_ms: u64,

    /// Requests allowed per caller and window by the default policy.
    #[arg(long, env = guest::RATE_LIMIT_REQUESTS, default_value_t = policy::DEFAULT_LIMIT, value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit_requests: u32,

    /// The default policy's window, in seconds.
    #[arg(long, env = guest::RATE_LIMIT_WINDOW_SECONDS, default_value_t = policy::DEFAULT_WINDOW_SECONDS, value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit_window: u32,

    /// Policies per route and caller class, `;`-separated rules of the form
    /// ROUTE/CLASS=ALGORITHM:LIMIT/WINDOW[,burst=N][,fail=open|closed], e.g.
    /// "*/api-key=sliding-window:600/1m; put-profile/*=gcra:10/1m,burst=3".
    /// ROUTE: get-profile, put-profile or *; CLASS: api-key, anonymous or *;
    /// ALGORITHM: fixed-window, sliding-window or gcra.
    #[arg(long, env = guest::RATE_LIMITS)]
    rate_limits: Option<String>,

    /// Linear memory each request's instance may use, e.g. 16MB.
    #[arg(long, env = "EDGE_CACHE_GUEST_MEMORY", default_value = "16MB", value_parser = parse_size)]
    guest_memory: u64,

    /// Time one request may take, in milliseconds; past it the guest is
    /// stopped and the client gets a 504.
    #[arg(long, env = "EDGE_CACHE_REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,

    /// Requests served at once (the size of the instance pool). Peak guest
    /// memory is at most this times --guest-memory.
    #[arg(long, env = "EDGE_CACHE_MAX_INSTANCES", default_value_t = GuestLimits::default().max_instances, value_parser = clap::value_parser!(u32).range(1..))]
    max_instances: u32,

    /// Requests that may wait for a busy instance; past it, requests get a
    /// 503 with Retry-After at once.
    #[arg(long, env = "EDGE_CACHE_MAX_QUEUED", default_value_t = QueueLimits::default().max_queued)]
    max_queued: usize,

    /// Longest a request waits for an instance before it gets a 503, in
    /// milliseconds.
    #[arg(long, env = "EDGE_CACHE_QUEUE_TIMEOUT_MS", default_value_t = QueueLimits::default().queue_timeout.as_millis() as u64)]
    queue_timeout_ms: u64,

    /// Client connections open at once (lowered to fit the open-files
    /// limit); at the bound, connections still sending a request head give
    /// way to new ones.
    #[arg(long, env = "EDGE_CACHE_MAX_CONNECTIONS", default_value_t = ConnectionLimits::default().max_connections as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,

    /// Time a connection has to send a complete request head, in
    /// milliseconds.
    #[arg(long, env = "EDGE_CACHE_HEADER_READ_TIMEOUT_MS", default_value_t = ConnectionLimits::default().header_read_timeout.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout_ms: u64,

    /// Time an idle keep-alive connection is kept open, in milliseconds.
    #[arg(long, env = "EDGE_CACHE_KEEP_ALIVE_TIMEOUT_MS", default_value_t = ConnectionLimits::default().keep_alive_timeout.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    keep_alive_timeout_ms: u64,

    /// The largest request body, e.g. 1MB; larger ones get a 413.
    #[arg(long, env = "EDGE_CACHE_MAX_REQUEST_BODY", default_value = "1MB", value_parser = parse_size)]
    max_request_body: u64,

    /// Request body bytes held at once across all requests, e.g. 64MB;
    /// past it, requests with bodies wait, then get a 503.
    #[arg(long, env = "EDGE_CACHE_REQUEST_BODY_BUDGET", default_value = "64MB", value_parser = parse_size)]
    request_body_budget: u64,

    /// On SIGTERM or SIGINT, how long requests in flight are waited for,
    /// in milliseconds.
    #[arg(long, env = "EDGE_CACHE_SHUTDOWN_TIMEOUT_MS", default_value_t = ConnectionLimits::default().shutdown_timeout.as_millis() as u64)]
    shutdown_timeout_ms: u64,

    /// A proxy (address or CIDR network) whose Forwarded / X-Forwarded-For
    /// headers name the client; repeatable. Without one, the client is
    /// always the connection's peer.
    #[arg(long = "trusted-proxy", env = "EDGE_CACHE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_network)]
    trusted_proxies: Vec<IpNet>,

    /// The SHA-256 digest (hex) of an API key this deployment issued;
    /// repeatable. Requests with any other x-api-key get a 401.
    #[arg(
        long = "api-key-sha256",
        env = "EDGE_CACHE_API_KEY_SHA256S",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_key_digests: Vec<String>,

    /// A file of issued API key digests, one SHA-256 hex digest a line
    /// (`#` comments allowed).
    #[arg(long, env = "EDGE_CACHE_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,

    /// Linear memory a pool slot keeps resident after its instance is
    /// dropped, e.g. 64kb: more makes replacing an instance (every
    /// --instance-reuse requests) cheaper; every slot a burst used keeps
    /// this much after it (up to --max-instances slots).
    #[arg(long, env = "EDGE_CACHE_GUEST_KEEP_RESIDENT", default_value = "64kb", value_parser = parse_size)]
    guest_keep_resident: u64,

    /// Requests one instance serves, one at a time, before it is replaced
    /// by a fresh one; 1 gives every request a fresh instance. An instance
    /// that traps, times out or fails is never reused.
    #[arg(long, env = "EDGE_CACHE_INSTANCE_REUSE", default_value_t = DEFAULT_INSTANCE_REUSE, value_parser = clap::value_parser!(u32).range(1..))]
    instance_reuse: u32,

    /// Rate limit denials kept in memory, so that callers over their limit
    /// are denied without a Redis round trip until the decision can change;
    /// 0 keeps none (every check reaches Redis).
    #[arg(long, env = "EDGE_CACHE_PENALTY_BOX_ENTRIES", default_value_t = penalty_box::DEFAULT_MAX_ENTRIES)]
    penalty_box_entries: u64,

    /// Log format.
    #[arg(long, env = "EDGE_CACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Parses a size as Redis parses `maxmemory`: a plain number is bytes, `k`,
/// `m` and `g` are powers of 1000 and `kb`, `mb` and `gb` powers of 1024, in
/// any case. `KiB`, `MiB` and `GiB` are accepted too, as powers of 1024.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 64mb"))?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" => 1_000,
        "kb" | "kib" => 1 << 10,
        "m" => 1_000_000,
        "mb" | "mib" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (as Redis: k, kb, m, mb, g, gb)")),
    };
    match number.checked_mul(multiplier) {
        Some(0) | None => Err(format!("{text:?} is not a usable size")),
        Some(bytes) => Ok(bytes),
    }
}

impl ServeArgs {
    /// The guest's settings, passed as its WASI environment.
    fn guest_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (guest::PROFILE_TTL_SECONDS, self.profile_ttl.to_string()),
            (guest::PROFILE_STALE_SECONDS, self.profile_stale.to_string()),
            (
                guest::PROFILE_NEGATIVE_TTL_SECONDS,
                self.profile_negative_ttl.to_string(),
            ),
            (guest::PROFILE_FILL_WAIT_MS, self.profile_fill_wait_ms.to_string()),
            (guest::RATE_LIMIT_REQUESTS, self.rate_limit_requests.to_string()),
            (guest::RATE_LIMIT_WINDOW_SECONDS, self.rate_limit_window.to_string()),
        ];
        if let Some(rules) = &self.rate_limits {
            env.push((guest::RATE_LIMITS, rules.clone()));
        }
        env.into_iter().map(|(name, value)| (name.to_owned(), value)).collect()
    }

    fn store_config(&self) -> StoreConfig {
        let connect_timeout = Duration::from_millis(self.redis_connect_timeout_ms);
        let command_timeout = Duration::from_millis(self.redis_command_timeout_ms);
        let tls = TlsFiles {
            ca_file: self.redis_ca_file.clone(),
            client_cert_file: self.redis_client_cert.clone(),
            client_key_file: self.redis_client_key.clone(),
        };
        if !self.redis_cluster_urls.is_empty() {
            return StoreConfig::RedisCluster(RedisClusterConfig {
                connect_timeout,
                command_timeout,
                tls,
                required: self.require_redis,
                near_cache: self.near_cache.map(NearCacheConfig::new),
                ..RedisClusterConfig::new(self.redis_cluster_urls.clone())
            });
        }
        match &self.redis_url {
            Some(url) => StoreConfig::Redis(RedisConfig {
                db: self.redis_db,
                connect_timeout,
                command_timeout,
                reconnect_retries: self.redis_reconnect_retries,
                max_reconnect_delay: Duration::from_millis(self.redis_max_reconnect_delay_ms),
                tls,
                required: self.require_redis,
                near_cache: self.near_cache.map(NearCacheConfig::new),
                ..RedisConfig::new(url.clone())
            }),
            None => StoreConfig::Memory {
                max_memory: self.max_memory,
            },
        }
    }

    fn harness_config(&self) -> anyhow::Result<HarnessConfig> {
        check_near_cache(
            self.near_cache,
            self.redis_url.is_some() || !self.redis_cluster_urls.is_empty(),
        )?;
        let mut api_keys = ApiKeys::from_digests(self.api_key_digests.iter().map(String::as_str))
            .context("invalid --api-key-sha256")?;
        if let Some(path) = &self.api_keys_file {
            api_keys.add_file(path).context("invalid --api-keys-file")?;
        }
        let open_files = match listener::raise_open_files_limit() {
            Ok(limit) => limit,
            Err(error) => {
                tracing::warn!(%error, "cannot read the open-files limit");
                u64::MAX
            }
        };
        let asked = usize::try_from(self.max_connections).unwrap_or(usize::MAX);
        let max_connections = listener::fit_to_open_files(asked, open_files);
        if max_connections < asked {
            tracing::warn!(
                asked,
                max_connections,
                open_files,
                "the open-files limit lowers the connection bound (raise `ulimit -n` for more)"
            );
        }
        Ok(HarnessConfig {
            component: self.component.clone(),
            store: self.store_config(),
            namespace: self.namespace.clone(),
            limits: Limits {
                max_value_bytes: usize::try_from(self.max_value_size).unwrap_or(usize::MAX),
                ..Limits::default()
            },
            origin: OriginConfig {
                database: self.origin_db.clone(),
                latency: Duration::from_millis(self.origin_latency_ms),
            },
            guest_env: self.guest_env(),
            guest_limits: GuestLimits {
                memory_bytes: usize::try_from(self.guest_memory).unwrap_or(usize::MAX),
                request_timeout: Duration::from_millis(self.request_timeout_ms),
                max_instances: self.max_instances,
                instance_reuse: self.instance_reuse,
                keep_resident_bytes: usize::try_from(self.guest_keep_resident).unwrap_or(usize::MAX),
                ..GuestLimits::default()
            },
            serving: ServingConfig {
                connections: ConnectionLimits {
                    max_connections,
                    header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
                    keep_alive_timeout: Duration::from_millis(self.keep_alive_timeout_ms),
                    shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
                },
                queue: QueueLimits {
                    max_queued: self.max_queued,
                    queue_timeout: Duration::from_millis(self.queue_timeout_ms),
                },
                bodies: BodyLimits {
                    max_body_bytes: usize::try_from(self.max_request_body).unwrap_or(usize::MAX),
                    budget_bytes: usize::try_from(self.request_body_budget).unwrap_or(usize::MAX),
                },
                trusted_proxies: TrustedProxies::new(self.trusted_proxies.clone()),
                api_keys,
            },
            penalty_box_entries: self.penalty_box_entries,
        })
    }
}

/// A near cache tracks Redis: it has nothing to add to the embedded store,
/// which is in the harness already.
fn check_near_cache(near_cache: Option<u64>, redis: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        near_cache.is_none() || redis,
        "--near-cache needs Redis (--redis-url or --redis-cluster-url): the embedded store is in the harness already"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = match Cli::parse().command {
        Command::Serve(args) => args,
        Command::ApiKeyDigest => {
            let mut key = String::new();
            std::io::stdin()
                .read_line(&mut key)
                .context("cannot read the key from standard input")?;
            let key = key.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!key.is_empty(), "no key on standard input");
            println!("{}", digest_hex(key.as_bytes()));
            return Ok(());
        }
        Command::Compose(args) => {
            let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
            let mut plugs = args.plugs.iter().map(read).collect::<anyhow::Result<Vec<_>>>()?;
            if plugs.is_empty() {
                plugs.push(EMBEDDED_GUEST.to_vec());
            }
            let composed = compose::plug_bytes(&read(&args.app)?, &plugs)?;
            std::fs::write(&args.output, composed)
                .with_context(|| format!("cannot write {}", args.output.display()))?;
            println!("wrote {}", args.output.display());
            return Ok(());
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Human => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }

    let config = args.harness_config()?;
    let store = match &config.store {
        StoreConfig::Redis(redis) => match redis.near_cache {
            Some(near) => format!(
                "Redis at {} and a near cache of at most {} KiB",
                redact_url(&redis.url),
                near.max_bytes / 1024
            ),
            None => format!("Redis at {}", redact_url(&redis.url)),
        },
        StoreConfig::RedisCluster(cluster) => {
            let nodes: Vec<String> = cluster.urls.iter().map(|url| redact_url(url)).collect();
            match cluster.near_cache {
                Some(near) => format!(
                    "the Redis Cluster at {} and a near cache of at most {} KiB",
                    nodes.join(","),
                    near.max_bytes / 1024
                ),
                None => format!("the Redis Cluster at {}", nodes.join(",")),
            }
        }
        StoreConfig::Memory { max_memory } => format!("the embedded cache (at most {} KiB)", max_memory / 1024),
    };
    let harness = Harness::start(&config).await.context("edge-cache could not start")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // Only the embedded edge function is known to have the profile routes.
    let hint = match config.component {
        None => "; try GET /profiles/alice",
        Some(_) => "",
    };
    tracing::info!(
        address = %listener.local_addr()?,
        component = %config.component.as_deref().map_or("(embedded)".into(), |path| path.display().to_string()),
        namespace = %config.namespace,
        "serving the edge function with {store}{hint}"
    );
    let harness = Arc::new(harness);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    // The admin listener outlives the public one's drain, so probes see
    // `/readyz` turn 503 while requests in flight finish.
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = match args.admin_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} for the admin endpoints"))?;
            tracing::info!(address = %listener.local_addr()?, "serving /metrics, /livez (/healthz) and /readyz");
            let until_drained = async {
                let _ = admin_stopped.await;
            };
            Some(tokio::spawn(harness.clone().serve_admin(listener, until_drained)))
        }
        None => None,
    };
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::spawn(async move {
        let signal = tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(
            signal,
            timeout = ?config.serving.connections.shutdown_timeout,
            "shutting down: no new connections; requests in flight finish"
        );
        let _ = stop.send(true);
    });
    harness.clone().serve(listener, until_stopped()).await;
    let _ = admin_stop.send(());
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    // Closes the Redis connections (and everything else the harness holds).
    drop(harness);
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Cli, check_near_cache, parse_size};
    use clap::CommandFactory;

    #[test]
    fn help_never_shows_a_redis_password() {
        // Only this test touches the environment of this test binary.
        unsafe {
            std::env::set_var("REDIS_URL", "redis+unix:///run/redis.sock?pass=hunter2");
            std::env::set_var("REDIS_CLUSTER_URLS", "rediss://edge:hunter3@10.0.0.1:7000");
        }
        let mut command = Cli::command();
        let serve = command.find_subcommand_mut("serve").expect("a serve subcommand");
        let help = serve.render_long_help().to_string();
        assert!(help.contains("REDIS_URL") && help.contains("--require-redis"), "{help}");
        assert!(!help.contains("hunter2") && !help.contains("hunter3"), "{help}");
    }

    #[test]
    fn a_near_cache_needs_redis() {
        let refused = |near, redis| check_near_cache(near, redis).is_err();
        assert!(refused(Some(16 << 20), false), "the embedded store");
        assert!(!refused(Some(16 << 20), true));
        assert!(!refused(None, false));
    }

    #[test]
    fn sizes_parse_like_redis_maxmemory() {
        // Redis' own table (redis.conf): 1k => 1000, 1kb => 1024, ...
        assert_eq!(parse_size("1k"), Ok(1000));
        assert_eq!(parse_size("1kb"), Ok(1024));
        assert_eq!(parse_size("1m"), Ok(1_000_000));
        assert_eq!(parse_size("1mb"), Ok(1 << 20));
        assert_eq!(parse_size("1g"), Ok(1_000_000_000));
        assert_eq!(parse_size("1gb"), Ok(1 << 30));
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "MB", "0", "12XB", "-5MB", "99999999999GB", "1 mb"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
