//! The default bounds of `edge:cache/cache`: what a host accepts unless it
//! is configured otherwise, and what the in-memory test host enforces.

/// The longest key, in bytes, before the host's namespace: long enough for
/// any composite key, short enough to keep Redis' key space lean.
pub const MAX_KEY_BYTES: usize = 512;

/// The largest value, in bytes: 1 MiB, the usual advice for edge caches.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
