//! One-time codes, as a whole edge function written with the SDK only.
//!
//! - `POST /codes/{subject}` issues a 6-digit code for `subject` (an email
//!   address, a phone number…), valid for 5 minutes; a new code replaces the
//!   old one. A real deployment would send it by mail or SMS; this example
//!   answers with it, so it can be tried with curl.
//! - `POST /codes/{subject}/verify` with the code as its body answers 200 the
//!   first time the right code is sent, and never again: the check deletes
//!   the code atomically (`compare-and-delete`), so two racing requests
//!   cannot both pass. After 5 wrong attempts the code is burnt.
//!
//! Every request counts against its caller's quota (GCRA, 30 a minute with
//! bursts of 10, refused while the cache is down: codes live nowhere else).
//! The logic is [`serve`], over the SDK's host traits, so the tests below
//! run it natively against the in-memory host; in the component it runs on
//! [`edge_cache_sdk::Host`].

use edge_cache_sdk::http::{Request, Response};
use edge_cache_sdk::rate_limit::{self, Algorithm, FailMode, Policy, Telemetry};
use edge_cache_sdk::{Cache, CacheError, Clock, Keyspace, PenaltyBox};

/// How long a code is valid.
pub const CODE_TTL_SECONDS: u64 = 300;

/// Wrong codes allowed before the code is burnt.
pub const MAX_ATTEMPTS: i64 = 5;

/// The longest subject.
pub const MAX_SUBJECT_LEN: usize = 128;

fn policy() -> Policy {
    Policy {
        name: "codes".into(),
        algorithm: Algorithm::Gcra { burst: Some(10) },
        limit: 30,
        window_seconds: 60,
        fail_mode: FailMode::Closed,
    }
}

/// Answers a request.
pub fn serve(host: &(impl Cache + Clock + Telemetry + PenaltyBox), request: &Request) -> Response {
    let (caller, _) = request.caller();
    let policy = policy();
    let decision = match rate_limit::check(host, host, &caller, &policy, 1, host.now_ms()) {
        Ok(decision) => decision,
        Err(error) => return Response::problem(500, "misconfigured", "Misconfigured", &format!("{error:?}")),
    };
    host.report(&decision);
    let response = if decision.allowed {
        route(host, request).unwrap_or_else(|error| {
            Response::problem(503, "cache-unavailable", "Codes unavailable", &error.to_string())
                .with_header("retry-after", "1")
        })
    } else {
        let retry_after = rate_limit::retry_after(&decision);
        Response::problem(429, "quota-exceeded", "Too many requests", "slow down")
            .with_header("retry-after", retry_after.to_string())
    };
    response.with_headers(rate_limit::headers(&decision, &policy))
}

fn route(host: &(impl Cache + Clock), request: &Request) -> Result<Response, CacheError> {
    let path = request.path();
    let Some(rest) = path.strip_prefix("/codes/") else {
        return Ok(Response::problem(404, "not-found", "Not found", path));
    };
    let (subject, action) = rest.split_once('/').unwrap_or((rest, ""));
    if subject.is_empty() || subject.len() > MAX_SUBJECT_LEN || subject.bytes().any(|b| b.is_ascii_control()) {
        let detail = format!("a subject has 1 to {MAX_SUBJECT_LEN} printable characters");
        return Ok(Response::problem(400, "invalid-subject", "Invalid subject", &detail));
    }
    match (request.method.as_str(), action) {
        ("POST", "") => issue(host, subject),
        ("POST", "verify") => verify(host, subject, request),
        (_, "" | "verify") => {
            Ok(Response::problem(405, "method-not-allowed", "Use POST", path).with_header("allow", "POST"))
        }
        _ => Ok(Response::problem(404, "not-found", "Not found", path)),
    }
}

fn codes<C: Cache>(host: &C) -> Keyspace<'_, C> {
    Keyspace::new(host, "otp:code:")
}

fn attempts<C: Cache>(host: &C) -> Keyspace<'_, C> {
    Keyspace::new(host, "otp:attempts:")
}

fn issue(host: &(impl Cache + Clock), subject: &str) -> Result<Response, CacheError> {
    let code = format!("{:06}", (host.random() * 1e6) as u64 % 1_000_000);
    codes(host).set(subject, code.as_bytes(), Some(CODE_TTL_SECONDS))?;
    attempts(host).delete(subject)?;
    let body = serde_json::json!({ "subject": subject, "code": code, "expires_in": CODE_TTL_SECONDS });
    Ok(Response::json(201, body.to_string()))
}

fn verify(host: &impl Cache, subject: &str, request: &Request) -> Result<Response, CacheError> {
    let sent = match &request.body {
        edge_cache_sdk::http::Body::Complete(body) => body.trim_ascii(),
        _ => b"",
    };
    // Counted before the check, so racing guesses cannot pass the bound.
    if attempts(host).incr(subject, 1, CODE_TTL_SECONDS)? > MAX_ATTEMPTS {
        codes(host).delete(subject)?;
        let detail = "too many wrong codes; ask for a new one";
        return Ok(Response::problem(403, "code-burnt", "Code burnt", detail));
    }
    if codes(host).compare_and_delete(subject, sent)? {
        attempts(host).delete(subject)?;
        return Ok(Response::json(200, r#"{"verified":true}"#));
    }
    let detail = "no such code: wrong, expired or already used";
    Ok(Response::problem(403, "wrong-code", "Wrong code", detail))
}

/// The component: [`serve`] on the host.
pub struct OneTimeCodes;

#[cfg(target_arch = "wasm32")]
impl edge_cache_sdk::http::Handler for OneTimeCodes {
    const MAX_BODY_BYTES: usize = 64;

    fn handle(request: Request) -> Response {
        serve(&edge_cache_sdk::Host, &request)
    }
}

edge_cache_sdk::export_function!(OneTimeCodes);

#[cfg(test)]
mod tests {
    use super::*;
    use edge_cache_sdk::testing::MemoryCache;

    fn issue(host: &MemoryCache, subject: &str) -> String {
        let response = serve(host, &Request::new("POST", &format!("/codes/{subject}")));
        assert_eq!(response.status, 201);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        body["code"].as_str().unwrap().to_owned()
    }

    fn verify(host: &MemoryCache, subject: &str, code: &str) -> u16 {
        serve(
            host,
            &Request::new("POST", &format!("/codes/{subject}/verify")).with_body(code),
        )
        .status
    }

    #[test]
    fn a_code_verifies_once() {
        let host = MemoryCache::default();
        host.clock.random.set(0.123_456_7);
        let code = issue(&host, "alice@example.com");
        assert_eq!(code, "123456");
        assert_eq!(host.ttl_of("otp:code:alice@example.com"), Some(Some(CODE_TTL_SECONDS)));
        assert_eq!(verify(&host, "alice@example.com", "000000"), 403);
        assert_eq!(verify(&host, "alice@example.com", &code), 200);
        assert_eq!(verify(&host, "alice@example.com", &code), 403, "spent");
    }

    #[test]
    fn codes_expire() {
        let host = MemoryCache::default();
        let code = issue(&host, "bob");
        host.clock.advance(CODE_TTL_SECONDS * 1000);
        assert_eq!(verify(&host, "bob", &code), 403);
    }

    #[test]
    fn wrong_guesses_burn_the_code() {
        let host = MemoryCache::default();
        let code = issue(&host, "carol");
        for _ in 0..MAX_ATTEMPTS {
            assert_eq!(verify(&host, "carol", "999999"), 403);
        }
        assert_eq!(verify(&host, "carol", &code), 403, "burnt, even with the right code");
        let new = issue(&host, "carol");
        assert_eq!(verify(&host, "carol", &new), 200, "a new code starts afresh");
    }

    #[test]
    fn callers_are_limited_and_told_when_to_retry() {
        let host = MemoryCache::default();
        let request = Request::new("POST", "/codes/dave").with_header("x-edge-client-ip", "10.0.0.1");
        for _ in 0..10 {
            assert_eq!(serve(&host, &request).status, 201);
        }
        let limited = serve(&host, &request);
        assert_eq!((limited.status, limited.header("retry-after")), (429, Some("2")));
        assert_eq!(limited.header("ratelimit-policy"), Some("\"codes\";q=30;w=60"));
    }

    #[test]
    fn without_the_cache_codes_are_refused() {
        let host = MemoryCache::default();
        *host.failure.borrow_mut() = Some(CacheError::Unavailable("down".into()));
        let response = serve(&host, &Request::new("POST", "/codes/erin"));
        assert_eq!(response.status, 429, "the quota fails closed");
        assert_eq!(
            response.header("x-ratelimit-degraded"),
            Some("fail-closed; reason=cache-unavailable")
        );
    }

    #[test]
    fn bad_requests_are_problems() {
        let host = MemoryCache::default();
        assert_eq!(serve(&host, &Request::new("GET", "/codes/alice")).status, 405);
        assert_eq!(serve(&host, &Request::new("POST", "/elsewhere")).status, 404);
        assert_eq!(serve(&host, &Request::new("POST", "/codes/")).status, 400);
    }
}
