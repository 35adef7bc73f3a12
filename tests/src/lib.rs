//! Test fixtures: real `redis-server` processes and harnesses serving the
//! built guest over HTTP on loopback.

use edge_cache_harness::caller::{ApiKeys, digest_hex};
use edge_cache_harness::engine::{GuestLimits, new_engine};
use edge_cache_harness::store::near::NearCacheConfig;
use edge_cache_harness::store::redis::RedisConfig;
use edge_cache_harness::{BUILT_GUEST, Harness, HarnessConfig, ServingConfig, StoreConfig};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The engine every harness of this test binary shares, configured as the
/// harness configures its own, with a pool large enough for every harness
/// the tests run at once (each bounds its own instances to its
/// `max_instances`, but they all draw on this one pool).
pub static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let limits = GuestLimits {
        max_instances: 1000,
        ..GuestLimits::default()
    };
    new_engine(&limits, false).expect("the engine starts")
});

/// The guest, compiled once per test binary.
pub static COMPONENT: LazyLock<Component> =
    LazyLock::new(|| Component::from_file(&ENGINE, BUILT_GUEST).expect("the built guest compiles"));

/// Starts `redis-server` on `port` (its TLS port when `tls`), logging to
/// `dir/redis.log`.
fn spawn(port: u16, tls: bool, dir: &std::path::Path, extra: &[String]) -> Child {
    let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let log = std::fs::File::create(dir.join("redis.log")).expect("create the server log");
    let port = port.to_string();
    let ports: &[&str] = match tls {
        true => &["--port", "0", "--tls-port", &port],
        false => &["--port", &port],
    };
    let spawned = Command::new(&binary)
        .args(ports)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "\n\n`{binary}` was not found: these tests need a real Redis server.\n\
             Install it with:\n\n    sudo apt-get update && sudo apt-get install -y redis-server\n\n\
             (or set REDIS_SERVER to its path)\n"
        ),
        Err(error) => panic!("cannot start {binary}: {error}"),
    }
}

/// A free loopback port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A free loopback port (never Redis' 6379).
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind to loopback")
            .local_addr()
            .unwrap()
            .port();
        if port != 6379 {
            return port;
        }
    }
}

/// A `redis-server` of this test's own, on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    /// Serves TLS only (its `extra` arguments name the certificates).
    tls: bool,
}

impl RedisServer {
    /// Starts a server with default settings.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments, e.g.
    /// `["--maxmemory", "1mb"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(free_port, extra, false)
    }

    /// Starts a server that speaks TLS only, on its port; `extra` gives
    /// the `--tls-*` arguments (certificates, client authentication).
    pub fn start_tls(extra: &[&str]) -> Self {
        Self::start_on(free_port, extra, true)
    }

    fn start_on(pick_port: fn() -> u16, extra: &[&str], tls: bool) -> Self {
        let extra: Vec<String> = extra.iter().map(|arg| arg.to_string()).collect();
        // A port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let port = pick_port();
            let dir = std::env::temp_dir().join(format!("edge-cache-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create the server's directory");
            let child = spawn(port, tls, &dir, &extra);
            let mut server = Self {
                child,
                port,
                dir,
                extra: extra.clone(),
                tls,
            };
            if server.wait_until_ready(Duration::from_secs(10)) {
                return server;
            }
        }
        panic!("redis-server did not become ready on any of 5 ports");
    }

    /// Kills the server, as an outage would; [`Self::restart`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is
    /// answered, as with a hung or swapping host. [`Self::thaw`] resumes it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen server (SIGCONT); it answers what was sent meanwhile.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts the server again on the same port (empty: it keeps no data).
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(self.port, self.tls, &self.dir, &self.extra);
        assert!(
            self.wait_until_ready(Duration::from_secs(10)),
            "redis-server did not come back"
        );
    }

    fn wait_until_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                eprintln!("redis-server exited early ({status}):\n{log}");
                return false;
            }
            if self.tls {
                // Checked without a client of its own: the log says when.
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                if log.contains("Ready to accept connections") {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let ping = redis::Client::open(self.url())
                .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection));
            match ping {
                Ok(_) => return true,
                // Answering, but wants credentials (ACL tests): ready.
                Err(error) if !error.is_io_error() && !error.is_connection_refusal() => return true,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        false
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A harness configuration for this server, with short timeouts.
    /// A harness configuration for this server. The command timeout is
    /// generous: a loaded test machine must not turn into fail-open
    /// decisions where a test counts exact ones.
    pub fn store(&self) -> StoreConfig {
        self.store_with_timeout(Duration::from_secs(3))
    }

    /// A harness configuration with a short command timeout, for outages.
    pub fn store_with_timeout(&self, command_timeout: Duration) -> StoreConfig {
        StoreConfig::Redis(RedisConfig {
            connect_timeout: Duration::from_millis(500),
            command_timeout,
            ..RedisConfig::new(self.url())
        })
    }

    /// A harness configuration for this server with a near cache.
    pub fn store_with_near_cache(&self, near_cache: NearCacheConfig) -> StoreConfig {
        match self.store() {
            StoreConfig::Redis(redis) => StoreConfig::Redis(RedisConfig {
                near_cache: Some(near_cache),
                ..redis
            }),
            other => other,
        }
    }

    /// Starts watching the commands clients send (`MONITOR`).
    pub fn monitor(&self) -> Monitor {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to MONITOR");
        stream.write_all(b"*1\r\n$7\r\nMONITOR\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), "+OK", "MONITOR answered {line:?}");
        Monitor {
            reader,
            port: self.port,
        }
    }

    /// A plain async connection for inspecting what the harness stored.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// The commands Redis runs, as `MONITOR` shows them, from
/// [`RedisServer::monitor`] on.
pub struct Monitor {
    reader: BufReader<std::net::TcpStream>,
    port: u16,
}

impl Monitor {
    /// Stops watching: how many times clients sent each command (by lower
    /// case name), leaving out those scripts ran. Sends a marker command
    /// last and reads up to it, so nothing that ran before is missed.
    pub fn finish(mut self) -> BTreeMap<String, u64> {
        static MARKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let marker = format!(
            "end-of-monitor-{}-{}",
            std::process::id(),
            MARKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut client = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        client
            .write_all(format!("*2\r\n$4\r\nECHO\r\n${}\r\n{marker}\r\n", marker.len()).as_bytes())
            .unwrap();
        let mut counts = BTreeMap::new();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.reader.read_line(&mut line).unwrap() > 0, "MONITOR ended early");
            if line.contains(&marker) {
                return counts;
            }
            // `+1700000000.000000 [0 127.0.0.1:40000] "GET" "key"`; scripts show `[0 lua]`.
            let Some((client, command)) = line.split_once("] ") else {
                continue;
            };
            if client.ends_with(" lua") {
                continue;
            }
            let name = command.split('"').nth(1).unwrap_or_default().to_ascii_lowercase();
            *counts.entry(name).or_insert(0) += 1;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A harness serving the built guest on a loopback port until dropped.
pub struct Served {
    pub harness: Arc<Harness>,
    pub address: SocketAddr,
    /// The admin listener (`/metrics`, `/livez`, `/readyz`).
    pub admin: SocketAddr,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<()>>,
    /// Stops the admin listener, on drop only: it outlives [`Self::stop`],
    /// as a platform's probes do during a drain.
    admin_shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Served {
    /// Serves the built guest.
    pub async fn start(config: HarnessConfig) -> Self {
        Self::start_component(config, &COMPONENT).await
    }

    /// Serves `component`, compiled with [`ENGINE`].
    pub async fn start_component(config: HarnessConfig, component: &Component) -> Self {
        let harness = Harness::with_component(&config, component)
            .await
            .expect("the harness starts");
        Self::serve(harness).await
    }

    /// Serves a harness already started, as `edge-cache serve` does.
    pub async fn serve(harness: Harness) -> Self {
        let harness = Arc::new(harness);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(harness.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let (admin_shutdown, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(harness.clone().serve_admin(admin_listener, async {
            let _ = admin_stopped.await;
        }));
        Self {
            harness,
            address,
            admin,
            client: reqwest::Client::new(),
            shutdown: Some(shutdown),
            serving: Some(serving),
            admin_shutdown: Some(admin_shutdown),
        }
    }

    /// Stops serving, as SIGTERM does: the listener closes and connections
    /// drain.
    pub fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Waits until serving has ended (after [`Self::stop`]).
    pub async fn stopped(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.await.expect("serving does not panic");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("the harness answers")
    }

    /// An admin route's status and body.
    pub async fn admin(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .expect("the admin listener answers");
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn put(&self, path: &str, body: &str) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .body(body.to_owned())
            .send()
            .await
            .expect("the harness answers")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(admin_shutdown) = self.admin_shutdown.take() {
            let _ = admin_shutdown.send(());
        }
    }
}

/// A configuration on the given store, with the test API keys issued,
/// everything else default.
pub fn config(store: StoreConfig) -> HarnessConfig {
    HarnessConfig {
        store,
        serving: ServingConfig {
            api_keys: test_api_keys(),
            ..ServingConfig::default()
        },
        ..HarnessConfig::default()
    }
}

/// The API keys the suites send, issued as a deployment would: by digest.
pub fn test_api_keys() -> ApiKeys {
    let named = [
        "k",
        "k1",
        "k2",
        "k-123",
        "racer",
        "victim",
        "fixed-window",
        "sliding-window",
        "gcra",
    ];
    let survivors = (0..100).map(|n| format!("survivor-{n}"));
    let digests: Vec<String> = named
        .into_iter()
        .map(str::to_owned)
        .chain(survivors)
        .map(|key| digest_hex(key.as_bytes()))
        .collect();
    ApiKeys::from_digests(digests.iter().map(String::as_str)).expect("digests parse")
}

/// Fixed windows are aligned to the wall clock: a test that must stay inside
/// one window first waits, when needed, until at least `margin` of the
/// current `window_seconds` window is left.
pub async fn within_one_window(window_seconds: u64, margin: Duration) {
    let window = Duration::from_secs(window_seconds);
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into_window = Duration::from_nanos((since_epoch.as_nanos() % window.as_nanos()) as u64);
    let left = window - into_window;
    if left < margin {
        tokio::time::sleep(left + Duration::from_millis(20)).await;
    }
}

/// The interfaces a component imports and exports, by name, decoded from
/// its bytes.
pub struct WorldNames {
    pub imports: std::collections::BTreeSet<String>,
    pub exports: std::collections::BTreeSet<String>,
}

impl WorldNames {
    pub fn of(component: &[u8]) -> Self {
        let wit_component::DecodedWasm::Component(resolve, world) =
            wit_component::decode(component).expect("a valid component")
        else {
            panic!("a component, not a WIT package");
        };
        let names = |items: &wit_parser::IndexMap<wit_parser::WorldKey, wit_parser::WorldItem>| {
            items.keys().map(|key| resolve.name_world_key(key)).collect()
        };
        let world = &resolve.worlds[world];
        Self {
            imports: names(&world.imports),
            exports: names(&world.exports),
        }
    }

    /// The imports that are not WASI's.
    pub fn own_imports(&self) -> std::collections::BTreeSet<&str> {
        self.imports
            .iter()
            .map(String::as_str)
            .filter(|name| !name.starts_with("wasi:"))
            .collect()
    }
}

/// A Redis Cluster of real `redis-server` processes on loopback: `masters`
/// primaries, each with `replicas_per_master` replicas; killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize, replicas_per_master: usize) -> Self {
        let count = masters * (1 + replicas_per_master);
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                RedisServer::start_on(
                    free_cluster_port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-require-full-coverage",
                        "no",
                    ],
                    false,
                )
            })
            .collect();
        let cli = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port())).collect();
        let created = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas_per_master.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cli} (Debian's redis-tools, installed with redis-server): {e}"));
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed:\n{}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_until(Duration::from_secs(20), |cluster| cluster.is_healthy(masters, count));
        cluster
    }

    /// Seed URLs for the harness (all nodes; the client needs only one).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn store(&self) -> StoreConfig {
        StoreConfig::RedisCluster(edge_cache_harness::store::redis::RedisClusterConfig {
            connect_timeout: Duration::from_millis(500),
            command_timeout: Duration::from_secs(3),
            ..edge_cache_harness::store::redis::RedisClusterConfig::new(self.urls())
        })
    }

    pub fn store_with_near_cache(&self, near_cache: NearCacheConfig) -> StoreConfig {
        match self.store() {
            StoreConfig::RedisCluster(cluster) => {
                StoreConfig::RedisCluster(edge_cache_harness::store::redis::RedisClusterConfig {
                    near_cache: Some(near_cache),
                    ..cluster
                })
            }
            other => other,
        }
    }

    /// A connection that follows the cluster's slots, as another client's.
    pub async fn client(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }

    /// Runs `command` on node `index`, whatever it serves.
    pub fn on_node<T: redis::FromRedisValue>(&self, index: usize, command: &redis::Cmd) -> T {
        let client = redis::Client::open(self.nodes[index].url()).unwrap();
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(2)).unwrap();
        command
            .query(&mut connection)
            .unwrap_or_else(|e| panic!("node {index}: {command:?}: {e}"))
    }

    /// The node ID of node `index`.
    pub fn node_id(&self, index: usize) -> String {
        self.on_node(index, redis::cmd("CLUSTER").arg("MYID"))
    }

    /// Moves the slot of `key`, with the keys in it, from the primary
    /// serving it to primary `to`, as `redis-cli --cluster reshard` does:
    /// importing and migrating states, `MIGRATE` of each key, then the new
    /// owner told to every primary.
    pub fn move_slot_of(&self, key: &str, to: usize) {
        let from = self.owner_of(key);
        assert_ne!(from, to, "{key} is served by node {to} already");
        let slot: i64 = self.on_node(from, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key));
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let setslot = |node: usize, state: &str, id: &str| {
            let _: () = self.on_node(node, redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(state).arg(id));
        };
        setslot(to, "IMPORTING", &from_id);
        setslot(from, "MIGRATING", &to_id);
        loop {
            let keys: Vec<String> = self.on_node(from, redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(100));
            if keys.is_empty() {
                break;
            }
            let _: redis::Value = self.on_node(
                from,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(self.nodes[to].port())
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(&keys),
            );
        }
        for node in self.masters() {
            setslot(node, "NODE", &to_id);
        }
        self.wait_until(Duration::from_secs(20), |cluster| cluster.owner_of(key) == to);
    }

    fn query<T: redis::FromRedisValue>(node: &RedisServer, command: &redis::Cmd) -> Option<T> {
        let client = redis::Client::open(node.url()).ok()?;
        let mut connection = client.get_connection_with_timeout(Duration::from_millis(300)).ok()?;
        command.query(&mut connection).ok()
    }

    /// Every live node sees the cluster as ok, with all slots served, and
    /// every replica is in sync with its primary.
    fn is_healthy(&self, masters: usize, live: usize) -> bool {
        let replicas_in_sync = self
            .nodes
            .iter()
            .filter_map(|node| Self::query::<String>(node, redis::cmd("INFO").arg("replication")))
            .filter(|info| info.contains("role:slave"))
            .all(|info| info.contains("master_link_status:up"));
        if !replicas_in_sync {
            return false;
        }
        let healthy = self
            .nodes
            .iter()
            .filter_map(|node| Self::query::<String>(node, &redis::cmd("CLUSTER").arg("INFO").to_owned()))
            .filter(|info| info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384"))
            .count();
        healthy >= live && self.masters().len() >= masters
    }

    /// The nodes that are primaries now.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&index| {
                Self::query::<Vec<redis::Value>>(&self.nodes[index], &redis::cmd("ROLE"))
                    .and_then(|role| role.first().cloned())
                    .is_some_and(|role| matches!(role, redis::Value::BulkString(ref kind) if kind == b"master"))
            })
            .collect()
    }

    /// The primary serving `key`.
    pub fn owner_of(&self, key: &str) -> usize {
        let masters = self.masters();
        let slot: i64 = Self::query(&self.nodes[masters[0]], redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .expect("CLUSTER KEYSLOT answers");
        masters
            .into_iter()
            .find(|&index| self.serves_slot(index, slot))
            .expect("a primary serves every slot")
    }

    fn serves_slot(&self, index: usize, slot: i64) -> bool {
        let Some(nodes) = Self::query::<String>(&self.nodes[index], &redis::cmd("CLUSTER").arg("NODES").to_owned())
        else {
            return false;
        };
        nodes.lines().filter(|line| line.contains("myself")).any(|line| {
            line.split_whitespace()
                .skip(8)
                .any(|range| match range.split_once('-') {
                    Some((from, to)) => {
                        from.parse::<i64>().is_ok_and(|f| f <= slot) && to.parse::<i64>().is_ok_and(|t| slot <= t)
                    }
                    None => range.parse::<i64>() == Ok(slot),
                })
        })
    }

    /// The keys each node holds (primaries only hold keys of their slots).
    pub fn keys_by_node(&self) -> Vec<Vec<String>> {
        self.masters()
            .into_iter()
            .map(|index| Self::query(&self.nodes[index], redis::cmd("KEYS").arg("*")).unwrap_or_default())
            .collect()
    }

    /// Kills node `index`, as a crash would.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].stop();
    }

    /// Waits until every remaining node agrees the cluster is ok again.
    pub fn wait_for_failover(&self, masters: usize, live: usize) {
        self.wait_until(Duration::from_secs(30), |cluster| cluster.is_healthy(masters, live));
    }

    fn wait_until(&self, within: Duration, ready: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !ready(self) {
            if Instant::now() >= deadline {
                let views: Vec<String> = self
                    .nodes
                    .iter()
                    .filter_map(|node| Self::query::<String>(node, &redis::cmd("CLUSTER").arg("NODES").to_owned()))
                    .collect();
                panic!(
                    "the cluster did not become healthy within {within:?}; nodes see:
{}",
                    views.join(
                        "
"
                    )
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
