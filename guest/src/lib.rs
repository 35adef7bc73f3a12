//! The edge-cache edge function: profile lookup through the cache and rate
//! limiting per caller, built on the SDK (`edge-cache-sdk`).
//!
//! The logic lives in plain modules that only see the host through the
//! SDK's traits and [`origin::Origin`], so `cargo test` runs it natively
//! against in-memory hosts. The WebAssembly component (bindings and the thin
//! export layer) is compiled for `wasm32` only.

pub mod http;
pub mod origin;
pub mod profiles;

#[cfg(target_arch = "wasm32")]
mod component;
