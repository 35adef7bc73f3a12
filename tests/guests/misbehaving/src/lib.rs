//! An edge function that misbehaves on request, for the harness's tests:
//! `/loop` spins forever, `/hoard` allocates without bound, `/panic` panics,
//! `/silent` returns without answering, `/count` answers how many requests
//! this instance has served, anything else answers 200.
//! It exports the whole `edge-function` world, so the harness serves it like
//! the real guest.

#![cfg(target_arch = "wasm32")]

mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "edge:cache/edge-function",
        generate_all,
    });
}

use bindings::exports::edge::cache::{profiles, rate_limit};
use bindings::exports::wasi::http::incoming_handler;
use bindings::wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};

struct Misbehaving;

bindings::export!(Misbehaving with_types_in bindings);

impl incoming_handler::Guest for Misbehaving {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        match request.path_with_query().as_deref() {
            Some("/loop") => {
                let mut spins = 0u64;
                loop {
                    spins = black_box(spins.wrapping_add(1));
                }
            }
            Some("/hoard") => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            Some("/panic") => panic!("asked to panic"),
            Some("/silent") => {}
            Some("/count") => {
                static SERVED: AtomicU32 = AtomicU32::new(0);
                let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().expect("a fresh response has a body");
                let stream = body.write().expect("a fresh body has a stream");
                stream
                    .blocking_write_and_flush(served.to_string().as_bytes())
                    .expect("the host accepts the body");
                drop(stream);
                OutgoingBody::finish(body, None).expect("the body is complete");
                ResponseOutparam::set(response_out, Ok(response));
            }
            _ => {
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().expect("a fresh response has a body");
                ResponseOutparam::set(response_out, Ok(response));
                let stream = body.write().expect("a fresh body has a stream");
                stream
                    .blocking_write_and_flush(b"ok")
                    .expect("the host accepts the body");
                drop(stream);
                OutgoingBody::finish(body, None).expect("the body is complete");
            }
        }
    }
}

impl profiles::Guest for Misbehaving {
    fn get(_: String) -> Result<Option<profiles::Lookup>, profiles::Error> {
        Err(profiles::Error::OriginUnavailable(
            "this test guest has no profiles".into(),
        ))
    }

    fn update(_: String, _: String) -> Result<bool, profiles::Error> {
        Err(profiles::Error::OriginUnavailable(
            "this test guest has no profiles".into(),
        ))
    }
}

impl rate_limit::Guest for Misbehaving {
    fn check(_: String, _: rate_limit::Policy, _: u32) -> Result<rate_limit::Decision, rate_limit::Error> {
        Err(rate_limit::Error::Unavailable("this test guest does not limit".into()))
    }

    fn peek(_: String, _: rate_limit::Policy) -> Result<rate_limit::Decision, rate_limit::Error> {
        Err(rate_limit::Error::Unavailable("this test guest does not limit".into()))
    }

    fn reset(_: String, _: rate_limit::Policy) -> Result<(), rate_limit::Error> {
        Err(rate_limit::Error::Unavailable("this test guest does not limit".into()))
    }
}
