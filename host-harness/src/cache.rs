//! The cache as the guest sees it: its own namespace, size limits, typed
//! errors, and a trace event per operation.

use crate::backend::{Backend, BoundedIncr, CacheError, CasOutcome, Ttl};
use crate::metrics::StoreMetrics;
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

/// The default namespace when none is configured.
pub const DEFAULT_NAMESPACE: &str = "edge-cache";

/// Size limits enforced before anything reaches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest key a guest may use, in bytes (before the namespace).
    pub max_key_bytes: usize,
    /// The largest value a guest may store, in bytes.
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // Values: 1 MiB, the seeds' advice for edge caches. Keys: long enough
        // for any composite key, short enough to keep Redis' key space lean.
        Self {
            max_key_bytes: 512,
            max_value_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid namespace {0:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ -")]
pub struct InvalidNamespace(pub String);

/// A backend seen through one namespace. Cheap to clone: every clone shares
/// the backend's connection.
#[derive(Clone)]
pub struct Cache {
    backend: Backend,
    prefix: Arc<str>,
    limits: Limits,
    metrics: StoreMetrics,
}

impl Cache {
    pub fn new(backend: Backend, namespace: &str, limits: Limits) -> Result<Self, InvalidNamespace> {
        // No ':' (it separates the prefix), and no braces: a brace would
        // turn the prefix into a Redis Cluster hash tag.
        let valid = !namespace.is_empty()
            && namespace.len() <= 64
            && namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(InvalidNamespace(namespace.to_owned()));
        }
        Ok(Self {
            backend,
            prefix: format!("{namespace}:").into(),
            limits,
            metrics: StoreMetrics::default(),
        })
    }

    /// Latency and errors of this cache's store operations.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The namespace prefix (`name:`) in front of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn full_key(&self, key: &str) -> Result<String, CacheError> {
        if key.is_empty() {
            return Err(CacheError::InvalidKey("a key must not be empty".into()));
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(CacheError::InvalidKey(format!(
                "a key has at most {} bytes, this one has {}",
                self.limits.max_key_bytes,
                key.len()
            )));
        }
        if key.chars().any(char::is_control) {
            return Err(CacheError::InvalidKey(
                "a key must not contain control characters".into(),
            ));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    fn full_keys(&self, keys: &[String]) -> Result<Vec<String>, CacheError> {
        keys.iter().map(|key| self.full_key(key)).collect()
    }

    fn check_value(&self, value: &[u8]) -> Result<(), CacheError> {
        if value.len() > self.limits.max_value_bytes {
            return Err(CacheError::ValueTooLarge {
                limit: self.limits.max_value_bytes as u64,
            });
        }
        Ok(())
    }

    fn positive_ttl(ttl: u64) -> Result<u64, CacheError> {
        if ttl == 0 {
            return Err(CacheError::InvalidArgument(
                "a time-to-live must be at least 1 second".into(),
            ));
        }
        Ok(ttl)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let started = Instant::now();
        let result = async { self.backend.get(&self.full_key(key)?).await }.await;
        let hit = matches!(result, Ok(Some(_)));
        self.trace("get", key, started, &result, Some(hit));
        result
    }

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        let started = Instant::now();
        let result = async { self.backend.get_many(&self.full_keys(keys)?).await }.await;
        self.trace("get-many", &keys.join(","), started, &result, None);
        result
    }

    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<u64>,
        only_if_absent: bool,
    ) -> Result<bool, CacheError> {
        let started = Instant::now();
        let result = async {
            let full = self.full_key(key)?;
            self.check_value(value)?;
            let ttl = ttl.map(Self::positive_ttl).transpose()?;
            self.backend.set(&full, value, ttl, only_if_absent).await
        }
        .await;
        self.trace("set", key, started, &result, None);
        result
    }

    pub async fn delete(&self, keys: &[String]) -> Result<u32, CacheError> {
        let started = Instant::now();
        let result = async { self.backend.delete(&self.full_keys(keys)?).await }.await;
        self.trace("delete", &keys.join(","), started, &result, None);
        result
    }

    pub async fn exists(&self, key: &str) -> Result<bool, CacheError> {
        let started = Instant::now();
        let result = async { self.backend.exists(&self.full_key(key)?).await }.await;
        self.trace("exists", key, started, &result, None);
        result
    }

    pub async fn expire(&self, key: &str, ttl: u64) -> Result<bool, CacheError> {
        let started = Instant::now();
        let result = async {
            self.backend
                .expire(&self.full_key(key)?, Self::positive_ttl(ttl)?)
                .await
        }
        .await;
        self.trace("expire", key, started, &result, None);
        result
    }

    pub async fn ttl(&self, key: &str) -> Result<Ttl, CacheError> {
        let started = Instant::now();
        let result = async { self.backend.ttl(&self.full_key(key)?).await }.await;
        self.trace("ttl", key, started, &result, None);
        result
    }

    pub async fn incr_by(&self, key: &str, delta: i64, ttl_if_new: u64) -> Result<i64, CacheError> {
        let started = Instant::now();
        let result = async {
            self.backend
                .incr_by(&self.full_key(key)?, delta, Self::positive_ttl(ttl_if_new)?)
                .await
        }
        .await;
        self.trace("incr-by", key, started, &result, None);
        result
    }

    pub async fn incr_by_bounded(
        &self,
        key: &str,
        delta: i64,
        ttl_if_new: u64,
        max: i64,
    ) -> Result<BoundedIncr, CacheError> {
        let started = Instant::now();
        let result = async {
            self.backend
                .incr_by_bounded(&self.full_key(key)?, delta, Self::positive_ttl(ttl_if_new)?, max)
                .await
        }
        .await;
        self.trace("incr-by-bounded", key, started, &result, None);
        result
    }

    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<u64>,
    ) -> Result<CasOutcome, CacheError> {
        let started = Instant::now();
        let result = async {
            let full = self.full_key(key)?;
            self.check_value(new)?;
            let ttl = ttl.map(Self::positive_ttl).transpose()?;
            self.backend.compare_and_swap(&full, expected, new, ttl).await
        }
        .await;
        self.trace("compare-and-swap", key, started, &result, None);
        result
    }

    /// One event per operation (the key as the guest named it, never the
    /// value) and its metrics.
    fn trace<T>(
        &self,
        op: &'static str,
        key: &str,
        started: Instant,
        result: &Result<T, CacheError>,
        hit: Option<bool>,
    ) {
        let took = started.elapsed();
        let micros = took.as_micros() as u64;
        match result {
            Ok(_) => {
                self.metrics.observe(op, took, None);
                tracing::debug!(target: "edge_cache::cache", op, key, hit, micros, outcome = "ok")
            }
            Err(error) => {
                self.metrics.observe(op, took, Some(error.kind()));
                tracing::warn!(target: "edge_cache::cache", op, key, micros, outcome = "error", %error)
            }
        }
    }
}
