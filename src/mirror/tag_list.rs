//! Tag lists: passed through from the upstream, but only as what they should be (re-encoded, the
//! strings that are no tag left out), their next-page `Link` kept on the registry API, and a page
//! of none answered without asking.
//!
//! Rule of dependency: uses `upstream`, `oci`, `error` and its parent's `Mirror`.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};

use super::{Mirror, Target};
use crate::error::Error;
use crate::oci::{RepoName, Tag};
use crate::upstream::{NotFoundKind, UpstreamRequest};

/// Largest tag list passed through.
const MAX_TAGS_BYTES: usize = 8 * 1024 * 1024;

/// A tag list answer, passed through.
pub struct TagsReply {
    pub content_type: Option<HeaderValue>,
    pub link: Option<HeaderValue>,
    pub body: Bytes,
}

impl Mirror {
    /// A tag list, passed through from the upstream.
    pub async fn tags(
        &self,
        target: &Target,
        n: Option<u32>,
        last: Option<&Tag>,
    ) -> Result<TagsReply, Error> {
        if n == Some(0) {
            // The spec's answer to a page of none: an empty list and no next page. Upstreams
            // disagree (some treat 0 as "no limit" and send tags), so it is not asked.
            let body = serde_json::json!({ "name": target.name.as_str(), "tags": [] });
            return Ok(TagsReply {
                content_type: Some(HeaderValue::from_static("application/json")),
                link: None,
                body: Bytes::from(body.to_string()),
            });
        }
        let up = &self.upstream(target.upstream)?;
        let query = {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(n) = n {
                q.append_pair("n", &n.to_string());
            }
            if let Some(last) = last {
                q.append_pair("last", last.as_str());
            }
            q.finish()
        };
        let mut path = format!("/v2/{}/tags/list", target.name);
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        let resp = up
            .send(UpstreamRequest {
                method: Method::GET,
                path_and_query: path,
                headers: HeaderMap::new(),
                repository: Some(target.name.clone()),
            })
            .await?;
        let resp = resp.error_for_status(NotFoundKind::Repository).await?;
        let link = resp
            .headers
            .get(header::LINK)
            .and_then(|v| next_page(v, &up.config().url));
        let body = resp.bytes(MAX_TAGS_BYTES).await?;
        let body = tag_list(&body, &target.name).ok_or_else(|| {
            Error::upstream_bad(
                up.name(),
                "tag list is not a JSON object with a name and a list of tags",
            )
        })?;
        Ok(TagsReply {
            content_type: Some(HeaderValue::from_static("application/json")),
            link,
            body,
        })
    }
}

/// An upstream's tag list, passed on only as what it should be: `{"name": ..., "tags": [...]}`,
/// re-encoded by berth, with the strings that are no valid tag left out (a client never parses
/// what a hostile upstream chose to send). `None` if it is not such an object.
fn tag_list(body: &[u8], asked: &RepoName) -> Option<Bytes> {
    #[derive(serde::Deserialize)]
    struct Upstream {
        name: String,
        tags: Option<Vec<String>>,
    }
    #[derive(serde::Serialize)]
    struct List<'a> {
        name: &'a str,
        tags: Vec<&'a str>,
    }
    let got: Upstream = serde_json::from_slice(body).ok()?;
    let name = match got.name.parse::<RepoName>() {
        Ok(_) => got.name.as_str(),
        Err(_) => asked.as_str(),
    };
    let tags = got
        .tags
        .iter()
        .flatten()
        .filter(|t| t.parse::<Tag>().is_ok())
        .map(String::as_str)
        .collect();
    serde_json::to_vec(&List { name, tags })
        .ok()
        .map(Bytes::from)
}

/// The next page of a tag list, as a `Link` header berth passes on: only a link back into the
/// registry API (`</v2/...>; rel="next"`, or the same with the upstream's own origin, made
/// relative), so an upstream cannot send clients anywhere else.
fn next_page(link: &HeaderValue, upstream: &url::Url) -> Option<HeaderValue> {
    let path = next_path(link, upstream)?;
    HeaderValue::from_str(&format!("<{path}>; rel=\"next\"")).ok()
}

/// The path and query of a `Link` header's next page, if it stays on the upstream's registry API
/// (see [`next_page`]).
pub(super) fn next_path(link: &HeaderValue, upstream: &url::Url) -> Option<String> {
    let text = link.to_str().ok()?.trim();
    let (target, params) = text.strip_prefix('<')?.split_once('>')?;
    if !params
        .split(';')
        .any(|p| p.trim().replace(' ', "") == "rel=\"next\"")
    {
        return None;
    }
    let path = match target.strip_prefix('/') {
        Some(_) => target.to_owned(),
        None => {
            let abs = url::Url::parse(target).ok()?;
            if abs.origin() != upstream.origin() {
                return None;
            }
            match abs.query() {
                Some(q) => format!("{}?{q}", abs.path()),
                None => abs.path().to_owned(),
            }
        }
    };
    // `//host/...` is a network-path reference: another host after all.
    if !path.starts_with("/v2/") || path.contains("//") || path.contains(['<', '>', '\\']) {
        return None;
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists_are_re_encoded() {
        let asked: RepoName = "library/app".parse().unwrap();
        let got = tag_list(
            br#"{"name":"library/app","tags":["1.0","latest","bad tag","<script>",""],"extra":1}"#,
            &asked,
        )
        .unwrap();
        assert_eq!(
            &got[..],
            br#"{"name":"library/app","tags":["1.0","latest"]}"#
        );
        // A null list (Distribution, for a repository without tags) is an empty one; a name that
        // is no repository name is replaced by the one asked for.
        let got = tag_list(br#"{"name":"Not A Name","tags":null}"#, &asked).unwrap();
        assert_eq!(&got[..], br#"{"name":"library/app","tags":[]}"#);
        for bad in [
            &b"<html>"[..],
            b"[]",
            br#"{"tags":[]}"#,
            br#"{"name":"a","tags":"x"}"#,
        ] {
            assert_eq!(
                tag_list(bad, &asked),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn next_page_links_stay_on_the_registry_api() {
        let up: url::Url = "https://registry.example:5000".parse().unwrap();
        let link = |s: &str| next_page(&HeaderValue::from_str(s).unwrap(), &up);
        let want = r#"</v2/app/tags/list?last=b&n=2>; rel="next""#;
        assert_eq!(
            link(r#"</v2/app/tags/list?last=b&n=2>; rel="next""#).unwrap(),
            want
        );
        assert_eq!(
            link(r#"<https://registry.example:5000/v2/app/tags/list?last=b&n=2>;rel="next""#)
                .unwrap(),
            want
        );
        for bad in [
            r#"<https://evil.example/v2/app/tags/list>; rel="next""#,
            r#"<//evil.example/v2/app/tags/list>; rel="next""#,
            r#"</v2/app/tags/list>; rel="prev""#,
            r#"</elsewhere>; rel="next""#,
            r#"</v2//evil>; rel="next""#,
            "garbage",
        ] {
            assert_eq!(link(bad), None, "{bad}");
        }
    }
}
