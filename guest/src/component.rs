//! The export layer: WIT types in, plain Rust out, and back.

mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "edge:cache/edge-function",
        generate_all,
        // Imports take borrowed data all the way down (`&[(&str, &[u8])]`
        // for header lists), so calling them copies nothing in the guest.
        ownership: Borrowing {
            duplicate_if_necessary: false
        },
    });
}

use crate::cache_aside::{ProfileError, Profiles, Settings, Source};
use crate::config::Config;
use crate::host::{BoundedIncr, Cache, CacheError, CasOutcome, Clock, Held, Lookup, Origin, OriginError, PenaltyBox};
use crate::http;
use crate::rate_limit::{self, Algorithm, Decision, DegradedReason, FailMode, Policy, RateLimitError};
use bindings::edge::cache::{
    cache as wit_cache, origin as wit_origin, penalty_box as wit_penalty_box, telemetry as wit_telemetry,
};
use bindings::exports::edge::cache::{profiles as wit_profiles, rate_limit as wit_rate_limit};
use bindings::exports::wasi::http::incoming_handler;
use bindings::wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use bindings::wasi::io::streams::StreamError;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct EdgeFunction;

bindings::export!(EdgeFunction with_types_in bindings);

/// `edge:cache/cache` as the logic modules see it.
struct HostCache;

impl From<wit_cache::Error> for CacheError {
    fn from(error: wit_cache::Error) -> Self {
        match error {
            wit_cache::Error::Unavailable(why) => Self::Unavailable(why),
            wit_cache::Error::Timeout => Self::Timeout,
            wit_cache::Error::InvalidKey(why) => Self::InvalidKey(why),
            wit_cache::Error::ValueTooLarge(limit) => Self::ValueTooLarge(limit),
            wit_cache::Error::WrongType => Self::WrongType,
            wit_cache::Error::InvalidArgument(why) => Self::InvalidArgument(why),
            wit_cache::Error::Other(why) => Self::Other(why),
        }
    }
}

impl Cache for HostCache {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(wit_cache::get(key)?)
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        Ok(wit_cache::get_many(&borrowed(keys))?)
    }

    fn set(&self, key: &str, value: &[u8], ttl_seconds: Option<u64>, only_if_absent: bool) -> Result<bool, CacheError> {
        Ok(wit_cache::set(
            key,
            value,
            wit_cache::SetOptions {
                ttl_seconds,
                only_if_absent,
            },
        )?)
    }

    fn delete(&self, keys: &[String]) -> Result<u32, CacheError> {
        Ok(wit_cache::delete(&borrowed(keys))?)
    }

    fn incr_by_bounded(&self, key: &str, delta: i64, ttl_if_new: u64, max: i64) -> Result<BoundedIncr, CacheError> {
        let outcome = wit_cache::incr_by_bounded(key, delta, ttl_if_new, max)?;
        Ok(BoundedIncr {
            applied: outcome.applied,
            value: outcome.value,
        })
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_seconds: Option<u64>,
    ) -> Result<CasOutcome, CacheError> {
        Ok(match wit_cache::compare_and_swap(key, expected, new, ttl_seconds)? {
            wit_cache::CasOutcome::Swapped => CasOutcome::Swapped,
            wit_cache::CasOutcome::Conflict(current) => CasOutcome::Conflict(current),
        })
    }

    fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, CacheError> {
        Ok(wit_cache::compare_and_delete(key, expected)?)
    }
}

/// `edge:cache/penalty-box` as the limiter sees it.
struct HostPenaltyBox;

impl PenaltyBox for HostPenaltyBox {
    fn look(&self, key: &str) -> Lookup {
        let lookup = wit_penalty_box::look(key);
        Lookup {
            ticket: lookup.ticket,
            held: lookup.held.map(|entry| Held {
                until_ms: entry.until_ms,
                note: entry.note,
            }),
        }
    }

    fn hold(&self, key: &str, ticket: u64, until_ms: u64, note: &[u8]) {
        wit_penalty_box::hold(key, ticket, until_ms, note);
    }

    fn release(&self, key: &str) {
        wit_penalty_box::release(key);
    }
}

/// Tells the host about a rate limit decision, where it is made.
fn report(decision: &Decision) {
    let degraded = decision.degraded.as_ref().map(|why| match why.reason {
        DegradedReason::CacheUnavailable => wit_telemetry::DegradedReason::CacheUnavailable,
        DegradedReason::CacheTimeout => wit_telemetry::DegradedReason::CacheTimeout,
        DegradedReason::CacheError => wit_telemetry::DegradedReason::CacheError,
        DegradedReason::Contended => wit_telemetry::DegradedReason::Contended,
    });
    wit_telemetry::rate_limit_decided(decision.allowed, degraded);
}

fn borrowed(keys: &[String]) -> Vec<&str> {
    keys.iter().map(String::as_str).collect()
}

/// Time and randomness from WASI.
struct HostClock;

impl Clock for HostClock {
    fn now_ms(&self) -> u64 {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
    }

    fn sleep_ms(&self, ms: u64) {
        // A WASI poll: the host runs other requests meanwhile.
        std::thread::sleep(Duration::from_millis(ms));
    }

    fn random(&self) -> f64 {
        // 53 random bits, shifted into (0, 1].
        let bits = bindings::wasi::random::random::get_random_u64() >> 11;
        (bits + 1) as f64 / (1u64 << 53) as f64
    }
}

/// `edge:cache/origin` as the logic modules see it.
struct HostOrigin;

impl From<wit_origin::Error> for OriginError {
    fn from(error: wit_origin::Error) -> Self {
        match error {
            wit_origin::Error::Unavailable(why) => Self::Unavailable(why),
            wit_origin::Error::InvalidProfile(why) => Self::InvalidProfile(why),
        }
    }
}

impl Origin for HostOrigin {
    fn fetch(&self, id: &str) -> Result<Option<String>, OriginError> {
        Ok(wit_origin::fetch(id)?)
    }

    fn update(&self, id: &str, profile: &str) -> Result<bool, OriginError> {
        Ok(wit_origin::update(id, profile)?)
    }
}

/// The function's settings; a host without them gets the defaults, and a
/// bad value is reported on every call rather than guessed around. Read
/// once per instance: its environment cannot change while it lives, and a
/// host may serve many requests with one instance.
fn config() -> Result<&'static Config, &'static str> {
    static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();
    CONFIG.get_or_init(Config::from_env).as_ref().map_err(String::as_str)
}

fn profiles_settings() -> Settings {
    // The exports have no error for configuration; bad values fall back to
    // the defaults (HTTP requests report them).
    config().map(|config| config.profiles).unwrap_or_default()
}

impl From<ProfileError> for wit_profiles::Error {
    fn from(error: ProfileError) -> Self {
        match error {
            ProfileError::InvalidId(why) => Self::InvalidId(why),
            ProfileError::InvalidProfile(why) => Self::InvalidProfile(why),
            ProfileError::OriginUnavailable(why) => Self::OriginUnavailable(why),
        }
    }
}

impl wit_profiles::Guest for EdgeFunction {
    fn get(id: String) -> Result<Option<wit_profiles::Lookup>, wit_profiles::Error> {
        let profiles = Profiles {
            cache: &HostCache,
            origin: &HostOrigin,
            clock: &HostClock,
            settings: profiles_settings(),
        };
        let lookup = profiles.get(&id)?;
        Ok(lookup.map(|lookup| wit_profiles::Lookup {
            profile: lookup.profile,
            source: match lookup.source {
                Source::Cache => wit_profiles::Source::Cache,
                Source::Origin => wit_profiles::Source::Origin,
                Source::Stale => wit_profiles::Source::Stale,
                Source::Bypass => wit_profiles::Source::Bypass,
            },
        }))
    }

    fn update(id: String, profile: String) -> Result<bool, wit_profiles::Error> {
        let profiles = Profiles {
            cache: &HostCache,
            origin: &HostOrigin,
            clock: &HostClock,
            settings: profiles_settings(),
        };
        Ok(profiles.update(&id, &profile)?.1)
    }
}

impl From<RateLimitError> for wit_rate_limit::Error {
    fn from(error: RateLimitError) -> Self {
        match error {
            RateLimitError::InvalidPolicy(why) => Self::InvalidPolicy(why),
            RateLimitError::InvalidKey(why) => Self::InvalidKey(why),
            RateLimitError::InvalidCost(why) => Self::InvalidCost(why),
            RateLimitError::Unavailable(why) => Self::Unavailable(why),
        }
    }
}

impl From<Decision> for wit_rate_limit::Decision {
    fn from(decision: Decision) -> Self {
        Self {
            allowed: decision.allowed,
            limit: decision.limit,
            remaining: decision.remaining,
            reset_after_ms: decision.reset_after_ms,
            retry_after_ms: decision.retry_after_ms,
            degraded: decision.degraded.map(|why| why.detail),
        }
    }
}

impl From<wit_rate_limit::Policy> for Policy {
    fn from(policy: wit_rate_limit::Policy) -> Self {
        Self {
            name: policy.name,
            algorithm: match policy.algorithm {
                wit_rate_limit::Algorithm::FixedWindow => Algorithm::FixedWindow,
                wit_rate_limit::Algorithm::SlidingWindow => Algorithm::SlidingWindow,
                wit_rate_limit::Algorithm::Gcra(burst) => Algorithm::Gcra { burst },
            },
            limit: policy.limit,
            window_seconds: policy.window_seconds,
            fail_mode: match policy.fail_mode {
                wit_rate_limit::FailMode::Open => FailMode::Open,
                wit_rate_limit::FailMode::Closed => FailMode::Closed,
            },
        }
    }
}

impl wit_rate_limit::Guest for EdgeFunction {
    fn check(
        key: String,
        policy: wit_rate_limit::Policy,
        cost: u32,
    ) -> Result<wit_rate_limit::Decision, wit_rate_limit::Error> {
        let decision = rate_limit::check(
            &HostCache,
            &HostPenaltyBox,
            &key,
            &policy.into(),
            cost,
            HostClock.now_ms(),
        )?;
        report(&decision);
        Ok(decision.into())
    }

    fn peek(key: String, policy: wit_rate_limit::Policy) -> Result<wit_rate_limit::Decision, wit_rate_limit::Error> {
        Ok(rate_limit::peek(&HostCache, &HostPenaltyBox, &key, &policy.into(), HostClock.now_ms())?.into())
    }

    fn reset(key: String, policy: wit_rate_limit::Policy) -> Result<(), wit_rate_limit::Error> {
        Ok(rate_limit::reset(
            &HostCache,
            &HostPenaltyBox,
            &key,
            &policy.into(),
            HostClock.now_ms(),
        )?)
    }
}

impl incoming_handler::Guest for EdgeFunction {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let response = match config() {
            Ok(config) => {
                let response = http::handle(
                    &read_request(request),
                    &HostCache,
                    &HostPenaltyBox,
                    &HostOrigin,
                    &HostClock,
                    config,
                );
                if let Some(decision) = &response.decision {
                    report(decision);
                }
                response
            }
            Err(why) => http::Response::problem(500, "misconfigured", "Misconfigured edge function", why),
        };
        send_response(response, response_out);
    }
}

fn read_request(request: IncomingRequest) -> http::Request {
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
    // Only a PUT carries a body this function reads; not consuming the
    // others spares each of them five host calls.
    let body = if method == "PUT" {
        request.consume().map_or(http::Body::Broken, read_body)
    } else {
        http::Body::Complete(Vec::new())
    };
    http::Request {
        method,
        path,
        headers,
        body,
    }
}

/// Reads a body of at most [`http::MAX_BODY_BYTES`].
fn read_body(body: IncomingBody) -> http::Body {
    let mut bytes = Vec::new();
    {
        let Ok(stream) = body.stream() else {
            return http::Body::Broken;
        };
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) if bytes.len() + chunk.len() > http::MAX_BODY_BYTES => {
                    return http::Body::TooLarge;
                }
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => return http::Body::Broken,
            }
        }
    }
    IncomingBody::finish(body);
    http::Body::Complete(bytes)
}

fn send_response(response: http::Response, response_out: ResponseOutparam) {
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
    // A new response is a 200; any other status costs a host call. Status
    // codes come from this crate's own table; all are valid.
    if response.status != 200 {
        let _ = outgoing.set_status_code(response.status);
    }
    let Ok(body) = outgoing.body() else { return };
    // The host buffers one write before anyone reads the body. A body that
    // fits in it goes in before the response is handed over, so the host can
    // send head and body at once; a longer one is streamed after.
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

/// Writes all of `bytes` and finishes the body; false if the host stopped
/// taking it.
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
