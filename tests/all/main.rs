//! The end-to-end suite: one test binary, so the guest is compiled once.

mod bounded;
mod cluster;
mod component_world;
mod composition;
mod conformance;
mod hostile;
mod http;
mod keyvalue;
mod near_cache;
mod one_time_codes;
mod penalty_box;
mod redis_faults;
mod redis_ops;
mod startup;
mod tls;
