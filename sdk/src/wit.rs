//! The bindings of the host's interfaces (world `edge:cache/cache-function`),
//! for `wasm32` only.
//!
//! The world exports `wasi:http/incoming-handler`, so a component built with
//! the SDK serves HTTP: with [`export_function!`](crate::export_function), or
//! with an export of its own (the profile guest's).
//!
//! A component with a world of its own that also imports `edge:cache/cache`,
//! `edge:cache/telemetry` or `wasi:http/types` maps them to these with
//! wit-bindgen's `with`, so their types are generated once and the SDK's
//! [`Host`](crate::Host) and [`http`](crate::http) glue accept them:
//!
//! ```text
//! wit_bindgen::generate!({
//!     path: "../wit",
//!     world: "edge:cache/edge-function",
//!     with: {
//!         "edge:cache/cache@0.1.0": edge_cache_sdk::wit::edge::cache::cache,
//!         "edge:cache/telemetry@0.1.0": edge_cache_sdk::wit::edge::cache::telemetry,
//!         "wasi:random/random@0.2.12": edge_cache_sdk::wit::wasi::random::random,
//!         "wasi:http/types@0.2.12": edge_cache_sdk::wit::wasi::http::types,
//!         // and the wasi:io and wasi:clocks interfaces wasi:http/types uses
//!     },
//!     generate_all,
//! });
//! ```

wit_bindgen::generate!({
    path: "../wit",
    world: "edge:cache/cache-function",
    generate_all,
    // Imports take borrowed data all the way down (`&[(&str, &[u8])]` for
    // header lists), so calling them copies nothing.
    ownership: Borrowing {
        duplicate_if_necessary: false
    },
    pub_export_macro: true,
    export_macro_name: "export_function",
    default_bindings_module: "edge_cache_sdk::wit",
});
