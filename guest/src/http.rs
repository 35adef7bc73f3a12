//! The HTTP edge function, independent of how requests reach it.
//!
//! Routes:
//! - `GET /profiles/{id}`: the profile (cache-aside), `x-cache: hit|miss|bypass`.
//! - `PUT /profiles/{id}`: create or replace a profile, invalidating the cache.
//!
//! Every request is rate limited per caller; errors are RFC 9457 problem
//! bodies (`application/problem+json`).

use crate::origin::Origin;
use crate::profiles::{ProfileError, Profiles};
use edge_cache_contract::config::{CallerClass, Config, Route};
use edge_cache_sdk::rate_limit::{self, Decision, DegradedReason};
use edge_cache_sdk::{Cache, Clock, PenaltyBox, Source};

pub use edge_cache_contract::{API_KEY_HEADER, CLIENT_IP_HEADER};
pub use edge_cache_sdk::http::{Body, Request, Response};
pub use edge_cache_sdk::rate_limit::DEGRADED_HEADER;

/// The largest request body accepted (a profile is small).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Who is calling: a digest of the API key when there is one, otherwise the
/// client address the host reported.
pub fn caller(request: &Request) -> (String, CallerClass) {
    request.caller()
}

/// Which rate limit route a request falls under.
fn route_of(request: &Request) -> Route {
    let is_profile = request
        .path()
        .strip_prefix("/profiles/")
        .is_some_and(|id| !id.contains('/'));
    match (is_profile, request.method.as_str()) {
        (true, "GET") => Route::GetProfile,
        (true, "PUT") => Route::PutProfile,
        _ => Route::Other,
    }
}

/// Serves one request; with the rate limit decision it was served under,
/// for the host's count (`edge:cache/telemetry`), none before the check.
pub fn handle(
    request: &Request,
    cache: &impl Cache,
    penalty_box: &impl PenaltyBox,
    origin: &impl Origin,
    clock: &impl Clock,
    config: &Config,
) -> (Response, Option<Decision>) {
    let (caller, class) = caller(request);
    let policy = config.policy_for(route_of(request), class);
    let decision = match rate_limit::check(cache, penalty_box, &caller, policy, 1, clock.now_ms()) {
        Ok(decision) => decision,
        Err(error) => {
            let detail = format!("the rate limit policy cannot be applied: {error:?}");
            return (
                Response::problem(500, "misconfigured", "Misconfigured rate limit", &detail),
                None,
            );
        }
    };
    // A cache outage is said in a header and counted by the host; only the
    // other reasons, which concern this caller's keys, are logged.
    if let Some(why) = decision
        .degraded
        .as_ref()
        .filter(|why| matches!(why.reason, DegradedReason::CacheError | DegradedReason::Contended))
    {
        eprintln!(
            "edge-cache guest: rate limit decided without the cache ({})",
            why.detail
        );
    }
    let response = if decision.allowed {
        route(request, cache, origin, clock, config)
    } else {
        let retry_after = rate_limit::retry_after(&decision);
        let detail = format!(
            "the {:?} quota allows {} requests per {} s; retry in {retry_after} s",
            policy.display_name(),
            policy.limit,
            policy.window_seconds
        );
        Response::problem(429, "quota-exceeded", "Too many requests", &detail)
            .with_header("retry-after", retry_after.to_string())
    };
    let response = response.with_headers(rate_limit::headers(&decision, policy));
    (response, Some(decision))
}

fn route(request: &Request, cache: &impl Cache, origin: &impl Origin, clock: &impl Clock, config: &Config) -> Response {
    let path = request.path();
    let Some(id) = path.strip_prefix("/profiles/").filter(|id| !id.contains('/')) else {
        return Response::problem(404, "not-found", "Not found", &format!("no route for {path}"));
    };
    let profiles = Profiles {
        cache,
        origin,
        clock,
        settings: config.profiles,
    };
    match request.method.as_str() {
        "GET" => match profiles.get(id) {
            Ok(Some(lookup)) => {
                let x_cache = match lookup.source {
                    Source::Cache => "hit",
                    Source::Origin => "miss",
                    Source::Stale => "stale",
                    Source::Bypass => "bypass",
                };
                Response::json(200, lookup.profile).with_header("x-cache", x_cache)
            }
            Ok(None) => Response::problem(
                404,
                "not-found",
                "Profile not found",
                &format!("no profile with id {id:?}"),
            ),
            Err(error) => profile_error(error),
        },
        "PUT" => {
            let body = match &request.body {
                Body::Complete(body) => body,
                Body::TooLarge => {
                    let detail = format!("a profile is at most {MAX_BODY_BYTES} bytes");
                    return Response::problem(413, "too-large", "Body too large", &detail);
                }
                Body::Broken => {
                    return Response::problem(400, "incomplete-body", "Incomplete body", "the body ended early");
                }
            };
            let Ok(text) = std::str::from_utf8(body) else {
                return Response::problem(400, "invalid-profile", "Invalid profile", "the body is not UTF-8");
            };
            match profiles.update(id, text) {
                Ok((stored, created)) => Response::json(if created { 201 } else { 200 }, stored),
                Err(error) => profile_error(error),
            }
        }
        other => Response::problem(
            405,
            "method-not-allowed",
            "Method not allowed",
            &format!("{other} is not supported here"),
        )
        .with_header("allow", "GET, PUT"),
    }
}

fn profile_error(error: ProfileError) -> Response {
    match error {
        ProfileError::InvalidId(why) => Response::problem(400, "invalid-id", "Invalid profile id", &why),
        ProfileError::InvalidProfile(why) => Response::problem(400, "invalid-profile", "Invalid profile", &why),
        ProfileError::OriginUnavailable(why) => {
            Response::problem(503, "origin-unavailable", "Origin unavailable", &why).with_header("retry-after", "1")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::memory::MemoryOrigin;
    use edge_cache_sdk::CacheError;
    use edge_cache_sdk::testing::{Forgetful, MemoryBox, MemoryCache};

    const ALICE: &str = r#"{"id":"alice"}"#;

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Body::Complete(body.as_bytes().to_vec()),
        }
    }

    fn serve(cache: &MemoryCache, origin: &MemoryOrigin, request: &Request) -> Response {
        handle(request, cache, &Forgetful, origin, &cache.clock, &Config::default()).0
    }

    fn configured(vars: &[(&str, &str)]) -> Config {
        Config::from_vars(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())).unwrap()
    }

    fn problem_type(response: &Response) -> String {
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(response.header("content-type"), Some("application/problem+json"));
        assert_eq!(body["status"], response.status);
        body["type"].as_str().unwrap().to_owned()
    }

    #[test]
    fn get_reports_miss_hit_and_stale() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::with(&[("alice", ALICE)]));
        let get = request("GET", "/profiles/alice?fields=all", &[], "");
        let first = serve(&cache, &origin, &get);
        assert_eq!((first.status, first.header("x-cache")), (200, Some("miss")));
        assert_eq!(first.body, ALICE.as_bytes());
        assert_eq!(first.header("content-type"), Some("application/json"));
        assert_eq!(serve(&cache, &origin, &get).header("x-cache"), Some("hit"));
        // Past freshness, with a refresh under way elsewhere.
        cache.clock.advance(600_000);
        cache.set("profile:v2:alice:lock", b"1", Some(5), true).unwrap();
        assert_eq!(serve(&cache, &origin, &get).header("x-cache"), Some("stale"));
    }

    #[test]
    fn problem_bodies_are_rfc_9457_json_in_a_fixed_field_order() {
        let response = Response::problem(404, "not-found", "Not found", "no profile with id \"x\"");
        assert_eq!(response.header("content-type"), Some("application/problem+json"));
        assert_eq!(
            String::from_utf8(response.body).unwrap(),
            r#"{"type":"urn:edge-cache:problem:not-found","title":"Not found","status":404,"detail":"no profile with id \"x\""}"#
        );
    }

    #[test]
    fn errors_are_problems() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::default());
        let cases = [
            (request("GET", "/profiles/nobody", &[], ""), 404, "not-found"),
            (request("GET", "/profiles/bad%20id", &[], ""), 400, "invalid-id"),
            (request("GET", "/profiles/", &[], ""), 400, "invalid-id"),
            (request("GET", "/elsewhere", &[], ""), 404, "not-found"),
            (request("GET", "/profiles/a/b", &[], ""), 404, "not-found"),
            (request("PUT", "/profiles/a", &[], "[]"), 400, "invalid-profile"),
            (request("DELETE", "/profiles/a", &[], ""), 405, "method-not-allowed"),
        ];
        for (request, status, kind) in cases {
            let response = serve(&cache, &origin, &request);
            assert_eq!(response.status, status, "{} {}", request.method, request.path);
            assert_eq!(problem_type(&response), format!("urn:edge-cache:problem:{kind}"));
        }
    }

    #[test]
    fn put_creates_then_replaces_the_cached_copy() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::default());
        let created = serve(&cache, &origin, &request("PUT", "/profiles/bob", &[], r#"{"v": 1}"#));
        assert_eq!((created.status, created.body.as_slice()), (201, &br#"{"v":1}"#[..]));
        let replaced = serve(&cache, &origin, &request("PUT", "/profiles/bob", &[], r#"{"v": 2}"#));
        assert_eq!(replaced.status, 200);
        let read = serve(&cache, &origin, &request("GET", "/profiles/bob", &[], ""));
        assert_eq!(
            (read.header("x-cache"), read.body.as_slice()),
            (Some("hit"), &br#"{"v":2}"#[..])
        );
    }

    #[test]
    fn bodies_that_are_too_large_or_broken_are_refused() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::default());
        let mut put = request("PUT", "/profiles/bob", &[], "");
        put.body = Body::TooLarge;
        assert_eq!(serve(&cache, &origin, &put).status, 413);
        put.body = Body::Broken;
        assert_eq!(serve(&cache, &origin, &put).status, 400);
        assert!(origin.profiles.borrow().is_empty());
    }

    #[test]
    fn the_61st_request_is_limited_with_headers() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::with(&[("alice", ALICE)]));
        // 5 s into a 60 s window.
        cache.clock.now.set(1_700_000_040_000 + 5_000);
        let get = request("GET", "/profiles/alice", &[(CLIENT_IP_HEADER, "10.0.0.1")], "");
        for n in 1..=60 {
            let response = serve(&cache, &origin, &get);
            assert_eq!(response.status, 200, "request {n}");
            assert_eq!(
                response.header("x-ratelimit-remaining"),
                Some((60 - n).to_string().as_str())
            );
            assert_eq!(
                response.header("ratelimit"),
                Some(format!("\"default\";r={};t=55", 60 - n).as_str())
            );
        }
        let limited = serve(&cache, &origin, &get);
        assert_eq!(limited.status, 429);
        assert_eq!(problem_type(&limited), "urn:edge-cache:problem:quota-exceeded");
        assert_eq!(limited.header("retry-after"), Some("55"));
        assert_eq!(limited.header("ratelimit-policy"), Some("\"default\";q=60;w=60"));
        assert_eq!(limited.header("ratelimit"), Some("\"default\";r=0;t=55"));
        assert_eq!(limited.header("x-ratelimit-limit"), Some("60"));
        assert_eq!(limited.header("x-ratelimit-reset"), Some("55"));
        let other = request("GET", "/profiles/alice", &[(CLIENT_IP_HEADER, "10.0.0.2")], "");
        assert_eq!(serve(&cache, &origin, &other).status, 200);
    }

    #[test]
    fn policies_follow_route_and_caller_class() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::with(&[("alice", ALICE)]));
        let config = configured(&[(
            "RATE_LIMITS",
            "*/*=fixed-window:1/1h; */api-key=gcra:5/1h,burst=2; put-profile/*=fixed-window:3/1h",
        )]);
        let serve = |request: &Request| handle(request, &cache, &Forgetful, &origin, &cache.clock, &config).0;
        let anonymous = request("GET", "/profiles/alice", &[], "");
        assert_eq!(serve(&anonymous).status, 200);
        assert_eq!(serve(&anonymous).status, 429);
        let keyed = request("GET", "/profiles/alice", &[(API_KEY_HEADER, "k1")], "");
        let first = serve(&keyed);
        assert_eq!(first.header("ratelimit-policy"), Some("\"api-key\";q=5;w=3600"));
        assert_eq!(serve(&keyed).status, 200);
        assert_eq!(serve(&keyed).status, 429, "the burst of 2 is spent");
        let put = request("PUT", "/profiles/alice", &[], "{}");
        assert_eq!(
            serve(&put).header("ratelimit-policy"),
            Some("\"put-profile\";q=3;w=3600")
        );
    }

    #[test]
    fn api_keys_identify_callers_by_digest() {
        let keyed = request(
            "GET",
            "/",
            &[("X-Api-Key", "s3cret"), (CLIENT_IP_HEADER, "10.0.0.1")],
            "",
        );
        let (key, class) = caller(&keyed);
        // The first 16 bytes of SHA-256("s3cret"), in lower-case hex: the key
        // must not change between versions, or counts would restart.
        assert_eq!(key, "key:1ec1c26b50d5d3c58d9583181af80766");
        assert_eq!(class, CallerClass::ApiKey);
        let by_ip = caller(&request("GET", "/", &[(CLIENT_IP_HEADER, "10.0.0.1")], ""));
        assert_eq!(by_ip, ("ip:10.0.0.1".to_owned(), CallerClass::Anonymous));
        assert_eq!(caller(&request("GET", "/", &[], "")).0, "anonymous");
    }

    #[test]
    fn a_cache_outage_still_answers() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::with(&[("alice", ALICE)]));
        *cache.failure.borrow_mut() = Some(CacheError::Unavailable("refused".into()));
        let get = request("GET", "/profiles/alice", &[], "");
        let (response, decision) = handle(&get, &cache, &Forgetful, &origin, &cache.clock, &Config::default());
        assert_eq!((response.status, response.header("x-cache")), (200, Some("bypass")));
        assert_eq!(
            response.header(DEGRADED_HEADER),
            Some("fail-open; reason=cache-unavailable")
        );
        assert!(decision.is_some_and(|decision| decision.allowed && decision.degraded.is_some()));
    }

    #[test]
    fn a_cache_outage_with_a_fail_closed_policy_refuses() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::with(&[("alice", ALICE)]));
        *cache.failure.borrow_mut() = Some(CacheError::Timeout);
        let config = configured(&[("RATE_LIMITS", "*/*=fixed-window:10/1m,fail=closed")]);
        let (response, _) = handle(
            &request("GET", "/profiles/alice", &[], ""),
            &cache,
            &Forgetful,
            &origin,
            &cache.clock,
            &config,
        );
        assert_eq!((response.status, response.header("retry-after")), (429, Some("1")));
        assert_eq!(
            response.header(DEGRADED_HEADER),
            Some("fail-closed; reason=cache-timeout")
        );
    }

    /// A caller over its limit is answered from the penalty box with the
    /// very response the cache path gives, without a cache call, for each
    /// algorithm, until the decision can change.
    #[test]
    fn a_denial_from_the_penalty_box_is_the_cache_paths_response() {
        for rules in [
            "*/*=fixed-window:2/10s",
            "*/*=sliding-window:2/10s",
            "*/*=gcra:2/10s,burst=2",
        ] {
            let (cache, origin) = (MemoryCache::default(), MemoryOrigin::with(&[("alice", ALICE)]));
            let config = configured(&[("RATE_LIMITS", rules)]);
            let penalty_box = MemoryBox::default();
            let get = request("GET", "/profiles/alice", &[(CLIENT_IP_HEADER, "10.0.0.1")], "");
            // A twin that never boxes: what the cache path answers.
            let unboxed = MemoryCache::default();
            let serve = |boxed: bool| match boxed {
                true => handle(&get, &cache, &penalty_box, &origin, &cache.clock, &config).0,
                false => handle(&get, &unboxed, &Forgetful, &origin, &cache.clock, &config).0,
            };
            for _ in 0..2 {
                assert_eq!(serve(true).status, 200, "{rules}");
                assert_eq!(serve(false).status, 200, "{rules}");
            }
            let first_denial = serve(true);
            assert_eq!(first_denial.status, 429, "{rules}");
            assert_eq!(penalty_box.keys().len(), 1, "{rules}: the denial is held");
            let calls = cache.calls.get();
            for step_ms in [0, 1, 250, 499] {
                cache.clock.advance(step_ms);
                let boxed = serve(true);
                let from_cache = serve(false);
                assert_eq!(boxed.status, 429, "{rules}");
                assert_eq!(boxed, from_cache, "{rules}: +{step_ms} ms");
            }
            assert_eq!(cache.calls.get(), calls, "{rules}: no cache call while held");
        }
    }

    #[test]
    fn origin_outage_is_503() {
        let (cache, origin) = (MemoryCache::default(), MemoryOrigin::default());
        origin.down.set(true);
        let response = serve(&cache, &origin, &request("GET", "/profiles/alice", &[], ""));
        assert_eq!(response.status, 503);
    }
}
