//! Write edge functions on `edge:cache`, in Rust.
//!
//! A function is a WebAssembly component (`wasm32-wasip2`) that a host such
//! as the `edge-cache` harness serves; the host provides the cache (Redis
//! semantics, `wit/cache.wit`), and the function keeps no connection and no
//! secret. This crate gives a function:
//!
//! - [`Keyspace`], the typed cache handle: bytes and JSON values, TTLs,
//!   counters, compare-and-swap, atomic JSON updates;
//! - [`CacheAside`], `remember`-style cache-aside for any key and loader,
//!   without stampedes: single-flight fills, stale-while-revalidate,
//!   probabilistic early refresh, negative caching, fills guarded by
//!   compare-and-swap;
//! - [`rate_limit`], fixed-window, sliding-window and GCRA limiters, exact
//!   under concurrency, with their `RateLimit` / `X-RateLimit-*` /
//!   `Retry-After` headers, and [`caller`], a stable caller digest to key
//!   them by;
//! - [`http`], plain requests and responses, and
//!   [`export_function!`] to serve them as `wasi:http/incoming-handler`.
//!
//! Everything but the bindings is plain Rust over two traits, [`Cache`] and
//! [`Clock`]: in the component they are [`Host`]; in native tests
//! [`testing::MemoryCache`], an in-memory host with the contract's semantics
//! on a clock the test moves (it passes the same conformance suite as the
//! harness's Redis and embedded backends). So a function's logic is tested
//! with `cargo test`, no WebAssembly needed:
//!
//! ```
//! use edge_cache_sdk::testing::MemoryCache;
//! use edge_cache_sdk::{CacheAside, Settings, Source};
//!
//! let host = MemoryCache::default();
//! let prices = CacheAside::new(&host, &host.clock, Settings::default());
//! let load = || Ok::<_, String>(Some(42u32)); // ask the source of truth
//! assert_eq!(prices.remember("price:tea", load)?.unwrap().source, Source::Origin);
//! let cached = prices.remember("price:tea", load)?.unwrap();
//! assert_eq!((cached.value, cached.source), (42, Source::Cache));
//! # Ok::<(), String>(())
//! ```
//!
//! `examples/one-time-codes` is a whole function written with this crate.

#![warn(missing_docs)]

pub mod cache_aside;
pub mod caller;
pub mod host;
pub mod http;
pub mod keyspace;
pub mod rate_limit;

#[cfg(target_arch = "wasm32")]
mod component;
#[cfg(target_arch = "wasm32")]
#[allow(missing_docs)] // generated from wit/, where the documentation is
pub mod wit;

pub use cache_aside::{CacheAside, Remembered, Settings, Source};
pub use edge_cache_contract as contract;
pub use host::{BoundedIncr, Cache, CacheError, CasOutcome, Clock, Held, Lookup, PenaltyBox, Ttl};
pub use keyspace::Keyspace;

/// The component's host: `edge:cache/cache` as a [`Cache`], WASI's clocks
/// and randomness as a [`Clock`], `edge:cache/telemetry` as
/// [`rate_limit::Telemetry`] and `edge:cache/penalty-box` as a
/// [`PenaltyBox`]. It holds nothing: every call goes to the host.
///
/// It implements them on `wasm32` only; native tests use
/// [`testing::MemoryCache`] instead.
#[derive(Debug, Clone, Copy, Default)]
pub struct Host;

/// The in-memory host for native tests: [`Cache`] with the contract's
/// semantics and a [`Clock`] that moves only when told.
pub mod testing {
    pub use crate::host::memory::{Forgetful, ManualClock, MemoryBox, MemoryCache};
}
