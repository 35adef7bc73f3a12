//! The store state of one instance and the host side of `edge:cache/cache`,
//! `edge:cache/origin`, `edge:cache/telemetry` and `edge:cache/penalty-box`.

use crate::bindings::{cache, origin, penalty_box, telemetry};
use crate::keyspace::Keyspace;
use crate::metrics::DecisionCounters;
use crate::origin::{Origin, OriginError};
use crate::penalty_box::PenaltyBox;
use crate::store::{CasOutcome, StoreError, Ttl};
use hyper::header::HeaderName;
use std::sync::Arc;
use wasmtime::StoreLimits;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    DEFAULT_FORBIDDEN_HEADERS, ForbiddenHeaderFilter, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// What the `edge:cache` imports reach: shared handles, cheap to clone into
/// every store.
#[derive(Clone)]
pub struct EdgeCtx {
    pub cache: Keyspace,
    pub origin: Origin,
    /// Rate limit decisions, counted as the function reports them.
    pub decisions: DecisionCounters,
    pub penalty_box: PenaltyBox,
}

/// Adds `edge:cache/cache`, `edge:cache/origin`, `edge:cache/telemetry` and
/// `edge:cache/penalty-box` to `linker`, reaching the context through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut EdgeCtx,
) -> wasmtime::Result<()> {
    cache::add_to_linker::<T, HasSelf<EdgeCtx>>(linker, get)?;
    origin::add_to_linker::<T, HasSelf<EdgeCtx>>(linker, get)?;
    telemetry::add_to_linker::<T, HasSelf<EdgeCtx>>(linker, get)?;
    penalty_box::add_to_linker::<T, HasSelf<EdgeCtx>>(linker, get)?;
    Ok(())
}

/// Everything one instance owns, for the length of one request.
pub struct EdgeState {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub edge: EdgeCtx,
    pub limits: StoreLimits,
    pub http_hooks: HttpHooks,
}

/// The headers a guest may not set: wasi:http's default set.
static FORBIDDEN_HEADERS: [HeaderName; 9] = DEFAULT_FORBIDDEN_HEADERS;

/// wasi:http's policy for the guest: its defaults, checked without
/// allocating. (The default hooks build a filter closure, and a copy of the
/// forbidden list, for every header a guest sends: ten times a request.)
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpHooks;

fn is_forbidden(name: &HeaderName) -> bool {
    FORBIDDEN_HEADERS.contains(name)
}

impl WasiHttpHooks for HttpHooks {
    fn is_forbidden_header(&mut self, name: &HeaderName) -> bool {
        is_forbidden(name)
    }

    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(is_forbidden)
    }
}

impl WasiView for EdgeState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for EdgeState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl From<StoreError> for cache::Error {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(why) => Self::Unavailable(why),
            // The contract has no variant of its own for it, and the
            // component acts on it as on an outage: it serves without cache.
            StoreError::AccessDenied(why) => Self::Unavailable(format!("permission denied: {why}")),
            StoreError::Timeout(_) => Self::Timeout,
            StoreError::InvalidKey(why) => Self::InvalidKey(why),
            StoreError::ValueTooLarge { limit } => Self::ValueTooLarge(limit),
            StoreError::WrongType => Self::WrongType,
            StoreError::InvalidArgument(why) => Self::InvalidArgument(why),
            StoreError::Other(why) => Self::Other(why),
        }
    }
}

impl cache::Host for EdgeCtx {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, cache::Error> {
        Ok(self.cache.get(&key).await?)
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, cache::Error> {
        Ok(self.cache.get_many(&keys).await?)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, options: cache::SetOptions) -> Result<bool, cache::Error> {
        Ok(self
            .cache
            .set(&key, &value, options.ttl_seconds, options.only_if_absent)
            .await?)
    }

    async fn delete(&mut self, keys: Vec<String>) -> Result<u32, cache::Error> {
        Ok(self.cache.delete(&keys).await?)
    }

    async fn exists(&mut self, key: String) -> Result<bool, cache::Error> {
        Ok(self.cache.exists(&key).await?)
    }

    async fn expire(&mut self, key: String, ttl_seconds: u64) -> Result<bool, cache::Error> {
        Ok(self.cache.expire(&key, ttl_seconds).await?)
    }

    async fn ttl(&mut self, key: String) -> Result<cache::TtlState, cache::Error> {
        Ok(match self.cache.ttl(&key).await? {
            Ttl::Missing => cache::TtlState::Missing,
            Ttl::Persistent => cache::TtlState::Persistent,
            Ttl::ExpiresIn(seconds) => cache::TtlState::ExpiresIn(seconds),
        })
    }

    async fn incr_by(&mut self, key: String, delta: i64, ttl_if_new: u64) -> Result<i64, cache::Error> {
        Ok(self.cache.incr_by(&key, delta, ttl_if_new).await?)
    }

    async fn incr_by_bounded(
        &mut self,
        key: String,
        delta: i64,
        ttl_if_new: u64,
        max: i64,
    ) -> Result<cache::BoundedIncr, cache::Error> {
        let outcome = self.cache.incr_by_bounded(&key, delta, ttl_if_new, max).await?;
        Ok(cache::BoundedIncr {
            applied: outcome.applied,
            value: outcome.value,
        })
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_seconds: Option<u64>,
    ) -> Result<cache::CasOutcome, cache::Error> {
        Ok(
            match self
                .cache
                .compare_and_swap(&key, expected.as_deref(), &new, ttl_seconds)
                .await?
            {
                CasOutcome::Swapped => cache::CasOutcome::Swapped,
                CasOutcome::Conflict(current) => cache::CasOutcome::Conflict(current),
            },
        )
    }

    async fn compare_and_delete(&mut self, key: String, expected: Vec<u8>) -> Result<bool, cache::Error> {
        Ok(self.cache.compare_and_delete(&key, &expected).await?)
    }
}

impl telemetry::Host for EdgeCtx {
    // Synchronous (see `bindings.rs`): it only counts, once per request.
    fn rate_limit_decided(&mut self, allowed: bool, degraded: Option<telemetry::DegradedReason>) {
        use telemetry::DegradedReason;
        // Indexes of `DEGRADED_REASONS`.
        let degraded = match degraded {
            None => 0,
            Some(DegradedReason::CacheUnavailable) => 1,
            Some(DegradedReason::CacheTimeout) => 2,
            Some(DegradedReason::CacheError) => 3,
            Some(DegradedReason::Contended) => 4,
        };
        self.decisions.count(allowed, degraded);
    }
}

impl penalty_box::Host for EdgeCtx {
    fn look(&mut self, key: String) -> penalty_box::Lookup {
        let lookup = self.penalty_box.look(&key);
        penalty_box::Lookup {
            ticket: lookup.ticket,
            held: lookup.held.map(|entry| penalty_box::Entry {
                until_ms: entry.until_ms,
                note: entry.note.to_vec(),
            }),
        }
    }

    fn hold(&mut self, key: String, ticket: u64, until_ms: u64, note: Vec<u8>) {
        self.penalty_box.hold(key, ticket, until_ms, &note);
    }

    fn release(&mut self, key: String) {
        self.penalty_box.release(&key);
    }
}

impl From<OriginError> for origin::Error {
    fn from(error: OriginError) -> Self {
        match error {
            OriginError::InvalidProfile(why) => Self::InvalidProfile(why),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl origin::Host for EdgeCtx {
    async fn fetch(&mut self, id: String) -> Result<Option<String>, origin::Error> {
        Ok(self.origin.fetch(&id).await?)
    }

    async fn update(&mut self, id: String, profile: String) -> Result<bool, origin::Error> {
        Ok(self.origin.update(&id, &profile).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_may_not_set_hop_by_hop_or_host_headers() {
        let mut hooks = HttpHooks;
        let filter = hooks.forbidden_header_filter();
        for forbidden in DEFAULT_FORBIDDEN_HEADERS {
            assert!(hooks.is_forbidden_header(&forbidden), "{forbidden}");
            assert!(filter(&forbidden), "{forbidden}");
        }
        for allowed in ["content-type", "x-cache", "ratelimit", "retry-after"] {
            let allowed = HeaderName::from_static(allowed);
            assert!(!hooks.is_forbidden_header(&allowed), "{allowed}");
            assert!(!filter(&allowed), "{allowed}");
        }
    }
}
