//! The edge-cache harness: runs the edge function component under wasmtime,
//! with `edge:cache/cache` backed by Redis or an embedded store and
//! `edge:cache/origin` by an embedded profile database; `wasi:keyvalue` is
//! served from the same cache.

pub mod bindings;
pub mod caller;
pub mod compose;
pub mod engine;
pub mod host;
pub mod keyspace;
pub mod keyvalue;
pub mod listener;
pub mod metrics;
pub mod overload;
pub mod penalty_box;
pub mod server;
pub mod store;

/// The profile origin this harness serves to the guest.
pub use edge_cache_origin as origin;

pub use server::{
    BUILT_GUEST, BodyLimits, EMBEDDED_GUEST, Harness, HarnessConfig, ServingConfig, StartupError, StoreConfig,
};
