//! The response builders of the registry routes: a mirror reply (manifest, blob, tag list,
//! referrers) or a
//! small body becomes a `Response` with the headers clients expect (`Content-Type`,
//! `Content-Length`, `Docker-Content-Digest`, `ETag`, `Content-Range`, `Link`).
//!
//! Rule of dependency: uses the `mirror`'s replies and `Target`, `oci` (the media types) and the
//! parent's [`Body`]; the parent `http` (dispatch) and its [`error`](super::error) (error bodies)
//! use it. It decides no status of an error and sees no request.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};

use super::Body;
use crate::mirror::{BlobReply, ManifestReply, ReferrersReply, TagsReply, Target, Via};

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(super) fn empty(status: StatusCode, _head: bool) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// A body for GET, or the headers alone for HEAD (with the `Content-Length` GET would have).
pub(super) fn bytes_response(
    status: StatusCode,
    bytes: Bytes,
    content_type: &str,
    head: bool,
) -> Response<Body> {
    let len = bytes.len();
    let mut r = Response::new(full(if head { Bytes::new() } else { bytes }));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

pub(super) fn manifest_response(reply: ManifestReply, head: bool) -> Response<Body> {
    let m = &reply.manifest;
    let len = m.bytes.len();
    let mut r = Response::new(full(if head { Bytes::new() } else { m.bytes.clone() }));
    let h = r.headers_mut();
    h.reserve(6);
    if let Some(v) = media_type_value(&m.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // One buffer holds `"sha256:<hex>"`: the ETag, and without its quotes the digest header.
    let etag = Bytes::from(format!("\"{}\"", m.digest));
    let digest = etag.slice(1..etag.len() - 1);
    if let (Ok(etag), Ok(digest)) = (
        HeaderValue::from_maybe_shared(etag),
        HeaderValue::from_maybe_shared(digest),
    ) {
        h.insert(DOCKER_CONTENT_DIGEST, digest);
        h.insert(header::ETAG, etag);
    }
    if reply.stale.is_some() {
        h.insert(header::WARNING, HeaderValue::from_static(STALE_WARNING));
    }
    r
}

/// The `Warning` of an answer served stale.
const STALE_WARNING: &str = "110 berth \"Response is stale: upstream unavailable\"";

const DOCKER_CONTENT_DIGEST: header::HeaderName =
    header::HeaderName::from_static("docker-content-digest");

/// The `Content-Type` of a manifest: the media types clients pull are static values (no copy).
fn media_type_value(media_type: &str) -> Option<HeaderValue> {
    use crate::oci::media;
    Some(match media_type {
        media::OCI_MANIFEST => HeaderValue::from_static(media::OCI_MANIFEST),
        media::OCI_INDEX => HeaderValue::from_static(media::OCI_INDEX),
        media::DOCKER_MANIFEST => HeaderValue::from_static(media::DOCKER_MANIFEST),
        media::DOCKER_MANIFEST_LIST => HeaderValue::from_static(media::DOCKER_MANIFEST_LIST),
        other => return HeaderValue::from_str(other).ok(),
    })
}

pub(super) fn blob_response(reply: BlobReply) -> Response<Body> {
    let body = match reply.body {
        Some(stream) => {
            StreamBody::new(futures_util::StreamExt::map(stream, |r| r.map(Frame::data)))
                .boxed_unsync()
        }
        None => full(Bytes::new()),
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&reply.digest.to_string()) {
        h.insert("docker-content-digest", v.clone());
        h.insert(
            header::ETAG,
            HeaderValue::from_str(&format!("\"{}\"", reply.digest)).unwrap_or(v),
        );
    }
    match (reply.range, reply.total) {
        (Some((start, end)), Some(total)) => {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{total}", end - 1)) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        (_, Some(total)) => {
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
        }
        // Unknown size (an upstream that sent none): chunked, so a failed fill still ends short.
        _ => {}
    }
    r
}

/// A referrers list: an image index, with `OCI-Filters-Applied` when it is filtered.
pub(super) fn referrers_response(reply: ReferrersReply, head: bool) -> Response<Body> {
    let mut r = bytes_response(
        StatusCode::OK,
        reply.body,
        crate::oci::media::OCI_INDEX,
        head,
    );
    let h = r.headers_mut();
    if reply.filtered {
        h.insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    if reply.stale.is_some() {
        h.insert(header::WARNING, HeaderValue::from_static(STALE_WARNING));
    }
    r
}

pub(super) fn tags_response(reply: TagsReply, target: &Target, head: bool) -> Response<Body> {
    let content_type = reply
        .content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let mut r = bytes_response(StatusCode::OK, reply.body, &content_type, head);
    if let Some(link) = reply.link {
        // The upstream's next-page link names its own path; a client that used a path prefix
        // needs the prefix back to stay on berth.
        let link = match (&target.via, link.to_str()) {
            (Via::Prefix(p), Ok(l)) if l.starts_with("</v2/") => {
                HeaderValue::from_str(&l.replacen("</v2/", &format!("</v2/{p}/"), 1))
                    .unwrap_or(link)
            }
            _ => link,
        };
        r.headers_mut().insert(header::LINK, link);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_media_types_become_header_values() {
        use crate::oci::media;
        for t in [
            media::OCI_MANIFEST,
            media::OCI_INDEX,
            media::DOCKER_MANIFEST,
            media::DOCKER_MANIFEST_LIST,
            "application/vnd.example+json",
        ] {
            assert_eq!(media_type_value(t).unwrap(), t);
        }
        assert!(media_type_value("bad\nvalue").is_none());
    }
}
