//! The Redis backend: one multiplexed connection shared by every instance
//! (a [`ConnectionManager`] for one server, the async cluster client for a
//! Redis Cluster), every command bounded by a deadline.
//!
//! `ConnectionManager` reconnects on its own, but while it does, a command can
//! wait for seconds; the deadline turns that into a quick, typed `Timeout` so
//! no request hangs on a dead Redis. Multi-step primitives are Lua scripts,
//! run by SHA and loaded on `NOSCRIPT`, so each is one atomic round trip.

use super::{BoundedIncr, CacheError, CasOutcome, Ttl};
use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, Cmd, ErrorKind, FromRedisValue, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Script,
    ServerErrorKind, Value,
};
use std::future::Future;
use std::sync::Arc;
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

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host[:port][/db]` or `rediss://…` for TLS.
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
}

impl RedisClusterConfig {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_millis(500),
            retries: 3,
        }
    }
}

/// Why the Redis backend could not start.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("invalid Redis URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Replaces the password in a Redis URL, so URLs can be logged.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
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
pub struct RedisBackend {
    connection: Connection,
    command_timeout: Duration,
    scripts: Arc<Scripts>,
}

struct Scripts {
    incr_by: Script,
    incr_by_bounded: Script,
    compare_and_swap: Script,
}

impl RedisBackend {
    /// Connects and checks the connection with a `PING`.
    pub async fn connect(config: &RedisConfig) -> Result<Self, ConnectError> {
        // `rediss://` needs a process-wide TLS crypto provider; installing it
        // twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let redacted = redact_url(&config.url);
        let invalid = |reason: String| ConnectError::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(db) = config.db {
            if db < 0 {
                return Err(invalid(format!("the database number must not be negative, not {db}")));
            }
            let settings = info.redis_settings().clone().set_db(db);
            info = info.set_redis_settings(settings);
        }
        let client = Client::open(info).map_err(|e| invalid(e.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_number_of_retries(config.reconnect_retries)
            .set_max_delay(config.max_reconnect_delay);
        let unreachable = |reason: String| ConnectError::Unreachable {
            url: redacted.clone(),
            reason,
        };
        // The manager retries the first connection too; bound the whole start.
        let startup_deadline = config.connect_timeout * 2;
        let connection = timeout(
            startup_deadline,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| unreachable(format!("no connection within {startup_deadline:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
        Self::ready(Connection::Single(connection), config.command_timeout, unreachable).await
    }

    /// Connects to a Redis Cluster through its seed nodes and checks it.
    pub async fn connect_cluster(config: &RedisClusterConfig) -> Result<Self, ConnectError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let redacted = config
            .urls
            .iter()
            .map(|url| redact_url(url))
            .collect::<Vec<_>>()
            .join(",");
        if config.urls.is_empty() {
            return Err(ConnectError::InvalidUrl {
                url: redacted,
                reason: "no cluster node given".into(),
            });
        }
        let client = ClusterClient::builder(config.urls.iter().map(String::as_str))
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.command_timeout)
            .retries(config.retries)
            .build()
            .map_err(|e| ConnectError::InvalidUrl {
                url: redacted.clone(),
                reason: e.to_string(),
            })?;
        let unreachable = |reason: String| ConnectError::Unreachable {
            url: redacted.clone(),
            reason,
        };
        let startup_deadline = config.connect_timeout * 2;
        let connection = timeout(startup_deadline, client.get_async_connection())
            .await
            .map_err(|_| unreachable(format!("no connection within {startup_deadline:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        Self::ready(Connection::Cluster(connection), config.command_timeout, unreachable).await
    }

    /// Wraps a fresh connection and checks it with a `PING`.
    async fn ready(
        connection: Connection,
        command_timeout: Duration,
        unreachable: impl Fn(String) -> ConnectError,
    ) -> Result<Self, ConnectError> {
        let backend = Self {
            connection,
            command_timeout,
            scripts: Arc::new(Scripts {
                incr_by: Script::new(INCR_BY_SCRIPT),
                incr_by_bounded: Script::new(INCR_BY_BOUNDED_SCRIPT),
                compare_and_swap: Script::new(COMPARE_AND_SWAP_SCRIPT),
            }),
        };
        let pong: String = backend
            .bounded(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        debug_assert_eq!(pong, "PONG");
        Ok(backend)
    }

    /// Runs one request on a clone of the shared connection, within the
    /// command deadline.
    async fn bounded<T, F, Fut>(&self, request: F) -> Result<T, CacheError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        match timeout(self.command_timeout, request(self.connection.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if error.is_timeout() => Err(CacheError::Timeout(self.command_timeout)),
            Ok(Err(error)) => Err(classify(&error)),
            Err(_) => Err(CacheError::Timeout(self.command_timeout)),
        }
    }

    async fn query<T: FromRedisValue + Send>(&self, command: redis::Cmd) -> Result<T, CacheError> {
        self.bounded(|mut c| async move { command.query_async(&mut c).await })
            .await
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        self.query(redis::Cmd::get(key)).await
    }

    /// One `MGET`, one round trip, on a single server. On a cluster, keys
    /// may live in different slots (a multi-key command or a pipeline there
    /// must stay in one): one `GET` per key, all in flight at once, each
    /// routed by the cluster client, so the call still costs about one round
    /// trip.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        match (&self.connection, keys) {
            (_, []) => Ok(Vec::new()),
            (Connection::Single(_), keys) => self.query(redis::cmd("MGET").arg(keys).to_owned()).await,
            (Connection::Cluster(_), keys) => try_join_all(keys.iter().map(|key| self.get(key))).await,
        }
    }

    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<u64>,
        only_if_absent: bool,
    ) -> Result<bool, CacheError> {
        let mut command = redis::cmd("SET");
        command.arg(key).arg(value);
        if let Some(ttl) = ttl {
            command.arg("EX").arg(ttl);
        }
        if only_if_absent {
            command.arg("NX");
        }
        let reply: Value = self.query(command).await?;
        Ok(!matches!(reply, Value::Nil))
    }

    /// One `DEL`; on a cluster, one per key, all in flight at once (see
    /// [`Self::get_many`]).
    pub async fn delete(&self, keys: &[String]) -> Result<u32, CacheError> {
        match (&self.connection, keys) {
            (_, []) => Ok(0),
            (Connection::Single(_), keys) => self.query(redis::Cmd::del(keys)).await,
            (Connection::Cluster(_), keys) => {
                let deleted = try_join_all(keys.iter().map(|key| self.query::<u32>(redis::Cmd::del(key)))).await?;
                Ok(deleted.into_iter().sum())
            }
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        self.query(redis::Cmd::exists(key)).await
    }

    pub async fn expire(&self, key: &str, ttl: u64) -> Result<bool, CacheError> {
        self.query(redis::cmd("EXPIRE").arg(key).arg(ttl).to_owned()).await
    }

    pub async fn ttl(&self, key: &str) -> Result<Ttl, CacheError> {
        let millis: i64 = self.query(redis::Cmd::pttl(key)).await?;
        Ok(match millis {
            -2 => Ttl::Missing,
            -1 => Ttl::Persistent,
            millis => Ttl::ExpiresIn(millis.max(1).unsigned_abs().div_ceil(1000)),
        })
    }

    pub async fn incr_by(&self, key: &str, delta: i64, ttl_if_new: u64) -> Result<i64, CacheError> {
        let mut invocation = self.scripts.incr_by.key(key);
        invocation.arg(delta).arg(ttl_if_new);
        self.bounded(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
    }

    pub async fn incr_by_bounded(
        &self,
        key: &str,
        delta: i64,
        ttl_if_new: u64,
        max: i64,
    ) -> Result<BoundedIncr, CacheError> {
        let mut invocation = self.scripts.incr_by_bounded.key(key);
        invocation.arg(delta).arg(ttl_if_new).arg(max);
        let (applied, value): (i64, i64) = self
            .bounded(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(BoundedIncr {
            applied: applied == 1,
            value,
        })
    }

    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<u64>,
    ) -> Result<CasOutcome, CacheError> {
        let mut invocation = self.scripts.compare_and_swap.key(key);
        invocation
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(new)
            .arg(ttl.unwrap_or(0));
        let reply: Vec<Value> = self
            .bounded(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        match reply.as_slice() {
            [Value::Int(1)] => Ok(CasOutcome::Swapped),
            [Value::Int(0)] => Ok(CasOutcome::Conflict(None)),
            [Value::Int(0), Value::BulkString(current)] => Ok(CasOutcome::Conflict(Some(current.clone()))),
            other => Err(CacheError::Other(format!(
                "unexpected compare-and-swap reply {other:?}"
            ))),
        }
    }
}

/// Maps a Redis error to what the guest can act on. Connection-level problems
/// are `Unavailable`; the message never contains credentials.
fn classify(error: &RedisError) -> CacheError {
    if error.is_io_error() || error.is_connection_refusal() || error.is_connection_dropped() {
        return CacheError::Unavailable(error.to_string());
    }
    match error.kind() {
        ErrorKind::AuthenticationFailed => CacheError::Unavailable("authentication failed".into()),
        ErrorKind::ClusterConnectionNotFound
        | ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ReadOnly,
        ) => CacheError::Unavailable(error.to_string()),
        ErrorKind::Server(ServerErrorKind::NoPerm) => CacheError::Unavailable(format!("permission denied: {error}")),
        _ if error.code() == Some("WRONGTYPE") => CacheError::WrongType,
        _ if error.detail().is_some_and(|d| d.contains("not an integer")) => CacheError::WrongType,
        _ if error.detail().is_some_and(|d| d.contains("overflow")) => {
            CacheError::InvalidArgument("increment would overflow".into())
        }
        _ => CacheError::Other(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
