//! One error type for the whole request path, and the OCI error codes it carries.
//!
//! Every error knows where it came from ([`Origin`]): the client sent something wrong, an upstream
//! misbehaved, or berth itself failed. The HTTP layer turns any [`Error`] into a status and the OCI
//! body `{"errors":[{"code","message","detail"}]}` in one place (`http::error_response`).
//!
//! Errors are `Clone` so that one failure can be handed to every request waiting on the same fetch.
//! [`chain`] spells any `std::error::Error` with its causes, for logs and command-line messages.
//! Rule of dependency: a leaf; knows nothing of the other modules.

use std::time::Duration;

use http::StatusCode;

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

/// The error codes of the OCI distribution spec (plus `TOOMANYREQUESTS` and `UNAVAILABLE`, which
/// Docker Hub and the Distribution registry use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    ManifestInvalid,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    TagInvalid,
    PaginationNumberInvalid,
    Unavailable,
    Unknown,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::TagInvalid => "TAG_INVALID",
            Code::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unknown => "UNKNOWN",
        }
    }

    /// Parses a code as an upstream registry spells it in its own error body.
    pub fn from_upstream(s: &str) -> Option<Code> {
        Some(match s {
            "BLOB_UNKNOWN" => Code::BlobUnknown,
            "DIGEST_INVALID" => Code::DigestInvalid,
            "MANIFEST_UNKNOWN" => Code::ManifestUnknown,
            "MANIFEST_INVALID" => Code::ManifestInvalid,
            "NAME_INVALID" => Code::NameInvalid,
            "NAME_UNKNOWN" => Code::NameUnknown,
            "SIZE_INVALID" => Code::SizeInvalid,
            "UNAUTHORIZED" => Code::Unauthorized,
            "DENIED" => Code::Denied,
            "UNSUPPORTED" => Code::Unsupported,
            "TOOMANYREQUESTS" => Code::TooManyRequests,
            "TAG_INVALID" => Code::TagInvalid,
            "PAGINATION_NUMBER_INVALID" => Code::PaginationNumberInvalid,
            "UNAVAILABLE" => Code::Unavailable,
            _ => return None,
        })
    }
}

/// A failure on the request path. Cheap to clone (a few strings).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} error {}: {message}{}", origin.as_str(), code.as_str(), detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct Error {
    pub origin: Origin,
    pub code: Code,
    pub status: StatusCode,
    /// Short, human text for the OCI `message` field.
    pub message: String,
    /// More context for the OCI `detail` field (never a secret).
    pub detail: Option<String>,
    /// Sent as `Retry-After` (seconds) when set.
    pub retry_after: Option<Duration>,
    /// For a 416: the blob's size, sent as `Content-Range: bytes */<size>`.
    pub range_size: Option<u64>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(origin: Origin, status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Error {
            origin,
            code,
            status,
            message: message.into(),
            detail: None,
            retry_after: None,
            range_size: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    // Client errors.

    pub fn name_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::BAD_REQUEST,
            Code::NameInvalid,
            "invalid repository name",
        )
        .with_detail(detail)
    }

    pub fn name_unknown(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::NOT_FOUND,
            Code::NameUnknown,
            "repository name not known to registry",
        )
        .with_detail(detail)
    }

    pub fn digest_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::BAD_REQUEST,
            Code::DigestInvalid,
            "provided digest did not match uploaded content",
        )
        .with_detail(detail)
    }

    pub fn tag_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::BAD_REQUEST,
            Code::TagInvalid,
            "manifest tag did not match URI",
        )
        .with_detail(detail)
    }

    pub fn pagination_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::BAD_REQUEST,
            Code::PaginationNumberInvalid,
            "invalid number of results requested",
        )
        .with_detail(detail)
    }

    pub fn unsupported(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unsupported,
            "the operation is unsupported",
        )
        .with_detail(detail)
    }

    pub fn not_found_route(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::NOT_FOUND,
            Code::NameUnknown,
            "no such endpoint",
        )
        .with_detail(detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::BAD_REQUEST,
            Code::Unsupported,
            "bad request",
        )
        .with_detail(detail)
    }

    pub fn range_invalid(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::RANGE_NOT_SATISFIABLE,
            Code::RangeInvalid,
            "invalid content range",
        )
        .with_detail(detail)
    }

    pub fn manifest_unknown(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::NOT_FOUND,
            Code::ManifestUnknown,
            "manifest unknown",
        )
        .with_detail(detail)
    }

    pub fn blob_unknown(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::NOT_FOUND,
            Code::BlobUnknown,
            "blob unknown to registry",
        )
        .with_detail(detail)
    }

    // Upstream errors.

    /// The upstream could not be reached or failed (connection refused, timeout, 5xx): 502/503.
    pub fn upstream_unavailable(upstream: &str, detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Upstream,
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            format!("upstream {upstream} unavailable"),
        )
        .with_detail(detail)
    }

    /// The upstream answered something berth cannot use (bad digest, malformed response): 502.
    pub fn upstream_bad(upstream: &str, detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Upstream,
            StatusCode::BAD_GATEWAY,
            Code::Unknown,
            format!("bad response from upstream {upstream}"),
        )
        .with_detail(detail)
    }

    /// The upstream sent bytes that do not hash to the digest asked for.
    pub fn digest_mismatch(upstream: &str, detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Upstream,
            StatusCode::BAD_GATEWAY,
            Code::DigestInvalid,
            format!("upstream {upstream} sent content that does not match its digest"),
        )
        .with_detail(detail)
    }

    /// The upstream refused berth access (401/403 even with whatever credentials berth has): 403.
    pub fn upstream_denied(upstream: &str, detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Upstream,
            StatusCode::FORBIDDEN,
            Code::Denied,
            format!("upstream {upstream} denied access"),
        )
        .with_detail(detail)
    }

    pub fn too_many_requests(upstream: &str, retry_after: Option<Duration>) -> Self {
        Self::new(
            Origin::Upstream,
            StatusCode::TOO_MANY_REQUESTS,
            Code::TooManyRequests,
            format!("upstream {upstream} is rate limiting"),
        )
        .with_retry_after(retry_after)
    }

    // Client login (`access`).

    /// No login, or a wrong one: 401 (the HTTP layer adds the Basic challenge).
    pub fn login_required(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::UNAUTHORIZED,
            Code::Unauthorized,
            "authentication required",
        )
        .with_detail(detail)
    }

    /// A valid login that may not pull through this upstream. Says nothing about what exists or
    /// is cached there.
    pub fn access_denied() -> Self {
        Self::new(
            Origin::Client,
            StatusCode::FORBIDDEN,
            Code::Denied,
            "requested access to the resource is denied",
        )
    }

    /// Too many password checks waiting: the client should try again shortly.
    pub fn login_throttled(retry_after: Duration) -> Self {
        Self::new(
            Origin::Client,
            StatusCode::TOO_MANY_REQUESTS,
            Code::TooManyRequests,
            "too many logins being checked; try again",
        )
        .with_retry_after(Some(retry_after))
    }

    // Internal errors.

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            Origin::Internal,
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unknown,
            "internal error",
        )
        .with_detail(detail)
    }

    /// An I/O failure. A full disk (or quota) answers 507 Insufficient Storage, which is also how
    /// callers tell it apart ([`is_disk_full`](Self::is_disk_full)).
    pub fn io(context: &str, err: &std::io::Error) -> Self {
        let mut e = Self::internal(format!("{context}: {err}"));
        if matches!(
            err.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ) {
            e.status = StatusCode::INSUFFICIENT_STORAGE;
        }
        e
    }

    /// Whether this is an I/O failure because the disk was full.
    pub fn is_disk_full(&self) -> bool {
        self.origin == Origin::Internal && self.status == StatusCode::INSUFFICIENT_STORAGE
    }

    /// The OCI error body for this error.
    pub fn to_body(&self) -> String {
        let mut entry = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        entry["detail"] = match &self.detail {
            Some(d) => serde_json::Value::String(d.clone()),
            None => serde_json::Value::Null,
        };
        serde_json::json!({ "errors": [entry] }).to_string()
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
    fn body_has_oci_shape() {
        let e = Error::name_invalid("Bad/Name");
        let v: serde_json::Value = serde_json::from_str(&e.to_body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(v["errors"][0]["message"], "invalid repository name");
        assert_eq!(v["errors"][0]["detail"], "Bad/Name");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn upstream_codes_round_trip() {
        for c in [
            Code::BlobUnknown,
            Code::ManifestUnknown,
            Code::TooManyRequests,
            Code::Denied,
        ] {
            assert_eq!(Code::from_upstream(c.as_str()), Some(c));
        }
        assert_eq!(Code::from_upstream("NOPE"), None);
    }
}
