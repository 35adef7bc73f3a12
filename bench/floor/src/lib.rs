//! The floor of `bench/run`: a component that makes the host calls the edge
//! function makes on a cache hit, in the same order, and nothing else. It
//! reads the request (method, path, headers), checks the default fixed
//! window (the clock, one `incr-by-bounded` on the guest's key), reads the
//! cached profile (the clock, one `get`), and answers 200 with the headers
//! of a hit and a body of a profile's size.
//!
//! What the harness spends serving it is what any edge function costs to
//! serve through `wasi:http` before doing any work of its own; the edge
//! function's logic is what `bench/run` measures on top of it.

#![cfg(target_arch = "wasm32")]

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "
            package edge:bench-floor;

            world floor {
                import edge:cache/cache@0.1.0;
                export wasi:http/incoming-handler@0.2.12;
            }
        ",
        world: "edge:bench-floor/floor",
        generate_all,
        ownership: Borrowing {
            duplicate_if_necessary: false
        },
    });
}

use bindings::edge::cache::cache;
use bindings::exports::wasi::http::incoming_handler;
use bindings::wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};
use std::time::{SystemTime, UNIX_EPOCH};

/// The profile `bench/run` reads, as the edge function answers it.
const BODY: &[u8] = br#"{"id":"alice","name":"Alice Liddell","plan":"pro","country":"GB"}"#;

/// The default policy under `bench/run`: this many requests per window.
const LIMIT: i64 = 1_000_000_000;
const WINDOW_SECONDS: u64 = 60;

struct Floor;

bindings::export!(Floor with_types_in bindings);

impl incoming_handler::Guest for Floor {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let _method = request.method();
        let _path = request.path_with_query();
        let headers = request.headers().entries();
        drop(request);
        let client = headers
            .iter()
            .find(|(name, _)| name == edge_cache_contract::CLIENT_IP_HEADER)
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
            .unwrap_or("anonymous");

        let mut digits = itoa::Buffer::new();
        let window = digits.format(now_ms() / (WINDOW_SECONDS * 1000));
        let counter = ["rl:{ip:", client, "}:default:fw:60:", window].concat();
        let count = cache::incr_by_bounded(&counter, 1, WINDOW_SECONDS + 1, LIMIT).map_or(0, |outcome| outcome.value);
        let _cached = cache::get("profile:v2:alice");
        let _now = now_ms();

        let remaining = digits.format(LIMIT - count).to_owned();
        let ratelimit = ["\"default\";r=", &remaining, ";t=60"].concat();
        let length = digits.format(BODY.len());
        let entries: [(&str, &[u8]); 8] = [
            ("content-type", b"application/json"),
            ("x-cache", b"hit"),
            ("ratelimit-policy", b"\"default\";q=1000000000;w=60"),
            ("ratelimit", ratelimit.as_bytes()),
            ("x-ratelimit-limit", b"1000000000"),
            ("x-ratelimit-remaining", remaining.as_bytes()),
            ("x-ratelimit-reset", b"60"),
            ("content-length", length.as_bytes()),
        ];
        let Ok(headers) = Fields::from_list(&entries) else {
            return;
        };
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        if let Ok(stream) = body.write()
            && stream.blocking_write_and_flush(BODY).is_ok()
        {
            drop(stream);
            if OutgoingBody::finish(body, None).is_ok() {
                ResponseOutparam::set(response_out, Ok(response));
            }
        }
    }
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
