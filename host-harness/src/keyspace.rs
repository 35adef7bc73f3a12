//! The store as one guest sees it, a [`Keyspace`]: its own namespace, size
//! limits, typed errors, and a trace event per operation. This is what
//! the host side of `edge:cache/cache` calls; the name keeps it apart from
//! that interface and from the stores ([`crate::store::Store`]) below it.

use crate::metrics::StoreMetrics;
use crate::store::{BoundedIncr, CasOutcome, KeyPage, Store, StoreError, Ttl};
use futures_util::future::try_join_all;
use std::future::Future;
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

/// A store seen through one namespace. Cheap to clone: every clone shares
/// the store (and its connections).
#[derive(Clone)]
pub struct Keyspace {
    store: Arc<dyn Store>,
    prefix: Arc<str>,
    limits: Limits,
    metrics: StoreMetrics,
}

impl Keyspace {
    pub fn new(store: Arc<dyn Store>, namespace: &str, limits: Limits) -> Result<Self, InvalidNamespace> {
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
            prefix: format!("{namespace}:").into(),
            metrics: StoreMetrics::of(store.clone()),
            store,
            limits,
        })
    }

    /// This keyspace seen through `scope`, a prefix inside the namespace that
    /// the host chooses (such as a `wasi:keyvalue` bucket's): the same
    /// store, limits and metrics, every key under `{namespace}:{scope}`.
    /// The key limits apply to the keys as the guest names them, after the
    /// scope. Callers choose scopes that no guest key of the plain cache can
    /// start with, or the two would share keys.
    pub fn within(&self, scope: &str) -> Self {
        Self {
            prefix: format!("{}{scope}", self.prefix).into(),
            ..self.clone()
        }
    }

    /// Latency and errors of this keyspace's store operations.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidKey("a key must not be empty".into()));
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(StoreError::InvalidKey(format!(
                "a key has at most {} bytes, this one has {}",
                self.limits.max_key_bytes,
                key.len()
            )));
        }
        if has_control_character(key) {
            return Err(StoreError::InvalidKey(
                "a key must not contain control characters".into(),
            ));
        }
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        Ok(full)
    }

    fn full_keys(&self, keys: &[String]) -> Result<Vec<String>, StoreError> {
        keys.iter().map(|key| self.full_key(key)).collect()
    }

    fn check_value(&self, value: &[u8]) -> Result<(), StoreError> {
        if value.len() > self.limits.max_value_bytes {
            return Err(StoreError::ValueTooLarge {
                limit: self.limits.max_value_bytes as u64,
            });
        }
        Ok(())
    }

    fn positive_ttl(ttl: u64) -> Result<u64, StoreError> {
        if ttl == 0 {
            return Err(StoreError::InvalidArgument(
                "a time-to-live must be at least 1 second".into(),
            ));
        }
        Ok(ttl)
    }

    /// Checks what a write names and stores: its key, the value's size and
    /// the time-to-live; returns the full key and the TTL.
    fn checked_write(&self, key: &str, value: &[u8], ttl: Option<u64>) -> Result<(String, Option<u64>), StoreError> {
        let full = self.full_key(key)?;
        self.check_value(value)?;
        Ok((full, ttl.map(Self::positive_ttl).transpose()?))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let hit = |value: &Option<Vec<u8>>| Some(value.is_some());
        self.traced("get", key, hit, async { self.store.get(&self.full_key(key)?).await })
            .await
    }

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.traced("get-many", &keys.join(","), no_hit, async {
            self.store.get_many(&self.full_keys(keys)?).await
        })
        .await
    }

    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<u64>,
        only_if_absent: bool,
    ) -> Result<bool, StoreError> {
        self.traced("set", key, no_hit, async {
            let (full, ttl) = self.checked_write(key, value, ttl)?;
            self.store.set(&full, value, ttl, only_if_absent).await
        })
        .await
    }

    pub async fn delete(&self, keys: &[String]) -> Result<u32, StoreError> {
        self.traced("delete", &keys.join(","), no_hit, async {
            self.store.delete(&self.full_keys(keys)?).await
        })
        .await
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.traced("exists", key, no_hit, async {
            self.store.exists(&self.full_key(key)?).await
        })
        .await
    }

    pub async fn expire(&self, key: &str, ttl: u64) -> Result<bool, StoreError> {
        self.traced("expire", key, no_hit, async {
            self.store.expire(&self.full_key(key)?, Self::positive_ttl(ttl)?).await
        })
        .await
    }

    pub async fn ttl(&self, key: &str) -> Result<Ttl, StoreError> {
        self.traced("ttl", key, no_hit, async { self.store.ttl(&self.full_key(key)?).await })
            .await
    }

    pub async fn incr_by(&self, key: &str, delta: i64, ttl_if_new: u64) -> Result<i64, StoreError> {
        self.traced("incr-by", key, no_hit, async {
            self.store
                .incr_by(&self.full_key(key)?, delta, Self::positive_ttl(ttl_if_new)?)
                .await
        })
        .await
    }

    /// Adds `delta` to the counter at `key` (a missing key counts as 0),
    /// atomically, without touching its expiry: a key created here never
    /// expires. For stores whose counters live as long as the data
    /// (`wasi:keyvalue`); `edge:cache` counters use [`Self::incr_by`].
    pub async fn incr(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        self.traced("incr", key, no_hit, async {
            self.store.incr(&self.full_key(key)?, delta).await
        })
        .await
    }

    /// Writes several keys without expiry, all in flight at once (not
    /// atomically). Every key and value is checked before anything is
    /// written, so bad input changes nothing.
    pub async fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        let names: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        self.traced("set-many", &names.join(","), no_hit, async {
            let writes = entries
                .iter()
                .map(|(key, value)| Ok((self.checked_write(key, value, None)?.0, value)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            try_join_all(
                writes
                    .iter()
                    .map(|(full, value)| self.store.set(full, value, None, false)),
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// A page of the keys in this keyspace's namespace (or scope), as the
    /// guest names them, from `cursor` (0 to start); see
    /// [`Store::scan_prefix`].
    pub async fn list_keys(&self, cursor: u64) -> Result<KeyPage, StoreError> {
        self.traced("list-keys", "*", no_hit, async {
            let page = self.store.scan_prefix(&self.prefix, cursor).await?;
            let keys = page
                .keys
                .into_iter()
                .filter_map(|key| key.strip_prefix(&*self.prefix).map(str::to_owned))
                .collect();
            Ok(KeyPage {
                keys,
                cursor: page.cursor,
            })
        })
        .await
    }

    pub async fn incr_by_bounded(
        &self,
        key: &str,
        delta: i64,
        ttl_if_new: u64,
        max: i64,
    ) -> Result<BoundedIncr, StoreError> {
        self.traced("incr-by-bounded", key, no_hit, async {
            self.store
                .incr_by_bounded(&self.full_key(key)?, delta, Self::positive_ttl(ttl_if_new)?, max)
                .await
        })
        .await
    }

    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Option<u64>,
    ) -> Result<CasOutcome, StoreError> {
        self.traced("compare-and-swap", key, no_hit, async {
            let (full, ttl) = self.checked_write(key, new, ttl)?;
            self.store.compare_and_swap(&full, expected, new, ttl).await
        })
        .await
    }

    pub async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        self.traced("compare-and-delete", key, no_hit, async {
            self.store.compare_and_delete(&self.full_key(key)?, expected).await
        })
        .await
    }

    /// Runs one operation, then records it: a trace event (the key as the
    /// guest named it, whether it hit where that applies, never the value)
    /// and its metrics.
    async fn traced<T>(
        &self,
        op: &'static str,
        key: &str,
        hit: impl Fn(&T) -> Option<bool>,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = operation.await;
        let took = started.elapsed();
        let micros = took.as_micros() as u64;
        match &result {
            Ok(value) => {
                self.metrics.observe(op, took, None);
                let hit = hit(value);
                tracing::debug!(target: "edge_cache::cache", op, key, hit, micros, outcome = "ok")
            }
            Err(error) => {
                self.metrics.observe(op, took, Some(error.kind()));
                match error {
                    // An outage fails every call: the breaker logs when it
                    // starts and ends, and `/metrics` counts the calls.
                    StoreError::Unavailable(_) | StoreError::Timeout(_) => {
                        tracing::debug!(target: "edge_cache::cache", op, key, micros, outcome = "error", %error)
                    }
                    _ => tracing::warn!(target: "edge_cache::cache", op, key, micros, outcome = "error", %error),
                }
            }
        }
        result
    }
}

/// For operations where hit or miss does not apply.
fn no_hit<T>(_: &T) -> Option<bool> {
    None
}

/// Whether `text` holds a control character (`char::is_control`: U+0000 to
/// U+001F, U+007F, U+0080 to U+009F), checked on the UTF-8 bytes: every
/// cache call checks its key, and decoding it char by char costs more.
fn has_control_character(text: &str) -> bool {
    let bytes = text.as_bytes();
    // The C1 controls are encoded as 0xC2 0x80..=0x9F; 0xC2 starts no other
    // character's second byte, so the pair cannot straddle two characters.
    bytes.iter().any(|&byte| byte < 0x20 || byte == 0x7f)
        || bytes
            .windows(2)
            .any(|pair| pair[0] == 0xc2 && (0x80..=0x9f).contains(&pair[1]))
}

#[cfg(test)]
mod control_tests {
    use super::has_control_character;

    #[test]
    fn control_characters_are_found_as_char_is_control_finds_them() {
        for code in 0..=0x2000u32 {
            let Some(c) = char::from_u32(code) else { continue };
            let text = format!("key:{c}:é");
            assert_eq!(has_control_character(&text), c.is_control(), "U+{code:04X}");
        }
        assert!(!has_control_character("profile:v1:alice"));
        assert!(!has_control_character("\u{00e9}\u{0100}\u{20ac}"));
    }
}
