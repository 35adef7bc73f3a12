//! The edge function's settings, read from its (WASI) environment; the
//! harness checks them with the same code before it starts.
//!
//! Every setting has a default, so the component runs on any host, even one
//! that passes no environment at all. The defaults are the constants of
//! [`crate::cache_aside`] and [`crate::policy`]:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PROFILE_TTL_SECONDS` | [`DEFAULT_TTL_SECONDS`] | how long a cached profile is fresh |
//! | `PROFILE_STALE_SECONDS` | [`DEFAULT_STALE_SECONDS`] | how long past that it may be served while refreshed |
//! | `PROFILE_NEGATIVE_TTL_SECONDS` | [`DEFAULT_NEGATIVE_TTL_SECONDS`] | how long an unknown id is remembered |
//! | `PROFILE_FILL_WAIT_MS` | [`DEFAULT_FILL_WAIT_MS`] | how long a miss waits for another request's fill |
//! | `RATE_LIMIT_REQUESTS` | [`DEFAULT_LIMIT`] | the default policy's limit (fixed window) |
//! | `RATE_LIMIT_WINDOW_SECONDS` | [`DEFAULT_WINDOW_SECONDS`] | the default policy's window |
//! | `RATE_LIMITS` | none | policies per route and caller class, below |
//!
//! `RATE_LIMITS` is a `;`-separated list of rules
//! `ROUTE/CLASS=ALGORITHM:LIMIT/WINDOW[,burst=N][,fail=open|closed]`:
//! - `ROUTE`: `get-profile`, `put-profile` or `*`;
//! - `CLASS`: `api-key` (requests with an `x-api-key`), `anonymous` or `*`;
//! - `ALGORITHM`: `fixed-window`, `sliding-window` or `gcra` (`burst` is
//!   GCRA's bucket size, the limit by default);
//! - `WINDOW`: seconds, or a number with `s`, `m` or `h`.
//!
//! A request gets the most specific matching rule: route and class, then
//! route, then class, then `*/*` (which `RATE_LIMIT_REQUESTS` and
//! `RATE_LIMIT_WINDOW_SECONDS` define unless a rule does). Example:
//! `*/api-key=sliding-window:600/1m; put-profile/*=gcra:10/1m,burst=3,fail=closed`.
//!
//! [`DEFAULT_TTL_SECONDS`]: crate::cache_aside::DEFAULT_TTL_SECONDS
//! [`DEFAULT_STALE_SECONDS`]: crate::cache_aside::DEFAULT_STALE_SECONDS
//! [`DEFAULT_NEGATIVE_TTL_SECONDS`]: crate::cache_aside::DEFAULT_NEGATIVE_TTL_SECONDS
//! [`DEFAULT_FILL_WAIT_MS`]: crate::cache_aside::DEFAULT_FILL_WAIT_MS
//! [`DEFAULT_LIMIT`]: crate::policy::DEFAULT_LIMIT
//! [`DEFAULT_WINDOW_SECONDS`]: crate::policy::DEFAULT_WINDOW_SECONDS

use crate::cache_aside::Settings;
use crate::policy::{Algorithm, FailMode, Policy};

/// How long a cached profile is fresh, in seconds.
pub const PROFILE_TTL_SECONDS: &str = "PROFILE_TTL_SECONDS";
/// How long past freshness a profile may be served while refreshed, in seconds.
pub const PROFILE_STALE_SECONDS: &str = "PROFILE_STALE_SECONDS";
/// How long an unknown profile id is remembered, in seconds.
pub const PROFILE_NEGATIVE_TTL_SECONDS: &str = "PROFILE_NEGATIVE_TTL_SECONDS";
/// How long a miss waits for another request's fill, in milliseconds.
pub const PROFILE_FILL_WAIT_MS: &str = "PROFILE_FILL_WAIT_MS";
/// The default policy's limit.
pub const RATE_LIMIT_REQUESTS: &str = "RATE_LIMIT_REQUESTS";
/// The default policy's window, in seconds.
pub const RATE_LIMIT_WINDOW_SECONDS: &str = "RATE_LIMIT_WINDOW_SECONDS";
/// Policies per route and caller class (see the module's documentation).
pub const RATE_LIMITS: &str = "RATE_LIMITS";

/// What a request is, for choosing its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    GetProfile,
    PutProfile,
    /// Anything else (it is still limited, by the `*` rules).
    Other,
}

/// Who is calling, for choosing its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerClass {
    ApiKey,
    Anonymous,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    route: Option<Route>,
    class: Option<CallerClass>,
    policy: Policy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub profiles: Settings,
    /// Most specific first; the last one is `*/*`.
    rules: Vec<Rule>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            profiles: Settings::default(),
            rules: vec![Rule {
                route: None,
                class: None,
                policy: Policy::seed_default(),
            }],
        }
    }
}

impl Config {
    /// Reads the settings through `var`, which returns a variable's value.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let defaults = Settings::default();
        let number = |name: &str, default: u64, min: u64| -> Result<u64, String> {
            match var(name) {
                None => Ok(default),
                Some(text) => match text.trim().parse::<u64>() {
                    Ok(value) if value >= min => Ok(value),
                    _ => Err(format!("{name} must be a whole number of at least {min}, not {text:?}")),
                },
            }
        };
        let profiles = Settings {
            ttl_seconds: number(PROFILE_TTL_SECONDS, defaults.ttl_seconds, 1)?,
            stale_seconds: number(PROFILE_STALE_SECONDS, defaults.stale_seconds, 0)?,
            negative_ttl_seconds: number(PROFILE_NEGATIVE_TTL_SECONDS, defaults.negative_ttl_seconds, 1)?,
            fill_wait_ms: number(PROFILE_FILL_WAIT_MS, defaults.fill_wait_ms, 0)?,
            ..defaults
        };

        let seed = Policy::seed_default();
        let u32_of = |name: &str, value: u64| u32::try_from(value).map_err(|_| format!("{name} is too large: {value}"));
        let default_policy = Policy {
            limit: u32_of(RATE_LIMIT_REQUESTS, number(RATE_LIMIT_REQUESTS, seed.limit.into(), 1)?)?,
            window_seconds: u32_of(
                RATE_LIMIT_WINDOW_SECONDS,
                number(RATE_LIMIT_WINDOW_SECONDS, seed.window_seconds.into(), 1)?,
            )?,
            ..seed
        };
        let mut rules = match var(RATE_LIMITS) {
            Some(text) => parse_rules(&text).map_err(|why| format!("{RATE_LIMITS}: {why}"))?,
            None => Vec::new(),
        };
        if !rules.iter().any(|rule| rule.route.is_none() && rule.class.is_none()) {
            rules.push(Rule {
                route: None,
                class: None,
                policy: default_policy,
            });
        }
        rules.sort_by_key(|rule| std::cmp::Reverse(specificity(rule)));
        Ok(Self { profiles, rules })
    }

    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The policy for a request.
    pub fn policy_for(&self, route: Route, class: CallerClass) -> &Policy {
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.route.is_none_or(|r| r == route) && rule.class.is_none_or(|c| c == class))
            .expect("a */* rule always exists");
        &rule.policy
    }
}

/// Route and class beat route alone, which beats class alone, which beats `*/*`.
fn specificity(rule: &Rule) -> u8 {
    u8::from(rule.route.is_some()) * 2 + u8::from(rule.class.is_some())
}

fn parse_rules(text: &str) -> Result<Vec<Rule>, String> {
    let mut rules: Vec<Rule> = Vec::new();
    for raw in text.split(';').map(str::trim).filter(|rule| !rule.is_empty()) {
        let rule = parse_rule(raw).map_err(|why| format!("in {raw:?}: {why}"))?;
        if rules
            .iter()
            .any(|other| other.route == rule.route && other.class == rule.class)
        {
            return Err(format!("{raw:?} repeats a selector"));
        }
        rules.push(rule);
    }
    Ok(rules)
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    let (selector, spec) = text
        .split_once('=')
        .ok_or("expected ROUTE/CLASS=ALGORITHM:LIMIT/WINDOW")?;
    let (route, class) = selector
        .trim()
        .split_once('/')
        .ok_or("the selector is ROUTE/CLASS, e.g. */api-key")?;
    let route = match route.trim() {
        "*" => None,
        "get-profile" => Some(Route::GetProfile),
        "put-profile" => Some(Route::PutProfile),
        other => {
            return Err(format!("unknown route {other:?} (get-profile, put-profile or *)"));
        }
    };
    let class = match class.trim() {
        "*" => None,
        "api-key" => Some(CallerClass::ApiKey),
        "anonymous" => Some(CallerClass::Anonymous),
        other => {
            return Err(format!("unknown caller class {other:?} (api-key, anonymous or *)"));
        }
    };

    let mut parts = spec.split(',').map(str::trim);
    let main = parts.next().unwrap_or_default();
    let (algorithm, rate) = main
        .split_once(':')
        .ok_or("expected ALGORITHM:LIMIT/WINDOW, e.g. gcra:10/1m")?;
    let (limit, window) = rate.split_once('/').ok_or("expected LIMIT/WINDOW, e.g. 60/1m")?;
    let limit: u32 = limit
        .trim()
        .parse()
        .ok()
        .filter(|l| *l > 0)
        .ok_or(format!("the limit {limit:?} is not a number above 0"))?;
    let window_seconds = parse_window(window.trim())?;

    let mut burst = None;
    let mut fail_mode = FailMode::Open;
    for option in parts {
        match option.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("burst", value)) => {
                burst = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|b| *b > 0)
                        .ok_or(format!("burst {value:?} is not a number above 0"))?,
                )
            }
            Some(("fail", "open")) => fail_mode = FailMode::Open,
            Some(("fail", "closed")) => fail_mode = FailMode::Closed,
            _ => {
                return Err(format!("unknown option {option:?} (burst=N, fail=open or fail=closed)"));
            }
        }
    }
    let algorithm = match algorithm.trim() {
        "fixed-window" => Algorithm::FixedWindow,
        "sliding-window" => Algorithm::SlidingWindow,
        "gcra" => Algorithm::Gcra { burst },
        other => {
            return Err(format!(
                "unknown algorithm {other:?} (fixed-window, sliding-window or gcra)"
            ));
        }
    };
    if burst.is_some() && !matches!(algorithm, Algorithm::Gcra { .. }) {
        return Err("burst applies to gcra only".into());
    }

    let name = match (route, class) {
        (None, None) => String::new(),
        _ => [route.map(route_name), class.map(class_name)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("."),
    };
    Ok(Rule {
        route,
        class,
        policy: Policy {
            name,
            algorithm,
            limit,
            window_seconds,
            fail_mode,
        },
    })
}

fn route_name(route: Route) -> &'static str {
    match route {
        Route::GetProfile => "get-profile",
        Route::PutProfile => "put-profile",
        Route::Other => "other",
    }
}

fn class_name(class: CallerClass) -> &'static str {
    match class {
        CallerClass::ApiKey => "api-key",
        CallerClass::Anonymous => "anonymous",
    }
}

fn parse_window(text: &str) -> Result<u32, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let multiplier = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("the window {text:?} is not like 60, 60s, 1m or 1h")),
    };
    digits
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|seconds| *seconds > 0)
        .ok_or(format!("the window {text:?} is not like 60, 60s, 1m or 1h"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_are_the_seeds() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.profiles, Settings::default());
        assert_eq!(config.profiles.ttl_seconds, 600);
        assert_eq!(
            config.policy_for(Route::GetProfile, CallerClass::Anonymous),
            &Policy::seed_default()
        );
    }

    #[test]
    fn values_are_read() {
        let config = parse(&[
            (PROFILE_TTL_SECONDS, "30"),
            (PROFILE_STALE_SECONDS, "0"),
            (PROFILE_NEGATIVE_TTL_SECONDS, "5"),
            (PROFILE_FILL_WAIT_MS, "250"),
            (RATE_LIMIT_REQUESTS, " 5 "),
            (RATE_LIMIT_WINDOW_SECONDS, "2"),
        ])
        .unwrap();
        assert_eq!(
            (
                config.profiles.ttl_seconds,
                config.profiles.stale_seconds,
                config.profiles.negative_ttl_seconds,
                config.profiles.fill_wait_ms
            ),
            (30, 0, 5, 250)
        );
        let policy = config.policy_for(Route::Other, CallerClass::ApiKey);
        assert_eq!((policy.limit, policy.window_seconds), (5, 2));
    }

    #[test]
    fn rules_pick_the_most_specific_policy() {
        let config = parse(&[(
            RATE_LIMITS,
            "*/api-key=sliding-window:600/1m; put-profile/*=gcra:10/1m,burst=3,fail=closed; \
             put-profile/api-key=fixed-window:100/1h; */*=fixed-window:30/30s",
        )])
        .unwrap();
        let get_anonymous = config.policy_for(Route::GetProfile, CallerClass::Anonymous);
        assert_eq!(
            (
                get_anonymous.name.as_str(),
                get_anonymous.limit,
                get_anonymous.window_seconds
            ),
            ("", 30, 30)
        );
        let get_keyed = config.policy_for(Route::GetProfile, CallerClass::ApiKey);
        assert_eq!(
            (get_keyed.name.as_str(), get_keyed.algorithm, get_keyed.limit),
            ("api-key", Algorithm::SlidingWindow, 600)
        );
        let put_anonymous = config.policy_for(Route::PutProfile, CallerClass::Anonymous);
        assert_eq!(put_anonymous.algorithm, Algorithm::Gcra { burst: Some(3) });
        assert_eq!(
            (put_anonymous.name.as_str(), put_anonymous.fail_mode),
            ("put-profile", FailMode::Closed)
        );
        let put_keyed = config.policy_for(Route::PutProfile, CallerClass::ApiKey);
        assert_eq!(
            (put_keyed.name.as_str(), put_keyed.window_seconds),
            ("put-profile.api-key", 3600)
        );
    }

    #[test]
    fn without_a_catch_all_rule_the_default_policy_applies() {
        let config = parse(&[(RATE_LIMITS, "put-profile/*=gcra:1/1s"), (RATE_LIMIT_REQUESTS, "7")]).unwrap();
        assert_eq!(config.policy_for(Route::GetProfile, CallerClass::ApiKey).limit, 7);
        assert_eq!(config.policy_for(Route::PutProfile, CallerClass::ApiKey).limit, 1);
    }

    #[test]
    fn bad_values_name_the_variable_and_the_problem() {
        let cases = [
            (PROFILE_TTL_SECONDS, "0", "at least 1"),
            (RATE_LIMIT_REQUESTS, "ten", "whole number"),
            (RATE_LIMIT_WINDOW_SECONDS, "-1", "whole number"),
            (RATE_LIMIT_REQUESTS, "99999999999", "too large"),
            (RATE_LIMITS, "*/*", "expected ROUTE/CLASS="),
            (RATE_LIMITS, "all=gcra:1/1s", "ROUTE/CLASS"),
            (RATE_LIMITS, "delete/*=gcra:1/1s", "unknown route"),
            (RATE_LIMITS, "*/admin=gcra:1/1s", "unknown caller class"),
            (RATE_LIMITS, "*/*=token-bucket:1/1s", "unknown algorithm"),
            (RATE_LIMITS, "*/*=gcra:0/1s", "above 0"),
            (RATE_LIMITS, "*/*=gcra:5/1d", "window"),
            (RATE_LIMITS, "*/*=gcra:5/0", "window"),
            (RATE_LIMITS, "*/*=gcra:5/1s,burst=0", "burst"),
            (RATE_LIMITS, "*/*=fixed-window:5/1s,burst=2", "gcra only"),
            (RATE_LIMITS, "*/*=gcra:5/1s,fail=maybe", "unknown option"),
            (RATE_LIMITS, "*/*=gcra:5/1s;*/*=gcra:6/1s", "repeats"),
        ];
        for (name, value, expected) in cases {
            let error = parse(&[(name, value)]).unwrap_err();
            assert!(
                error.starts_with(name) && error.contains(expected),
                "{name}={value}: {error}"
            );
        }
    }

    #[test]
    fn windows_take_units() {
        assert_eq!(parse_window("90"), Ok(90));
        assert_eq!(parse_window("90s"), Ok(90));
        assert_eq!(parse_window("2m"), Ok(120));
        assert_eq!(parse_window("1h"), Ok(3600));
    }
}
