//! The edge-cache edge function.
//!
//! The logic lives in plain modules that only see the host through the traits
//! in [`host`], so `cargo test` runs it natively. The WebAssembly component
//! (bindings and the thin export layer) is compiled for `wasm32` only.

pub mod http;

pub use edge_cache_sdk::{cache_aside, host, rate_limit};

#[cfg(target_arch = "wasm32")]
mod component;
