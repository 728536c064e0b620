//! The one table from an error's [`Kind`] to its HTTP answer: the status, the OCI error code of
//! the `{"errors":[{"code","message","detail"}]}` body, and the headers the kind carries
//! (`Retry-After` for a limit or an outage with a delay, `Content-Range: bytes */<size>` for a
//! 416). Nothing below `http` chooses a status; every error response of berth (registry routes,
//! peer routes, the admin API) is written by [`error_response`].
//!
//! Rule of dependency: uses `error` (the kinds), `http`'s [`Body`] and `respond`'s body helper;
//! nothing below `http` imports it.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::Body;
use super::respond::bytes_response;
use crate::error::{Error, Kind, Malformed, Missing};

/// The error codes of the OCI distribution spec that berth answers with (plus `TOOMANYREQUESTS`
/// and `UNAVAILABLE`, which Docker Hub and the Distribution registry use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
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
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
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
}

/// The table: how each kind of failure is answered.
pub fn answer(kind: Kind) -> (StatusCode, Code) {
    match kind {
        Kind::NotFound(Missing::Manifest) => (StatusCode::NOT_FOUND, Code::ManifestUnknown),
        Kind::NotFound(Missing::Blob) => (StatusCode::NOT_FOUND, Code::BlobUnknown),
        Kind::NotFound(Missing::Repository | Missing::Route) => {
            (StatusCode::NOT_FOUND, Code::NameUnknown)
        }
        Kind::Invalid(Malformed::Name) => (StatusCode::BAD_REQUEST, Code::NameInvalid),
        Kind::Invalid(Malformed::Digest) => (StatusCode::BAD_REQUEST, Code::DigestInvalid),
        Kind::Invalid(Malformed::Tag) => (StatusCode::BAD_REQUEST, Code::TagInvalid),
        Kind::Invalid(Malformed::Pagination) => {
            (StatusCode::BAD_REQUEST, Code::PaginationNumberInvalid)
        }
        Kind::Invalid(Malformed::Request) => (StatusCode::BAD_REQUEST, Code::Unsupported),
        Kind::Unsupported => (StatusCode::METHOD_NOT_ALLOWED, Code::Unsupported),
        Kind::RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, Code::RangeInvalid),
        Kind::LoginRequired => (StatusCode::UNAUTHORIZED, Code::Unauthorized),
        Kind::Denied => (StatusCode::FORBIDDEN, Code::Denied),
        Kind::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, Code::TooManyRequests),
        Kind::UpstreamUnavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable),
        Kind::UpstreamWrong => (StatusCode::BAD_GATEWAY, Code::Unknown),
        Kind::ContentMismatch => (StatusCode::BAD_GATEWAY, Code::DigestInvalid),
        Kind::DiskFull => (StatusCode::INSUFFICIENT_STORAGE, Code::Unknown),
        Kind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, Code::Unknown),
    }
}

/// How an error is answered, read off the table: for the request log, metrics and tests.
pub trait Answered {
    /// The status the error is answered with.
    fn status(&self) -> StatusCode;
    /// The OCI error code of its body.
    fn code(&self) -> Code;
}

impl Answered for Error {
    fn status(&self) -> StatusCode {
        answer(self.kind).0
    }

    fn code(&self) -> Code {
        answer(self.kind).1
    }
}

/// The OCI error body for an error.
pub fn body(e: &Error) -> String {
    let mut entry = serde_json::json!({ "code": e.code().as_str(), "message": e.message });
    entry["detail"] = match &e.detail {
        Some(d) => serde_json::Value::String(d.clone()),
        None => serde_json::Value::Null,
    };
    serde_json::json!({ "errors": [entry] }).to_string()
}

/// The single place where an error becomes a response.
pub fn error_response(e: &Error, head: bool) -> Response<Body> {
    let mut r = bytes_response(e.status(), Bytes::from(body(e)), "application/json", head);
    if let Some(after) = e.retry_after() {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(after.as_secs().max(1)),
        );
    }
    if let Kind::RangeNotSatisfiable { size: Some(total) } = e.kind
        && let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}"))
    {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn body_has_oci_shape() {
        let e = Error::name_invalid("Bad/Name");
        let v: serde_json::Value = serde_json::from_str(&body(&e)).unwrap();
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(v["errors"][0]["message"], "invalid repository name");
        assert_eq!(v["errors"][0]["detail"], "Bad/Name");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn every_kind_is_answered_as_the_spec_and_the_big_registries_do() {
        let s = Some(Duration::from_secs(7));
        for (e, want_status, want_code) in [
            (Error::manifest_unknown("x"), 404, "MANIFEST_UNKNOWN"),
            (Error::blob_unknown("x"), 404, "BLOB_UNKNOWN"),
            (Error::name_unknown("x"), 404, "NAME_UNKNOWN"),
            (Error::not_found_route("x"), 404, "NAME_UNKNOWN"),
            (Error::digest_invalid("x"), 400, "DIGEST_INVALID"),
            (Error::tag_invalid("x"), 400, "TAG_INVALID"),
            (
                Error::pagination_invalid("x"),
                400,
                "PAGINATION_NUMBER_INVALID",
            ),
            (Error::bad_request("x"), 400, "UNSUPPORTED"),
            (Error::unsupported("x"), 405, "UNSUPPORTED"),
            (Error::range_not_satisfiable(9), 416, "RANGE_INVALID"),
            (Error::login_required("x"), 401, "UNAUTHORIZED"),
            (Error::access_denied(), 403, "DENIED"),
            (Error::upstream_denied("u", "x"), 403, "DENIED"),
            (Error::too_many_requests("u", s), 429, "TOOMANYREQUESTS"),
            (
                Error::login_throttled(Duration::from_secs(1)),
                429,
                "TOOMANYREQUESTS",
            ),
            (Error::upstream_unavailable("u", "x"), 503, "UNAVAILABLE"),
            (Error::upstream_bad("u", "x"), 502, "UNKNOWN"),
            (Error::digest_mismatch("u", "x"), 502, "DIGEST_INVALID"),
            (Error::internal("x"), 500, "UNKNOWN"),
            (
                Error::io("w", &std::io::Error::from(std::io::ErrorKind::StorageFull)),
                507,
                "UNKNOWN",
            ),
        ] {
            let (got_status, got_code) = answer(e.kind);
            assert_eq!(
                (got_status.as_u16(), got_code.as_str()),
                (want_status, want_code),
                "{e}"
            );
        }
    }

    #[test]
    fn a_kind_s_delay_and_size_become_headers() {
        let r = error_response(
            &Error::too_many_requests("u", Some(Duration::from_secs(30))),
            false,
        );
        assert_eq!(r.headers()[header::RETRY_AFTER], "30");
        let r = error_response(
            &Error::upstream_unavailable_for("u", Some(Duration::from_millis(10))),
            false,
        );
        assert_eq!(
            r.headers()[header::RETRY_AFTER],
            "1",
            "never Retry-After: 0"
        );
        let r = error_response(&Error::upstream_unavailable("u", "down"), false);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        let r = error_response(&Error::range_not_satisfiable(42), false);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */42");
        let r = error_response(&Error::range_invalid("bad"), false);
        assert!(r.headers().get(header::CONTENT_RANGE).is_none());
    }
}
