//! The referrers list of OCI distribution 1.1: for a subject digest, an image index whose
//! descriptors name the manifests that point at it with their `subject` (signatures, SBOMs,
//! attestations), each with its `artifactType` and `annotations`.
//!
//! An upstream's list (from its referrers API, or from the index a client pushed under the
//! referrers tag schema's `sha256-<hex>` tag) is only ever passed on as berth re-encodes it: an
//! image index of descriptors that parsed, each reduced to the five fields a referrer descriptor
//! has (`mediaType`, `digest`, `size`, `artifactType`, `annotations`). A client never parses what
//! a hostile upstream chose to send, and a descriptor berth cannot name (another digest
//! algorithm, no media type) is left out. The list is descriptors, not content: berth does not
//! fetch the referrers to check their `subject` (a verifying client does, and the referrers
//! themselves are verified by digest when pulled).
//!
//! Rule of dependency: a leaf under `oci` (uses its parent's `Digest`, `Tag` and media types).

use std::collections::BTreeMap;

use super::{Digest, Tag, media};

/// Longest `artifactType` accepted in a filter (media types are at most 255 characters).
pub const MAX_ARTIFACT_TYPE: usize = 255;

/// One referrer: a manifest whose `subject` is the digest asked about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The tag under which the referrers tag schema keeps `subject`'s list: `<alg>-<hex>`.
pub fn fallback_tag(subject: &Digest) -> Tag {
    Tag(format!("{}-{}", Digest::ALGORITHM, subject.hex()))
}

/// Whether `s` is shaped like a media type (`type/subtype`, the characters RFC 6838 allows,
/// parameters refused): the only `artifactType` filter berth passes on or applies.
pub fn is_media_type(s: &str) -> bool {
    let Some((ty, sub)) = s.split_once('/') else {
        return false;
    };
    let part = |p: &str| {
        !p.is_empty()
            && p.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
    };
    s.len() <= MAX_ARTIFACT_TYPE && part(ty) && part(sub)
}

/// The descriptors of an image index (`manifests`), each reduced to a referrer's fields; those
/// that are no valid descriptor are left out. `None` if `body` is not a JSON object with a
/// `manifests` list (a null or missing list is an empty one, as some registries send for none).
pub fn parse(body: &[u8]) -> Option<Vec<Descriptor>> {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Option<Vec<serde_json::Value>>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    let index: Index = serde_json::from_slice(body).ok()?;
    if index.schema_version.is_some_and(|v| v != 2) {
        return None;
    }
    Some(
        index
            .manifests
            .unwrap_or_default()
            .into_iter()
            .filter_map(descriptor)
            .collect(),
    )
}

/// One descriptor, if it is one: a media type, a sha256 digest, a size; the optional fields kept
/// only when they are of the right shape (a wrong `annotations` drops the annotations, not the
/// referrer).
fn descriptor(v: serde_json::Value) -> Option<Descriptor> {
    let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
    let media_type = field("mediaType").filter(|t| is_media_type(t))?.to_owned();
    let digest: Digest = field("digest")?.parse().ok()?;
    let size = v.get("size")?.as_u64()?;
    let artifact_type = field("artifactType")
        .filter(|t| is_media_type(t))
        .map(str::to_owned);
    let annotations = v
        .get("annotations")
        .and_then(|a| serde_json::from_value::<BTreeMap<String, String>>(a.clone()).ok());
    Some(Descriptor {
        media_type,
        digest: digest.to_string(),
        size,
        artifact_type,
        annotations,
    })
}

/// Keeps the referrers whose `artifactType` is `artifact_type`.
pub fn filter(list: &mut Vec<Descriptor>, artifact_type: &str) {
    list.retain(|d| d.artifact_type.as_deref() == Some(artifact_type));
}

/// The answer a client gets: an OCI image index of `list`, in order.
pub fn encode(list: &[Descriptor]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Index<'a> {
        schema_version: u32,
        media_type: &'static str,
        manifests: &'a [Descriptor],
    }
    serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: media::OCI_INDEX,
        manifests: list,
    })
    .expect("an index of strings and numbers serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn lists_are_re_encoded_with_the_referrer_fields_only() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{idx}","manifests":[
                {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","size":7,
                  "artifactType":"application/vnd.example.sbom","annotations":{{"a":"b"}},
                  "platform":{{"os":"linux"}},"urls":["http://evil"]}},
                {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha512:abc","size":1}},
                {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","size":-1}},
                {{"digest":"{D}","size":1}},
                {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","size":3,
                  "artifactType":"not a type","annotations":{{"n":1}}}}
            ],"annotations":{{"x":"y"}}}}"#,
            idx = media::OCI_INDEX
        );
        let list = parse(body.as_bytes()).unwrap();
        assert_eq!(list.len(), 2, "{list:?}");
        assert_eq!(
            list[0].artifact_type.as_deref(),
            Some("application/vnd.example.sbom")
        );
        assert_eq!(list[1].artifact_type, None);
        assert_eq!(list[1].annotations, None);
        let out = String::from_utf8(encode(&list)).unwrap();
        assert_eq!(
            out,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","size":7,"artifactType":"application/vnd.example.sbom","annotations":{{"a":"b"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","size":3}}]}}"#,
                media::OCI_INDEX
            )
        );
        // What re-encodes parses back to itself.
        assert_eq!(parse(out.as_bytes()).unwrap(), list);
    }

    #[test]
    fn what_is_no_index_is_refused_and_none_is_empty() {
        for bad in [
            &b"<html>"[..],
            b"[]",
            b"",
            br#"{"schemaVersion":1,"manifests":[]}"#,
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            parse(br#"{"schemaVersion":2,"manifests":null}"#),
            Some(vec![])
        );
        assert_eq!(parse(b"{}"), Some(vec![]));
        assert_eq!(
            String::from_utf8(encode(&[])).unwrap(),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
                media::OCI_INDEX
            )
        );
    }

    #[test]
    fn filters_keep_one_artifact_type() {
        let d = |t: Option<&str>| Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: D.into(),
            size: 1,
            artifact_type: t.map(str::to_owned),
            annotations: None,
        };
        let mut list = vec![d(Some("a/b")), d(None), d(Some("a/c")), d(Some("a/b"))];
        filter(&mut list, "a/b");
        assert_eq!(list, vec![d(Some("a/b")), d(Some("a/b"))]);
    }

    #[test]
    fn media_types_and_the_fallback_tag() {
        for good in [
            "application/vnd.dev.sigstore.bundle.v0.3+json",
            "application/vnd.oci.empty.v1+json",
            "text/spdx",
        ] {
            assert!(is_media_type(good), "{good}");
        }
        for bad in [
            "",
            "a",
            "a/",
            "/b",
            "a/b;c=d",
            "a/b c",
            "a/b/c",
            &"a/".repeat(200),
        ] {
            assert!(!is_media_type(bad), "{bad}");
        }
        let subject: Digest = D.parse().unwrap();
        let tag = fallback_tag(&subject);
        assert_eq!(
            tag.as_str(),
            "sha256-e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // The schema's tag is a valid tag (128 characters at most).
        assert_eq!(tag.as_str().parse::<Tag>().unwrap(), tag);
    }
}
