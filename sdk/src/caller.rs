//! Who is calling, as a key a limiter can count under.
//!
//! API keys are secrets: a limiter keys them by a digest, never the key. The
//! digest is SHA-256, so it is the same on every instance, in every build and
//! with every Rust version (the standard library's `DefaultHasher` promises
//! none of that, and a changed digest silently restarts every quota).

use edge_cache_contract::config::CallerClass;
use sha2::{Digest, Sha256};

/// The longest client address taken as a caller; a longer header value is
/// not an address, and such callers share the `anonymous` quota.
pub const MAX_ADDRESS_LEN: usize = 64;

/// The stable key of an API key: `key:` and the first 16 bytes of its
/// SHA-256 digest, in lower-case hex.
///
/// ```
/// assert_eq!(
///     edge_cache_sdk::caller::api_key_digest("s3cret"),
///     "key:1ec1c26b50d5d3c58d9583181af80766"
/// );
/// ```
pub fn api_key_digest(api_key: &str) -> String {
    const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(api_key.as_bytes());
    let mut key = String::with_capacity(4 + 32);
    key.push_str("key:");
    for byte in &digest[..16] {
        key.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        key.push(char::from(HEX_DIGITS[usize::from(byte & 0xf)]));
    }
    key
}

/// Who is calling: the digest of the API key when there is one, otherwise
/// the client address the host reported (`ip:…`), otherwise `anonymous`.
/// Takes the values of [`API_KEY_HEADER`] and [`CLIENT_IP_HEADER`].
///
/// ```
/// use edge_cache_sdk::caller::caller;
/// use edge_cache_contract::config::CallerClass;
///
/// assert_eq!(caller(None, Some("10.0.0.1")), ("ip:10.0.0.1".to_owned(), CallerClass::Anonymous));
/// assert_eq!(caller(Some("s3cret"), Some("10.0.0.1")).1, CallerClass::ApiKey);
/// assert_eq!(caller(None, None).0, "anonymous");
/// ```
///
/// [`API_KEY_HEADER`]: edge_cache_contract::API_KEY_HEADER
/// [`CLIENT_IP_HEADER`]: edge_cache_contract::CLIENT_IP_HEADER
pub fn caller(api_key: Option<&str>, client_ip: Option<&str>) -> (String, CallerClass) {
    if let Some(api_key) = api_key {
        return (api_key_digest(api_key), CallerClass::ApiKey);
    }
    let key = match client_ip {
        Some(ip) if ip.len() <= MAX_ADDRESS_LEN => ["ip:", ip].concat(),
        _ => "anonymous".into(),
    };
    (key, CallerClass::Anonymous)
}
