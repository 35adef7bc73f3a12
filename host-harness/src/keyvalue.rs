//! The host side of `wasi:keyvalue` (`0.2.0-draft`, the version wasmtime
//! 48's `wasmtime-wasi-keyvalue` serves): `store`, `atomics` and `batch`,
//! on the same namespaced [`Keyspace`] as `edge:cache/cache`, so the namespace,
//! the key and value limits, the command deadline, the circuit breakers
//! and the metrics apply to both alike.
//!
//! A bucket is a key prefix inside the namespace:
//! `{namespace}:\x1fkv:{bucket}:{key}`. The unit separator (U+001F) after
//! the namespace is a control character, which `edge:cache/cache` refuses in
//! keys, so no key of that interface can reach a bucket's; and a bucket
//! name holds no `:`, so no bucket can reach another's.

use crate::keyspace::Keyspace;
use crate::store::StoreError;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasi:keyvalue/imports",
        // Trappable: a handle the guest does not own is a trap, as in every
        // WASI host; everything the store answers is the WIT's `error`.
        imports: { default: async | trappable },
        require_store_data_send: true,
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
    });
}

pub use generated::wasi::keyvalue::{atomics, batch, store};

/// The longest bucket identifier.
pub const MAX_BUCKET_NAME_BYTES: usize = 64;

/// The bucket that the empty identifier opens: wasmtime's own
/// `wasi:keyvalue` host serves only `""`, Spin and wasmCloud name theirs
/// `default`; both reach the same data here.
pub const DEFAULT_BUCKET: &str = "default";

/// An open bucket: the cache seen through the bucket's prefix.
pub struct Bucket {
    cache: Keyspace,
}

/// `identifier` as a bucket name, if it is one: 1 to 64 bytes of
/// `A-Z a-z 0-9 . _ -` (no `:`, which ends the prefix, and no braces,
/// which would make it a Redis Cluster hash tag); empty means
/// [`DEFAULT_BUCKET`].
pub fn bucket_name(identifier: &str) -> Option<&str> {
    if identifier.is_empty() {
        return Some(DEFAULT_BUCKET);
    }
    let valid = identifier.len() <= MAX_BUCKET_NAME_BYTES
        && identifier
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
    valid.then_some(identifier)
}

/// The prefix of bucket `name`'s keys inside the namespace.
pub fn bucket_scope(name: &str) -> String {
    format!("\u{1f}kv:{name}:")
}

/// What the `wasi:keyvalue` imports reach: the function's cache and the
/// instance's resource table, borrowed from the store for one call.
pub struct KeyValue<'a> {
    cache: &'a Keyspace,
    table: &'a mut ResourceTable,
}

impl<'a> KeyValue<'a> {
    pub fn new(cache: &'a Keyspace, table: &'a mut ResourceTable) -> Self {
        Self { cache, table }
    }

    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<&Keyspace> {
        Ok(&self.table.get(bucket)?.cache)
    }
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValue<'a>;
}

/// Adds `wasi:keyvalue/store`, `atomics` and `batch` to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> KeyValue<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasKeyValue>(linker, get)?;
    atomics::add_to_linker::<T, HasKeyValue>(linker, get)?;
    batch::add_to_linker::<T, HasKeyValue>(linker, get)?;
    Ok(())
}

/// A store failure as the WIT's `error`: a refusal by the store's access
/// control is `access-denied`; anything else is `other`, with the same text
/// `edge:cache` would log (an oversize key or value names the limit).
fn store_error(error: StoreError) -> store::Error {
    match error {
        StoreError::AccessDenied(_) => store::Error::AccessDenied,
        other => store::Error::Other(other.to_string()),
    }
}

type Answer<T> = wasmtime::Result<Result<T, store::Error>>;

fn answer<T>(result: Result<T, StoreError>) -> Answer<T> {
    Ok(result.map_err(store_error))
}

impl store::Host for KeyValue<'_> {
    async fn open(&mut self, identifier: String) -> Answer<Resource<Bucket>> {
        let Some(name) = bucket_name(&identifier) else {
            return Ok(Err(store::Error::NoSuchStore));
        };
        let cache = self.cache.within(&bucket_scope(name));
        Ok(Ok(self.table.push(Bucket { cache })?))
    }
}

impl store::HostBucket for KeyValue<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Answer<Option<Vec<u8>>> {
        answer(self.bucket(&bucket)?.get(&key).await)
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Answer<()> {
        answer(self.bucket(&bucket)?.set(&key, &value, None, false).await.map(drop))
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Answer<()> {
        answer(self.bucket(&bucket)?.delete(&[key]).await.map(drop))
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Answer<bool> {
        answer(self.bucket(&bucket)?.exists(&key).await)
    }

    async fn list_keys(&mut self, bucket: Resource<Bucket>, cursor: Option<u64>) -> Answer<store::KeyResponse> {
        let page = self.bucket(&bucket)?.list_keys(cursor.unwrap_or(0)).await;
        answer(page.map(|page| store::KeyResponse {
            keys: page.keys,
            cursor: page.cursor,
        }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValue<'_> {
    /// The store's counters are signed 64-bit decimals (Redis `INCRBY`):
    /// a `delta` above `i64::MAX` is refused, and a counter someone set
    /// negative is incremented but reported as an error, since the WIT's
    /// `u64` cannot carry it.
    async fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: u64) -> Answer<u64> {
        let Ok(delta) = i64::try_from(delta) else {
            return Ok(Err(store::Error::Other(format!(
                "an increment of {delta} does not fit the store's signed 64-bit counters (at most {})",
                i64::MAX
            ))));
        };
        Ok(match self.bucket(&bucket)?.incr(&key, delta).await {
            Ok(value) => u64::try_from(value).map_err(|_| {
                store::Error::Other(format!(
                    "the counter at {key:?} is negative ({value}) after the increment"
                ))
            }),
            Err(StoreError::WrongType) => Err(store::Error::Other(format!(
                "the value at {key:?} is not a decimal 64-bit integer"
            ))),
            Err(error) => Err(store_error(error)),
        })
    }
}

impl batch::Host for KeyValue<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Answer<Vec<Option<(String, Vec<u8>)>>> {
        let values = self.bucket(&bucket)?.get_many(&keys).await;
        answer(values.map(|values| {
            keys.into_iter()
                .zip(values)
                .map(|(key, value)| value.map(|value| (key, value)))
                .collect()
        }))
    }

    async fn set_many(&mut self, bucket: Resource<Bucket>, key_values: Vec<(String, Vec<u8>)>) -> Answer<()> {
        answer(self.bucket(&bucket)?.set_many(&key_values).await)
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Answer<()> {
        answer(self.bucket(&bucket)?.delete(&keys).await.map(drop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_identifiers_are_checked() {
        assert_eq!(bucket_name(""), Some(DEFAULT_BUCKET));
        for good in ["default", "notes", "Tenant-1.cache_v2", &"b".repeat(64)] {
            assert_eq!(bucket_name(good), Some(good), "{good:?}");
        }
        for bad in ["a:b", "{tag}", "with space", "line\nbreak", "é", "*", &"b".repeat(65)] {
            assert_eq!(bucket_name(bad), None, "{bad:?}");
        }
    }
}
