//! What the edge-cache guest and its hosts must agree on, in one place.
//!
//! The edge function (a WebAssembly component) and the harness that serves
//! it are built separately, yet must agree on a few things that WIT does not
//! carry: the headers the host sets, the settings the guest reads from its
//! environment (their names, defaults and parsing), the problem format both
//! answer errors with, and the key and value limits of `edge:cache/cache`.
//! Both depend on this crate, so each of these is written once.
//!
//! [`conformance`] is the cache contract itself as executable cases, run
//! against every backend of the harness and against the SDK's in-memory
//! host.
//!
//! The crate has no bindings and builds for any target.

pub mod cache;
pub mod cache_aside;
pub mod config;
pub mod conformance;
pub mod limits;
pub mod policy;
pub mod problem;

/// The header in which the host passes the client's address. The host sets
/// it on every request, replacing whatever the client sent, so it cannot be
/// spoofed.
pub const CLIENT_IP_HEADER: &str = "x-edge-client-ip";

/// The header that identifies an API client. Its value is a secret: a guest
/// keys quotas by a digest of it, and a host lets through only keys it issued.
pub const API_KEY_HEADER: &str = "x-api-key";
