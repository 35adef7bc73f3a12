//! The harness: a compiled, pre-linked component served over HTTP. An
//! instance serves one request at a time, and up to `--instance-reuse`
//! requests in all before it is dropped.

use crate::backend::Backend;
use crate::backend::memory::{DEFAULT_MAX_MEMORY, MemoryBackend};
use crate::backend::redis::{ConnectError, RedisBackend, RedisClusterConfig, RedisConfig};
use crate::bindings::{EdgeFunction, EdgeFunctionPre};
use crate::cache::{Cache, DEFAULT_NAMESPACE, InvalidNamespace, Limits};
use crate::engine::{GuestLimits, new_engine, set_deadline};
use crate::host::{self, EdgeCtx, EdgeState, HttpHooks};
use crate::metrics::Metrics;
use crate::origin::{Origin, OriginConfig, OriginError};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimitsBuilder, Trap};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

/// The guest built alongside this crate (see `build.rs`).
pub const BUILT_GUEST: &str = env!("EDGE_CACHE_GUEST");

/// The header carrying the client's address to the guest (the guest's own
/// constant: one contract); always set by the harness, never taken from the
/// client.
pub use edge_cache_guest::http::CLIENT_IP_HEADER;

/// Where the cache keeps its data.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// The embedded in-memory store, bounded to `max_memory` bytes.
    Memory { max_memory: u64 },
    /// A Redis server.
    Redis(RedisConfig),
    /// A Redis Cluster.
    RedisCluster(RedisClusterConfig),
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self::Memory {
            max_memory: DEFAULT_MAX_MEMORY,
        }
    }
}

impl BackendConfig {
    /// Opens the store: for Redis, connects and checks with a `PING`.
    pub async fn connect(&self) -> Result<Backend, StartupError> {
        Ok(match self {
            Self::Memory { max_memory } => Backend::Memory(MemoryBackend::new(*max_memory)),
            Self::Redis(config) => Backend::Redis(RedisBackend::connect(config).await?),
            Self::RedisCluster(config) => Backend::Redis(RedisBackend::connect_cluster(config).await?),
        })
    }
}

#[derive(Debug, Clone)]
pub struct HarnessConfig {
    /// The edge function component (`.wasm`).
    pub component: PathBuf,
    pub backend: BackendConfig,
    /// The cache namespace of this function.
    pub namespace: String,
    pub limits: Limits,
    pub origin: OriginConfig,
    /// Environment variables passed to the guest (its configuration).
    pub guest_env: Vec<(String, String)>,
    /// What each request's instance may use.
    pub guest_limits: GuestLimits,
}

impl Default for HarnessConfig {
    fn default() -> Self {
        Self {
            component: PathBuf::from(BUILT_GUEST),
            backend: BackendConfig::default(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            limits: Limits::default(),
            origin: OriginConfig::default(),
            guest_env: Vec::new(),
            guest_limits: GuestLimits::default(),
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
}

/// An instance between two requests.
struct WarmInstance {
    store: Store<EdgeState>,
    proxy: Proxy,
    /// Requests it has served.
    served: u32,
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

    fn put(&self, instance: WarmInstance) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(instance);
    }
}

impl Harness {
    pub async fn start(config: &HarnessConfig) -> Result<Self, StartupError> {
        let engine = new_engine(&config.guest_limits, true).map_err(|e| StartupError::Engine(format!("{e:#}")))?;
        let component = load_component(&engine, &config.component)?;
        Self::with_component(config, &component).await
    }

    /// Starts with an already compiled component (tests share one compile).
    pub async fn with_component(config: &HarnessConfig, component: &Component) -> Result<Self, StartupError> {
        // The guest would answer every request with this error; say it now.
        edge_cache_guest::config::Config::from_vars(|name| {
            config
                .guest_env
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        })
        .map_err(StartupError::GuestConfig)?;
        let backend = config.backend.connect().await?;
        let cache = Cache::new(backend, &config.namespace, config.limits)?;
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
        let mismatch = |e: wasmtime::Error| StartupError::ComponentMismatch(format!("{e:#}"));
        let instance_pre = linker.instantiate_pre(component).map_err(mismatch)?;
        // Any component serving `wasi:http/incoming-handler` can be served
        // (the guest, or an app composed with it); the `profiles` and
        // `rate-limit` exports are optional.
        let http = ProxyPre::new(instance_pre.clone()).map_err(mismatch)?;
        let exports = EdgeFunctionPre::new(instance_pre).ok();
        let metrics = Metrics::new(cache.metrics(), origin.read_counter());
        Ok(Self {
            http,
            exports,
            edge: EdgeCtx {
                cache,
                origin,
                decisions: metrics.rate_limit_decisions.clone(),
            },
            metrics,
            guest_env: config.guest_env.clone(),
            limits: config.guest_limits,
            warm: Arc::default(),
        })
    }

    pub fn cache(&self) -> &Cache {
        &self.edge.cache
    }

    pub fn origin(&self) -> &Origin {
        &self.edge.origin
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn new_store(&self) -> Store<EdgeState> {
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
        set_deadline(&mut store, self.limits.request_timeout);
        store
    }

    /// A fresh instance, for calling the `profiles` and `rate-limit` exports
    /// directly (when the component has them).
    pub async fn instantiate(&self) -> wasmtime::Result<(Store<EdgeState>, EdgeFunction)> {
        let Some(exports) = &self.exports else {
            wasmtime::bail!("this component does not export the whole edge-function world");
        };
        let mut store = self.new_store();
        let instance = exports.instantiate_async(&mut store).await?;
        Ok((store, instance))
    }

    /// Serves one HTTP request from `client`, with a warm instance if one is
    /// free and a fresh one otherwise.
    pub async fn handle(
        &self,
        mut request: hyper::Request<Incoming>,
        client: IpAddr,
    ) -> hyper::Response<HyperOutgoingBody> {
        let client_ip = HeaderValue::from_str(&client.to_string()).expect("an IP address is a valid header value");
        request.headers_mut().insert(CLIENT_IP_HEADER, client_ip);
        let response = match self.run_guest(request).await {
            Ok(response) => response,
            Err(error) if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) => {
                tracing::error!(timeout = ?self.limits.request_timeout, "edge function stopped at its deadline");
                let detail = format!(
                    "the edge function did not finish within {:?}",
                    self.limits.request_timeout
                );
                problem(504, "deadline-exceeded", "Edge function timed out", &detail)
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "edge function failed");
                problem(
                    500,
                    "guest-failure",
                    "Edge function failed",
                    "the edge function failed; see the harness log",
                )
            }
        };
        let x_cache = response.headers().get("x-cache").and_then(|value| value.to_str().ok());
        let status = response.status().as_u16();
        self.metrics.observe_response(status, x_cache);
        response
    }

    async fn run_guest(
        &self,
        request: hyper::Request<Incoming>,
    ) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
        let (mut store, warm) = match self.warm.take() {
            Some(WarmInstance {
                mut store,
                proxy,
                served,
            }) => {
                // A fresh store is armed when made; a warm one still holds
                // its previous request's deadline.
                set_deadline(&mut store, self.limits.request_timeout);
                (store, Some((proxy, served)))
            }
            None => (self.new_store(), None),
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
            Ok::<_, wasmtime::Error>((served < reuse).then_some(WarmInstance { store, proxy, served }))
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
                tokio::spawn(async move {
                    if let Ok(Some(instance)) = guest.await {
                        warm.put(instance);
                    }
                });
                Ok(response)
            }
            (Some(Ok(response)), Poll::Ready(finished)) => {
                if let Ok(Some(instance)) = finished {
                    self.warm.put(instance);
                }
                Ok(response)
            }
            (Some(Err(code)), _) => Err(wasmtime::format_err!("the guest answered with an error code: {code:?}")),
            (None, Poll::Ready(Err(error))) => Err(error),
            (None, _) => Err(wasmtime::format_err!("the guest returned without sending a response")),
        }
    }

    /// Serves the edge function on `listener` until `shutdown` completes.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        accept_loop(listener, shutdown, move |request, peer| {
            let harness = self.clone();
            async move { harness.handle(request, peer.ip()).await }
        })
        .await;
    }

    /// Serves `/metrics` (OpenMetrics text), `/livez` (alias `/healthz`:
    /// the process answers) and `/readyz` (the cache answers too) on
    /// `listener` until `shutdown` completes.
    pub async fn serve_admin(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        accept_loop(listener, shutdown, move |request, _| {
            let harness = self.clone();
            async move {
                match request.uri().path() {
                    "/metrics" => {
                        let mut response = hyper::Response::new(full_body(harness.metrics.render()));
                        let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                        response
                            .headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                        response
                    }
                    "/livez" | "/healthz" => hyper::Response::new(full_body("ok\n")),
                    "/readyz" => match harness.cache().backend().readiness() {
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

/// Accepts HTTP/1.1 connections until `shutdown` completes, answering each
/// request with `handler`.
async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: impl Future<Output = ()>, handler: F)
where
    F: Fn(hyper::Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<HyperOutgoingBody>> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = handler(request, peer);
                async move { Ok::<_, std::convert::Infallible>(response.await) }
            });
            if let Err(error) = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
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

/// An RFC 9457 problem response made by the harness itself, in the guest's
/// format.
fn problem(status: u16, kind: &str, title: &str, detail: &str) -> hyper::Response<HyperOutgoingBody> {
    let body = edge_cache_guest::http::problem_body(status, kind, title, detail);
    let mut response = hyper::Response::new(full_body(body));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(edge_cache_guest::http::PROBLEM_CONTENT_TYPE),
    );
    response
}
