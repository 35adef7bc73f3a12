//! The component `bench/run` ranks the Wasm hosts with: it answers every
//! request with the same profile bytes and imports nothing beyond
//! `wasi:http` and what it needs, so any host of the `wasi:http/proxy`
//! world can serve it. What a host spends on it is that host's own cost per
//! request: accepting, parsing, instantiating (or reusing) and calling.

#![cfg(target_arch = "wasm32")]

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "
            package edge:bench-hello;

            world hello {
                export wasi:http/incoming-handler@0.2.12;
            }
        ",
        world: "edge:bench-hello/hello",
        generate_all,
    });
}

use bindings::exports::wasi::http::incoming_handler;
use bindings::wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

/// The profile the edge function answers on a hit, so the bytes on the wire
/// match the other workloads'.
const BODY: &[u8] = br#"{"id":"alice","name":"Alice Liddell","plan":"pro","country":"GB"}"#;

struct Hello;

bindings::export!(Hello with_types_in bindings);

impl incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        drop(request);
        let length = BODY.len().to_string();
        let entries: [(String, Vec<u8>); 2] = [
            ("content-type".into(), b"application/json".to_vec()),
            ("content-length".into(), length.into_bytes()),
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
