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
//! with bursts of 3.

#![cfg(target_arch = "wasm32")]

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "edge:cache/edge-app",
        generate_all,
    });
}

use bindings::edge::cache::profiles::{self, Source};
use bindings::edge::cache::rate_limit::{self, Algorithm, FailMode, Policy};
use bindings::exports::wasi::http::incoming_handler;
use bindings::wasi::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};
use std::hash::{DefaultHasher, Hash, Hasher};

struct Gateway;

bindings::export!(Gateway with_types_in bindings);

fn policy() -> Policy {
    Policy {
        name: "gateway".into(),
        algorithm: Algorithm::Gcra(Some(3)),
        limit: 10,
        window_seconds: 60,
        fail_mode: FailMode::Open,
    }
}

impl incoming_handler::Guest for Gateway {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let (status, headers, body) = respond(&request);
        send(response_out, status, headers, body);
    }
}

type Reply = (u16, Vec<(String, String)>, String);

fn error(status: u16, message: &str) -> Reply {
    (status, Vec::new(), serde_json::json!({ "error": message }).to_string())
}

fn respond(request: &IncomingRequest) -> Reply {
    let path = request.path_with_query().unwrap_or_default();
    let Some(id) = path.strip_prefix("/api/users/") else {
        return error(404, "no such route");
    };
    if !matches!(request.method(), Method::Get) {
        return error(405, "only GET");
    }
    let api_key = request.headers().get("x-api-key").into_iter().next();
    let Some(api_key) = api_key.filter(|key| !key.is_empty()) else {
        return error(401, "an x-api-key is required");
    };
    // The limiter wants an identifier, not the secret itself.
    let mut hasher = DefaultHasher::new();
    api_key.hash(&mut hasher);
    let caller = format!("gateway:{:016x}", hasher.finish());

    let decision = match rate_limit::check(&caller, &policy(), 1) {
        Ok(decision) => decision,
        Err(e) => return error(500, &format!("{e:?}")),
    };
    let mut headers = vec![("x-ratelimit-remaining".to_owned(), decision.remaining.to_string())];
    if !decision.allowed {
        headers.push((
            "retry-after".into(),
            decision.retry_after_ms.div_ceil(1000).max(1).to_string(),
        ));
        return (429, headers, serde_json::json!({ "error": "slow down" }).to_string());
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
            headers.push(("x-cache".into(), source.into()));
            (200, headers, trimmed.to_string())
        }
        Ok(None) => error(404, "no such user"),
        Err(profiles::Error::InvalidId(why)) => error(400, &why),
        Err(e) => error(502, &format!("{e:?}")),
    }
}

fn send(response_out: ResponseOutparam, status: u16, headers: Vec<(String, String)>, body: String) {
    let mut entries: Vec<(String, Vec<u8>)> = vec![("content-type".into(), b"application/json".to_vec())];
    entries.extend(headers.into_iter().map(|(name, value)| (name, value.into_bytes())));
    let fields = Fields::from_list(&entries).unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else { return };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        for chunk in body.as_bytes().chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}
