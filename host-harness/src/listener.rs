//! Connections, bounded and unable to starve the server.
//!
//! - A connection must send its request head within the header-read
//!   timeout, and an idle keep-alive connection is closed after the idle
//!   timeout. A reaper checks every connection's phase a few times a
//!   second, so neither costs a timer per request.
//! - At most `max_connections` are open. At the bound, a connection that
//!   has not finished sending a request head (a slow or idle one) gives way
//!   to the next one accepted, oldest first, the way Envoy's overload
//!   manager and HAProxy shed; when every connection is busy with a request,
//!   accepting waits (the kernel's backlog holds the rest) instead of
//!   spinning on `EMFILE`.
//! - On shutdown the listener closes at once, idle connections close,
//!   requests in flight finish and are answered with `Connection: close`,
//!   and a request already sent on an idle connection is still answered.

use crate::overload::Summary;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// How often connections are checked for timeouts (their granularity).
pub const REAP_INTERVAL: Duration = Duration::from_millis(100);

/// The largest request head (request line and headers) a connection may
/// send, as nginx's `large_client_header_buffers` (4 × 8k) bounds it.
pub const MAX_HEAD_BYTES: usize = 32 << 10;

/// File descriptors kept back from connections for everything else the
/// process opens (Redis connections, the origin, the admin listener, logs).
const RESERVED_FDS: u64 = 64;

/// What connections may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once (lowered to fit the open-files limit).
    pub max_connections: usize,
    /// Time a connection has to send a complete request head.
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may sit idle between requests.
    pub keep_alive_timeout: Duration,
    /// On shutdown, the longest requests in flight are waited for.
    pub shutdown_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Raises the open-files soft limit to the hard limit, as nginx and Envoy
/// do, and returns the soft limit in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

/// The connection bound that fits `open_files`: what is asked for, less
/// the descriptors the rest of the process needs.
pub fn fit_to_open_files(asked: usize, open_files: u64) -> usize {
    let fits = open_files.saturating_sub(RESERVED_FDS).max(1);
    asked.min(usize::try_from(fits).unwrap_or(usize::MAX))
}

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Receiving a request head (a new connection starts here).
    Head = 0,
    /// A request is being served.
    Busy = 1,
    /// Between requests: nothing received since the last response.
    Idle = 2,
}

/// Why the harness closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Close {
    None = 0,
    HeaderTimeout = 1,
    IdleTimeout = 2,
    Evicted = 3,
    Drain = 4,
}

/// One connection's state, shared by its task, its I/O and the reaper.
struct Conn {
    phase: AtomicU8,
    /// When the phase began, in milliseconds since the registry's epoch.
    since: AtomicU64,
    close: AtomicU8,
    wake: Notify,
}

impl Conn {
    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Head,
            1 => Phase::Busy,
            _ => Phase::Idle,
        }
    }

    fn enter(&self, phase: Phase, now: u64) {
        self.since.store(now, Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
    }

    fn close(&self, why: Close) {
        // The first reason stands.
        if self
            .close
            .compare_exchange(Close::None as u8, why as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake.notify_one();
        }
    }

    fn close_reason(&self) -> Close {
        match self.close.load(Ordering::Acquire) {
            0 => Close::None,
            1 => Close::HeaderTimeout,
            2 => Close::IdleTimeout,
            3 => Close::Evicted,
            _ => Close::Drain,
        }
    }
}

/// Every open connection, for the reaper, eviction and shutdown.
pub struct Connections {
    epoch: Instant,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    draining: AtomicBool,
    drained: Notify,
    pub(crate) header_timeouts: Summary,
    pub(crate) idle_timeouts: Summary,
    pub(crate) evictions: Summary,
    pub(crate) accept_errors: Summary,
}

/// The connection metrics: counters handed to the summaries, and the gauge
/// of open connections.
pub struct ConnectionMetrics {
    pub header_timeouts: prometheus_client::metrics::counter::Counter,
    pub idle_timeouts: prometheus_client::metrics::counter::Counter,
    pub evictions: prometheus_client::metrics::counter::Counter,
    pub accept_errors: prometheus_client::metrics::counter::Counter,
}

impl Connections {
    pub fn new(limits: ConnectionLimits, metrics: ConnectionMetrics) -> Self {
        Self {
            epoch: Instant::now(),
            open: Mutex::default(),
            next_id: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            draining: AtomicBool::new(false),
            drained: Notify::new(),
            header_timeouts: Summary::new(
                "closed connections that did not send a request head in time",
                metrics.header_timeouts,
            ),
            idle_timeouts: Summary::new("closed idle keep-alive connections", metrics.idle_timeouts),
            evictions: Summary::new(
                "at the connection bound, closed connections still sending a request head to accept new ones",
                metrics.evictions,
            ),
            accept_errors: Summary::new("failed to accept connections (backing off)", metrics.accept_errors),
        }
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().len()
    }

    /// Whether the server is shutting down: responses then close their
    /// connection.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self) -> (u64, Arc<Conn>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            phase: AtomicU8::new(Phase::Head as u8),
            since: AtomicU64::new(self.now()),
            close: AtomicU8::new(Close::None as u8),
            wake: Notify::new(),
        });
        self.lock().insert(id, conn.clone());
        (id, conn)
    }

    fn unregister(&self, id: u64) {
        let mut open = self.lock();
        open.remove(&id);
        if open.is_empty() && self.draining() {
            self.drained.notify_waiters();
        }
    }

    /// Closes the connection that has waited longest for a request head,
    /// if there is one. Returns whether one was closed.
    fn evict_one(&self) -> bool {
        let open = self.lock();
        let oldest = open
            .values()
            .filter(|conn| conn.phase() != Phase::Busy && conn.close_reason() == Close::None)
            .min_by_key(|conn| conn.since.load(Ordering::Acquire));
        match oldest {
            Some(conn) => {
                conn.close(Close::Evicted);
                self.evictions.note();
                true
            }
            None => false,
        }
    }

    /// Closes connections past their header-read or idle timeout, and
    /// writes the summaries due.
    pub fn reap(&self) {
        let now = self.now();
        let header = self.limits.header_read_timeout.as_millis() as u64;
        let idle = self.limits.keep_alive_timeout.as_millis() as u64;
        for conn in self.lock().values() {
            let waited = now.saturating_sub(conn.since.load(Ordering::Acquire));
            match conn.phase() {
                Phase::Head if waited >= header => {
                    conn.close(Close::HeaderTimeout);
                }
                Phase::Idle if waited >= idle => conn.close(Close::IdleTimeout),
                _ => {}
            }
        }
        let now = Instant::now();
        for summary in [
            &self.header_timeouts,
            &self.idle_timeouts,
            &self.evictions,
            &self.accept_errors,
        ] {
            summary.flush(now);
        }
    }

    /// Starts the drain: every connection is told to finish what it is
    /// doing and close.
    fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        let open = self.lock();
        for conn in open.values() {
            conn.close(Close::Drain);
        }
        if open.is_empty() {
            self.drained.notify_waiters();
        }
    }

    /// Waits until every connection has closed, or `timeout` has passed.
    async fn wait_drained(&self, timeout: Duration) -> bool {
        let all_closed = async {
            loop {
                let drained = self.drained.notified();
                if self.lock().is_empty() {
                    return;
                }
                drained.await;
            }
        };
        tokio::time::timeout(timeout, all_closed).await.is_ok()
    }
}

/// The socket as hyper sees it: reads mark the start of a request head on
/// an idle connection (that is when its header-read clock starts).
struct TrackedIo {
    stream: TcpStream,
    conn: Arc<Conn>,
    connections: Arc<Connections>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before && self.conn.phase() == Phase::Idle {
            self.conn.enter(Phase::Head, self.connections.now());
        }
        read
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Whether the client has sent bytes that nobody has read yet.
fn has_unread_bytes(fd: RawFd) -> bool {
    // SAFETY: called only by the task that owns the connection, so the
    // socket is open for the duration of the borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut byte = [MaybeUninit::<u8>::uninit()];
    // The socket is non-blocking: nothing there is `WouldBlock`.
    matches!(socket2::SockRef::from(&fd).peek(&mut byte), Ok(n) if n > 0)
}

/// Accepts HTTP/1.1 connections until `shutdown` completes, answering each
/// request with `handler`; then drains (see the module's documentation).
pub async fn serve<F, Fut>(
    listener: TcpListener,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()>,
    handler: F,
) where
    F: Fn(hyper::Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<HyperOutgoingBody>> + Send + 'static,
{
    let reaper = tokio::spawn({
        let connections = connections.clone();
        async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                connections.reap();
            }
        }
    });
    tokio::pin!(shutdown);
    loop {
        // A free slot first, so that a connection is only accepted when it
        // can be served; at the bound, a head-sender gives way.
        let slot = match connections.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                connections.evict_one();
                tokio::select! {
                    () = &mut shutdown => break,
                    slot = connections.slots.clone().acquire_owned() => slot.expect("the slot semaphore stays open"),
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Out of file descriptors and the like: back off, keep
                    // serving; counted, and summarised in the log.
                    connections.accept_errors.note();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (id, conn) = connections.register();
        let handler = handler.clone();
        let connections_for_task = connections.clone();
        tokio::spawn(async move {
            let connections = connections_for_task;
            let fd = stream.as_raw_fd();
            let io = TrackedIo {
                stream,
                conn: conn.clone(),
                connections: connections.clone(),
            };
            let service = {
                let conn = conn.clone();
                let connections = connections.clone();
                service_fn(move |request| {
                    conn.enter(Phase::Busy, connections.now());
                    let response = handler(request, peer);
                    let conn = conn.clone();
                    let connections = connections.clone();
                    async move {
                        let mut response = response.await;
                        if connections.draining() {
                            response
                                .headers_mut()
                                .insert(CONNECTION, HeaderValue::from_static("close"));
                        }
                        conn.enter(Phase::Idle, connections.now());
                        Ok::<_, std::convert::Infallible>(response)
                    }
                })
            };
            let connection = http1::Builder::new()
                .keep_alive(true)
                // Bounds what one connection's head may hold (hyper's
                // default is ~400 KiB): past it, hyper answers 431 itself.
                .max_buf_size(MAX_HEAD_BYTES)
                // The reaper enforces the header-read timeout.
                .header_read_timeout(None)
                .serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, %error, "connection ended with an error");
                        }
                        break;
                    }
                    () = conn.wake.notified() => match conn.close_reason() {
                        Close::HeaderTimeout => {
                            connections.header_timeouts.note();
                            break;
                        }
                        Close::IdleTimeout => {
                            connections.idle_timeouts.note();
                            break;
                        }
                        Close::Evicted => break,
                        Close::Drain => {
                            // Busy: hyper finishes the request and answers it
                            // with `Connection: close`. Idle: it closes now,
                            // unless a request arrived that hyper has not read
                            // yet; that one is left to be read and answered
                            // (the service adds `Connection: close` while
                            // draining).
                            if conn.phase() == Phase::Busy || !has_unread_bytes(fd) {
                                connection.as_mut().graceful_shutdown();
                            }
                        }
                        Close::None => {}
                    },
                }
            }
            connections.unregister(id);
            drop(slot);
        });
    }
    // Stop accepting: the listener's socket closes, new connections are
    // refused; then what is open drains.
    drop(listener);
    reaper.abort();
    connections.drain();
    let timeout = connections.limits.shutdown_timeout;
    if !connections.wait_drained(timeout).await {
        tracing::warn!(
            open = connections.open(),
            ?timeout,
            "connections still open at the end of the shutdown timeout are closed"
        );
    }
}
