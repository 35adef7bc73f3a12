//! HTTP for functions: plain requests and responses, natively testable,
//! and on `wasm32` the `wasi:http` glue that reads and answers them.
//!
//! A function implements [`Handler`] and exports it with
//! [`export_function!`](crate::export_function); that is all of its
//! `wasi:http/incoming-handler`.

use std::borrow::Cow;

/// An incoming request, as far as a function cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`…, in upper case.
    pub method: String,
    /// The path, possibly followed by `?query`.
    pub path: String,
    /// Header names in lower case, values as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, as far as it was read.
    pub body: Body,
}

/// A request body as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// All of it (empty when the method carries none).
    Complete(Vec<u8>),
    /// Longer than the function accepts; the rest was not read.
    TooLarge,
    /// The client stopped sending before the end.
    Broken,
}

impl Request {
    /// A request without headers or body, for tests and examples.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Body::Complete(Vec::new()),
        }
    }

    /// The request with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    /// The request with a complete body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Complete(body.into());
        self
    }

    /// A header's value, trimmed; `None` when absent, empty or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// The path without its query.
    pub fn path(&self) -> &str {
        self.path.split_once('?').map_or(self.path.as_str(), |(path, _)| path)
    }

    /// Who is calling, from the headers the host sets (see
    /// [`caller`](crate::caller::caller)).
    pub fn caller(&self) -> (String, edge_cache_contract::config::CallerClass) {
        crate::caller::caller(
            self.header(edge_cache_contract::API_KEY_HEADER),
            self.header(edge_cache_contract::CLIENT_IP_HEADER),
        )
    }
}

/// Room for the headers a response usually carries (a content type, five
/// rate limit headers and a few more), so adding them never reallocates.
const RESPONSE_HEADERS: usize = 9;

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body of `content_type`.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        let mut headers = Vec::with_capacity(RESPONSE_HEADERS);
        headers.push(("content-type", Cow::Borrowed(content_type)));
        Self {
            status,
            headers,
            body: body.into(),
        }
    }

    /// A JSON response of text that already is JSON.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, "application/json", body)
    }

    /// An RFC 9457 problem response of type `urn:edge-cache:problem:{kind}`
    /// (the contract's format, see [`edge_cache_contract::problem`]).
    pub fn problem(status: u16, kind: &str, title: &str, detail: &str) -> Self {
        use edge_cache_contract::problem;
        Self::new(
            status,
            problem::CONTENT_TYPE,
            problem::body(status, kind, title, detail),
        )
    }

    /// The response with one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The response with several more headers.
    pub fn with_headers(mut self, headers: impl IntoIterator<Item = (&'static str, Cow<'static, str>)>) -> Self {
        self.headers.extend(headers);
        self
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

/// A function's HTTP handler, exported with
/// [`export_function!`](crate::export_function).
pub trait Handler {
    /// The largest body read; a longer one arrives as [`Body::TooLarge`].
    const MAX_BODY_BYTES: usize = 64 * 1024;

    /// Whether requests of `method` have their body read; the others arrive
    /// with an empty one, sparing the host calls of reading it.
    fn reads_body(method: &str) -> bool {
        matches!(method, "POST" | "PUT" | "PATCH")
    }

    /// Answers a request.
    fn handle(request: Request) -> Response;
}

/// Exports a [`Handler`] as the component's `wasi:http/incoming-handler`.
/// Natively it expands to nothing, so the crate builds and tests as a
/// library too.
///
/// ```
/// use edge_cache_sdk::http::{Handler, Request, Response};
///
/// struct Hello;
///
/// impl Handler for Hello {
///     fn handle(request: Request) -> Response {
///         Response::new(200, "text/plain", format!("hello from {}", request.path()))
///     }
/// }
///
/// edge_cache_sdk::export_function!(Hello);
///
/// assert_eq!(Hello::handle(Request::new("GET", "/there?x=1")).body, b"hello from /there");
/// ```
#[macro_export]
macro_rules! export_function {
    ($handler:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct ExportedFunction;

            impl $crate::wit::exports::wasi::http::incoming_handler::Guest for ExportedFunction {
                fn handle(
                    request: $crate::wit::wasi::http::types::IncomingRequest,
                    response_out: $crate::wit::wasi::http::types::ResponseOutparam,
                ) {
                    let request = $crate::http::read_request(request, |method| {
                        <$handler as $crate::http::Handler>::reads_body(method)
                            .then_some(<$handler as $crate::http::Handler>::MAX_BODY_BYTES)
                    });
                    let response = <$handler as $crate::http::Handler>::handle(request);
                    $crate::http::send_response(response, response_out);
                }
            }

    $crate::wit::export_function!(ExportedFunction with_types_in $crate::wit);
        };
    };
}

#[cfg(target_arch = "wasm32")]
pub use component::{read_request, send_response};

#[cfg(target_arch = "wasm32")]
mod component {
    use super::{Body, Request, Response};
    use crate::wit::wasi::http::types::Fields;
    use crate::wit::wasi::http::types::{
        IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
    };
    use crate::wit::wasi::io::streams::StreamError;

    /// Reads a request; `max_body_bytes` tells, from the method, how much of
    /// the body to read (`None`: leave it unread).
    pub fn read_request(request: IncomingRequest, max_body_bytes: impl FnOnce(&str) -> Option<usize>) -> Request {
        let method = match request.method() {
            Method::Get => "GET".to_owned(),
            Method::Head => "HEAD".to_owned(),
            Method::Post => "POST".to_owned(),
            Method::Put => "PUT".to_owned(),
            Method::Delete => "DELETE".to_owned(),
            Method::Connect => "CONNECT".to_owned(),
            Method::Options => "OPTIONS".to_owned(),
            Method::Trace => "TRACE".to_owned(),
            Method::Patch => "PATCH".to_owned(),
            Method::Other(other) => other,
        };
        let path = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        let headers = request.headers().entries();
        // Not consuming a body spares five host calls.
        let body = match max_body_bytes(&method) {
            Some(max) => request.consume().map_or(Body::Broken, |body| read_body(body, max)),
            None => Body::Complete(Vec::new()),
        };
        Request {
            method,
            path,
            headers,
            body,
        }
    }

    fn read_body(body: IncomingBody, max: usize) -> Body {
        let mut bytes = Vec::new();
        {
            let Ok(stream) = body.stream() else {
                return Body::Broken;
            };
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) if bytes.len() + chunk.len() > max => return Body::TooLarge,
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(_)) => return Body::Broken,
                }
            }
        }
        IncomingBody::finish(body);
        Body::Complete(bytes)
    }

    /// Sends a response.
    pub fn send_response(response: Response, response_out: ResponseOutparam) {
        // A declared length spares the host chunked encoding.
        let mut digits = itoa::Buffer::new();
        let length = digits.format(response.body.len());
        let entries: Vec<(&str, &[u8])> = response
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .chain([("content-length", length.as_bytes())])
            .collect();
        let headers = Fields::from_list(&entries).unwrap_or_else(|_| Fields::new());
        let outgoing = OutgoingResponse::new(headers);
        // A new response is a 200; any other status costs a host call.
        if response.status != 200 {
            let _ = outgoing.set_status_code(response.status);
        }
        let Ok(body) = outgoing.body() else { return };
        // The host buffers one write before anyone reads the body. A body
        // that fits in it goes in before the response is handed over, so
        // the host can send head and body at once; a longer one is streamed
        // after.
        let fits_before_hand_over = response.body.len() <= BLOCKING_WRITE_LIMIT;
        if !fits_before_hand_over {
            ResponseOutparam::set(response_out, Ok(outgoing));
            write_and_finish(body, &response.body);
        } else if write_and_finish(body, &response.body) {
            ResponseOutparam::set(response_out, Ok(outgoing));
        }
    }

    /// The most `blocking-write-and-flush` takes at once.
    const BLOCKING_WRITE_LIMIT: usize = 4096;

    /// Writes all of `bytes` and finishes the body; false if the host
    /// stopped taking it.
    fn write_and_finish(body: OutgoingBody, bytes: &[u8]) -> bool {
        if let Ok(stream) = body.write() {
            for chunk in bytes.chunks(BLOCKING_WRITE_LIMIT) {
                if stream.blocking_write_and_flush(chunk).is_err() {
                    return false;
                }
            }
        }
        OutgoingBody::finish(body, None).is_ok()
    }
}
