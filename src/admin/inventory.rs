//! What an operation reads before it answers: every cached file (size, last access), every
//! cached manifest, what it references and whether it is an artifact (its `artifactType` and
//! `subject`, learnt from the same read), the tags, and the bucket's objects; and the closure and
//! totals over a set of digests that `ls` and `rm` decide by.
//!
//! Rule of dependency: a leaf of `admin`; uses `oci` (digests) and `manifests` (the tag record).
//! `cache` fills it in; it does no I/O itself.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use crate::manifests::TagRecord;
use crate::oci::Digest;

/// A cached file.
#[derive(Debug, Clone, Copy)]
pub(super) struct FileInfo {
    pub(super) size: u64,
    pub(super) mtime: Option<SystemTime>,
}

/// Everything on disk, read once per operation.
#[derive(Debug, Default)]
pub(super) struct Inventory {
    pub(super) blobs: HashMap<Digest, FileInfo>,
    /// Manifests with a recorded media type (their bytes may be missing), and what they reference.
    pub(super) manifests: HashMap<Digest, Vec<Digest>>,
    /// The cached manifests that are artifacts.
    pub(super) artifacts: HashMap<Digest, ArtifactInfo>,
    pub(super) tags: Vec<TagRecord>,
    /// What the bucket holds, with `[storage.s3]`.
    pub(super) bucket: Option<BucketInventory>,
}

/// The bucket's objects: size and last pull of each blob and manifest.
#[derive(Debug, Default)]
pub(super) struct BucketInventory {
    pub(super) blobs: HashMap<Digest, (u64, SystemTime)>,
    pub(super) manifests: HashMap<Digest, (u64, SystemTime)>,
}

impl BucketInventory {
    pub(super) fn has(&self, d: &Digest) -> bool {
        self.blobs.contains_key(d) || self.manifests.contains_key(d)
    }
}

/// Totals over a set of digests.
#[derive(Debug, Default)]
pub(super) struct Measure {
    pub(super) cached: u64,
    pub(super) bytes: u64,
    pub(super) not_cached: u64,
    pub(super) newest: Option<SystemTime>,
}

impl Inventory {
    /// `roots` and everything they reference, transitively through cached manifests.
    pub(super) fn closure<'d>(
        &self,
        roots: impl IntoIterator<Item = &'d Digest>,
    ) -> HashSet<Digest> {
        let mut seen = HashSet::new();
        let mut todo: Vec<Digest> = roots.into_iter().cloned().collect();
        while let Some(d) = todo.pop() {
            if let Some(refs) = self.manifests.get(&d) {
                todo.extend(refs.iter().filter(|r| !seen.contains(*r)).cloned());
            }
            seen.insert(d);
        }
        seen
    }

    pub(super) fn measure(&self, set: &HashSet<Digest>) -> Measure {
        let mut m = Measure::default();
        for d in set {
            match self.blobs.get(d) {
                Some(f) => {
                    m.cached += 1;
                    m.bytes += f.size;
                    m.newest = m.newest.max(f.mtime);
                }
                None => m.not_cached += 1,
            }
        }
        m
    }
}

/// What makes a manifest an artifact (OCI 1.1): its type, and what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ArtifactInfo {
    /// Its `artifactType`, or else its config's media type (the spec's rule for a referrers list).
    pub(super) artifact_type: String,
    /// The manifest its `subject` names (a signature's image, say), if any.
    pub(super) subject: Option<Digest>,
}

/// Config media types that make a manifest an image rather than an artifact.
const IMAGE_CONFIGS: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// A cached manifest as `ls` and `rm` see it, from one parse of its bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Read {
    pub(super) references: Vec<Digest>,
    pub(super) artifact: Option<ArtifactInfo>,
}

/// What a manifest references (see [`references`]) and whether it is an artifact: it has an
/// `artifactType`, or a config of another type than an image's (the empty config
/// `application/vnd.oci.empty.v1+json`, a Helm chart's, ...). Anything that does not parse
/// references nothing and is no artifact.
pub(super) fn read(bytes: &[u8]) -> Read {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Read::default();
    };
    let text = |x: &serde_json::Value, key: &str| x.get(key)?.as_str().map(str::to_owned);
    let artifact_type = text(&v, "artifactType").or_else(|| {
        v.get("config")
            .and_then(|c| text(c, "mediaType"))
            .filter(|t| !IMAGE_CONFIGS.contains(&t.as_str()))
    });
    Read {
        references: referenced(&v),
        artifact: artifact_type.map(|artifact_type| ArtifactInfo {
            artifact_type,
            subject: v
                .get("subject")
                .and_then(|s| s.get("digest")?.as_str()?.parse().ok()),
        }),
    }
}

/// The digests a manifest references: config, layers, child manifests (an index), `blobs`
/// (artifacts), `fsLayers` (schema 1). `subject` is not followed: the subject is another image,
/// not part of this one. Anything that does not parse references nothing.
pub fn references(bytes: &[u8]) -> Vec<Digest> {
    read(bytes).references
}

fn referenced(v: &serde_json::Value) -> Vec<Digest> {
    let digest = |x: &serde_json::Value, key: &str| x.get(key)?.as_str()?.parse::<Digest>().ok();
    let mut out: Vec<Digest> = v
        .get("config")
        .and_then(|c| digest(c, "digest"))
        .into_iter()
        .collect();
    for key in ["layers", "manifests", "blobs"] {
        if let Some(list) = v.get(key).and_then(|l| l.as_array()) {
            out.extend(list.iter().filter_map(|x| digest(x, "digest")));
        }
    }
    if let Some(list) = v.get("fsLayers").and_then(|l| l.as_array()) {
        out.extend(list.iter().filter_map(|x| digest(x, "blobSum")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_of_images_and_indexes() {
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let image = format!(
            r#"{{"config":{{"digest":"{a}"}},"layers":[{{"digest":"{b}"}},{{"digest":"bad"}}],"subject":{{"digest":"{c}"}}}}"#
        );
        assert_eq!(references(image.as_bytes()), vec![a.clone(), b.clone()]);
        let index = format!(r#"{{"manifests":[{{"digest":"{c}"}}]}}"#);
        assert_eq!(references(index.as_bytes()), vec![c]);
        let v1 = format!(r#"{{"fsLayers":[{{"blobSum":"{a}"}}]}}"#);
        assert_eq!(references(v1.as_bytes()), vec![a]);
        assert!(references(b"not json").is_empty());
    }

    #[test]
    fn artifacts_by_their_type_or_their_config() {
        let (c, s) = (Digest::of(b"c"), Digest::of(b"s"));
        let of = |json: String| read(json.as_bytes()).artifact;
        // artifactType wins; the subject is kept.
        let sig = of(format!(
            r#"{{"artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{c}"}},"layers":[],"subject":{{"digest":"{s}"}}}}"#
        ))
        .unwrap();
        assert_eq!(
            sig.artifact_type,
            "application/vnd.dev.sigstore.bundle.v0.3+json"
        );
        assert_eq!(sig.subject, Some(s.clone()));
        // No artifactType: a config that is no image's names the type.
        let chart = of(format!(
            r#"{{"config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"{c}"}},"layers":[]}}"#
        ))
        .unwrap();
        assert_eq!(
            (chart.artifact_type.as_str(), chart.subject),
            ("application/vnd.cncf.helm.config.v1+json", None)
        );
        // An index with an artifactType is one too.
        assert!(of(r#"{"artifactType":"a/b","manifests":[]}"#.into()).is_some());
        // Images (OCI, Docker), indexes and what does not parse are not.
        for image in [
            format!(
                r#"{{"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}"}},"layers":[],"subject":{{"digest":"{s}"}}}}"#
            ),
            format!(
                r#"{{"config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{c}"}},"layers":[]}}"#
            ),
            format!(r#"{{"manifests":[{{"digest":"{c}"}}]}}"#),
            "not json".into(),
        ] {
            assert_eq!(of(image.clone()), None, "{image}");
        }
    }
}
