//! Host bindings for the `edge:cache/edge-function` world.
//!
//! `wasi:http` and `wasi:io` map to wasmtime-wasi-http's and wasmtime-wasi's
//! own types, so the same store serves HTTP through their implementations.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "edge:cache/edge-function",
    // Telemetry only counts: a synchronous host call is cheaper, and it is
    // made on every request.
    imports: {
        "edge:cache/telemetry.rate-limit-decided": exact,
        // Memory only, on every check: synchronous too.
        "edge:cache/penalty-box.look": exact,
        "edge:cache/penalty-box.hold": exact,
        "edge:cache/penalty-box.release": exact,
        default: async,
    },
    exports: { default: async },
    require_store_data_send: true,
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
    },
});

pub use edge::cache::{cache, origin, penalty_box, telemetry};
pub use exports::edge::cache::{profiles, rate_limit};
