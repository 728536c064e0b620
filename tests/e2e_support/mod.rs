//! Support for the end-to-end suite (`tests/e2e.rs`): processes, a tiny HTTP client, the seeded
//! images and the per-test environment. Ports come from `crate::ports`, tests/support/ports.rs: a
//! crate using this declares it, or brings it in from its `support`.

pub mod harness;
pub mod http;
pub mod proc;
pub mod seed;
