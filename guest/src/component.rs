//! The export layer: WIT types in, plain Rust out, and back. The host's
//! cache, clocks, telemetry and HTTP types are the SDK's (`with` below), so
//! their bindings exist once.

mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "edge:cache/edge-function",
        with: {
            "edge:cache/cache@0.1.0": edge_cache_sdk::wit::edge::cache::cache,
            "edge:cache/telemetry@0.1.0": edge_cache_sdk::wit::edge::cache::telemetry,
            "edge:cache/penalty-box@0.1.0": edge_cache_sdk::wit::edge::cache::penalty_box,
            "wasi:random/random@0.2.12": edge_cache_sdk::wit::wasi::random::random,
            "wasi:http/types@0.2.12": edge_cache_sdk::wit::wasi::http::types,
            "wasi:io/error@0.2.12": edge_cache_sdk::wit::wasi::io::error,
            "wasi:io/poll@0.2.12": edge_cache_sdk::wit::wasi::io::poll,
            "wasi:io/streams@0.2.12": edge_cache_sdk::wit::wasi::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": edge_cache_sdk::wit::wasi::clocks::monotonic_clock,
        },
        generate_all,
        ownership: Borrowing {
            duplicate_if_necessary: false
        },
    });
}

use crate::http;
use crate::origin::{Origin, OriginError};
use crate::profiles::{ProfileError, Profiles};
use bindings::edge::cache::origin as wit_origin;
use bindings::exports::edge::cache::{profiles as wit_profiles, rate_limit as wit_rate_limit};
use bindings::exports::wasi::http::incoming_handler;
use edge_cache_contract::config::Config;
use edge_cache_sdk::rate_limit::{self, Algorithm, Decision, FailMode, Policy, RateLimitError, Telemetry};
use edge_cache_sdk::wit::wasi::http::types::{IncomingRequest, ResponseOutparam};
use edge_cache_sdk::{Clock, Host, Settings, Source};
use std::sync::OnceLock;

struct EdgeFunction;

bindings::export!(EdgeFunction with_types_in bindings);

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
            cache: &Host,
            origin: &HostOrigin,
            clock: &Host,
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
            cache: &Host,
            origin: &HostOrigin,
            clock: &Host,
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
        let decision = rate_limit::check(&Host, &Host, &key, &policy.into(), cost, Host.now_ms())?;
        Host.report(&decision);
        Ok(decision.into())
    }

    fn peek(key: String, policy: wit_rate_limit::Policy) -> Result<wit_rate_limit::Decision, wit_rate_limit::Error> {
        Ok(rate_limit::peek(&Host, &Host, &key, &policy.into(), Host.now_ms())?.into())
    }

    fn reset(key: String, policy: wit_rate_limit::Policy) -> Result<(), wit_rate_limit::Error> {
        Ok(rate_limit::reset(&Host, &Host, &key, &policy.into(), Host.now_ms())?)
    }
}

impl incoming_handler::Guest for EdgeFunction {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        // Only a PUT carries a body this function reads.
        let request =
            edge_cache_sdk::http::read_request(request, |method| (method == "PUT").then_some(http::MAX_BODY_BYTES));
        let response = match config() {
            Ok(config) => {
                let (response, decision) = http::handle(&request, &Host, &Host, &HostOrigin, &Host, config);
                if let Some(decision) = &decision {
                    Host.report(decision);
                }
                response
            }
            Err(why) => http::Response::problem(500, "misconfigured", "Misconfigured edge function", why),
        };
        edge_cache_sdk::http::send_response(response, response_out);
    }
}
