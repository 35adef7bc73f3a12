//! The near cache: values recently read from Redis, kept in the harness and
//! served from there (`--near-cache SIZE`), coherent through Redis'
//! server-assisted client-side caching.
//!
//! Reads that miss go to Redis over a tracking connection of the near
//! cache's own: RESP3, `CLIENT TRACKING ON` in the default mode, so Redis
//! remembers which keys this connection read and pushes an `invalidate`
//! message on it when any client changes one of them (or a `null` one on
//! `FLUSHALL` / `FLUSHDB`). Broadcast mode is not used: it would push
//! every rate-limit counter update to every harness. The rest of the
//! traffic keeps to the shared connection of [`RedisStore`].
//!
//! On a Redis Cluster there is a tracking connection per primary, and a
//! read goes to the one serving its key's slot, as `CLUSTER SLOTS` last
//! said: a hot key is then read from its node once, not on every request.
//! A slot that moves is safe at every step: migrating a key deletes it from
//! the node it leaves, which invalidates it here; a read sent to a node
//! that no longer serves the slot is redirected (`MOVED` / `ASK`), and is
//! then answered through the cluster client, keeping nothing, while the
//! map is fetched again. The map is compared with `CLUSTER SLOTS` every
//! [`HEARTBEAT`] too; when it changed, or any primary's connection is lost,
//! the near cache is emptied and every connection opened anew. A primary
//! that cannot be reached then costs its own keys only: they are read
//! through the cluster client, keeping nothing, until it answers again.
//!
//! What a client of the harness sees:
//! - `get` and `get-many` (each key) are answered from the near cache when
//!   it holds the key; everything else goes to Redis.
//! - A write by another client is seen once its invalidation has reached
//!   this harness: Redis queues it when the write executes and sends it
//!   with the writer's answer, so the bound is its one-way trip here.
//! - A write through this harness invalidates its key here when Redis
//!   answers it, so the harness reads its own writes.
//! - Only values are kept, not absences, and only values of at most
//!   [`NearCacheConfig::max_value_bytes`]; a value expires here no later
//!   than in Redis (its `PTTL` counted from before the read was sent).
//! - While the tracking connection is down, nothing is served from the
//!   near cache, and it is emptied when the connection is lost and again
//!   before it serves on a new one: a Redis restart leaves nothing stale.
//!   A connection that stops answering without closing is found by a
//!   `PING` every [`HEARTBEAT`]; until then (at most that and the command
//!   timeout) its values are served as they were.

use super::breaker::{BreakerGauges, SLOTS, key_slot};
use super::redis::{ConnectError, Primary, RedisClusterConfig, RedisConfig, RedisStore, TrackedRead};
use super::{BoundedIncr, CasOutcome, KeyPage, Store, StoreError, StoreFuture, Ttl};
use futures_util::future::{join_all, try_join_all};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, RedisError, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::time::timeout;

/// How often an idle tracking connection is checked with a `PING`.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The soonest the slot map is checked again after a read was redirected.
const REDIRECTED_RECHECK: Duration = Duration::from_millis(100);

/// Shards of the invalidation generations: more shards, fewer fills
/// skipped because another key of the shard changed meanwhile.
const SHARDS: usize = 256;

/// Bookkeeping bytes counted per entry on top of key and value.
const ENTRY_OVERHEAD: usize = 64;

/// Waits before reconnecting the tracking connection: the first, doubled
/// after each failure up to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The largest value kept, whatever the size: larger ones cost Redis one
/// round trip less than their transfer.
const MAX_VALUE_BYTES: u64 = 1 << 20;

/// How large the near cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearCacheConfig {
    /// Keys, values and bookkeeping, in bytes.
    pub max_bytes: u64,
    /// Values larger than this are not kept.
    pub max_value_bytes: usize,
}

impl NearCacheConfig {
    /// A near cache of `max_bytes`, keeping values of up to a 64th of it
    /// (at most 1 MiB), so that a few large values cannot push out the many
    /// hot small ones.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            max_value_bytes: usize::try_from((max_bytes / 64).min(MAX_VALUE_BYTES)).unwrap_or(usize::MAX),
        }
    }
}

#[derive(Clone)]
struct Entry {
    bytes: Arc<[u8]>,
    expires_at: Option<Instant>,
}

/// What `/metrics` shows of the near cache.
#[derive(Clone, Debug, Default)]
struct NearCacheMetrics {
    hits: Counter,
    misses: Counter,
    /// Keys Redis invalidated.
    invalidations: Counter,
    /// Times it was emptied: a flush in Redis, a lost or new connection.
    flushes: Counter,
    bytes: Gauge,
    entries: Gauge,
    /// Tracking connections up (one, or one per cluster primary).
    connections: Gauge,
    /// Cluster primaries with no tracking connection: their keys are not
    /// kept.
    unreachable: Gauge,
}

/// Redis with a near cache in front of its reads. See the module.
pub struct NearCache {
    redis: RedisStore,
    near: Arc<Near>,
}

/// The near cache's state, shared with its tracking task and the push
/// senders of its connections.
struct Near {
    entries: moka::sync::Cache<String, Entry>,
    /// Per shard of keys, how many invalidations it has seen: a read
    /// keeps its value only if its shard saw none while it was in flight.
    generations: Box<[Mutex<u64>]>,
    /// Whether the tracking connections are up: hits are served only then.
    serving: AtomicBool,
    tracking: RwLock<Option<Arc<Tracking>>>,
    /// Wakes the tracking task when a cluster node redirected a read.
    redirected: Arc<Notify>,
    max_value_bytes: usize,
    metrics: NearCacheMetrics,
}

/// Where the tracking connections go.
enum Target {
    /// One server: one connection.
    Server(Client),
    /// A cluster: one connection per primary.
    Cluster(RedisClusterConfig),
}

/// The connections Redis tracks reads on, and which set they are.
struct Tracking {
    id: u64,
    /// `None` for a cluster primary that could not be reached: its keys
    /// are read through the store, keeping nothing.
    connections: Vec<Option<MultiplexedConnection>>,
    /// On a cluster, for each slot, the index of the connection to the
    /// primary serving it ([`UNSERVED`] if none does); empty for one
    /// server.
    slots: Box<[u16]>,
}

/// A slot no primary serves, in [`Tracking::slots`].
const UNSERVED: u16 = u16::MAX;

impl Tracking {
    /// The connection to read `key` over; `None` when no primary serves it.
    fn connection_for(&self, key: &str) -> Option<&MultiplexedConnection> {
        let index = match self.slots.is_empty() {
            true => 0,
            false => usize::from(self.slots[usize::from(key_slot(key.as_bytes()))]),
        };
        self.connections.get(index)?.as_ref()
    }

    /// How many connections there are, and how many primaries have none.
    fn counts(&self) -> (usize, usize) {
        let missing = self
            .connections
            .iter()
            .filter(|connection| connection.is_none())
            .count();
        (self.connections.len() - missing, missing)
    }

    /// Answers once every connection answered a `PING`, whose reply
    /// follows every invalidation sent on it before.
    async fn ping_all(&self) -> Result<(), RedisError> {
        try_join_all(self.connections.iter().flatten().map(|connection| {
            let mut connection = connection.clone();
            async move { redis::cmd("PING").query_async::<Value>(&mut connection).await }
        }))
        .await
        .map(drop)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// FNV-1a: cheap, and a key's shard needs no secret (a guest that crowds
/// one shard only makes its own fills skip more often).
fn shard_of(key: &[u8]) -> usize {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % SHARDS as u64) as usize
}

impl Near {
    fn new(config: NearCacheConfig) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &String, entry: &Entry| {
                u32::try_from(key.len() + entry.bytes.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .build();
        Self {
            entries,
            generations: (0..SHARDS).map(|_| Mutex::new(0)).collect(),
            serving: AtomicBool::new(false),
            tracking: RwLock::new(None),
            redirected: Arc::new(Notify::new()),
            max_value_bytes: config.max_value_bytes,
            metrics: NearCacheMetrics::default(),
        }
    }

    fn lookup(&self, key: &str, now: Instant) -> Option<Vec<u8>> {
        if !self.serving.load(Ordering::Acquire) {
            return None;
        }
        let entry = self.entries.get(key)?;
        if entry.expires_at.is_some_and(|at| at <= now) {
            return None;
        }
        Some(entry.bytes.to_vec())
    }

    /// The tracking connections, while they are up.
    fn tracking(&self) -> Option<Arc<Tracking>> {
        if !self.serving.load(Ordering::Acquire) {
            return None;
        }
        self.tracking.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn generation(&self, key: &str) -> u64 {
        *lock(&self.generations[shard_of(key.as_bytes())])
    }

    /// Keeps `value`, read from Redis for `key` when its shard was at
    /// `generation`, unless something invalidated the shard since.
    ///
    /// Why no value read before a write can be kept after that write's
    /// invalidation: the read went out on the tracking connection (on a
    /// cluster, the one to the primary serving the key) after `generation`
    /// was taken. If the write ran after the read in Redis,
    /// Redis sends its invalidation on the same connection after the
    /// read's reply, and the connection's reader hands both over in that
    /// order; the invalidation ([`Self::invalidate`]) bumps the shard's
    /// generation and removes the key under the shard's lock, which this
    /// insert holds too. So either this insert comes first and the
    /// invalidation removes what it kept, or the invalidation comes first
    /// and this insert sees a newer generation and keeps nothing. A write
    /// through this harness invalidates after Redis answered it, with the
    /// same effect for reads in flight; a flush or a lost connection bumps
    /// every shard and clears `serving` ([`Self::flush`], [`Self::suspend`]).
    fn keep(&self, key: &str, generation: u64, value: &[u8], pttl: i64, sent_at: Instant) {
        if value.len() > self.max_value_bytes {
            return;
        }
        let expires_at = match pttl {
            -1 => None,
            // Counted from before the read was sent: never later than Redis.
            millis if millis > 0 => Some(sent_at + Duration::from_millis(millis.unsigned_abs())),
            // Expired or gone between GET and PTTL: an invalidation follows.
            _ => return,
        };
        let entry = Entry {
            bytes: value.into(),
            expires_at,
        };
        let shard = lock(&self.generations[shard_of(key.as_bytes())]);
        if *shard == generation && self.serving.load(Ordering::Acquire) {
            self.entries.insert(key.to_owned(), entry);
        }
        drop(shard);
        self.update_gauges();
    }

    /// Forgets `key`, and makes reads of it in flight keep nothing.
    fn invalidate(&self, key: &[u8]) {
        let mut shard = lock(&self.generations[shard_of(key)]);
        *shard += 1;
        let removed = std::str::from_utf8(key)
            .ok()
            .and_then(|key| self.entries.remove(key))
            .is_some();
        drop(shard);
        if removed {
            self.update_gauges();
        }
    }

    /// Forgets everything, and makes every read in flight keep nothing.
    fn flush(&self) {
        // Every shard, in order (the only place that takes more than one).
        let mut shards: Vec<MutexGuard<'_, u64>> = self.generations.iter().map(lock).collect();
        for shard in &mut shards {
            **shard += 1;
        }
        self.entries.invalidate_all();
        drop(shards);
        self.metrics.flushes.inc();
        self.update_gauges();
    }

    /// An invalidation message from Redis: the keys, or `null` for all.
    fn invalidated(&self, data: &[Value]) {
        match data.first() {
            Some(Value::Array(keys)) => {
                for key in keys {
                    if let Value::BulkString(key) = key {
                        self.invalidate(key);
                        self.metrics.invalidations.inc();
                    }
                }
            }
            _ => self.flush(),
        }
    }

    /// Serves again, on new tracking connections: emptied first, since
    /// what was kept may have changed while nothing was tracked.
    fn resume(&self, tracking: Tracking) {
        self.flush();
        self.count_connections(Some(&tracking));
        *self.tracking.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(tracking));
        self.serving.store(true, Ordering::Release);
    }

    fn count_connections(&self, tracking: Option<&Tracking>) {
        let (up, missing) = tracking.map_or((0, 0), Tracking::counts);
        let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        self.metrics.connections.set(gauge(up));
        self.metrics.unreachable.set(gauge(missing));
    }

    /// Replaces connections `id` with `tracking`, the same set with more
    /// primaries reached, if they are still the ones in use.
    fn extend(&self, tracking: Tracking) -> bool {
        let mut current = self.tracking.write().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_none_or(|current| current.id != tracking.id) {
            return false;
        }
        self.count_connections(Some(&tracking));
        *current = Some(Arc::new(tracking));
        true
    }

    /// Stops serving, if connections `id` are the ones in use: from now on
    /// invalidations may be missed.
    fn suspend(&self, id: u64) {
        let mut tracking = self.tracking.write().unwrap_or_else(PoisonError::into_inner);
        if tracking.as_ref().is_none_or(|tracking| tracking.id != id) {
            return;
        }
        self.serving.store(false, Ordering::Release);
        *tracking = None;
        self.count_connections(None);
        drop(tracking);
        self.flush();
    }

    /// Called where something was kept or removed, never on a hit: moka
    /// counts sizes once its pending bookkeeping has run.
    fn update_gauges(&self) {
        self.entries.run_pending_tasks();
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.metrics.bytes.set(gauge(self.entries.weighted_size()));
        self.metrics.entries.set(gauge(self.entries.entry_count()));
    }
}

/// The background task that keeps the tracking connections up while the
/// near cache lives.
struct Tracker {
    near: Weak<Near>,
    target: Target,
    redis: RedisStore,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// Whether a task is trying to reach unreachable primaries.
    reaching: AtomicBool,
}

impl Tracker {
    /// How long one connection may take to open and turn tracking on.
    fn connection_deadline(&self) -> Duration {
        self.connect_timeout + self.command_timeout
    }

    /// Connects, turns tracking on, serves; when a connection is lost (its
    /// reader reports it), stops answering the heartbeat, or the cluster's
    /// slots moved, stops serving and connects anew.
    async fn run(self: Arc<Self>) {
        let mut backoff = FIRST_BACKOFF;
        let mut id = 0;
        let mut reported = false;
        loop {
            id += 1;
            // Each step of opening has a deadline of its own (a cluster's
            // slots, then each primary); this one bounds them all.
            let opened = timeout(self.command_timeout + self.connection_deadline(), self.open(id)).await;
            let Some(shared) = self.near.upgrade() else { return };
            match opened {
                Ok(Ok((tracking, primaries))) => {
                    let redirected = shared.redirected.clone();
                    let (connections, missing) = tracking.counts();
                    shared.resume(tracking);
                    drop(shared);
                    tracing::info!(
                        target: "edge_cache::near_cache",
                        connections,
                        "near cache serving: Redis tracks its reads"
                    );
                    if missing > 0 {
                        tracing::warn!(
                            target: "edge_cache::near_cache",
                            "near cache: {missing} cluster primaries unreachable; their keys are read \
                             from Redis each time until they are"
                        );
                    }
                    backoff = FIRST_BACKOFF;
                    reported = false;
                    let Some(why) = self.clone().watch(id, &primaries, &redirected).await else {
                        return;
                    };
                    tracing::warn!(
                        target: "edge_cache::near_cache",
                        "near cache emptied and off: {why}; reconnecting"
                    );
                }
                failure => {
                    drop(shared);
                    if !reported {
                        let error = match failure {
                            Ok(Err(error)) => error,
                            _ => "no answer in time".to_owned(),
                        };
                        tracing::warn!(
                            target: "edge_cache::near_cache",
                            %error,
                            "near cache off: no tracking connection to Redis; retrying"
                        );
                        reported = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// A connection of set `id` to `client`, with tracking on.
    async fn connect(&self, id: u64, client: Client) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_push_sender(push_sender(self.near.clone(), id));
        let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .query_async::<()>(&mut connection)
            .await?;
        Ok(connection)
    }

    /// A connection of set `id` to `primary`.
    async fn connect_primary(&self, id: u64, primary: &Primary) -> Result<MultiplexedConnection, String> {
        let Target::Cluster(config) = &self.target else {
            return Err("not a cluster".into());
        };
        let client = config
            .node_client(&primary.host, primary.port, ProtocolVersion::RESP3)
            .map_err(|error| error.to_string())?;
        self.connect(id, client).await.map_err(|error| error.to_string())
    }

    /// Opens tracking connections `id`: the server's, or one to each
    /// primary of the cluster that answers, with the map of which serves
    /// each slot (and the primaries as `CLUSTER SLOTS` named them, to tell
    /// when they change). A primary that does not answer costs its own
    /// keys only: they are read from Redis each time until it does.
    async fn open(&self, id: u64) -> Result<(Tracking, Vec<Primary>), String> {
        if let Target::Server(client) = &self.target {
            let connection = self
                .connect(id, client.clone())
                .await
                .map_err(|error| error.to_string())?;
            let tracking = Tracking {
                id,
                connections: vec![Some(connection)],
                slots: Box::default(),
            };
            return Ok((tracking, Vec::new()));
        }
        let primaries = self
            .redis
            .cluster_primaries()
            .await
            .map_err(|error| error.to_string())?;
        let connected = join_all(primaries.iter().map(|primary| async move {
            timeout(self.connection_deadline(), self.connect_primary(id, primary))
                .await
                .unwrap_or_else(|_| Err(format!("{}:{} did not answer in time", primary.host, primary.port)))
        }))
        .await;
        if let Some(Err(error)) = connected.iter().find(|connection| connection.is_err())
            && connected.iter().all(Result::is_err)
        {
            return Err(error.clone());
        }
        let mut slots = vec![UNSERVED; SLOTS].into_boxed_slice();
        for (index, primary) in primaries.iter().enumerate() {
            let index = u16::try_from(index).map_err(|_| "more primaries than slots".to_owned())?;
            for &(start, end) in &primary.slots {
                for slot in start..=end {
                    if let Some(entry) = slots.get_mut(usize::from(slot)) {
                        *entry = index;
                    }
                }
            }
        }
        let tracking = Tracking {
            id,
            connections: connected.into_iter().map(Result::ok).collect(),
            slots,
        };
        Ok((tracking, primaries))
    }

    /// Returns why tracking connections `id` are no longer the ones in
    /// use, or `None` once the near cache is gone. Every [`HEARTBEAT`], or
    /// at once when a read was redirected, pings each connection, connects
    /// to the primaries that were unreachable and, on a cluster, compares
    /// `primaries` with what `CLUSTER SLOTS` says now.
    async fn watch(self: Arc<Self>, id: u64, primaries: &[Primary], redirected: &Notify) -> Option<&'static str> {
        let mut checked = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(checked + HEARTBEAT) => {}
                // A slot being migrated redirects many reads: one check
                // per REDIRECTED_RECHECK is enough.
                () = redirected.notified() => tokio::time::sleep_until(checked + REDIRECTED_RECHECK).await,
            }
            checked = tokio::time::Instant::now();
            let shared = self.near.upgrade()?;
            let tracking = shared.tracking().filter(|tracking| tracking.id == id);
            drop(shared);
            let Some(tracking) = tracking else {
                return Some("a tracking connection to Redis was lost");
            };
            let answered = timeout(self.command_timeout, tracking.ping_all()).await;
            let why = if !matches!(answered, Ok(Ok(()))) {
                "a tracking connection to Redis stopped answering"
            } else if primaries.is_empty() {
                continue;
            } else {
                match timeout(self.command_timeout, self.redis.cluster_primaries()).await {
                    Ok(Ok(now)) if now != primaries => "the cluster's slots moved",
                    // Unchanged, or not known now: the pings judge the connections.
                    _ => {
                        self.reach_missing(&tracking, primaries);
                        continue;
                    }
                }
            };
            if let Some(shared) = self.near.upgrade() {
                shared.suspend(id);
            }
            return Some(why);
        }
    }

    /// Connects to the primaries of `tracking` that were unreachable, and
    /// serves their keys too from then on; in a task of its own (one at a
    /// time), so that a primary slow to answer does not hold up the
    /// heartbeat. Nothing of theirs was kept, so nothing needs emptying.
    fn reach_missing(self: &Arc<Self>, tracking: &Arc<Tracking>, primaries: &[Primary]) {
        let missing: Vec<(usize, Primary)> = (0..tracking.connections.len())
            .filter(|&index| tracking.connections[index].is_none())
            .filter_map(|index| Some((index, primaries.get(index)?.clone())))
            .collect();
        if missing.is_empty() || self.reaching.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tracker, tracking) = (self.clone(), tracking.clone());
        tokio::spawn(async move {
            let reached = join_all(missing.iter().map(|(index, primary)| async {
                let connection = timeout(
                    tracker.connection_deadline(),
                    tracker.connect_primary(tracking.id, primary),
                )
                .await;
                (*index, connection)
            }))
            .await;
            tracker.reaching.store(false, Ordering::Release);
            let mut connections = tracking.connections.clone();
            let mut added = 0;
            for (index, connection) in reached {
                if let Ok(Ok(connection)) = connection {
                    connections[index] = Some(connection);
                    added += 1;
                }
            }
            let Some(shared) = tracker.near.upgrade() else { return };
            let extended = Tracking {
                id: tracking.id,
                connections,
                slots: tracking.slots.clone(),
            };
            if added > 0 && shared.extend(extended) {
                tracing::info!(
                    target: "edge_cache::near_cache",
                    "near cache: {added} more cluster primaries reached; their keys are kept too"
                );
            }
        });
    }
}

/// What the reader of connection `id` calls with every push message, in
/// the order they arrive, interleaved with the replies it hands over.
fn push_sender(near: Weak<Near>, id: u64) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
    move |push: PushInfo| {
        let Some(near) = near.upgrade() else { return Err(()) };
        match push.kind {
            PushKind::Invalidate => near.invalidated(&push.data),
            PushKind::Disconnection => near.suspend(id),
            _ => {}
        }
        Ok(())
    }
}

impl NearCache {
    /// Connects to Redis as [`RedisStore::connect`] does, and opens the
    /// tracking connection in the background; when Redis answered, waits
    /// for it as long as a first contact may take, so that a harness
    /// started on a reachable Redis serves from the near cache at once.
    pub async fn connect(config: &RedisConfig, near: NearCacheConfig) -> Result<Self, ConnectError> {
        let client = RedisStore::client(config, Some(ProtocolVersion::RESP3))?;
        let redis = RedisStore::connect(config).await?;
        Ok(Self::start(
            redis,
            Target::Server(client),
            near,
            config.connect_timeout,
            config.command_timeout,
        )
        .await)
    }

    /// Connects to a Redis Cluster as [`RedisStore::connect_cluster`] does,
    /// then as [`Self::connect`], with a tracking connection per primary.
    pub async fn connect_cluster(config: &RedisClusterConfig, near: NearCacheConfig) -> Result<Self, ConnectError> {
        let redis = RedisStore::connect_cluster(config).await?;
        Ok(Self::start(
            redis,
            Target::Cluster(config.clone()),
            near,
            config.connect_timeout,
            config.command_timeout,
        )
        .await)
    }

    async fn start(
        redis: RedisStore,
        target: Target,
        near: NearCacheConfig,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Self {
        let near = Arc::new(Near::new(near));
        let tracker = Arc::new(Tracker {
            near: Arc::downgrade(&near),
            target,
            redis: redis.clone(),
            connect_timeout,
            command_timeout,
            reaching: AtomicBool::new(false),
        });
        tokio::spawn(tracker.run());
        // An unreachable Redis was already waited for, and reported.
        let reachable = redis.readiness().is_ok();
        let deadline = Instant::now() + connect_timeout * 2;
        while reachable && !near.serving.load(Ordering::Acquire) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Self { redis, near }
    }

    /// Whether the near cache serves (its tracking connections are up).
    pub fn is_serving(&self) -> bool {
        self.near.serving.load(Ordering::Acquire)
    }

    /// Waits until every invalidation Redis sent before this call has been
    /// applied: a `PING` on each tracking connection, whose reply follows
    /// them on the wire. `false` when the tracking connections are down
    /// (then nothing is served from the near cache).
    pub async fn caught_up(&self) -> bool {
        let Some(tracking) = self.near.tracking() else {
            return false;
        };
        tracking.ping_all().await.is_ok()
    }

    /// Runs a write, then invalidates what it wrote, whatever the outcome:
    /// a write that timed out may still have been applied.
    async fn written<T>(
        &self,
        keys: impl IntoIterator<Item = &str>,
        write: StoreFuture<'_, T>,
    ) -> Result<T, StoreError> {
        let outcome = write.await;
        for key in keys {
            self.near.invalidate(key.as_bytes());
        }
        outcome
    }

    /// Reads `keys` from Redis over the tracking connections, as `get`
    /// (one key) or `get-many` (`many`) would, and keeps what may be kept;
    /// through the store, keeping nothing, while the tracking connections
    /// are down. On a cluster each key is read from its primary, all at
    /// once, as [`RedisStore`] reads many keys of a cluster.
    async fn read_through(&self, keys: &[&str], many: bool) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let Some(tracking) = self.near.tracking() else {
            return self.read_untracked(keys, many).await;
        };
        if tracking.slots.is_empty() {
            let Some(connection) = tracking.connections.first().and_then(Option::as_ref) else {
                return self.read_untracked(keys, many).await;
            };
            return self.read_kept(connection, keys, many).await;
        }
        try_join_all(keys.iter().map(|key| {
            let tracking = &tracking;
            async move {
                let Some(connection) = tracking.connection_for(key) else {
                    return self.redis.get(key).await;
                };
                Ok(self.read_kept(connection, &[key], false).await?.pop().flatten())
            }
        }))
        .await
    }

    /// Reads `keys` over tracking `connection` and keeps what may be kept;
    /// a read the node redirected is answered through the store instead,
    /// and wakes the tracking task to fetch the cluster's slots again.
    async fn read_kept(
        &self,
        connection: &MultiplexedConnection,
        keys: &[&str],
        many: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let generations: Vec<u64> = keys.iter().map(|key| self.near.generation(key)).collect();
        let sent_at = Instant::now();
        let read = match self.redis.read_tracked(connection, keys, many).await? {
            TrackedRead::Values(read) => read,
            TrackedRead::Redirected => {
                self.near.redirected.notify_one();
                return self.read_untracked(keys, many).await;
            }
        };
        Ok(keys
            .iter()
            .zip(generations)
            .zip(read)
            .map(|((key, generation), (value, pttl))| {
                if let Some(value) = &value {
                    self.near.keep(key, generation, value, pttl, sent_at);
                }
                value
            })
            .collect())
    }

    /// Reads `keys` through the store, keeping nothing.
    async fn read_untracked(&self, keys: &[&str], many: bool) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if let ([key], false) = (keys, many) {
            return Ok(vec![self.redis.get(key).await?]);
        }
        let keys: Vec<String> = keys.iter().map(|key| (*key).to_owned()).collect();
        self.redis.get_many(&keys).await
    }
}

impl Store for NearCache {
    fn kind(&self) -> &'static str {
        "redis-near-cache"
    }

    fn readiness(&self) -> Result<String, String> {
        let redis = self.redis.readiness()?;
        let unreachable = self.near.metrics.unreachable.get();
        Ok(match self.is_serving() {
            true if unreachable > 0 => format!(
                "{redis}; the near cache serves, but not the keys of {unreachable} cluster primaries it cannot reach"
            ),
            true => format!("{redis}; the near cache serves"),
            false => format!("{redis}; the near cache is off until its tracking connection is back"),
        })
    }

    fn breaker_gauges(&self) -> BreakerGauges {
        self.redis.breaker_gauges()
    }

    fn register_metrics(&self, registry: &mut Registry) {
        let metrics = &self.near.metrics;
        registry.register(
            "near_cache_hits",
            "Reads answered from the near cache",
            metrics.hits.clone(),
        );
        registry.register(
            "near_cache_misses",
            "Reads the near cache could not answer (sent to Redis)",
            metrics.misses.clone(),
        );
        registry.register(
            "near_cache_invalidations",
            "Keys Redis invalidated in the near cache",
            metrics.invalidations.clone(),
        );
        registry.register(
            "near_cache_flushes",
            "Times the near cache was emptied (a flush in Redis, a lost or new tracking connection)",
            metrics.flushes.clone(),
        );
        registry.register(
            "near_cache_bytes",
            "Bytes held by the near cache (keys, values, bookkeeping)",
            metrics.bytes.clone(),
        );
        registry.register(
            "near_cache_entries",
            "Values held by the near cache",
            metrics.entries.clone(),
        );
        registry.register(
            "near_cache_connections",
            "Tracking connections up (one per Redis Cluster primary)",
            metrics.connections.clone(),
        );
        registry.register(
            "near_cache_primaries_unreachable",
            "Redis Cluster primaries the near cache has no tracking connection to (their keys are not kept)",
            metrics.unreachable.clone(),
        );
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            if let Some(value) = self.near.lookup(key, Instant::now()) {
                self.near.metrics.hits.inc();
                return Ok(Some(value));
            }
            self.near.metrics.misses.inc();
            let mut values = self.read_through(&[key], false).await?;
            Ok(values.pop().flatten())
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            let now = Instant::now();
            let mut values: Vec<Option<Vec<u8>>> = keys.iter().map(|key| self.near.lookup(key, now)).collect();
            let missing: Vec<usize> = (0..keys.len()).filter(|&index| values[index].is_none()).collect();
            self.near.metrics.hits.inc_by((keys.len() - missing.len()) as u64);
            self.near.metrics.misses.inc_by(missing.len() as u64);
            if missing.is_empty() {
                return Ok(values);
            }
            let names: Vec<&str> = missing.iter().map(|&index| keys[index].as_str()).collect();
            let read = self.read_through(&names, true).await?;
            for (index, value) in missing.into_iter().zip(read) {
                values[index] = value;
            }
            Ok(values)
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<u64>,
        only_if_absent: bool,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.written([key], self.redis.set(key, value, ttl, only_if_absent)))
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, u32> {
        Box::pin(self.written(keys.iter().map(String::as_str), self.redis.delete(keys)))
    }

    fn exists<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        self.redis.exists(key)
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: u64) -> StoreFuture<'a, bool> {
        Box::pin(self.written([key], self.redis.expire(key, ttl)))
    }

    fn ttl<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Ttl> {
        self.redis.ttl(key)
    }

    fn incr_by<'a>(&'a self, key: &'a str, delta: i64, ttl_if_new: u64) -> StoreFuture<'a, i64> {
        Box::pin(self.written([key], self.redis.incr_by(key, delta, ttl_if_new)))
    }

    fn incr<'a>(&'a self, key: &'a str, delta: i64) -> StoreFuture<'a, i64> {
        Box::pin(self.written([key], self.redis.incr(key, delta)))
    }

    fn scan_prefix<'a>(&'a self, prefix: &'a str, cursor: u64) -> StoreFuture<'a, KeyPage> {
        self.redis.scan_prefix(prefix, cursor)
    }

    fn incr_by_bounded<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl_if_new: u64,
        max: i64,
    ) -> StoreFuture<'a, BoundedIncr> {
        Box::pin(self.written([key], self.redis.incr_by_bounded(key, delta, ttl_if_new, max)))
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: &'a [u8],
        ttl: Option<u64>,
    ) -> StoreFuture<'a, CasOutcome> {
        Box::pin(self.written([key], self.redis.compare_and_swap(key, expected, new, ttl)))
    }

    fn compare_and_delete<'a>(&'a self, key: &'a str, expected: &'a [u8]) -> StoreFuture<'a, bool> {
        Box::pin(self.written([key], self.redis.compare_and_delete(key, expected)))
    }
}
