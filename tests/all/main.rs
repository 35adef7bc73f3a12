//! The end-to-end suite: one test binary, so the guest is compiled once.

mod bounded;
mod component_world;
mod conformance;
mod http;
mod redis_ops;
mod startup;
