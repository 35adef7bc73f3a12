//! A notes and counter app written against the standard `wasi:keyvalue`
//! and `wasi:http` only, the way a Spin or wasmCloud user writes one; it
//! knows nothing of edge-cache. The harness must serve it unchanged.
//!
//! Routes (keys and bucket names are taken from the path as they are):
//! - `GET /hits`: the classic counter, `increment` in the default bucket.
//! - `GET|PUT|DELETE /kv/{bucket}/{key}`: `get` (404 when absent), `set`
//!   (the request body), `delete`; `GET /kv/{bucket}/{key}?exists`: `exists`.
//! - `POST /incr/{bucket}/{key}?by=N`: `increment` by N (default 1).
//! - `GET /keys/{bucket}`: every key, a line each (sorted), through every
//!   page of `list-keys`; `x-pages` says how many pages it took.
//! - `/batch/{bucket}`: `POST` sets the body's `key=value` lines
//!   (`set-many`); `GET ?keys=a,b` answers `key=value` or `key (none)` lines
//!   (`get-many`); `DELETE ?keys=a,b` deletes them (`delete-many`).
//!
//! A store error is answered as 404 `no-such-store`, 403 `access-denied`
//! or 500 `other: …` with the host's message.

#![cfg(target_arch = "wasm32")]

mod bindings {
    wit_bindgen::generate!({
        world: "example:notes/notes",
        generate_all,
    });
}

use bindings::exports::wasi::http::incoming_handler;
use bindings::wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use bindings::wasi::keyvalue::{atomics, batch, store};

struct Notes;

bindings::export!(Notes with_types_in bindings);

/// An answer: status, extra headers, body.
type Reply = (u16, Vec<(&'static str, String)>, Vec<u8>);

fn text(status: u16, body: impl Into<Vec<u8>>) -> Reply {
    (status, Vec::new(), body.into())
}

fn failed(error: store::Error) -> Reply {
    match error {
        store::Error::NoSuchStore => text(404, "no-such-store"),
        store::Error::AccessDenied => text(403, "access-denied"),
        store::Error::Other(why) => text(500, format!("other: {why}")),
    }
}

impl incoming_handler::Guest for Notes {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let method = request.method();
        let target = request.path_with_query().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let body = request.consume().map(read_body).unwrap_or_default();
        let segments: Vec<&str> = path.trim_start_matches('/').splitn(3, '/').collect();
        let reply = route(&method, &segments, query, body).unwrap_or_else(failed);
        respond(response_out, reply);
    }
}

fn route(method: &Method, segments: &[&str], query: &str, body: Vec<u8>) -> Result<Reply, store::Error> {
    Ok(match (method, segments) {
        (Method::Get, ["hits"]) => {
            let bucket = store::open("")?;
            text(200, atomics::increment(&bucket, "hits", 1)?.to_string())
        }
        (Method::Get, ["kv", bucket, key]) if query == "exists" => {
            text(200, store::open(bucket)?.exists(key)?.to_string())
        }
        (Method::Get, ["kv", bucket, key]) => match store::open(bucket)?.get(key)? {
            Some(value) => text(200, value),
            None => text(404, "absent"),
        },
        (Method::Put, ["kv", bucket, key]) => {
            store::open(bucket)?.set(key, &body)?;
            text(204, "")
        }
        (Method::Delete, ["kv", bucket, key]) => {
            store::open(bucket)?.delete(key)?;
            text(204, "")
        }
        (Method::Post, ["incr", bucket, key]) => {
            let by = match query.strip_prefix("by=") {
                Some(by) => match by.parse::<u64>() {
                    Ok(by) => by,
                    Err(_) => return Ok(text(400, "by must be an unsigned integer")),
                },
                None => 1,
            };
            let value = atomics::increment(&store::open(bucket)?, key, by)?;
            text(200, value.to_string())
        }
        (Method::Get, ["keys", bucket]) => {
            let bucket = store::open(bucket)?;
            let (mut keys, mut pages, mut cursor) = (Vec::new(), 0u32, None);
            loop {
                let page = bucket.list_keys(cursor)?;
                pages += 1;
                keys.extend(page.keys);
                cursor = page.cursor;
                if cursor.is_none() {
                    break;
                }
            }
            keys.sort();
            let mut listing = keys.join("\n");
            listing.push('\n');
            (200, vec![("x-pages", pages.to_string())], listing.into_bytes())
        }
        (Method::Post, ["batch", bucket]) => {
            let text_body = String::from_utf8_lossy(&body);
            let entries: Vec<(String, Vec<u8>)> = text_body
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(key, value)| (key.to_owned(), value.as_bytes().to_vec()))
                .collect();
            batch::set_many(&store::open(bucket)?, &entries)?;
            text(204, "")
        }
        (Method::Get, ["batch", bucket]) => {
            let keys = query_keys(query);
            let found = batch::get_many(&store::open(bucket)?, &keys)?;
            let lines: Vec<String> = keys
                .iter()
                .zip(found)
                .map(|(key, entry)| match entry {
                    Some((name, value)) => format!("{name}={}", String::from_utf8_lossy(&value)),
                    None => format!("{key} (none)"),
                })
                .collect();
            text(200, lines.join("\n"))
        }
        (Method::Delete, ["batch", bucket]) => {
            batch::delete_many(&store::open(bucket)?, &query_keys(query))?;
            text(204, "")
        }
        _ => text(404, "no such route"),
    })
}

fn query_keys(query: &str) -> Vec<String> {
    query
        .strip_prefix("keys=")
        .unwrap_or_default()
        .split(',')
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
        .collect()
}

fn read_body(body: IncomingBody) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Ok(stream) = body.stream() {
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            bytes.extend(chunk);
        }
    }
    bytes
}

fn respond(out: ResponseOutparam, (status, headers, body): Reply) {
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value.as_bytes())
            .expect("the app's own headers are valid");
    }
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).expect("a valid status");
    let outgoing = response.body().expect("a fresh response has a body");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("a fresh body has a stream");
    for chunk in body.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .expect("the host accepts the body");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("the body is complete");
}
