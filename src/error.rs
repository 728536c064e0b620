//! One error type for the whole request path: what went wrong ([`Kind`]), where it came from
//! ([`Origin`]), and the words for the client.
//!
//! The domain says what happened, never how it is answered: the HTTP status, the OCI code of the
//! `{"errors":[{"code","message","detail"}]}` body and the headers a kind carries (`Retry-After`,
//! a 416's `Content-Range`) are chosen in one table in `http::error`. Stale serving, retries and
//! the admin tools' exit codes decide on kinds.
//!
//! Errors are `Clone` so that one failure can be handed to every request waiting on the same fetch.
//! [`chain`] spells any `std::error::Error` with its causes, for logs and command-line messages.
//! Rule of dependency: a leaf; knows nothing of the other modules, nor of HTTP.

use std::time::Duration;

/// Where an error came from; decides the log level and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client asked for something malformed, unknown or unsupported.
    Client,
    /// An upstream registry failed, refused, or sent something wrong.
    Upstream,
    /// berth itself failed (disk, bug).
    Internal,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Client => "client",
            Origin::Upstream => "upstream",
            Origin::Internal => "internal",
        }
    }
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// What was asked for is not there (here, or at the upstream).
    NotFound(Missing),
    /// The request is malformed.
    Invalid(Malformed),
    /// An operation berth does not offer (it serves the read side only).
    Unsupported,
    /// A byte range outside the blob, with the blob's size when known.
    RangeNotSatisfiable { size: Option<u64> },
    /// No login, or a wrong one.
    LoginRequired,
    /// A valid login that may not do this, or an upstream that refused berth.
    Denied,
    /// Too many requests (an upstream limiting berth, or logins waiting here), with the delay
    /// after which to try again when one is known.
    RateLimited { retry_after: Option<Duration> },
    /// The upstream could not be reached or failed (connection, timeout, 5xx), with the delay it
    /// asked for when it named one.
    UpstreamUnavailable { retry_after: Option<Duration> },
    /// The upstream answered something berth cannot use (malformed, too big, an unexpected status).
    UpstreamWrong,
    /// The upstream sent bytes that do not hash to the digest asked for.
    ContentMismatch,
    /// The disk (or a quota) is full.
    DiskFull,
    /// berth itself failed.
    Internal,
}

/// What a [`Kind::NotFound`] did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Manifest,
    Blob,
    /// The repository, or the registry (upstream) the request named.
    Repository,
    /// No endpoint of the API has this path.
    Route,
}

/// What part of a malformed request a [`Kind::Invalid`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// A repository name outside the OCI grammar.
    Name,
    /// A digest that cannot be parsed, or an algorithm berth does not support.
    Digest,
    /// A tag outside the OCI grammar.
    Tag,
    /// A tag list's `n` or `last` out of bounds.
    Pagination,
    /// Anything else about the request (a header, a query).
    Request,
}

/// A failure on the request path. Cheap to clone (a few strings).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} error {}: {message}{}", origin.as_str(), kind.as_str(), detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct Error {
    pub origin: Origin,
    pub kind: Kind,
    /// Short, human text for the OCI `message` field.
    pub message: String,
    /// More context for the OCI `detail` field (never a secret).
    pub detail: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Kind {
    /// A short name for logs and `Display` (not the wire code: `http::error` chooses that).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NotFound(Missing::Manifest) => "manifest not found",
            Kind::NotFound(Missing::Blob) => "blob not found",
            Kind::NotFound(Missing::Repository) => "repository not found",
            Kind::NotFound(Missing::Route) => "no such route",
            Kind::Invalid(Malformed::Name) => "invalid name",
            Kind::Invalid(Malformed::Digest) => "invalid digest",
            Kind::Invalid(Malformed::Tag) => "invalid tag",
            Kind::Invalid(Malformed::Pagination) => "invalid pagination",
            Kind::Invalid(Malformed::Request) => "invalid request",
            Kind::Unsupported => "unsupported",
            Kind::RangeNotSatisfiable { .. } => "range not satisfiable",
            Kind::LoginRequired => "login required",
            Kind::Denied => "denied",
            Kind::RateLimited { .. } => "rate limited",
            Kind::UpstreamUnavailable { .. } => "upstream unavailable",
            Kind::UpstreamWrong => "upstream wrong",
            Kind::ContentMismatch => "content mismatch",
            Kind::DiskFull => "disk full",
            Kind::Internal => "internal",
        }
    }
}

impl Error {
    pub fn new(origin: Origin, kind: Kind, message: impl Into<String>) -> Self {
        Error {
            origin,
            kind,
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The delay after which the client may try again, when the kind carries one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            Kind::RateLimited { retry_after } | Kind::UpstreamUnavailable { retry_after } => {
                retry_after
            }
            _ => None,
        }
    }

    /// Whether this is a `NotFound` of any sort.
    pub fn is_not_found(&self) -> bool {
        matches!(self.kind, Kind::NotFound(_))
    }

    // Client errors.

    pub fn name_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            Kind::Invalid(Malformed::Name),
            "invalid repository name",
        )
        .with_detail(detail)
    }

    pub fn name_unknown(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            Kind::NotFound(Missing::Repository),
            "repository name not known to registry",
        )
        .with_detail(detail)
    }

    pub fn digest_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            Kind::Invalid(Malformed::Digest),
            "provided digest did not match uploaded content",
        )
        .with_detail(detail)
    }

    pub fn tag_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            Kind::Invalid(Malformed::Tag),
            "manifest tag did not match URI",
        )
        .with_detail(detail)
    }

    pub fn pagination_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            Kind::Invalid(Malformed::Pagination),
            "invalid number of results requested",
        )
        .with_detail(detail)
    }

    pub fn unsupported(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            Kind::Unsupported,
            "the operation is unsupported",
        )
        .with_detail(detail)
    }

    pub fn not_found_route(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            Kind::NotFound(Missing::Route),
            "no such endpoint",
        )
        .with_detail(detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            Kind::Invalid(Malformed::Request),
            "bad request",
        )
        .with_detail(detail)
    }

    /// A range outside a blob whose size is not known here.
    pub fn range_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            Kind::RangeNotSatisfiable { size: None },
            "invalid content range",
        )
        .with_detail(detail)
    }

    /// A range outside a blob of `size` bytes (answered with `Content-Range: bytes */<size>`).
    pub fn range_not_satisfiable(size: u64) -> Self {
        Self::new(
            Origin::Client,
            Kind::RangeNotSatisfiable { size: Some(size) },
            "invalid content range",
        )
        .with_detail(format!("blob size {size}"))
    }

    pub fn manifest_unknown(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            Kind::NotFound(Missing::Manifest),
            "manifest unknown",
        )
        .with_detail(detail)
    }

    pub fn blob_unknown(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            Kind::NotFound(Missing::Blob),
            "blob unknown to registry",
        )
        .with_detail(detail)
    }

    // Upstream errors.

    /// The upstream could not be reached or failed (connection refused, timeout, 5xx).
    pub fn upstream_unavailable(upstream: &str, detail: impl Into<String>) -> Self {
        Self::upstream_unavailable_for(upstream, None).with_detail(detail)
    }

    /// As [`upstream_unavailable`](Self::upstream_unavailable), with the delay the upstream asked
    /// for (`Retry-After`).
    pub fn upstream_unavailable_for(upstream: &str, retry_after: Option<Duration>) -> Self {
        Self::new(
            Origin::Upstream,
            Kind::UpstreamUnavailable { retry_after },
            format!("upstream {upstream} unavailable"),
        )
    }

    /// The upstream answered something berth cannot use (malformed response, unexpected status).
    pub fn upstream_bad(upstream: &str, detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Upstream,
            Kind::UpstreamWrong,
            format!("bad response from upstream {upstream}"),
        )
        .with_detail(detail)
    }

    /// The upstream sent bytes that do not hash to the digest asked for.
    pub fn digest_mismatch(upstream: &str, detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Upstream,
            Kind::ContentMismatch,
            format!("upstream {upstream} sent content that does not match its digest"),
        )
        .with_detail(detail)
    }

    /// The upstream refused berth access (401/403 even with whatever credentials berth has).
    pub fn upstream_denied(upstream: &str, detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Upstream,
            Kind::Denied,
            format!("upstream {upstream} denied access"),
        )
        .with_detail(detail)
    }

    pub fn too_many_requests(upstream: &str, retry_after: Option<Duration>) -> Self {
        Self::new(
            Origin::Upstream,
            Kind::RateLimited { retry_after },
            format!("upstream {upstream} is rate limiting"),
        )
    }

    // Client login (`access`).

    /// No login, or a wrong one (the HTTP layer adds the challenge).
    pub fn login_required(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            Kind::LoginRequired,
            "authentication required",
        )
        .with_detail(detail)
    }

    /// A valid login that may not pull through this upstream. Says nothing about what exists or
    /// is cached there.
    pub fn access_denied() -> Self {
        Self::new(
            Origin::Client,
            Kind::Denied,
            "requested access to the resource is denied",
        )
    }

    /// A manifest or blob a signature policy does not let through; `reason` says which policy
    /// and why. The message carries the reason too (cut at 300 characters): skopeo and podman
    /// show a denial's message, not its detail, and a person at a node should read why.
    pub fn policy_denied(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let short: String = reason.chars().take(300).collect();
        let more = if short.len() < reason.len() {
            "..."
        } else {
            ""
        };
        Self::new(
            Origin::Client,
            Kind::Denied,
            format!("denied by the signature policy: {short}{more}"),
        )
        .with_detail(reason)
    }

    /// Too many password checks waiting: the client should try again shortly.
    pub fn login_throttled(retry_after: Duration) -> Self {
        Self::new(
            Origin::Client,
            Kind::RateLimited {
                retry_after: Some(retry_after),
            },
            "too many logins being checked; try again",
        )
    }

    // The admin API.

    /// One operation at a time, and one is running: try again after `retry_after`.
    pub fn busy(detail: impl Into<String>, retry_after: Duration) -> Self {
        Self::new(
            Origin::Client,
            Kind::RateLimited {
                retry_after: Some(retry_after),
            },
            "busy; try again later",
        )
        .with_detail(detail)
    }

    // Internal errors.

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(Origin::Internal, Kind::Internal, "internal error").with_detail(detail)
    }

    /// An I/O failure; a full disk (or quota) is [`Kind::DiskFull`], which callers tell apart
    /// ([`is_disk_full`](Self::is_disk_full)).
    pub fn io(context: &str, err: &std::io::Error) -> Self {
        let mut e = Self::internal(format!("{context}: {err}"));
        if matches!(
            err.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ) {
            e.kind = Kind::DiskFull;
        }
        e
    }

    /// Whether this is an I/O failure because the disk was full.
    pub fn is_disk_full(&self) -> bool {
        self.kind == Kind::DiskFull
    }

    /// Whether a cached answer may stand in for this failure: the upstream is down, failing or
    /// limiting berth, or answered something unusable. (Not when it denied access or answered
    /// not-found: those are answers, and the client should see them.)
    pub fn allows_stale(&self) -> bool {
        self.origin == Origin::Upstream
            && matches!(
                self.kind,
                Kind::UpstreamUnavailable { .. }
                    | Kind::RateLimited { .. }
                    | Kind::UpstreamWrong
                    | Kind::ContentMismatch
            )
    }
}

/// An error with its sources, joined by ": ". hyper's own message alone says little ("client
/// error (Connect)"); the cause says what. A source whose text the message already holds (some
/// errors print their cause themselves) is not repeated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn layers(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |source, text| {
                Some(Layer {
                    text,
                    source: source.map(Box::new),
                })
            })
            .unwrap()
    }

    #[test]
    fn chain_joins_every_source() {
        let e = layers(&["client error (Connect)", "tcp connect error", "refused"]);
        assert_eq!(
            chain(&e),
            "client error (Connect): tcp connect error: refused"
        );
        assert_eq!(chain(&layers(&["alone"])), "alone");
    }

    #[test]
    fn chain_skips_a_source_the_message_already_holds() {
        let e = layers(&[
            "reading body: reset by peer",
            "reset by peer",
            "os error 104",
        ]);
        assert_eq!(chain(&e), "reading body: reset by peer: os error 104");
    }

    #[test]
    fn stale_stands_in_only_for_an_upstream_that_failed() {
        assert!(Error::upstream_unavailable("u", "down").allows_stale());
        assert!(Error::too_many_requests("u", None).allows_stale());
        assert!(Error::upstream_bad("u", "garbage").allows_stale());
        assert!(!Error::upstream_denied("u", "no").allows_stale());
        assert!(!Error::manifest_unknown("gone").allows_stale());
        assert!(!Error::login_throttled(Duration::from_secs(1)).allows_stale());
    }

    #[test]
    fn a_full_disk_is_its_own_kind() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(Error::io("writing", &full).is_disk_full());
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(Error::io("writing", &other).kind, Kind::Internal);
    }
}
