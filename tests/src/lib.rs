//! Test fixtures: real `redis-server` processes and harnesses serving the
//! built guest over HTTP on loopback.

use edge_cache_harness::backend::redis::RedisConfig;
use edge_cache_harness::engine::{GuestLimits, new_engine};
use edge_cache_harness::{BUILT_GUEST, BackendConfig, Harness, HarnessConfig};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The engine every harness of this test binary shares, configured as the
/// harness configures its own.
pub static ENGINE: LazyLock<Engine> =
    LazyLock::new(|| new_engine(&GuestLimits::default(), false).expect("the engine starts"));

/// The guest, compiled once per test binary.
pub static COMPONENT: LazyLock<Component> =
    LazyLock::new(|| Component::from_file(&ENGINE, BUILT_GUEST).expect("the built guest compiles"));

/// Starts `redis-server` on `port`, logging to `dir/redis.log`.
fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> Child {
    let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let log = std::fs::File::create(dir.join("redis.log")).expect("create the server log");
    let spawned = Command::new(&binary)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
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
}

impl RedisServer {
    /// Starts a server with default settings.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments, e.g.
    /// `["--maxmemory", "1mb"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|arg| arg.to_string()).collect();
        // A port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("edge-cache-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create the server's directory");
            let child = spawn(port, &dir, &extra);
            let mut server = Self {
                child,
                port,
                dir,
                extra: extra.clone(),
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

    /// Starts the server again on the same port (empty: it keeps no data).
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(self.port, &self.dir, &self.extra);
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
    pub fn backend(&self) -> BackendConfig {
        self.backend_with_timeout(Duration::from_secs(3))
    }

    /// A harness configuration with a short command timeout, for outages.
    pub fn backend_with_timeout(&self, command_timeout: Duration) -> BackendConfig {
        BackendConfig::Redis(RedisConfig {
            connect_timeout: Duration::from_millis(500),
            command_timeout,
            ..RedisConfig::new(self.url())
        })
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
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Served {
    /// Serves the built guest.
    pub async fn start(config: HarnessConfig) -> Self {
        Self::start_component(config, &COMPONENT).await
    }

    /// Serves `component`, compiled with [`ENGINE`].
    pub async fn start_component(config: HarnessConfig, component: &Component) -> Self {
        let harness = Arc::new(
            Harness::with_component(&config, component)
                .await
                .expect("the harness starts"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(harness.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            harness,
            address,
            client: reqwest::Client::new(),
            shutdown: Some(shutdown),
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
    }
}

/// A configuration on the given backend, everything else default.
pub fn config(backend: BackendConfig) -> HarnessConfig {
    HarnessConfig {
        backend,
        ..HarnessConfig::default()
    }
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
