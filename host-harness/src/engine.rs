//! The harness's one wasmtime engine: pooled instances, a per-request
//! deadline by epoch interruption, a memory cap per instance, and compiled
//! code cached on disk so restarts do not recompile.

use std::time::{Duration, Instant};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    ProfilingStrategy, UpdateDeadline,
};

/// How often the engine's epoch advances: the granularity of deadlines and
/// of the time slices a busy guest gets before yielding to other requests.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Set (to anything) to write a perf map of the compiled guest, for profiling.
pub const PERF_MAP_ENV: &str = "EDGE_CACHE_PERF_MAP";

/// Linear-memory bytes kept resident per pool slot after its instance is
/// dropped, by default (when only written pages are reset): see
/// [`GuestLimits::keep_resident_bytes`].
pub const DEFAULT_KEEP_RESIDENT_BYTES: usize = 64 << 10;

/// Table bytes kept resident per slot (when only written pages are reset).
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 << 10;

/// Requests an instance serves by default. A fresh instance per request
/// costs more than the rest of a cached lookup (instantiation, then resetting
/// and returning its memory); a bounded number of uses amortises that while
/// no instance lives long.
pub const DEFAULT_INSTANCE_REUSE: u32 = 100;

/// How long an unused warm instance is kept by default: long enough to
/// carry steady load from one request to the next, short enough that the
/// memory of a burst's instances comes back within seconds.
pub const DEFAULT_WARM_IDLE: Duration = Duration::from_secs(2);

/// What one request's instance may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    /// Linear memory per instance, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time a request may take, host calls included.
    pub request_timeout: Duration,
    /// Instances alive at once (the pool's size): requests in flight, and
    /// instances kept warm between requests.
    pub max_instances: u32,
    /// Requests one instance serves, one after another, before it is
    /// dropped; 1 gives every request a fresh instance.
    pub instance_reuse: u32,
    /// How long an instance stays warm without a request before it is
    /// dropped and its memory returned.
    pub warm_idle: Duration,
    /// Linear-memory bytes a pool slot keeps resident after its instance is
    /// dropped. More makes a new instance cheaper (no page faults for what
    /// it touches again); every slot a burst used keeps this much after the
    /// burst.
    pub keep_resident_bytes: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 16 << 20,
            request_timeout: Duration::from_secs(10),
            max_instances: 128,
            instance_reuse: DEFAULT_INSTANCE_REUSE,
            warm_idle: DEFAULT_WARM_IDLE,
            keep_resident_bytes: DEFAULT_KEEP_RESIDENT_BYTES,
        }
    }
}

/// Builds the engine and starts its epoch ticker (a thread that ends with
/// the engine).
pub fn new_engine(limits: &GuestLimits, cache_compiled_code: bool) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(limits.max_instances)
        .total_core_instances(limits.max_instances.saturating_mul(8))
        .total_memories(limits.max_instances.saturating_mul(2))
        .total_tables(limits.max_instances.saturating_mul(4))
        .max_memory_size(limits.memory_bytes);
    // A slot's pages go back to the kernel when its instance is dropped
    // (madvise, with a TLB shootdown across cores, then a fault per page on
    // the slot's next use), except the first `keep_resident_bytes`: where
    // the kernel can list the pages an instance wrote (PAGEMAP_SCAN, Linux
    // 6.7+), those are reset in place and stay resident. That is what keeps
    // replacing an instance (every `--instance-reuse` requests) cheap; its
    // price is that every slot a burst used keeps that much afterwards.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(limits.keep_resident_bytes.min(limits.memory_bytes))
            .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES);
    }

    let mut config = Config::new();
    // `perf` can name the guest's functions through /tmp/perf-PID.map.
    if std::env::var_os(PERF_MAP_ENV).is_some() {
        config.profiler(ProfilingStrategy::PerfMap);
    }
    // The guests are WASI 0.2 components with synchronous lifts: nothing
    // needs the component-model-async machinery, whose per-store state is
    // otherwise set up and torn down on every request (the teardown
    // disposes of a parked fiber by building an error, with a captured
    // backtrace when RUST_BACKTRACE is set).
    config
        .concurrency_support(false)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if cache_compiled_code {
        match Cache::new(CacheConfig::new()) {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(error) => tracing::warn!(%error, "compiled code will not be cached"),
        }
    }
    let engine = Engine::new(&config)?;

    let weak = engine.weak();
    std::thread::Builder::new().name("epoch-ticker".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    })?;
    Ok(engine)
}

/// Arms `store` with the request's deadline: the guest yields to the
/// executor every tick and is interrupted (a trap) once the deadline passes.
pub fn set_deadline<T>(store: &mut wasmtime::Store<T>, deadline: Instant) {
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= deadline {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Yield(1)
        })
    });
    store.set_epoch_deadline(1);
}
