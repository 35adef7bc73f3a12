//! The function's settings, read from its (WASI) environment.
//!
//! Every setting has a default, so the component runs on any host that
//! passes no environment at all.

use crate::cache_aside::DEFAULT_TTL_SECONDS;
use crate::rate_limit::{Algorithm, Policy};

pub const PROFILE_TTL_SECONDS: &str = "PROFILE_TTL_SECONDS";
pub const RATE_LIMIT_REQUESTS: &str = "RATE_LIMIT_REQUESTS";
pub const RATE_LIMIT_WINDOW_SECONDS: &str = "RATE_LIMIT_WINDOW_SECONDS";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How long a cached profile lives.
    pub profile_ttl_seconds: u64,
    /// The limit applied to every request, per caller.
    pub rate_limit: Policy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            profile_ttl_seconds: DEFAULT_TTL_SECONDS,
            rate_limit: Policy::DEFAULT,
        }
    }
}

impl Config {
    /// Reads the settings through `var`, which returns a variable's value.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let defaults = Self::default();
        let positive = |name: &str, default: u64| -> Result<u64, String> {
            match var(name) {
                None => Ok(default),
                Some(text) => match text.trim().parse::<u64>() {
                    Ok(value) if value > 0 => Ok(value),
                    _ => Err(format!(
                        "{name} must be a whole number greater than 0, not {text:?}"
                    )),
                },
            }
        };
        let to_u32 = |name: &str, value: u64| {
            u32::try_from(value).map_err(|_| format!("{name} is too large: {value}"))
        };

        let limit = positive(RATE_LIMIT_REQUESTS, defaults.rate_limit.limit.into())?;
        let window = positive(
            RATE_LIMIT_WINDOW_SECONDS,
            defaults.rate_limit.window_seconds.into(),
        )?;
        Ok(Self {
            profile_ttl_seconds: positive(PROFILE_TTL_SECONDS, defaults.profile_ttl_seconds)?,
            rate_limit: Policy {
                algorithm: Algorithm::FixedWindow,
                limit: to_u32(RATE_LIMIT_REQUESTS, limit)?,
                window_seconds: to_u32(RATE_LIMIT_WINDOW_SECONDS, window)?,
            },
        })
    }

    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_are_the_seeds() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.profile_ttl_seconds, 600);
        assert_eq!(
            (config.rate_limit.limit, config.rate_limit.window_seconds),
            (60, 60)
        );
    }

    #[test]
    fn values_are_read() {
        let config = parse(&[
            (PROFILE_TTL_SECONDS, "30"),
            (RATE_LIMIT_REQUESTS, " 5 "),
            (RATE_LIMIT_WINDOW_SECONDS, "2"),
        ])
        .unwrap();
        assert_eq!(config.profile_ttl_seconds, 30);
        assert_eq!(
            (config.rate_limit.limit, config.rate_limit.window_seconds),
            (5, 2)
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            (PROFILE_TTL_SECONDS, "0"),
            (RATE_LIMIT_REQUESTS, "ten"),
            (RATE_LIMIT_WINDOW_SECONDS, "-1"),
        ] {
            let error = parse(&[(name, value)]).unwrap_err();
            assert!(error.starts_with(name), "{error}");
        }
        assert!(
            parse(&[(RATE_LIMIT_REQUESTS, "99999999999")])
                .unwrap_err()
                .contains("too large")
        );
    }
}
