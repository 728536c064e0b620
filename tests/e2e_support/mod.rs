//! Support for the end-to-end suite (`tests/e2e.rs`): processes, a tiny HTTP client, the seeded
//! images and the per-test environment.

pub mod harness;
pub mod http;
pub mod proc;
pub mod seed;
