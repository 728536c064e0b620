//! Why one image (or one of its parts) could not be warmed: one line of text, with the context
//! added on the way up ("blob sha256:...: received 4 bytes, expected 5").
//!
//! Rule of dependency: a leaf of `warm`; imports nothing of the crate. Every file of `warm` may
//! use it.

use std::fmt;

/// Why one image (or one of its parts) could not be warmed; shared by every image that needs the
/// same blob, hence `Clone`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub String);

impl Failure {
    pub fn new(s: impl Into<String>) -> Failure {
        Failure(s.into())
    }
    pub(super) fn context(self, what: impl fmt::Display) -> Failure {
        Failure(format!("{what}: {}", self.0))
    }
}
