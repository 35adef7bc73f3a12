//! The Redis store: one multiplexed connection shared by every instance
//! (a [`ConnectionManager`] for one server, the async cluster client for a
//! Redis Cluster), every command bounded by a deadline.
//!
//! `ConnectionManager` reconnects on its own, but while it does, a command can
//! wait for seconds; the deadline turns that into a quick, typed `Timeout` so
//! no request hangs on a dead Redis, and the circuit breakers (see
//! [`super::breaker`]) stop even that wait once Redis is known to be down.
//! Multi-step primitives are Lua scripts, run by SHA and loaded on
//! `NOSCRIPT`, so each is one atomic round trip.
//!
//! An unreachable Redis does not stop the start (unless required): commands
//! fail at once with `unavailable` while a background task connects.

use super::breaker::{BreakerGauges, Breakers, FIRST_BACKOFF};
use super::{BoundedIncr, CasOutcome, KeyPage, SCAN_PAGE_KEYS, Store, StoreError, StoreFuture, Ttl};
use futures_util::future::{join_all, try_join_all};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue,
    IntoConnectionInfo, Pipeline, ProtocolVersion, RedisError, RedisFuture, Script, ScriptInvocation, ServerErrorKind,
    TlsCertificates, Value,
};
use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use thiserror::Error;
use tokio::time::timeout;

/// Adds to a counter and, in the same atomic step, gives it an expiry when it
/// has none, so a counter can never outlive its window (the INCR-then-EXPIRE
/// race leaves keys without a TTL when the client dies in between).
const INCR_BY_SCRIPT: &str = include_str!("scripts/incr_by.lua");

/// `INCR_BY_SCRIPT`, unless the result would pass ARGV[3]. Returns
/// {applied (0/1), value after}. Counters stay far below 2^53, where Lua's
/// numbers are exact.
const INCR_BY_BOUNDED_SCRIPT: &str = include_str!("scripts/incr_by_bounded.lua");

/// ARGV: expected-present ('0'/'1'), expected, new, ttl seconds ('0' = none).
/// Returns {1} when swapped, {0} or {0, current} on a conflict.
const COMPARE_AND_SWAP_SCRIPT: &str = include_str!("scripts/compare_and_swap.lua");

/// ARGV: the value the key must hold. Deletes the key only when it holds
/// exactly that; returns 1 when it did.
const COMPARE_AND_DELETE_SCRIPT: &str = include_str!("scripts/compare_and_delete.lua");

/// `SCAN`s one `scan_prefix` call makes at most while its page is not
/// full: a sparse prefix in a large key space then costs a few round trips
/// per page, never a walk of the whole space in one guest call.
const MAX_SCANS_PER_PAGE: usize = 8;

/// Bits of a cluster scan cursor that hold the node's own `SCAN` cursor;
/// the 14 above them hold the first slot of the node being scanned.
const NODE_CURSOR_BITS: u32 = 50;

/// How often the background task looks for due probes (a few atomic loads).
const SUPERVISOR_TICK: Duration = Duration::from_millis(50);

/// The longest wait between two attempts to reach a cluster that was
/// unreachable at start.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// Files for `rediss://`: a private CA to trust instead of the system's
/// roots, and a client certificate for mutual TLS. All PEM.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl TlsFiles {
    fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert_file.is_none() && self.client_key_file.is_none()
    }

    /// Reads the files; `None` when none is given (system roots, no client
    /// certificate).
    fn certificates(&self) -> Result<Option<TlsCertificates>, ConnectError> {
        if self.is_empty() {
            return Ok(None);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| ConnectError::Tls(format!("cannot read {}: {e}", path.display())))
        };
        let client_tls = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(ConnectError::Tls(
                    "a client certificate needs its key, and a key its certificate".into(),
                ));
            }
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert: self.ca_file.as_ref().map(read).transpose()?,
        }))
    }
}

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host[:port][/db]`, `rediss://…` for TLS,
    /// or `redis+unix:///path?pass=…` / `unix:///path?pass=…`.
    pub url: String,
    /// Overrides the database number in the URL (`REDIS_DB`).
    pub db: Option<i64>,
    /// How long to wait for a connection to be established.
    pub connect_timeout: Duration,
    /// How long one command may take, reconnection included.
    pub command_timeout: Duration,
    /// How many times to retry a lost connection before reporting it.
    pub reconnect_retries: usize,
    /// The longest wait between two reconnection attempts.
    pub max_reconnect_delay: Duration,
    /// Certificates for `rediss://`.
    pub tls: TlsFiles,
    /// Refuse to start when Redis cannot be reached (otherwise the harness
    /// serves from the origin and connects in the background).
    pub required: bool,
    /// Keep recently read values in the harness too (see [`super::near`]).
    pub near_cache: Option<super::near::NearCacheConfig>,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            db: None,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_millis(500),
            reconnect_retries: 3,
            max_reconnect_delay: Duration::from_secs(2),
            tls: TlsFiles::default(),
            required: false,
            near_cache: None,
        }
    }
}

/// How to reach a Redis Cluster: seed nodes (any few of its nodes; the
/// client discovers the rest), with the same timeouts as a single server.
#[derive(Debug, Clone)]
pub struct RedisClusterConfig {
    /// `redis://` or `rediss://` URLs of seed nodes; credentials in the
    /// first one apply to every node.
    pub urls: Vec<String>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// How many times a command is retried on redirections and failovers.
    pub retries: u32,
    /// Certificates for `rediss://` nodes.
    pub tls: TlsFiles,
    /// Refuse to start when no node can be reached.
    pub required: bool,
    /// Keep recently read values in the harness too (see [`super::near`]).
    pub near_cache: Option<super::near::NearCacheConfig>,
}

impl RedisClusterConfig {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_millis(500),
            retries: 3,
            tls: TlsFiles::default(),
            required: false,
            near_cache: None,
        }
    }

    /// A client for one node of the cluster, at `host:port` as the cluster
    /// names it, with the first seed's credentials, database and TLS
    /// (as the cluster client reaches every node), speaking `protocol`.
    pub(crate) fn node_client(&self, host: &str, port: u16, protocol: ProtocolVersion) -> Result<Client, ConnectError> {
        let seed = self.urls.first().map(String::as_str).unwrap_or_default();
        open_client(seed, &self.tls, |info| {
            let addr = match info.addr() {
                ConnectionAddr::TcpTls {
                    insecure, tls_params, ..
                } => ConnectionAddr::TcpTls {
                    host: host.to_owned(),
                    port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                _ => ConnectionAddr::Tcp(host.to_owned(), port),
            };
            let settings = info.redis_settings().clone().set_protocol(protocol);
            Ok(info.set_addr(addr).set_redis_settings(settings))
        })
    }
}

/// A client for `url` as `adjust` changes what it says, with `tls`'s
/// certificates; fails on a bad URL or TLS setting (or what `adjust`
/// refuses), without connecting, and with the URL's secrets scrubbed.
fn open_client(
    url: &str,
    tls: &TlsFiles,
    adjust: impl FnOnce(ConnectionInfo) -> Result<ConnectionInfo, String>,
) -> Result<Client, ConnectError> {
    // `rediss://` needs a process-wide TLS crypto provider; installing it
    // twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secrets = url_secrets(url);
    let invalid = |reason: String| ConnectError::InvalidUrl {
        url: redact_url(url),
        reason: scrub(&reason, &secrets),
    };
    let info = url.into_connection_info().map_err(|e| invalid(e.to_string()))?;
    let info = adjust(info).map_err(invalid)?;
    match tls.certificates()? {
        Some(certificates) => Client::build_with_tls(info, certificates),
        None => Client::open(info),
    }
    .map_err(|e| invalid(e.to_string()))
}

/// A primary of a Redis Cluster, as `CLUSTER SLOTS` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Primary {
    /// Its ID, stable across address changes.
    pub id: Vec<u8>,
    pub host: String,
    pub port: u16,
    /// The slot ranges it serves, inclusive, in order.
    pub slots: Vec<(u16, u16)>,
}

/// What a tracked read found: the values of its keys and their remaining
/// lifetimes (`PTTL`: -1 for none, -2 when gone), or that the node no
/// longer serves their slot.
pub(crate) enum TrackedRead {
    Values(Vec<(Option<Vec<u8>>, i64)>),
    /// `MOVED` or `ASK`: the cluster moved (or is moving) the slot.
    Redirected,
}

/// Why the Redis store could not start.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("invalid Redis URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid Redis TLS setting: {0}")]
    Tls(String),
    #[error("Redis at {url} refused the credentials: {reason}")]
    Credentials { url: String, reason: String },
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Query parameters that may carry a secret (`pass` is redis-rs' name for
/// a Unix socket's password).
fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token"].iter().any(|word| name.contains(word))
}

/// The secrets written in a Redis URL: the password of its user info and
/// the values of password-like query parameters, as written and decoded,
/// so they can be scrubbed from any text (redis-rs' own errors included).
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Ok(parsed) = url::Url::parse(url) {
        if let Some(password) = parsed.password() {
            secrets.push(password.to_owned());
            if let Ok(decoded) = percent_decode(password) {
                secrets.push(decoded);
            }
        }
        for (name, value) in parsed.query_pairs() {
            if is_secret_parameter(&name) {
                secrets.push(value.into_owned());
            }
        }
        if let Some(query) = parsed.query() {
            for pair in query.split('&') {
                if let Some((name, raw)) = pair.split_once('=')
                    && is_secret_parameter(name)
                {
                    secrets.push(raw.to_owned());
                }
            }
        }
    }
    secrets.retain(|secret| !secret.is_empty());
    // Longest first: a secret containing another is replaced whole.
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    secrets.dedup();
    secrets
}

fn percent_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|byte| char::from(*byte).to_digit(16));
        match (bytes[index], hex(index + 1), hex(index + 2)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                index += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded)
}

/// Replaces every secret in `text` with `***`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), "***"))
}

/// A Redis URL fit for logs: its password and password-like query values
/// replaced, whatever the scheme (`redis`, `rediss`, `redis+unix`, `unix`).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            if parsed.query_pairs().any(|(name, _)| is_secret_parameter(&name)) {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(name, value)| {
                        let value = if is_secret_parameter(&name) {
                            "***".to_owned()
                        } else {
                            value.into_owned()
                        };
                        (name.into_owned(), value)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            // Whatever the parser left alone (an odd encoding) goes too.
            scrub(parsed.as_ref(), &url_secrets(url))
        }
        // An unparseable URL may still hold a secret: show only its scheme.
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***"),
            None => "***".to_owned(),
        },
    }
}

/// One server's connection manager, or a cluster's connection; both are
/// multiplexed and cheap to clone.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

/// What every clone of a store and its background task share.
struct Shared {
    /// Set once connected: at once for a single server (its manager
    /// connects lazily and reconnects by itself), when a node answers for a
    /// cluster.
    connection: OnceLock<Connection>,
    /// Which kind of connection this is, before there is one.
    cluster: bool,
    command_timeout: Duration,
    scripts: Scripts,
    breakers: Breakers,
    /// For a cluster, a key hashing into each breaker's slot range.
    probe_keys: Vec<String>,
    /// The URL(s), redacted, for logs and `/readyz`.
    target: String,
    secrets: Vec<String>,
}

struct Scripts {
    incr_by: Script,
    incr_by_bounded: Script,
    compare_and_swap: Script,
    compare_and_delete: Script,
}

/// Whether an error means Redis (or the node) could not be reached or did
/// not answer in time, rather than an answer it gave: only these count
/// towards opening a breaker.
fn is_outage(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading | ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown
                )
        )
}

/// Whether a failed first contact is a setting to fix (credentials,
/// permissions, client configuration) rather than an unreachable server.
fn is_configuration_error(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig | ErrorKind::Server(ServerErrorKind::NoPerm)
    ) || error
        .code()
        .is_some_and(|code| ["WRONGPASS", "NOAUTH", "NOPERM"].contains(&code))
}

impl RedisStore {
    /// A client for the server of `config`, speaking `protocol` (else the
    /// URL's); fails on a bad URL or TLS setting, without connecting.
    pub(crate) fn client(config: &RedisConfig, protocol: Option<ProtocolVersion>) -> Result<Client, ConnectError> {
        open_client(&config.url, &config.tls, |mut info| {
            if let Some(db) = config.db {
                if db < 0 {
                    return Err(format!("the database number must not be negative, not {db}"));
                }
                let settings = info.redis_settings().clone().set_db(db);
                info = info.set_redis_settings(settings);
            }
            if let Some(protocol) = protocol {
                let settings = info.redis_settings().clone().set_protocol(protocol);
                info = info.set_redis_settings(settings);
            }
            Ok(info)
        })
    }

    /// Connects to one server. A bad URL or TLS setting, or refused
    /// credentials, fail at once; an unreachable server fails only when
    /// `config.required`, and is otherwise reached in the background.
    pub async fn connect(config: &RedisConfig) -> Result<Self, ConnectError> {
        let client = Self::client(config, None)?;
        let target = redact_url(&config.url);
        let secrets = url_secrets(&config.url);
        let invalid = |reason: String| ConnectError::InvalidUrl {
            url: target.clone(),
            reason: scrub(&reason, &secrets),
        };
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_number_of_retries(config.reconnect_retries)
            .set_max_delay(config.max_reconnect_delay);
        // The first contact is a connection of its own: the manager retries
        // refused credentials as it retries a refused port, and they must be
        // told apart.
        let first_contact = {
            let client = client.clone();
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(config.command_timeout));
            async move {
                let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
                redis::cmd("PING").query_async::<Value>(&mut connection).await.map(drop)
            }
        };
        let manager =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(|e| invalid(e.to_string()))?;
        let store = Self::new(
            Some(Connection::Single(manager)),
            Breakers::single(&target),
            config.command_timeout,
            target,
            secrets,
        );
        let startup_deadline = config.connect_timeout * 2;
        let first = timeout(startup_deadline, first_contact).await;
        store.started(first, startup_deadline, config.required, None)
    }

    /// Connects to a Redis Cluster through its seed nodes, with the same
    /// rules as [`Self::connect`].
    pub async fn connect_cluster(config: &RedisClusterConfig) -> Result<Self, ConnectError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let target = config
            .urls
            .iter()
            .map(|url| redact_url(url))
            .collect::<Vec<_>>()
            .join(",");
        let secrets: Vec<String> = config.urls.iter().flat_map(|url| url_secrets(url)).collect();
        let invalid = |reason: String| ConnectError::InvalidUrl {
            url: target.clone(),
            reason: scrub(&reason, &secrets),
        };
        if config.urls.is_empty() {
            return Err(invalid("no cluster node given".into()));
        }
        let mut builder = ClusterClient::builder(config.urls.iter().map(String::as_str))
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.command_timeout)
            .retries(config.retries);
        if let Some(certificates) = config.tls.certificates()? {
            builder = builder.certs(certificates);
        }
        let client = builder.build().map_err(|e| invalid(e.to_string()))?;
        let store = Self::new(None, Breakers::cluster(), config.command_timeout, target, secrets);
        let startup_deadline = config.connect_timeout * 2;
        let first = timeout(startup_deadline, store.shared.connect_cluster(&client)).await;
        store.started(first, startup_deadline, config.required, Some(client))
    }

    fn new(
        connection: Option<Connection>,
        breakers: Breakers,
        command_timeout: Duration,
        target: String,
        secrets: Vec<String>,
    ) -> Self {
        let cluster = breakers.len() > 1;
        let probe_keys = if cluster { breakers.probe_keys() } else { Vec::new() };
        let shared = Shared {
            connection: connection.map(OnceLock::from).unwrap_or_default(),
            cluster,
            command_timeout,
            scripts: Scripts {
                incr_by: Script::new(INCR_BY_SCRIPT),
                incr_by_bounded: Script::new(INCR_BY_BOUNDED_SCRIPT),
                compare_and_swap: Script::new(COMPARE_AND_SWAP_SCRIPT),
                compare_and_delete: Script::new(COMPARE_AND_DELETE_SCRIPT),
            },
            breakers,
            probe_keys,
            target,
            secrets,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Judges the first contact, then leaves the probes (and, for a cluster
    /// not reached yet, the connection) to a background task.
    fn started(
        self,
        first: Result<Result<(), RedisError>, tokio::time::error::Elapsed>,
        startup_deadline: Duration,
        required: bool,
        cluster_client: Option<ClusterClient>,
    ) -> Result<Self, ConnectError> {
        let shared = &self.shared;
        let error = match first {
            Ok(Ok(())) => None,
            Ok(Err(error)) if is_configuration_error(&error) => {
                return Err(ConnectError::Credentials {
                    url: shared.target.clone(),
                    reason: shared.scrub(&error.to_string()),
                });
            }
            Ok(Err(error)) => Some(shared.scrub(&error.to_string())),
            Err(_) => Some(format!("no answer within {startup_deadline:?}")),
        };
        if let Some(reason) = error {
            if required {
                return Err(ConnectError::Unreachable {
                    url: shared.target.clone(),
                    reason,
                });
            }
            tracing::warn!(
                target: "edge_cache::breaker",
                redis = %shared.target,
                error = %reason,
                "Redis is unreachable: serving from the origin and connecting in the background"
            );
            if shared.connection.get().is_some() {
                for index in 0..shared.breakers.len() {
                    shared.breakers.trip(index, &reason);
                }
            } else {
                shared.breakers.note_error(&reason);
            }
        }
        tokio::spawn(supervise(Arc::downgrade(&self.shared), cluster_client));
        Ok(self)
    }

    /// Runs one request on a clone of the shared connection, within the
    /// command deadline, through the breaker of `key`.
    async fn bounded<T, F, Fut>(&self, key: &str, request: F) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.bounded_at(self.shared.breakers.index_of(key), request).await
    }

    /// [`Self::bounded`], through breaker `breaker`: for a request that
    /// names no key, such as a `SCAN` of one node.
    async fn bounded_at<T, F, Fut>(&self, breaker: usize, request: F) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let shared = &*self.shared;
        let Some(connection) = shared.connection.get() else {
            return Err(StoreError::Unavailable(format!(
                "not connected to the Redis Cluster at {} yet",
                shared.target
            )));
        };
        shared.breakers.admit(breaker)?;
        match timeout(shared.command_timeout, request(connection.clone())).await {
            Ok(Ok(value)) => {
                shared.breakers.succeeded(breaker);
                Ok(value)
            }
            Ok(Err(error)) if is_outage(&error) => {
                let message = shared.scrub(&error.to_string());
                shared.breakers.failed(breaker, &message);
                Err(if error.is_timeout() {
                    StoreError::Timeout(shared.command_timeout)
                } else {
                    StoreError::Unavailable(message)
                })
            }
            Ok(Err(error)) => {
                shared.breakers.succeeded(breaker);
                Err(match classify(&error) {
                    StoreError::Unavailable(why) => StoreError::Unavailable(shared.scrub(&why)),
                    StoreError::Other(why) => StoreError::Other(shared.scrub(&why)),
                    StoreError::AccessDenied(why) => StoreError::AccessDenied(shared.scrub(&why)),
                    other => other,
                })
            }
            Err(_) => {
                shared.breakers.failed(breaker, "no answer within the command timeout");
                Err(StoreError::Timeout(shared.command_timeout))
            }
        }
    }

    async fn query<T: FromRedisValue + Send>(&self, key: &str, command: redis::Cmd) -> Result<T, StoreError> {
        self.bounded(key, |mut c| async move { command.query_async(&mut c).await })
            .await
    }

    /// One `SCAN`, on the single server or on the primary serving `slot`.
    async fn scan_once(
        &self,
        breaker: usize,
        slot: Option<u16>,
        pattern: &str,
        cursor: u64,
    ) -> Result<(u64, Vec<Vec<u8>>), StoreError> {
        let mut command = redis::cmd("SCAN");
        command
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_PAGE_KEYS);
        self.bounded_at(breaker, |connection| async move {
            let reply = match (connection, slot) {
                (Connection::Cluster(mut cluster), Some(slot)) => {
                    let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                    cluster.route_command(command, RoutingInfo::SingleNode(route)).await?
                }
                (mut connection, _) => command.query_async::<Value>(&mut connection).await?,
            };
            Ok(redis::from_redis_value(reply)?)
        })
        .await
    }

    /// The first slot each primary of the cluster serves, in order: a
    /// stable name for the node that the cluster client can route by.
    async fn primaries_by_first_slot(&self) -> Result<Vec<u16>, StoreError> {
        // Already in that order.
        Ok(self
            .cluster_primaries()
            .await?
            .iter()
            .filter_map(|primary| primary.slots.first().map(|&(start, _)| start))
            .collect())
    }

    /// The primaries of the cluster and the slots each serves, in the order
    /// of their first slot, as a node (any) sees them now.
    pub(crate) async fn cluster_primaries(&self) -> Result<Vec<Primary>, StoreError> {
        let shared = &*self.shared;
        let Some(Connection::Cluster(cluster)) = shared.connection.get().cloned() else {
            return Err(StoreError::Unavailable(format!(
                "not connected to the Redis Cluster at {} yet",
                shared.target
            )));
        };
        // Any node can tell, so this asks about no slot and passes no
        // breaker (a dead primary's open breaker must not hide the map that
        // says so); a few random nodes in turn, so that a dead one is not
        // the only one asked.
        let ask = async {
            let mut failure = None;
            for _ in 0..3 {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
                match cluster
                    .clone()
                    .route_command(redis::cmd("CLUSTER").arg("SLOTS").to_owned(), route)
                    .await
                {
                    Ok(reply) => return Ok(reply),
                    Err(error) => failure = Some(error),
                }
            }
            Err(failure.unwrap_or_else(|| RedisError::from((ErrorKind::Client, "no node asked"))))
        };
        let reply = timeout(shared.command_timeout, ask)
            .await
            .map_err(|_| StoreError::Timeout(shared.command_timeout))?
            .map_err(|error| StoreError::Unavailable(shared.scrub(&error.to_string())))?;
        let ranges: Vec<Value> =
            redis::from_redis_value(reply).map_err(|error| StoreError::Other(shared.scrub(&error.to_string())))?;
        // Each range: start, end, then the primary as [host, port, id, …].
        let mut primaries: Vec<Primary> = Vec::new();
        for range in ranges {
            let Value::Array(fields) = range else { continue };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
                continue;
            };
            let host = match primary.first() {
                Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(Value::SimpleString(host)) => host.clone(),
                _ => continue,
            };
            let Some(Ok(port)) = primary.get(1).map(|port| match port {
                Value::Int(port) => u16::try_from(*port).map_err(drop),
                _ => Err(()),
            }) else {
                continue;
            };
            let id = match primary.get(2) {
                Some(Value::BulkString(id)) => id.clone(),
                _ => format!("{host}:{port}").into_bytes(),
            };
            match primaries.iter_mut().find(|known| known.id == id) {
                Some(known) => known.slots.push((start, end)),
                None => primaries.push(Primary {
                    id,
                    host,
                    port,
                    slots: vec![(start, end)],
                }),
            }
        }
        for primary in &mut primaries {
            primary.slots.sort_unstable();
        }
        primaries.sort_by_key(|primary| primary.slots.first().copied());
        if primaries.is_empty() {
            return Err(StoreError::Unavailable("the cluster reports no slots served".into()));
        }
        Ok(primaries)
    }

    /// The values of `keys` and their remaining lifetimes read over
    /// `connection`, in one round trip, with the deadline and breaker of any
    /// call: `GET` for one key, or `MGET` when `many` (as [`Store::get`] and
    /// [`Store::get_many`] read them on a single server: `MGET` answers nil
    /// for a value of another type where `GET` fails), then a `PTTL` per
    /// key. The near cache reads through here: Redis tracks the keys a
    /// connection reads, so its tracking connection, not the shared one,
    /// must send the reads. On a cluster `connection` is to the primary the
    /// near cache believes serves the keys' slot; if it does not (any
    /// longer), the read is [`TrackedRead::Redirected`].
    pub(crate) async fn read_tracked(
        &self,
        connection: &MultiplexedConnection,
        keys: &[&str],
        many: bool,
    ) -> Result<TrackedRead, StoreError> {
        let Some(first) = keys.first() else {
            return Ok(TrackedRead::Values(Vec::new()));
        };
        let mut pipeline = redis::pipe();
        // Error replies come back as values, to be told apart (`WRONGTYPE`).
        pipeline.ignore_errors();
        match keys {
            [key] if !many => pipeline.get(key),
            _ => pipeline.cmd("MGET").arg(keys),
        };
        for key in keys {
            pipeline.pttl(key);
        }
        let mut connection = connection.clone();
        let mut replies: Vec<Value> = self
            .bounded(first, |_| async move { pipeline.query_async(&mut connection).await })
            .await?;
        let unexpected = || StoreError::Other("unexpected reply to a tracked read".into());
        if let Some(Value::ServerError(error)) = replies.iter().find(|reply| matches!(reply, Value::ServerError(_))) {
            if ["MOVED", "ASK"].contains(&error.code()) {
                return Ok(TrackedRead::Redirected);
            }
            return Err(classify(&error.clone().into()));
        }
        if replies.len() != keys.len() + 1 {
            return Err(unexpected());
        }
        let ttls = replies.split_off(1);
        let values: Vec<Option<Vec<u8>>> = match (many, replies.pop()) {
            (false, Some(value)) => vec![FromRedisValue::from_redis_value(value).map_err(|e| classify(&e.into()))?],
            (_, Some(values)) => FromRedisValue::from_redis_value(values).map_err(|e| classify(&e.into()))?,
            (_, None) => return Err(unexpected()),
        };
        if values.len() != keys.len() {
            return Err(unexpected());
        }
        values
            .into_iter()
            .zip(ttls)
            .map(|(value, ttl)| Ok((value, i64::from_redis_value(ttl).map_err(|e| classify(&e.into()))?)))
            .collect::<Result<_, StoreError>>()
            .map(TrackedRead::Values)
    }

    async fn invoke<T: FromRedisValue + Send>(
        &self,
        key: &str,
        invocation: ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.bounded(key, |mut c| async move { invocation.invoke_async(&mut c).await })
            .await
    }
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// The gauges of this store's breakers, for `/metrics`.
    fn breaker_gauges(&self) -> BreakerGauges {
        self.shared.breakers.gauges().clone()
    }

    /// Whether Redis can serve: `Ok` with a note, or `Err` with the reason.
    /// A cluster with some slot ranges unreachable still serves the others,
    /// so it is ready, and says so.
    fn readiness(&self) -> Result<String, String> {
        let shared = &self.shared;
        let target = &shared.target;
        if shared.connection.get().is_none() {
            return Err(format!(
                "not connected to Redis at {target} yet: {}",
                shared.breakers.last_error()
            ));
        }
        let open = shared.breakers.open_count();
        let all = shared.breakers.len();
        match open {
            0 => Ok(format!("Redis at {target} answers")),
            _ if open == all => Err(format!(
                "Redis at {target} is unreachable (circuit open): {}",
                shared.breakers.last_error()
            )),
            _ => Ok(format!(
                "Redis at {target} answers, except for {open} of {all} slot ranges (circuit open): {}",
                shared.breakers.last_error()
            )),
        }
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { self.query(key, redis::Cmd::get(key)).await })
    }

    /// One `MGET`, one round trip, on a single server. On a cluster, keys
    /// may live in different slots (a multi-key command or a pipeline there
    /// must stay in one): one `GET` per key, all in flight at once, each
    /// routed by the cluster client, so the call still costs about one round
    /// trip.
    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            match keys {
                [] => Ok(Vec::new()),
                _ if self.shared.cluster => try_join_all(keys.iter().map(|key| self.get(key))).await,
                [first, ..] => self.query(first, redis::cmd("MGET").arg(keys).to_owned()).await,
            }
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<u64>,
        only_if_absent: bool,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut command = redis::cmd("SET");
            command.arg(key).arg(value);
            if let Some(ttl) = ttl {
                command.arg("EX").arg(ttl);
            }
            if only_if_absent {
                command.arg("NX");
            }
            let reply: Value = self.query(key, command).await?;
            Ok(!matches!(reply, Value::Nil))
        })
    }

    /// One `DEL`; on a cluster, one per key, all in flight at once (see
    /// [`Self::get_many`]).
    fn delete<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, u32> {
        Box::pin(async move {
            match keys {
                [] => Ok(0),
                _ if self.shared.cluster => {
                    let deleted =
                        try_join_all(keys.iter().map(|key| self.query::<u32>(key, redis::Cmd::del(key)))).await?;
                    Ok(deleted.into_iter().sum())
                }
                [first, ..] => self.query(first, redis::Cmd::del(keys)).await,
            }
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move { self.query(key, redis::Cmd::exists(key)).await })
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: u64) -> StoreFuture<'a, bool> {
        Box::pin(async move { self.query(key, redis::cmd("EXPIRE").arg(key).arg(ttl).to_owned()).await })
    }

    fn ttl<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Ttl> {
        Box::pin(async move {
            let millis: i64 = self.query(key, redis::Cmd::pttl(key)).await?;
            Ok(match millis {
                -2 => Ttl::Missing,
                -1 => Ttl::Persistent,
                millis => Ttl::ExpiresIn(millis.max(1).unsigned_abs().div_ceil(1000)),
            })
        })
    }

    fn incr_by<'a>(&'a self, key: &'a str, delta: i64, ttl_if_new: u64) -> StoreFuture<'a, i64> {
        Box::pin(async move {
            let mut invocation = self.shared.scripts.incr_by.key(key);
            invocation.arg(delta).arg(ttl_if_new);
            self.invoke(key, invocation).await
        })
    }

    fn incr<'a>(&'a self, key: &'a str, delta: i64) -> StoreFuture<'a, i64> {
        Box::pin(async move {
            self.query(key, redis::cmd("INCRBY").arg(key).arg(delta).to_owned())
                .await
        })
    }

    /// `SCAN` with `MATCH` on the prefix (glob characters escaped). On a
    /// cluster, each primary is scanned in turn, in the order of the first
    /// slot it serves, each `SCAN` routed to it by that slot; the cursor
    /// holds that slot and the node's own cursor. A failover or resharding
    /// during a scan may list some keys twice or skip keys that moved.
    fn scan_prefix<'a>(&'a self, prefix: &'a str, cursor: u64) -> StoreFuture<'a, KeyPage> {
        Box::pin(async move {
            let pattern = format!("{}*", glob_escape(prefix));
            let mut keys = Vec::new();
            let mut seen = HashSet::new();
            let mut add = |found: Vec<Vec<u8>>, keys: &mut Vec<String>| {
                // Keys that are not UTF-8 were not written through this host,
                // and a guest could not name them.
                for key in found.into_iter().filter_map(|key| String::from_utf8(key).ok()) {
                    if seen.insert(key.clone()) {
                        keys.push(key);
                    }
                }
            };
            if !self.shared.cluster {
                let mut cursor = cursor;
                for _ in 0..MAX_SCANS_PER_PAGE {
                    let (next, found) = self.scan_once(0, None, &pattern, cursor).await?;
                    add(found, &mut keys);
                    cursor = next;
                    if cursor == 0 || keys.len() >= SCAN_PAGE_KEYS {
                        break;
                    }
                }
                return Ok(KeyPage {
                    keys,
                    cursor: (cursor != 0).then_some(cursor),
                });
            }
            let firsts = self.primaries_by_first_slot().await?;
            let mut node_slot = u16::try_from(cursor >> NODE_CURSOR_BITS).unwrap_or(u16::MAX);
            let mut node_cursor = cursor & ((1 << NODE_CURSOR_BITS) - 1);
            // The node of the cursor, or (the topology changed) the next one.
            let Some(mut node) = firsts.iter().position(|&first| first >= node_slot) else {
                return Ok(KeyPage { keys, cursor: None });
            };
            if firsts[node] != node_slot {
                node_cursor = 0;
            }
            for _ in 0..MAX_SCANS_PER_PAGE {
                node_slot = firsts[node];
                let breaker = self.shared.breakers.index_of_slot(node_slot);
                let (next, found) = self.scan_once(breaker, Some(node_slot), &pattern, node_cursor).await?;
                add(found, &mut keys);
                node_cursor = next;
                if node_cursor == 0 {
                    node += 1;
                    if node == firsts.len() {
                        return Ok(KeyPage { keys, cursor: None });
                    }
                }
                if keys.len() >= SCAN_PAGE_KEYS {
                    break;
                }
            }
            if node_cursor >= 1 << NODE_CURSOR_BITS {
                return Err(StoreError::Other(format!(
                    "a cluster node's SCAN cursor {node_cursor} does not fit in {NODE_CURSOR_BITS} bits"
                )));
            }
            Ok(KeyPage {
                keys,
                cursor: Some(u64::from(firsts[node]) << NODE_CURSOR_BITS | node_cursor),
            })
        })
    }

    fn incr_by_bounded<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl_if_new: u64,
        max: i64,
    ) -> StoreFuture<'a, BoundedIncr> {
        Box::pin(async move {
            let mut invocation = self.shared.scripts.incr_by_bounded.key(key);
            invocation.arg(delta).arg(ttl_if_new).arg(max);
            let (applied, value): (i64, i64) = self.invoke(key, invocation).await?;
            Ok(BoundedIncr {
                applied: applied == 1,
                value,
            })
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: &'a [u8],
        ttl: Option<u64>,
    ) -> StoreFuture<'a, CasOutcome> {
        Box::pin(async move {
            let mut invocation = self.shared.scripts.compare_and_swap.key(key);
            invocation
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(new)
                .arg(ttl.unwrap_or(0));
            let reply: Vec<Value> = self.invoke(key, invocation).await?;
            match reply.as_slice() {
                [Value::Int(1)] => Ok(CasOutcome::Swapped),
                [Value::Int(0)] => Ok(CasOutcome::Conflict(None)),
                [Value::Int(0), Value::BulkString(current)] => Ok(CasOutcome::Conflict(Some(current.clone()))),
                other => Err(StoreError::Other(format!(
                    "unexpected compare-and-swap reply {other:?}"
                ))),
            }
        })
    }

    fn compare_and_delete<'a>(&'a self, key: &'a str, expected: &'a [u8]) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut invocation = self.shared.scripts.compare_and_delete.key(key);
            invocation.arg(expected);
            let deleted: i64 = self.invoke(key, invocation).await?;
            Ok(deleted == 1)
        })
    }
}

impl Shared {
    fn scrub(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_owned();
        }
        scrub(text, &self.secrets)
    }

    /// Connects to a cluster and checks it with a `PING`.
    async fn connect_cluster(&self, client: &ClusterClient) -> Result<(), RedisError> {
        let mut connection = client.get_async_connection().await?;
        redis::cmd("PING").query_async::<Value>(&mut connection).await?;
        let _ = self.connection.set(Connection::Cluster(connection));
        Ok(())
    }

    /// Asks the server (or the node serving a breaker's slot range) for
    /// anything: any answer, an error reply included, means it is back.
    async fn probe(&self, breaker: usize) {
        let connection = self.connection.get().cloned();
        let probe = async move {
            let mut connection = connection.ok_or_else(|| "not connected".to_owned())?;
            let command = match self.probe_keys.get(breaker) {
                Some(key) => redis::Cmd::exists(key),
                None => redis::cmd("PING"),
            };
            match command.query_async::<Value>(&mut connection).await {
                Ok(_) => Ok(()),
                // An error reply (say NOPERM) comes from a live server.
                Err(error) if matches!(error.kind(), ErrorKind::Server(_)) && !is_outage(&error) => Ok(()),
                Err(error) => Err(self.scrub(&error.to_string())),
            }
        };
        let outcome = timeout(self.command_timeout, probe)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.command_timeout)));
        self.breakers.probed(breaker, outcome);
    }
}

/// The background task of a store: reaches a cluster that was not
/// reachable at start, and probes open breakers. It ends with the store.
async fn supervise(shared: Weak<Shared>, cluster_client: Option<ClusterClient>) {
    let mut tick = tokio::time::interval(SUPERVISOR_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connect_backoff = FIRST_BACKOFF;
    let mut next_connect = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        if shared.connection.get().is_none() {
            let Some(client) = &cluster_client else { return };
            if tokio::time::Instant::now() < next_connect {
                continue;
            }
            match timeout(
                shared.command_timeout.max(Duration::from_secs(1)),
                shared.connect_cluster(client),
            )
            .await
            {
                Ok(Ok(())) => tracing::info!(
                    target: "edge_cache::breaker",
                    redis = %shared.target,
                    "connected to the Redis Cluster"
                ),
                outcome => {
                    let error = match outcome {
                        Ok(Err(error)) => shared.scrub(&error.to_string()),
                        _ => "no answer in time".to_owned(),
                    };
                    shared.breakers.note_error(&error);
                    connect_backoff = (connect_backoff * 2).min(MAX_CONNECT_BACKOFF);
                    next_connect = tokio::time::Instant::now() + connect_backoff;
                }
            }
            continue;
        }
        let due: Vec<usize> = (0..shared.breakers.len())
            .filter(|&index| shared.breakers.take_probe(index))
            .collect();
        if !due.is_empty() {
            join_all(due.into_iter().map(|index| shared.probe(index))).await;
        }
    }
}

/// `text` as a `SCAN MATCH` pattern that matches it literally.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Maps a Redis error to what the guest can act on. Connection-level problems
/// are `Unavailable`; the message never contains credentials.
fn classify(error: &RedisError) -> StoreError {
    if error.is_io_error() || error.is_connection_refusal() || error.is_connection_dropped() {
        return StoreError::Unavailable(error.to_string());
    }
    match error.kind() {
        ErrorKind::AuthenticationFailed => StoreError::Unavailable("authentication failed".into()),
        ErrorKind::ClusterConnectionNotFound
        | ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ReadOnly,
        ) => StoreError::Unavailable(error.to_string()),
        ErrorKind::Server(ServerErrorKind::NoPerm) => StoreError::AccessDenied(error.to_string()),
        _ if error.code() == Some("WRONGTYPE") => StoreError::WrongType,
        _ if error.detail().is_some_and(|d| d.contains("not an integer")) => StoreError::WrongType,
        _ if error.detail().is_some_and(|d| d.contains("overflow")) => {
            StoreError::InvalidArgument("increment would overflow".into())
        }
        _ => StoreError::Other(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_patterns_match_the_prefix_literally() {
        assert_eq!(glob_escape("ns:kv:notes:"), "ns:kv:notes:");
        assert_eq!(glob_escape(r"a*b?c[d]e\f^g-h"), r"a\*b\?c\[d\]e\\f\^g\-h");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://user:hunter2@cache:6380/2"),
            "redis://user:***@cache:6380/2"
        );
        assert_eq!(redact_url("rediss://:hunter2@cache"), "rediss://:***@cache");
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
        let unparseable = redact_url("redis://user:hunter2@[bad");
        assert!(!unparseable.contains("hunter2"), "{unparseable}");
    }

    #[test]
    fn passwords_are_redacted_in_every_url_form() {
        for (url, shown) in [
            (
                "redis+unix:///run/redis.sock?db=2&pass=hunter2",
                "redis+unix:///run/redis.sock?db=2&pass=***",
            ),
            (
                "unix:///run/redis.sock?user=edge&pass=hunter2",
                "unix:///run/redis.sock?user=edge&pass=***",
            ),
            ("rediss://edge:hun%74er2@cache:6380", "rediss://edge:***@cache:6380"),
            ("redis://cache?password=hunter2", "redis://cache?password=***"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let secrets = url_secrets("rediss://edge:hun%74er2@cache:6380?token=t0ken");
        assert_eq!(
            scrub("auth hunter2 hun%74er2 t0ken failed", &secrets),
            "auth *** *** *** failed"
        );
    }
}
