//! The integration tests, in one binary: each file here is a module (`cargo test --test it tier::`
//! runs one file's tests), all sharing the fake registry and berth-in-process helpers of
//! `tests/support`. The `#[ignore]`d ones that need root or real programs are run by
//! tests/run.sh by module (`cargo test --test it enospc:: -- --ignored`); the end-to-end suite
//! with real clients is its own binary (tests/e2e.rs).
//!
//! One binary rather than one per file: each file used to be a crate of its own that compiled
//! `tests/support` again and linked its own copy of berth and every dependency; 23 of them cost
//! CI several minutes (figures in BENCHMARKS.md, "CI time"). The price is one process for all:
//! a test must not change process-wide state (environment, current directory, signal
//! dispositions), which none does; `tracing::subscriber::set_default` is per thread.
//! `tests/support` stays where it is, so a test file added beside this folder (`tests/x.rs` with
//! `mod support;`) still builds as a binary of its own.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod admin_warm;
mod auth;
mod cli;
mod cluster;
mod container;
mod crash;
mod dns;
mod enospc;
mod evict;
mod fleet;
mod fleet_bed;
mod fleet_bucket;
mod fleet_directory;
mod fleet_owner;
mod fleet_swarm;
mod fleet_tracker;
mod house;
mod idle;
mod isolation;
mod keyless;
mod mirror;
mod negotiation;
mod observability;
mod policy;
mod referrers;
mod request_log;
mod resume;
mod s3;
mod server;
mod service;
mod swarm;
mod tier;
mod upstream;
mod verify;
mod warm;
mod zerocopy;
