//! Write edge functions on `edge:cache`, in Rust: the cache-aside lookup and
//! the rate limiters of the edge function, over plain host traits.

pub mod cache_aside;
pub mod host;
pub mod rate_limit;
