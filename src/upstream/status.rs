//! An upstream's error answer, mapped to the error the client sees: the status, and the OCI error
//! body when the upstream sent one ([`UpstreamResponse::error_for_status`]).
//!
//! Rule of dependency: under `upstream`, uses `response` (the body it reads) and `retry` (the
//! `Retry-After` a 429 or 5xx carries on); `error`.

use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::response::{SMALL_BODY_LIMIT, UpstreamResponse};
use super::retry::retry_after;
use crate::error::{Code, Error};

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
    /// the client should see: 404 -> `MANIFEST_UNKNOWN`/`BLOB_UNKNOWN`/`NAME_UNKNOWN` (the upstream's
    /// own code when its body says one of them, else by `kind`), 401/403 -> `DENIED` 403, 429 ->
    /// `TOOMANYREQUESTS` with its Retry-After, 5xx -> `UNAVAILABLE` 503, anything else -> 502.
    pub async fn error_for_status(self, kind: NotFoundKind) -> Result<UpstreamResponse, Error> {
        let status = self.status;
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(self);
        }
        let name = self.body.upstream.clone();
        let retry_after = retry_after(&self.headers, SystemTime::now());
        let body = tokio::time::timeout(ERROR_BODY_TIMEOUT, self.body.prefix(SMALL_BODY_LIMIT))
            .await
            .unwrap_or_default();
        let (code, message) = oci_error(&body).unzip();
        let detail = match message.filter(|m| !m.is_empty()) {
            Some(m) => format!("upstream {name} answered {status}: {m}"),
            None => format!("upstream {name} answered {status}"),
        };
        Err(match status.as_u16() {
            404 => {
                let code = code
                    .filter(|c| {
                        matches!(
                            c,
                            Code::ManifestUnknown | Code::BlobUnknown | Code::NameUnknown
                        )
                    })
                    .unwrap_or(match kind {
                        NotFoundKind::Manifest => Code::ManifestUnknown,
                        NotFoundKind::Blob => Code::BlobUnknown,
                        NotFoundKind::Repository => Code::NameUnknown,
                    });
                match code {
                    Code::ManifestUnknown => Error::manifest_unknown(detail),
                    Code::BlobUnknown => Error::blob_unknown(detail),
                    _ => Error::name_unknown(detail),
                }
            }
            401 | 403 => Error::upstream_denied(&name, detail),
            429 => Error::too_many_requests(&name, retry_after).with_detail(detail),
            500..=599 => Error::upstream_unavailable(&name, detail).with_retry_after(retry_after),
            _ => Error::upstream_bad(&name, detail),
        })
    }
}

/// The first entry of an OCI error body: its code (when berth knows it) and message.
fn oci_error(body: &[u8]) -> Option<(Code, String)> {
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
    let code = Code::from_upstream(&first.code)?;
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
            Some((Code::ManifestUnknown, "manifest unknown".into()))
        );
        assert_eq!(oci_error(b"not json"), None);
        assert_eq!(oci_error(br#"{"errors":[]}"#), None);
        assert_eq!(oci_error(br#"{"errors":[{"code":"WEIRD"}]}"#), None);
    }
}
