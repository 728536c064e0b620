//! An upstream's error answer, mapped to the domain error it means ([`UpstreamResponse::error_for_status`]):
//! its status, and the OCI error code of its body when it sent one.
//!
//! Rule of dependency: under `upstream`, uses `response` (the body it reads) and `retry` (the
//! `Retry-After` a 429 or 5xx carries on); `error`.

use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::response::{SMALL_BODY_LIMIT, UpstreamResponse};
use super::retry::retry_after;
use crate::error::{Error, Missing};

/// An error body is only context: it gets this long, not a full stall timeout.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which `*_UNKNOWN` a 404 becomes when the upstream's body does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFoundKind {
    Manifest,
    Blob,
    Repository,
}

impl UpstreamResponse {
    /// Maps a non-2xx final status (304 passes too: it answers a conditional request) to the error
    /// it means: 404 -> not found (the manifest, blob or repository, as the upstream's own code says
    /// when its body names one, else by `kind`), 401/403 -> denied, 429 -> rate limited with its
    /// Retry-After, 5xx -> unavailable (with its Retry-After), anything else -> upstream wrong.
    pub async fn error_for_status(self, kind: NotFoundKind) -> Result<UpstreamResponse, Error> {
        let status = self.status;
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(self);
        }
        Err(self.read_error().await.into_error(kind))
    }

    /// For a route an upstream may not have (the referrers API of OCI 1.1): `Ok(None)` when its
    /// answer says it has no such route (404, 405 or 501, as the Distribution registry and Docker
    /// Hub answer, or an `UNSUPPORTED` error with any status); otherwise a success as it is, or
    /// what [`error_for_status`](Self::error_for_status) makes of the error.
    pub async fn unless_route_missing(
        self,
        kind: NotFoundKind,
    ) -> Result<Option<UpstreamResponse>, Error> {
        if self.status.is_success() {
            return Ok(Some(self));
        }
        if matches!(self.status.as_u16(), 404 | 405 | 501) {
            return Ok(None);
        }
        let error = self.read_error().await;
        if error.code.as_deref() == Some("UNSUPPORTED") {
            return Ok(None);
        }
        Err(error.into_error(kind))
    }

    /// Reads an error answer's body (briefly: it is only context) and its OCI code.
    async fn read_error(self) -> ErrorAnswer {
        let name = self.body.upstream.clone();
        let retry_after = retry_after(&self.headers, SystemTime::now());
        let body = tokio::time::timeout(ERROR_BODY_TIMEOUT, self.body.prefix(SMALL_BODY_LIMIT))
            .await
            .unwrap_or_default();
        let (code, message) = oci_error(&body).unzip();
        ErrorAnswer {
            status: self.status,
            name,
            retry_after,
            code,
            message,
        }
    }
}

/// An upstream's error answer, read.
struct ErrorAnswer {
    status: StatusCode,
    name: std::sync::Arc<str>,
    retry_after: Option<Duration>,
    code: Option<String>,
    message: Option<String>,
}

impl ErrorAnswer {
    fn into_error(self, kind: NotFoundKind) -> Error {
        let ErrorAnswer {
            status,
            name,
            retry_after,
            code,
            message,
        } = self;
        let detail = match message.filter(|m| !m.is_empty()) {
            Some(m) => format!("upstream {name} answered {status}: {m}"),
            None => format!("upstream {name} answered {status}"),
        };
        match status.as_u16() {
            404 => {
                let missing = code
                    .and_then(|c| match c.as_str() {
                        "MANIFEST_UNKNOWN" => Some(Missing::Manifest),
                        "BLOB_UNKNOWN" => Some(Missing::Blob),
                        "NAME_UNKNOWN" => Some(Missing::Repository),
                        _ => None,
                    })
                    .unwrap_or(match kind {
                        NotFoundKind::Manifest => Missing::Manifest,
                        NotFoundKind::Blob => Missing::Blob,
                        NotFoundKind::Repository => Missing::Repository,
                    });
                match missing {
                    Missing::Manifest => Error::manifest_unknown(detail),
                    Missing::Blob => Error::blob_unknown(detail),
                    _ => Error::name_unknown(detail),
                }
            }
            401 | 403 => Error::upstream_denied(&name, detail),
            429 => Error::too_many_requests(&name, retry_after).with_detail(detail),
            500..=599 => Error::upstream_unavailable_for(&name, retry_after).with_detail(detail),
            _ => Error::upstream_bad(&name, detail),
        }
    }
}

/// The error codes of the OCI distribution spec (and `TOOMANYREQUESTS`, `UNAVAILABLE`, which
/// Docker Hub and the Distribution registry use): an error body with another code is not read.
const OCI_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_UNKNOWN",
    "MANIFEST_INVALID",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
    "TAG_INVALID",
    "PAGINATION_NUMBER_INVALID",
    "UNAVAILABLE",
];

/// The first entry of an OCI error body: its code (when it is one of [`OCI_CODES`]) and message.
fn oci_error(body: &[u8]) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: Option<String>,
    }
    let first = serde_json::from_slice::<Body>(body)
        .ok()?
        .errors
        .into_iter()
        .next()?;
    let code = OCI_CODES
        .contains(&first.code.as_str())
        .then_some(first.code)?;
    let message: String = first
        .message
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    Some((code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_error_bodies() {
        let b =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            oci_error(b),
            Some(("MANIFEST_UNKNOWN".into(), "manifest unknown".into()))
        );
        assert_eq!(oci_error(b"not json"), None);
        assert_eq!(oci_error(br#"{"errors":[]}"#), None);
        assert_eq!(oci_error(br#"{"errors":[{"code":"WEIRD"}]}"#), None);
    }
}
