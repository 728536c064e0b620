//! The stale-upload sweep: finding the multipart uploads left open under the blob keys (by a
//! berth killed mid-upload, or an abort that failed) and aborting those older than a live upload
//! can be ([`Bucket::abort_stale_uploads`](super::Bucket::abort_stale_uploads), run by `tier`).
//! Their parts cost storage, never correctness: nothing of them is visible. A bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`) does the same on servers that support it.
//!
//! # Why a second HTTP client
//! `object_store` can neither list multipart uploads (`ListMultipartUploads`) nor abort one that
//! it did not start itself, and it keeps its signing and its HTTP client to itself. So this room
//! presigns those two requests with `rusty-s3` (no hand-made SigV4; `?uploads` has no `rusty-s3`
//! action, so that one goes through the crate's signing function) and sends them with a `reqwest`
//! client of its own (the same crate and rustls as `object_store`'s, a separate connection pool,
//! 60 s per request). It is the only code that talks to the bucket outside `object_store`, and it
//! exists only for a bucket made by [`Bucket::connect`](super::Bucket::connect): a bucket over
//! another `ObjectStore` (the tests' in-memory one) has no [`Signer`] and cannot sweep.
//!
//! Rule of dependency: part of `store::s3`; uses `config` (the bucket's table and credentials), its
//! parent's [`BucketError`] and its sibling `metrics`; it knows nothing of
//! [`Bucket`](super::Bucket): the client holds a [`Signer`] and calls it.

use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use super::BucketError;
use super::metrics::BucketMetrics;
use crate::config::{S3Config, S3Credentials};

/// A multipart upload still open on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

/// The pieces needed to presign requests `object_store` does not make (see the module docs).
#[derive(Clone)]
pub(super) struct Signer {
    bucket: rusty_s3::Bucket,
    credentials: rusty_s3::Credentials,
    http: reqwest::Client,
}

impl Signer {
    /// The signer for the bucket `cfg` names, at `endpoint` (without its trailing slash; none:
    /// AWS's own, virtual-hosted). Makes no request.
    pub(super) fn new(
        cfg: &S3Config,
        creds: &S3Credentials,
        endpoint: Option<&str>,
    ) -> Result<Signer, BucketError> {
        let (endpoint, style) = match endpoint {
            Some(e) => (e.to_owned(), rusty_s3::UrlStyle::Path),
            None => (
                format!("https://s3.{}.amazonaws.com", cfg.region),
                rusty_s3::UrlStyle::VirtualHost,
            ),
        };
        let url = endpoint
            .parse()
            .map_err(|e| BucketError::Config(format!("endpoint {endpoint}: {e}")))?;
        Ok(Signer {
            bucket: rusty_s3::Bucket::new(url, style, cfg.bucket.clone(), cfg.region.clone())
                .map_err(|e| BucketError::Config(e.to_string()))?,
            credentials: match &creds.session_token {
                Some(t) => rusty_s3::Credentials::new_with_token(
                    creds.access_key_id.clone(),
                    creds.secret_access_key.expose().to_owned(),
                    t.expose().to_owned(),
                ),
                None => rusty_s3::Credentials::new(
                    creds.access_key_id.clone(),
                    creds.secret_access_key.expose().to_owned(),
                ),
            },
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| BucketError::Config(e.to_string()))?,
        })
    }

    /// The multipart uploads open under `prefix` (all pages).
    pub(super) async fn open_uploads(
        &self,
        prefix: &str,
        metrics: &BucketMetrics,
    ) -> Result<Vec<OpenUpload>, BucketError> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        loop {
            let started = Instant::now();
            let page = self
                .list_uploads_page(prefix, &key_marker, &id_marker)
                .await;
            metrics.record(
                "list_uploads",
                if page.is_ok() { "ok" } else { "error" },
                started,
            );
            let page = page?;
            for u in page.uploads {
                let initiated = u.initiated.parse::<jiff::Timestamp>().map_err(|e| {
                    BucketError::Invalid(format!("Initiated {:?}: {e}", u.initiated))
                })?;
                out.push(OpenUpload {
                    key: u.key,
                    upload_id: u.upload_id,
                    initiated: SystemTime::from(initiated),
                });
            }
            if !page.is_truncated {
                return Ok(out);
            }
            key_marker = page.next_key_marker.unwrap_or_default();
            id_marker = page.next_upload_id_marker.unwrap_or_default();
            if key_marker.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Aborts the multipart uploads under `prefix` that were started more than `older_than` ago;
    /// returns how many.
    pub(super) async fn abort_stale_uploads(
        &self,
        prefix: &str,
        metrics: &BucketMetrics,
        older_than: Duration,
    ) -> Result<usize, BucketError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut aborted = 0;
        for u in self.open_uploads(prefix, metrics).await? {
            if u.initiated > cutoff {
                continue;
            }
            let action = rusty_s3::actions::AbortMultipartUpload::new(
                &self.bucket,
                Some(&self.credentials),
                &u.key,
                &u.upload_id,
            );
            let url = rusty_s3::S3Action::sign(&action, Duration::from_secs(300));
            let started = Instant::now();
            let res = self.http.delete(url).send().await;
            match res {
                // 404 NoSuchUpload: completed or aborted since the listing.
                Ok(r)
                    if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND =>
                {
                    metrics.record("abort", "ok", started);
                    metrics.aborts.with_label_values(&["stale"]).inc();
                    tracing::info!(key = %u.key, upload_id = %u.upload_id, "aborted a stale multipart upload");
                    aborted += 1;
                }
                Ok(r) => {
                    metrics.record("abort", "error", started);
                    return Err(BucketError::Http(format!(
                        "aborting {}: {}",
                        u.key,
                        r.status()
                    )));
                }
                Err(e) => {
                    metrics.record("abort", "error", started);
                    return Err(BucketError::Http(format!("aborting {}: {e}", u.key)));
                }
            }
        }
        Ok(aborted)
    }

    async fn list_uploads_page(
        &self,
        prefix: &str,
        key_marker: &str,
        id_marker: &str,
    ) -> Result<ListUploads, BucketError> {
        // `?uploads` has no rusty-s3 action: presign it with the crate's own signer. The query
        // must be sorted by name.
        let mut query = vec![("prefix", prefix), ("uploads", "")];
        if !key_marker.is_empty() {
            query.push(("key-marker", key_marker));
            query.push(("upload-id-marker", id_marker));
            query.sort();
        }
        let url = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            rusty_s3::Method::Get,
            self.bucket.base_url().clone(),
            self.credentials.key(),
            self.credentials.secret(),
            self.credentials.token(),
            self.bucket.region(),
            300,
            query.iter().copied(),
            std::iter::empty(),
        );
        let res = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| BucketError::Http(e.to_string()))?;
        let status = res.status();
        let text = res
            .text()
            .await
            .map_err(|e| BucketError::Http(e.to_string()))?;
        if !status.is_success() {
            return Err(BucketError::Http(format!(
                "ListMultipartUploads: {status}: {}",
                text.chars().take(200).collect::<String>()
            )));
        }
        quick_xml::de::from_str(&text)
            .map_err(|e| BucketError::Invalid(format!("ListMultipartUploads answer: {e}")))
    }
}

/// One page of `ListMultipartUploads`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListUploads {
    #[serde(default, rename = "Upload")]
    uploads: Vec<ListedUpload>,
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedUpload {
    key: String,
    upload_id: String,
    initiated: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_of_open_uploads_parses() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>berth</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>mirror/blobs/sha256/bb</NextKeyMarker><NextUploadIdMarker>2~x</NextUploadIdMarker>
  <Prefix>mirror/blobs/sha256/</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>mirror/blobs/sha256/aa</Key><UploadId>2~abc</UploadId>
    <Initiator><ID>testkey</ID><DisplayName>t</DisplayName></Initiator>
    <StorageClass>STANDARD</StorageClass><Initiated>2026-11-30T13:00:00.123Z</Initiated></Upload>
  <Upload><Key>mirror/blobs/sha256/bb</Key><UploadId>2~x</UploadId>
    <Initiated>2026-11-30T13:00:01.000Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page: ListUploads = quick_xml::de::from_str(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[0].upload_id, "2~abc");
        assert_eq!(
            page.next_key_marker.as_deref(),
            Some("mirror/blobs/sha256/bb")
        );
        let empty: ListUploads = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(empty.uploads.is_empty() && !empty.is_truncated);
    }
}
