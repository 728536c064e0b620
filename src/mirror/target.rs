//! What a request means, in the mirror's words: which upstream, which repository on it, and how
//! the client named that upstream. `http::route` turns a path into a [`Target`]; the mirror and
//! everything below it speak of requests only in these terms, never in paths or headers.
//!
//! Rule of dependency: uses `oci`; `mirror` uses it, `http` builds it (and re-exports it from
//! `http::route`, where the parser names it). Nothing here knows HTTP.

use crate::oci::RepoName;

/// Which upstream and which repository on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The upstream's slot (see `upstreams`): stable for the process's life, across reloads.
    pub upstream: usize,
    /// The repository name as the upstream knows it (`library/` added where configured).
    pub name: RepoName,
    /// How the client named the registry.
    pub via: Via,
}

/// How a client named the upstream: the answer echoes it back (an `OCI-Namespace` header, a
/// next-page link with the path prefix), so the client stays on berth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// No registry named: the default upstream.
    Default,
    /// `?ns=<host>`; the value is echoed in `OCI-Namespace`.
    Namespace(String),
    /// A path prefix `/v2/<host>/...`.
    Prefix(String),
}
