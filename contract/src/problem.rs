//! The one error format of the edge function and of the harness: RFC 9457
//! problem bodies of type `urn:edge-cache:problem:{kind}`.

use serde::Serialize;

/// The content type of [`body`]'s bodies.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// What every problem type starts with.
pub const TYPE_PREFIX: &str = "urn:edge-cache:problem:";

/// An RFC 9457 problem body: `type` (`urn:edge-cache:problem:{kind}`),
/// `title`, `status` and `detail`, in that order.
///
/// ```
/// let body = edge_cache_contract::problem::body(404, "not-found", "Not found", "no such id");
/// assert_eq!(
///     String::from_utf8(body).unwrap(),
///     r#"{"type":"urn:edge-cache:problem:not-found","title":"Not found","status":404,"detail":"no such id"}"#
/// );
/// ```
pub fn body(status: u16, kind: &str, title: &str, detail: &str) -> Vec<u8> {
    // Serialized from a struct, not a `json!` map: every denied request
    // answers with one, so it is a hot path under load.
    #[derive(Serialize)]
    struct Problem<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        title: &'a str,
        status: u16,
        detail: &'a str,
    }
    let kind = [TYPE_PREFIX, kind].concat();
    let problem = Problem {
        kind: &kind,
        title,
        status,
        detail,
    };
    serde_json::to_vec(&problem).expect("a problem of strings always serializes")
}
