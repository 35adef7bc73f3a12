//! The host's interfaces behind the SDK's traits, in a component.

use crate::Host;
use crate::host::{BoundedIncr, Cache, CacheError, CasOutcome, Clock, Held, Lookup, PenaltyBox, Ttl};
use crate::rate_limit::{Decision, DegradedReason, Telemetry};
use crate::wit::edge::cache::{cache as wit_cache, penalty_box as wit_penalty_box, telemetry as wit_telemetry};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

fn borrowed(keys: &[String]) -> Vec<&str> {
    keys.iter().map(String::as_str).collect()
}

impl Cache for Host {
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

    fn exists(&self, key: &str) -> Result<bool, CacheError> {
        Ok(wit_cache::exists(key)?)
    }

    fn expire(&self, key: &str, ttl_seconds: u64) -> Result<bool, CacheError> {
        Ok(wit_cache::expire(key, ttl_seconds)?)
    }

    fn ttl(&self, key: &str) -> Result<Ttl, CacheError> {
        Ok(match wit_cache::ttl(key)? {
            wit_cache::TtlState::Missing => Ttl::Missing,
            wit_cache::TtlState::Persistent => Ttl::Persistent,
            wit_cache::TtlState::ExpiresIn(seconds) => Ttl::ExpiresIn(seconds),
        })
    }

    fn incr_by(&self, key: &str, delta: i64, ttl_if_new: u64) -> Result<i64, CacheError> {
        Ok(wit_cache::incr_by(key, delta, ttl_if_new)?)
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

impl Clock for Host {
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
        let bits = crate::wit::wasi::random::random::get_random_u64() >> 11;
        (bits + 1) as f64 / (1u64 << 53) as f64
    }
}

impl PenaltyBox for Host {
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

impl Telemetry for Host {
    fn report(&self, decision: &Decision) {
        let degraded = decision.degraded.as_ref().map(|why| match why.reason {
            DegradedReason::CacheUnavailable => wit_telemetry::DegradedReason::CacheUnavailable,
            DegradedReason::CacheTimeout => wit_telemetry::DegradedReason::CacheTimeout,
            DegradedReason::CacheError => wit_telemetry::DegradedReason::CacheError,
            DegradedReason::Contended => wit_telemetry::DegradedReason::Contended,
        });
        wit_telemetry::rate_limit_decided(decision.allowed, degraded);
    }
}
