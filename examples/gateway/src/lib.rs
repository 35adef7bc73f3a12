//! An example edge app, written as a user would write their own function on
//! top of edge-cache. It knows nothing of Redis: it imports
//! `edge:cache/profiles` and `edge:cache/rate-limit` (world
//! `edge:cache/edge-app`) and is composed with the edge-cache component:
//!
//! ```sh
//! edge-cache compose target/guest/wasm32-wasip2/release/gateway.wasm -o gateway-composed.wasm
//! edge-cache serve --component gateway-composed.wasm
//! ```
//!
//! Route: `GET /api/users/{id}` with an `x-api-key` header, answering
//! `{"id", "name"}` only. Each API key gets a GCRA quota of 10 per minute
//! with bursts of 3. The SDK serves HTTP and keys callers by a stable digest
//! of their API key.

#![cfg(target_arch = "wasm32")]

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "edge:cache/edge-app",
        // The HTTP types and the export are the SDK's.
        with: {
            "wasi:http/types@0.2.12": edge_cache_sdk::wit::wasi::http::types,
            "wasi:http/incoming-handler@0.2.12": edge_cache_sdk::wit::exports::wasi::http::incoming_handler,
            "wasi:io/error@0.2.12": edge_cache_sdk::wit::wasi::io::error,
            "wasi:io/poll@0.2.12": edge_cache_sdk::wit::wasi::io::poll,
            "wasi:io/streams@0.2.12": edge_cache_sdk::wit::wasi::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": edge_cache_sdk::wit::wasi::clocks::monotonic_clock,
        },
        generate_all,
    });
}

use bindings::edge::cache::profiles::{self, Source};
use bindings::edge::cache::rate_limit::{self, Algorithm, FailMode, Policy};
use edge_cache_sdk::caller::api_key_digest;
use edge_cache_sdk::http::{Handler, Request, Response};

struct Gateway;

edge_cache_sdk::export_function!(Gateway);

fn policy() -> Policy {
    Policy {
        name: "gateway".into(),
        algorithm: Algorithm::Gcra(Some(3)),
        limit: 10,
        window_seconds: 60,
        fail_mode: FailMode::Open,
    }
}

fn error(status: u16, message: &str) -> Response {
    Response::json(status, serde_json::json!({ "error": message }).to_string())
}

impl Handler for Gateway {
    fn reads_body(_: &str) -> bool {
        false
    }

    fn handle(request: Request) -> Response {
        let Some(id) = request.path.strip_prefix("/api/users/") else {
            return error(404, "no such route");
        };
        if request.method != "GET" {
            return error(405, "only GET");
        }
        let Some(api_key) = request.header(edge_cache_sdk::contract::API_KEY_HEADER) else {
            return error(401, "an x-api-key is required");
        };
        // The limiter wants an identifier, not the secret itself.
        let caller = ["gateway:", &api_key_digest(api_key)].concat();

        let decision = match rate_limit::check(&caller, &policy(), 1) {
            Ok(decision) => decision,
            Err(e) => return error(500, &format!("{e:?}")),
        };
        let remaining = decision.remaining.to_string();
        if !decision.allowed {
            let retry_after = decision.retry_after_ms.div_ceil(1000).max(1);
            return error(429, "slow down")
                .with_header("x-ratelimit-remaining", remaining)
                .with_header("retry-after", retry_after.to_string());
        }
        match profiles::get(id) {
            Ok(Some(lookup)) => {
                let full: serde_json::Value = serde_json::from_str(&lookup.profile).unwrap_or_default();
                let trimmed = serde_json::json!({ "id": full["id"], "name": full["name"] });
                let source = match lookup.source {
                    Source::Cache => "hit",
                    Source::Origin => "miss",
                    Source::Stale => "stale",
                    Source::Bypass => "bypass",
                };
                Response::json(200, trimmed.to_string())
                    .with_header("x-ratelimit-remaining", remaining)
                    .with_header("x-cache", source)
            }
            Ok(None) => error(404, "no such user"),
            Err(profiles::Error::InvalidId(why)) => error(400, &why),
            Err(e) => error(502, &format!("{e:?}")),
        }
    }
}
