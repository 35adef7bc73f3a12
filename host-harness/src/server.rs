//! The harness: a compiled, pre-linked component served over HTTP. An
//! instance serves one request at a time, and up to `--instance-reuse`
//! requests in all before it is dropped.

use crate::bindings::{EdgeFunction, EdgeFunctionPre};
use crate::caller::{ApiKeys, TrustedProxies};
use crate::engine::{GuestLimits, new_engine, set_deadline};
use crate::host::{self, EdgeCtx, EdgeState, HttpHooks};
use crate::keyspace::{DEFAULT_NAMESPACE, InvalidNamespace, Keyspace, Limits};
use crate::keyvalue::{self, KeyValue};
use crate::listener::{self, ConnectionLimits, Connections};
use crate::metrics::{DecisionCounters, Metrics};
use crate::origin::{Origin, OriginConfig, OriginError};
use crate::overload::{Admission, BodyBudget, InstancePermit, QueueLimits, Summary};
use crate::penalty_box::{DEFAULT_MAX_ENTRIES as DEFAULT_PENALTY_BOX_ENTRIES, PenaltyBox};
use crate::store::memory::{DEFAULT_MAX_MEMORY, MemoryStore};
use crate::store::near::NearCache;
use crate::store::redis::{ConnectError, RedisClusterConfig, RedisConfig, RedisStore};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Instant;
use thiserror::Error;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimitsBuilder, Trap};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

/// Where the guest built alongside this crate lies in the build directory
/// (see `build.rs`): for tests and tools that run from a checkout. The
/// binary does not read it; it serves [`EMBEDDED_GUEST`].
pub const BUILT_GUEST: &str = env!("EDGE_CACHE_GUEST");

/// The edge function, embedded in the binary: what is served without
/// `--component`, from any directory, on a machine with no checkout.
pub static EMBEDDED_GUEST: &[u8] = include_bytes!(env!("EDGE_CACHE_GUEST"));

use edge_cache_contract::API_KEY_HEADER;
/// The header carrying the client's address to the guest (the contract's
/// constant); always set by the harness, never taken from the client.
pub use edge_cache_contract::CLIENT_IP_HEADER;

/// Where the cache keeps its data.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The embedded in-memory store, bounded to `max_memory` bytes.
    Memory { max_memory: u64 },
    /// A Redis server.
    Redis(RedisConfig),
    /// A Redis Cluster.
    RedisCluster(RedisClusterConfig),
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self::Memory {
            max_memory: DEFAULT_MAX_MEMORY,
        }
    }
}

impl StoreConfig {
    /// Opens the store: for Redis, connects and checks with a `PING`.
    pub async fn connect(&self) -> Result<Arc<dyn crate::store::Store>, StartupError> {
        Ok(match self {
            Self::Memory { max_memory } => Arc::new(MemoryStore::new(*max_memory)),
            Self::Redis(config) => match config.near_cache {
                Some(near) => Arc::new(NearCache::connect(config, near).await?),
                None => Arc::new(RedisStore::connect(config).await?),
            },
            Self::RedisCluster(config) => match config.near_cache {
                Some(near) => Arc::new(NearCache::connect_cluster(config, near).await?),
                None => Arc::new(RedisStore::connect_cluster(config).await?),
            },
        })
    }
}

#[derive(Debug, Clone)]
pub struct HarnessConfig {
    /// The edge function component (`.wasm`); the embedded one when `None`.
    pub component: Option<PathBuf>,
    pub store: StoreConfig,
    /// The cache namespace of this function.
    pub namespace: String,
    pub limits: Limits,
    pub origin: OriginConfig,
    /// Environment variables passed to the guest (its configuration).
    pub guest_env: Vec<(String, String)>,
    /// What each request's instance may use.
    pub guest_limits: GuestLimits,
    /// What requests and connections may hold, and who is believed.
    pub serving: ServingConfig,
    /// Denials the penalty box keeps at most; 0 keeps none.
    pub penalty_box_entries: u64,
}

/// How the harness faces its clients: bounds on connections, request bodies
/// and waiting, and whose word it takes for the caller's identity.
#[derive(Debug, Clone, Default)]
pub struct ServingConfig {
    pub connections: ConnectionLimits,
    pub queue: QueueLimits,
    pub bodies: BodyLimits,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` name the client.
    pub trusted_proxies: TrustedProxies,
    /// The API keys the deployment issued (digests).
    pub api_keys: ApiKeys,
}

/// Request bodies are received by the harness before an instance is spent
/// on them, so a client that sends slowly holds a connection, not an
/// instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// The largest request body; larger ones get a 413.
    pub max_body_bytes: usize,
    /// Bytes of request bodies held at once, across all requests.
    pub budget_bytes: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            budget_bytes: 64 << 20,
        }
    }
}

impl Default for HarnessConfig {
    fn default() -> Self {
        Self {
            component: None,
            store: StoreConfig::default(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            limits: Limits::default(),
            origin: OriginConfig::default(),
            guest_env: Vec::new(),
            guest_limits: GuestLimits::default(),
            serving: ServingConfig::default(),
            penalty_box_entries: DEFAULT_PENALTY_BOX_ENTRIES,
        }
    }
}

/// Why the harness could not start.
#[derive(Debug, Error)]
pub enum StartupError {
    #[error("component file {} not found (build the guest with `cargo build -p edge-cache-harness`, or pass --component)", path.display())]
    ComponentMissing { path: PathBuf },
    #[error("cannot load component {}: {reason}", path.display())]
    ComponentInvalid { path: PathBuf, reason: String },
    #[error("the component cannot be served: {0}")]
    ComponentMismatch(String),
    #[error(transparent)]
    Redis(#[from] ConnectError),
    #[error(transparent)]
    Namespace(#[from] InvalidNamespace),
    #[error("cannot open the profile origin: {0}")]
    Origin(#[from] OriginError),
    #[error("invalid edge function setting: {0}")]
    GuestConfig(String),
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// A ready-to-serve edge function: compiled once, linked once, instantiated
/// as requests need (see [`GuestLimits::instance_reuse`]).
pub struct Harness {
    http: ProxyPre<EdgeState>,
    exports: Option<EdgeFunctionPre<EdgeState>>,
    edge: EdgeCtx,
    guest_env: Vec<(String, String)>,
    limits: GuestLimits,
    metrics: Metrics,
    warm: Arc<WarmPool>,
    admission: Admission,
    bodies: BodyBudget,
    serving: ServingConfig,
    shed: Summary,
    /// Guest failures and deadlines: logged in full once a second at most.
    failures: Summary,
    connections: Arc<Connections>,
}

/// An instance between two requests.
struct WarmInstance {
    store: Store<EdgeState>,
    proxy: Proxy,
    /// Requests it has served.
    served: u32,
    /// When it went back to the pool.
    idle_since: Instant,
}

/// Instances that served a request cleanly and may serve another, one
/// request at a time. It holds at most as many as were ever in flight at
/// once, which the engine's pool bounds (`--max-instances`).
#[derive(Default)]
struct WarmPool(Mutex<Vec<WarmInstance>>);

impl WarmPool {
    /// The most recently used instance: its memory is the likeliest to
    /// still be in the CPU's caches.
    fn take(&self) -> Option<WarmInstance> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    fn put(&self, mut instance: WarmInstance) {
        instance.idle_since = Instant::now();
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(instance);
    }

    /// Drops the instances idle since before `cutoff`, and their memory with
    /// them: after a burst, the pool shrinks back to what the load uses.
    /// Instances are taken from the most recent end, so the idle ones are
    /// at the other.
    fn trim(&self, cutoff: Instant) -> usize {
        let expired: Vec<WarmInstance> = {
            let mut pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let idle = pool.iter().take_while(|instance| instance.idle_since < cutoff).count();
            pool.drain(..idle).collect()
        };
        // Stores are dropped outside the lock: returning their memory is
        // the slow part.
        expired.len()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Harness {
    pub async fn start(config: &HarnessConfig) -> Result<Self, StartupError> {
        let engine = new_engine(&config.guest_limits, true).map_err(|e| StartupError::Engine(format!("{e:#}")))?;
        let component = match &config.component {
            Some(path) => load_component(&engine, path)?,
            None => Component::new(&engine, EMBEDDED_GUEST).map_err(|e| StartupError::ComponentInvalid {
                path: PathBuf::from("(embedded)"),
                reason: format!("{e:#}"),
            })?,
        };
        Self::with_component(config, &component).await
    }

    /// Starts with an already compiled component (tests share one compile).
    pub async fn with_component(config: &HarnessConfig, component: &Component) -> Result<Self, StartupError> {
        // The guest would answer every request with this error; say it now.
        edge_cache_contract::config::Config::from_vars(|name| {
            config
                .guest_env
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        })
        .map_err(StartupError::GuestConfig)?;
        let store = config.store.connect().await?;
        let cache = Keyspace::new(store, &config.namespace, config.limits)?;
        let origin = Origin::open(&config.origin)?;
        let engine_error = |e: wasmtime::Error| StartupError::Engine(format!("{e:#}"));

        let mut linker = Linker::<EdgeState>::new(component.engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_error)?;
        // Only the HTTP types: the guest serves requests but sends none.
        wasmtime_wasi_http::p2::bindings::http::types::add_to_linker::<_, wasmtime_wasi_http::WasiHttp>(
            &mut linker,
            &Default::default(),
            EdgeState::http,
        )
        .map_err(engine_error)?;
        host::add_to_linker(&mut linker, |state| &mut state.edge).map_err(engine_error)?;
        // Components written for the standard interface (Spin, wasmCloud)
        // reach the same cache; a component imports either, both or neither.
        keyvalue::add_to_linker(&mut linker, |state| KeyValue::new(&state.edge.cache, &mut state.table))
            .map_err(engine_error)?;
        let mismatch = |e: wasmtime::Error| StartupError::ComponentMismatch(format!("{e:#}"));
        let instance_pre = linker.instantiate_pre(component).map_err(mismatch)?;
        // Any component serving `wasi:http/incoming-handler` can be served
        // (the guest, or an app composed with it); the `profiles` and
        // `rate-limit` exports are optional.
        let http = ProxyPre::new(instance_pre.clone()).map_err(mismatch)?;
        let exports = EdgeFunctionPre::new(instance_pre).ok();
        let metrics = Metrics::new(cache.metrics(), origin.read_counter());
        let serving = config.serving.clone();
        Ok(Self {
            http,
            exports,
            admission: Admission::new(config.guest_limits.max_instances, serving.queue),
            bodies: BodyBudget::new(serving.bodies.budget_bytes),
            shed: Summary::new(
                "shed requests: every instance busy and the wait queue full or too slow (answered 503)",
                metrics.requests_shed.clone(),
            ),
            failures: Summary::new(
                "edge function failures and deadlines (answered 500 / 504)",
                metrics.guest_failures.clone(),
            ),
            connections: Arc::new(Connections::new(serving.connections, metrics.connection_metrics())),
            serving,
            edge: EdgeCtx {
                cache,
                origin,
                decisions: DecisionCounters::new(&metrics.rate_limit_decisions),
                penalty_box: PenaltyBox::new(config.penalty_box_entries, metrics.penalty_box_counters()),
            },
            metrics,
            guest_env: config.guest_env.clone(),
            limits: config.guest_limits,
            warm: Arc::default(),
        })
    }

    /// Instances kept warm between requests now.
    pub fn warm_instances(&self) -> usize {
        self.warm.len()
    }

    /// The open connections of [`Self::serve`].
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    pub fn cache(&self) -> &Keyspace {
        &self.edge.cache
    }

    pub fn origin(&self) -> &Origin {
        &self.edge.origin
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn new_store(&self, deadline: Instant) -> Store<EdgeState> {
        let wasi = WasiCtx::builder().inherit_stderr().envs(&self.guest_env).build();
        let limits = StoreLimitsBuilder::new().memory_size(self.limits.memory_bytes).build();
        let state = EdgeState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            edge: self.edge.clone(),
            limits,
            http_hooks: HttpHooks,
        };
        let mut store = Store::new(self.http.engine(), state);
        store.limiter(|state| &mut state.limits);
        set_deadline(&mut store, deadline);
        store
    }

    /// A fresh instance, for calling the `profiles` and `rate-limit` exports
    /// directly (when the component has them).
    pub async fn instantiate(&self) -> wasmtime::Result<(Store<EdgeState>, EdgeFunction)> {
        let Some(exports) = &self.exports else {
            wasmtime::bail!("this component does not export the whole edge-function world");
        };
        let mut store = self.new_store(Instant::now() + self.limits.request_timeout);
        let instance = exports.instantiate_async(&mut store).await?;
        Ok((store, instance))
    }

    /// Serves one HTTP request from `peer`: checks what it claims, receives
    /// its body, waits its turn for an instance and runs the edge function,
    /// all within one deadline (`--request-timeout-ms`) from the moment its
    /// head was read.
    pub async fn handle(&self, request: hyper::Request<Incoming>, peer: IpAddr) -> hyper::Response<HyperOutgoingBody> {
        let deadline = Instant::now() + self.limits.request_timeout;
        let response = match self.serve_request(request, peer, deadline).await {
            Ok(response) => response,
            Err(rejected) => {
                self.metrics.observe_rejection(rejected.status().as_u16());
                return *rejected;
            }
        };
        let x_cache = response.headers().get("x-cache").and_then(|value| value.to_str().ok());
        let status = response.status().as_u16();
        self.metrics.observe_response(status, x_cache);
        response
    }

    /// The edge function's answer, or the harness's own when the request
    /// never reached it (`Err`).
    async fn serve_request(
        &self,
        request: hyper::Request<Incoming>,
        peer: IpAddr,
        deadline: Instant,
    ) -> Result<hyper::Response<HyperOutgoingBody>, Rejected> {
        check_host(&request)?;
        if let Some(key) = request.headers().get(API_KEY_HEADER)
            && !self.serving.api_keys.issued(key.as_bytes())
        {
            let mut response = problem(
                401,
                "unknown-api-key",
                "Unknown API key",
                "the x-api-key header holds a key this deployment did not issue; send an issued key, or none",
            );
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("ApiKey realm=\"edge-cache\""),
            );
            return Err(Box::new(response));
        }
        let client = self.serving.trusted_proxies.client_address(peer, request.headers());
        let (mut parts, body) = request.into_parts();
        let client_ip = HeaderValue::from_str(&client.to_string()).expect("an IP address is a valid header value");
        parts.headers.insert(CLIENT_IP_HEADER, client_ip);
        let (body, _body_budget) = self.receive_body(&parts.headers, body, deadline).await?;
        let request = hyper::Request::from_parts(parts, body);

        let permit = match self.admission.admit(deadline).await {
            Ok(permit) => permit,
            Err(shed) => {
                self.shed.note();
                tracing::debug!(reason = shed.as_str(), "request shed");
                return Err(Box::new(overloaded("every instance is busy; retry shortly")));
            }
        };
        match tokio::time::timeout_at(deadline.into(), self.run_guest(request, permit, deadline)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) => {
                Ok(self.deadline_exceeded())
            }
            // Waiting on a host call (the cache, the origin) at the deadline:
            // the instance is dropped with the future.
            Err(_elapsed) => Ok(self.deadline_exceeded()),
            Ok(Err(error)) => {
                if self.failures.note_detailed() {
                    tracing::error!(error = %format!("{error:#}"), "edge function failed");
                }
                Ok(problem(
                    500,
                    "guest-failure",
                    "Edge function failed",
                    "the edge function failed; see the harness log",
                ))
            }
        }
    }

    fn deadline_exceeded(&self) -> hyper::Response<HyperOutgoingBody> {
        if self.failures.note_detailed() {
            tracing::error!(timeout = ?self.limits.request_timeout, "edge function stopped at its deadline");
        }
        let detail = format!(
            "the edge function did not finish within {:?}",
            self.limits.request_timeout
        );
        problem(504, "deadline-exceeded", "Edge function timed out", &detail)
    }

    /// Receives the whole request body, within the deadline and the body
    /// limits, before any instance is spent on the request.
    async fn receive_body(
        &self,
        headers: &hyper::HeaderMap,
        body: Incoming,
        deadline: Instant,
    ) -> Result<(Full<Bytes>, Option<crate::overload::BodyPermit>), Rejected> {
        if body.is_end_stream() {
            return Ok((Full::default(), None));
        }
        let max = self.serving.bodies.max_body_bytes;
        let too_large = || {
            let detail = format!("request bodies are limited to {max} bytes");
            let mut response = problem(413, "body-too-large", "Request body too large", &detail);
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            response
        };
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max as u64) {
            return Err(Box::new(too_large()));
        }
        // What the body may grow to is reserved up front from the budget
        // shared by all requests: without a length, the most it may be.
        let reserve = declared.map_or(max, |length| length as usize);
        let Some(permit) = self
            .bodies
            .reserve(reserve, deadline.min(Instant::now() + self.serving.queue.queue_timeout))
            .await
        else {
            self.shed.note();
            return Err(Box::new(overloaded(
                "too many request bodies are being received; retry shortly",
            )));
        };
        let received = tokio::time::timeout_at(deadline.into(), Limited::new(body, max).collect()).await;
        match received {
            Ok(Ok(collected)) => Ok((Full::new(collected.to_bytes()), Some(permit))),
            Ok(Err(error)) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                Err(Box::new(too_large()))
            }
            Ok(Err(_)) => Err(Box::new(problem(
                400,
                "bad-body",
                "Malformed request body",
                "the request body could not be read",
            ))),
            Err(_elapsed) => {
                let detail = format!(
                    "the request body did not arrive within {:?}",
                    self.limits.request_timeout
                );
                let mut response = problem(408, "request-timeout", "Request body too slow", &detail);
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                Err(Box::new(response))
            }
        }
    }

    async fn run_guest(
        &self,
        request: hyper::Request<Full<Bytes>>,
        permit: InstancePermit,
        deadline: Instant,
    ) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
        let (mut store, warm) = match self.warm.take() {
            Some(WarmInstance {
                mut store,
                proxy,
                served,
                ..
            }) => {
                // A fresh store is armed when made; a warm one still holds
                // its previous request's deadline.
                set_deadline(&mut store, deadline);
                (store, Some((proxy, served)))
            }
            None => (self.new_store(deadline), None),
        };
        let (sender, mut receiver) = tokio::sync::oneshot::channel();
        let request = store.data_mut().http().new_incoming_request(Scheme::Http, request)?;
        let response_out = store.data_mut().http().new_response_outparam(sender)?;
        let pre = self.http.clone();
        let reuse = self.limits.instance_reuse;
        let mut guest = Box::pin(async move {
            let (proxy, served) = match warm {
                Some(warm) => warm,
                None => (pre.instantiate_async(&mut store).await?, 0),
            };
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, response_out)
                .await?;
            // Only an instance that returned cleanly serves again; one that
            // trapped, overran its deadline or failed is dropped with its store.
            let served = served + 1;
            Ok::<_, wasmtime::Error>((served < reuse).then_some(WarmInstance {
                store,
                proxy,
                served,
                idle_since: Instant::now(),
            }))
        });
        // The guest runs in this task. It hands over its response from inside
        // its own poll, so the channel is checked after each poll rather than
        // awaited: awaiting it would register this task's waker, and the hand-
        // over would then wake the task while it runs, which tokio treats as a
        // yield (the task is requeued and an idle worker is woken to steal it),
        // once per request.
        let (handed_over, finished) = std::future::poll_fn(|cx| {
            let finished = guest.as_mut().poll(cx);
            match receiver.try_recv() {
                Ok(handed_over) => Poll::Ready((Some(handed_over), finished)),
                // Nothing yet, or the guest dropped its response-outparam:
                // what it returns says why.
                Err(_) if finished.is_pending() => Poll::Pending,
                Err(_) => Poll::Ready((None, finished)),
            }
        })
        .await;
        match (handed_over, finished) {
            // Most guests have returned by now (a small body is written before
            // the hand-over); one still streaming its body goes on in a task of
            // its own.
            (Some(Ok(response)), Poll::Pending) => {
                let warm = self.warm.clone();
                // The instance stays bound by the request's deadline (and
                // keeps its permit) while it streams.
                tokio::spawn(async move {
                    if let Ok(Ok(Some(instance))) = tokio::time::timeout_at(deadline.into(), guest).await {
                        warm.put(instance);
                    }
                    drop(permit);
                });
                Ok(response)
            }
            (Some(Ok(response)), Poll::Ready(finished)) => {
                if let Ok(Some(instance)) = finished {
                    self.warm.put(instance);
                }
                drop(permit);
                Ok(response)
            }
            (Some(Err(code)), _) => Err(wasmtime::format_err!("the guest answered with an error code: {code:?}")),
            (None, Poll::Ready(Err(error))) => Err(error),
            (None, _) => Err(wasmtime::format_err!("the guest returned without sending a response")),
        }
    }

    /// Serves the edge function on `listener` until `shutdown` completes,
    /// then drains: see [`listener`].
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>) {
        // Housekeeping that must not run per request: the shed summary, and
        // instances idle past their time.
        let housekeeping = tokio::spawn({
            let harness = Arc::downgrade(&self);
            async move {
                let mut tick = tokio::time::interval(listener::REAP_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(harness) = harness.upgrade() else { return };
                    let now = Instant::now();
                    harness.shed.flush(now);
                    harness.failures.flush(now);
                    let trimmed = harness
                        .warm
                        .trim(now.checked_sub(harness.limits.warm_idle).unwrap_or(now));
                    // Once the burst is over (nothing in flight), the heap's
                    // free memory goes back too; never under load, where it
                    // would only be faulted in again.
                    if trimmed > 0 && harness.admission.idle() {
                        release_free_heap();
                    }
                }
            }
        });
        let connections = self.connections.clone();
        listener::serve(listener, connections, shutdown, move |request, peer| {
            let harness = self.clone();
            async move { harness.handle(request, peer.ip()).await }
        })
        .await;
        housekeeping.abort();
    }

    /// Whether [`Self::serve`] is draining its connections for a shutdown.
    pub fn draining(&self) -> bool {
        self.connections.draining()
    }

    /// Serves `/metrics` (OpenMetrics text), `/livez` (alias `/healthz`:
    /// the process answers) and `/readyz` (the cache answers too, and the
    /// harness is not draining) on `listener` until `shutdown` completes.
    pub async fn serve_admin(self: Arc<Self>, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>) {
        // The admin listener is for the platform's probes and scrapers: a
        // small bound of its own, so the public side cannot take it.
        let connections = Arc::new(Connections::new(
            ConnectionLimits {
                max_connections: 64,
                ..self.serving.connections
            },
            Metrics::unregistered_connection_metrics(),
        ));
        listener::serve(listener, connections, shutdown, move |request, _| {
            let harness = self.clone();
            async move {
                match request.uri().path() {
                    "/metrics" => {
                        harness.metrics.set_gauges(
                            harness.connections.open(),
                            harness.admission.queued(),
                            harness.warm.len(),
                        );
                        harness
                            .metrics
                            .set_penalty_box_entries(harness.edge.penalty_box.entries());
                        let mut response = hyper::Response::new(full_body(harness.metrics.render()));
                        let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                        response
                            .headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                        response
                    }
                    "/livez" | "/healthz" => hyper::Response::new(full_body("ok\n")),
                    "/readyz" if harness.draining() => {
                        problem(503, "not-ready", "Not ready", "draining connections for a shutdown")
                    }
                    "/readyz" => match harness.cache().store().readiness() {
                        Ok(note) => hyper::Response::new(full_body(format!("ready: {note}\n"))),
                        Err(reason) => problem(503, "not-ready", "Not ready", &reason),
                    },
                    other => problem(404, "not-found", "Not found", &format!("no admin route {other}")),
                }
            }
        })
        .await;
    }
}

/// Hands the allocator's free memory back to the kernel. After a burst,
/// the dropped instances' stores and the requests' bodies leave the heap
/// fragmented across glibc's per-thread arenas, which keep it otherwise.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A request must name its host (HTTP/1.1 requires `Host`; wasi:http hands
/// the guest an authority).
fn check_host<B>(request: &hyper::Request<B>) -> Result<(), Rejected> {
    if request.uri().authority().is_some() {
        return Ok(());
    }
    match request.headers().get(HOST) {
        Some(host) if !host.is_empty() && host.to_str().is_ok() => Ok(()),
        Some(_) => Err(Box::new(problem(
            400,
            "bad-host",
            "Invalid Host header",
            "the Host header is not a valid host name",
        ))),
        None => Err(Box::new(problem(
            400,
            "missing-host",
            "Missing Host header",
            "the request has no Host header",
        ))),
    }
}

/// The harness's own answer to a request the edge function never saw
/// (boxed: it is the rare path, and a response is large).
type Rejected = Box<hyper::Response<HyperOutgoingBody>>;

/// The answer to a request shed for overload: retry after a second.
fn overloaded(detail: &str) -> hyper::Response<HyperOutgoingBody> {
    let mut response = problem(503, "overloaded", "Overloaded", detail);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn full_body(bytes: impl Into<Bytes>) -> HyperOutgoingBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

fn load_component(engine: &Engine, path: &PathBuf) -> Result<Component, StartupError> {
    if !path.is_file() {
        return Err(StartupError::ComponentMissing { path: path.clone() });
    }
    Component::from_file(engine, path).map_err(|e| StartupError::ComponentInvalid {
        path: path.clone(),
        reason: format!("{e:#}"),
    })
}

/// An RFC 9457 problem response made by the harness itself, in the
/// contract's format (the guest's too).
fn problem(status: u16, kind: &str, title: &str, detail: &str) -> hyper::Response<HyperOutgoingBody> {
    let body = edge_cache_contract::problem::body(status, kind, title, detail);
    let mut response = hyper::Response::new(full_body(body));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(edge_cache_contract::problem::CONTENT_TYPE),
    );
    response
}
