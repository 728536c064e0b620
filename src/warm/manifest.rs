//! The manifest walk: a reference to every manifest it takes (their digests too) and the blobs
//! they name. An index is followed to its children (every platform, or those `--platform` asked
//! for), depth first and side by side; an image manifest gives its config and layers (schema 2
//! and OCI, artifacts with any config too), an OCI 1.1 release candidate's artifact manifest its
//! `blobs`, a schema 1 manifest its `fsLayers`. Blobs come out once each, in manifest order.
//!
//! Rule of dependency: uses `client` (to fetch each manifest), `reference` and `failure` from
//! `warm`; from the crate only `oci` (digests, media types). It knows nothing of blobs' transfer
//! or of the display.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use futures_util::future::join_all;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::client::Berth;
use super::failure::Failure;
use super::reference::ImageRef;
use crate::oci::{Digest, Reference, media};

/// Indexes inside indexes are followed this deep.
const MAX_DEPTH: usize = 4;

/// `os/arch[/variant]`, as `docker pull --platform` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                arch: arch.to_ascii_lowercase(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                arch: arch.to_ascii_lowercase(),
                variant: Some(variant.to_ascii_lowercase()),
            }),
            _ => Err(format!(
                "{s:?} is not a platform (os/arch or os/arch/variant)"
            )),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Does an index entry's platform match? A variant is only compared when one was asked for.
    fn matches(&self, p: &PlatformDoc) -> bool {
        p.os.eq_ignore_ascii_case(&self.os)
            && p.architecture.eq_ignore_ascii_case(&self.arch)
            && self.variant.as_ref().is_none_or(|v| {
                p.variant
                    .as_deref()
                    .is_some_and(|pv| pv.eq_ignore_ascii_case(v))
            })
    }
}

/// A blob an image needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Digest,
    /// From the descriptor; schema 1 manifests give none.
    pub size: Option<u64>,
}

/// A reference resolved to every manifest it takes.
#[derive(Debug, Default)]
pub struct Resolved {
    pub manifests: usize,
    /// Without repeats, in manifest order.
    pub blobs: Vec<BlobRef>,
    /// The digests of the manifests fetched, the reference's own first, then each child of an
    /// index (depth first): the subjects whose referrers `--referrers` lists.
    pub digests: Vec<Digest>,
    /// Referrers added by `referrers` (their manifests are in `manifests`, their blobs in
    /// `blobs`).
    pub referrers: usize,
    /// Each blob that only a referrer needs, with that referrer: a failure names it.
    pub via: HashMap<Digest, Digest>,
}

/// One run's walk: where the manifests come from, how many requests at once, which platforms.
pub struct Walker<'a> {
    pub berth: &'a Berth,
    /// Bounds manifest requests while references resolve side by side.
    pub limit: &'a Semaphore,
    /// Only these platforms of an index; empty: every platform.
    pub platforms: &'a [Platform],
}

impl Walker<'_> {
    /// Every manifest `r` takes, and the blobs they name.
    pub async fn resolve(&self, r: &ImageRef) -> Result<Resolved, Failure> {
        self.resolve_at(r, r.reference.clone()).await
    }

    /// Every manifest `reference` (in `r`'s repository) takes, and the blobs they name.
    pub async fn resolve_at(
        &self,
        r: &ImageRef,
        reference: Reference,
    ) -> Result<Resolved, Failure> {
        let mut out = Resolved::default();
        let mut seen = HashSet::new();
        self.walk(r, reference, 0, &mut out, &mut seen).await?;
        Ok(out)
    }

    /// Fetches one manifest; for an index, every (matching) child, depth first.
    fn walk<'a>(
        &'a self,
        r: &'a ImageRef,
        reference: Reference,
        depth: usize,
        out: &'a mut Resolved,
        seen: &'a mut HashSet<Digest>,
    ) -> futures_util::future::BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            // The image's own manifest needs no label in "failed <ref>: ..."; a child does.
            let what = match (&reference, depth) {
                (_, 0) => None,
                (reference, _) => Some(format!("platform manifest {reference}")),
            };
            let label = |e: Failure| match &what {
                Some(w) => e.context(w),
                None => e,
            };
            let (digest, parsed) = {
                let _permit = self.limit.acquire().await.expect("never closed");
                self.fetch_manifest(r, &reference).await.map_err(label)?
            };
            out.manifests += 1;
            out.digests.push(digest);
            match parsed {
                Parsed::Image(blobs) => {
                    for b in blobs {
                        if seen.insert(b.digest.clone()) {
                            out.blobs.push(b);
                        }
                    }
                    Ok(())
                }
                Parsed::Index(children) => {
                    if depth >= MAX_DEPTH {
                        return Err(label(Failure::new(format!(
                            "indexes nested deeper than {MAX_DEPTH}"
                        ))));
                    }
                    let mut picked = pick_children(&children, self.platforms).map_err(label)?;
                    // An index naming one child twice costs one fetch.
                    let mut once = HashSet::new();
                    picked.retain(|d| once.insert(d.clone()));
                    // Children side by side (the semaphore bounds them), merged in index order.
                    let fetched = join_all(picked.into_iter().map(|d| async move {
                        let mut sub = Resolved::default();
                        let mut sub_seen = HashSet::new();
                        let res = self
                            .walk(r, Reference::Digest(d), depth + 1, &mut sub, &mut sub_seen)
                            .await;
                        res.map(|()| sub)
                    }))
                    .await;
                    for sub in fetched {
                        let sub = sub?;
                        out.manifests += sub.manifests;
                        out.digests.extend(sub.digests);
                        for b in sub.blobs {
                            if seen.insert(b.digest.clone()) {
                                out.blobs.push(b);
                            }
                        }
                    }
                    Ok(())
                }
            }
        })
    }

    async fn fetch_manifest(
        &self,
        r: &ImageRef,
        reference: &Reference,
    ) -> Result<(Digest, Parsed), Failure> {
        let (bytes, content_type) = self.berth.fetch_manifest(r, reference).await?;
        let parsed = parse_manifest(&bytes, content_type.as_deref())?;
        Ok((Digest::of(&bytes), parsed))
    }
}

#[derive(Debug, Deserialize)]
struct ManifestDoc {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    /// The artifact manifest of the OCI 1.1 release candidates: blobs, no config.
    blobs: Option<Vec<Descriptor>>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<Vec<FsLayer>>,
}

#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    digest: String,
    size: Option<u64>,
    platform: Option<PlatformDoc>,
}

#[derive(Debug, Clone, Deserialize)]
struct PlatformDoc {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
}

impl fmt::Display for PlatformDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct FsLayer {
    #[serde(rename = "blobSum")]
    blob_sum: String,
}

/// What a manifest asks for next.
#[derive(Debug)]
enum Parsed {
    /// An image: its config (schema 2 / OCI) and layers.
    Image(Vec<BlobRef>),
    /// An index or manifest list: its entries.
    Index(Vec<Descriptor>),
}

fn parse_manifest(body: &[u8], content_type: Option<&str>) -> Result<Parsed, Failure> {
    let doc: ManifestDoc =
        serde_json::from_slice(body).map_err(|e| Failure::new(format!("not a manifest: {e}")))?;
    let media_type = doc
        .media_type
        .as_deref()
        .or(content_type)
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let digest = |s: &str| {
        s.parse::<Digest>()
            .map_err(|e| Failure::new(e.detail.unwrap_or(e.message)))
    };
    if let Some(entries) = doc.manifests {
        return Ok(Parsed::Index(entries));
    }
    if media_type == media::OCI_INDEX || media_type == media::DOCKER_MANIFEST_LIST {
        return Err(Failure::new("an index without a manifests list"));
    }
    let parts = match (doc.layers, doc.config, doc.blobs) {
        (Some(layers), Some(config), _) => Some((Some(config), layers)),
        (Some(_), None, _) => return Err(Failure::new("an image manifest without a config")),
        (None, _, Some(blobs)) => Some((None, blobs)),
        (None, _, None) => None,
    };
    if let Some((config, layers)) = parts {
        let mut blobs = Vec::with_capacity(layers.len() + 1);
        for d in config.into_iter().chain(layers) {
            // Foreign (non-distributable) layers come from elsewhere, never from a registry.
            if d.media_type
                .as_deref()
                .is_some_and(|m| m.contains("foreign") || m.contains("nondistributable"))
            {
                continue;
            }
            blobs.push(BlobRef {
                digest: digest(&d.digest)?,
                size: d.size,
            });
        }
        return Ok(Parsed::Image(blobs));
    }
    if let Some(fs) = doc.fs_layers
        && doc.schema_version == Some(1)
    {
        let mut blobs: Vec<BlobRef> = Vec::new();
        for l in fs {
            let d = digest(&l.blob_sum)?;
            if !blobs.iter().any(|b| b.digest == d) {
                blobs.push(BlobRef {
                    digest: d,
                    size: None,
                });
            }
        }
        return Ok(Parsed::Image(blobs));
    }
    Err(Failure::new(format!(
        "neither an image manifest nor an index (media type {:?})",
        media_type
    )))
}

/// The index entries to fetch: every manifest, or those matching one of `platforms`.
fn pick_children(entries: &[Descriptor], platforms: &[Platform]) -> Result<Vec<Digest>, Failure> {
    let manifest_types = [
        media::OCI_MANIFEST,
        media::OCI_INDEX,
        media::DOCKER_MANIFEST,
        media::DOCKER_MANIFEST_LIST,
        media::DOCKER_MANIFEST_V1,
        media::DOCKER_MANIFEST_V1_SIGNED,
    ];
    let mut picked = Vec::new();
    for e in entries {
        if e.media_type
            .as_deref()
            .is_some_and(|m| !manifest_types.contains(&m))
        {
            continue; // an artifact berth would not serve as a manifest
        }
        let wanted = platforms.is_empty()
            || e.platform
                .as_ref()
                .is_some_and(|p| platforms.iter().any(|w| w.matches(p)));
        if wanted {
            let d = e
                .digest
                .parse::<Digest>()
                .map_err(|err| Failure::new(err.detail.unwrap_or(err.message)))?;
            if !picked.contains(&d) {
                picked.push(d);
            }
        }
    }
    if picked.is_empty() && !platforms.is_empty() {
        let has: Vec<String> = entries
            .iter()
            .filter_map(|e| e.platform.as_ref().map(ToString::to_string))
            .collect();
        let want: Vec<String> = platforms.iter().map(ToString::to_string).collect();
        return Err(Failure::new(format!(
            "no manifest for {} in the index (it has {})",
            want.join(", "),
            if has.is_empty() {
                "none with a platform".into()
            } else {
                has.join(", ")
            }
        )));
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn platforms() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        let doc = |os: &str, arch: &str, v: Option<&str>| PlatformDoc {
            os: os.into(),
            architecture: arch.into(),
            variant: v.map(Into::into),
        };
        assert!(p.matches(&doc("linux", "arm64", Some("v8"))));
        assert!(!p.matches(&doc("linux", "arm64", None)));
        let p: Platform = "linux/amd64".parse().unwrap();
        assert!(p.matches(&doc("linux", "amd64", None)));
        assert!(p.matches(&doc("linux", "amd64", Some("v3"))));
        assert!(!p.matches(&doc("windows", "amd64", None)));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn manifests_and_indexes() {
        let (c, l1, l2) = (hex('c'), hex('1'), hex('2'));
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"digest":"sha256:{c}","size":3}},"layers":[{{"digest":"sha256:{l1}","size":10}},{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"sha256:{l2}","size":5}}]}}"#,
            media::DOCKER_MANIFEST
        );
        let Parsed::Image(blobs) = parse_manifest(image.as_bytes(), None).unwrap() else {
            panic!("an image")
        };
        assert_eq!(blobs.len(), 2, "foreign layer skipped");
        assert_eq!(
            (blobs[0].digest.hex(), blobs[0].size),
            (c.as_str(), Some(3))
        );

        let v1 = format!(
            r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"sha256:{l1}"}},{{"blobSum":"sha256:{l1}"}},{{"blobSum":"sha256:{l2}"}}]}}"#
        );
        let Parsed::Image(blobs) =
            parse_manifest(v1.as_bytes(), Some(media::DOCKER_MANIFEST_V1_SIGNED)).unwrap()
        else {
            panic!("an image")
        };
        assert_eq!(
            blobs.iter().map(|b| b.size).collect::<Vec<_>>(),
            vec![None, None]
        );

        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{m}","digest":"sha256:{l1}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"{m}","digest":"sha256:{l2}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},{{"mediaType":"application/vnd.example.sbom","digest":"sha256:{c}","size":1}}]}}"#,
            m = media::OCI_MANIFEST
        );
        let Parsed::Index(entries) =
            parse_manifest(index.as_bytes(), Some(media::OCI_INDEX)).unwrap()
        else {
            panic!("an index")
        };
        let all = pick_children(&entries, &[]).unwrap();
        assert_eq!(all.len(), 2, "the artifact is skipped");
        let arm = pick_children(&entries, &["linux/arm64".parse().unwrap()]).unwrap();
        assert_eq!(arm.len(), 1);
        assert_eq!(arm[0].hex(), l2);
        let e = pick_children(&entries, &["linux/s390x".parse().unwrap()]).unwrap_err();
        assert!(
            e.0.contains("linux/s390x") && e.0.contains("linux/arm64/v8"),
            "{e}"
        );
    }

    #[test]
    fn artifacts_give_their_config_and_layers_or_their_blobs() {
        let (c, l1) = (hex('c'), hex('1'));
        // An OCI 1.1 artifact: the empty config, any layer type, a subject (not followed).
        let sig = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:{c}","size":2}},"layers":[{{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","digest":"sha256:{l1}","size":9}}],"subject":{{"mediaType":"{}","digest":"sha256:{}","size":5}}}}"#,
            media::OCI_MANIFEST,
            media::OCI_MANIFEST,
            hex('s')
        );
        let Parsed::Image(blobs) = parse_manifest(sig.as_bytes(), None).unwrap() else {
            panic!("an image manifest")
        };
        let got: Vec<&str> = blobs.iter().map(|b| b.digest.hex()).collect();
        assert_eq!(got, vec![c.as_str(), l1.as_str()]);
        // The artifact manifest of the 1.1 release candidates: blobs, no config.
        let rc = format!(
            r#"{{"mediaType":"application/vnd.oci.artifact.manifest.v1+json","artifactType":"application/spdx+json","blobs":[{{"mediaType":"application/spdx+json","digest":"sha256:{l1}","size":4}}]}}"#
        );
        let Parsed::Image(blobs) = parse_manifest(rc.as_bytes(), None).unwrap() else {
            panic!("an artifact manifest")
        };
        assert_eq!((blobs.len(), blobs[0].size), (1, Some(4)));
    }

    #[test]
    fn bad_manifests() {
        for (body, why) in [
            ("not json".to_owned(), "not a manifest"),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#
                    .to_owned(),
                "without a manifests list",
            ),
            (
                r#"{"schemaVersion":2,"layers":[]}"#.to_owned(),
                "without a config",
            ),
            (
                r#"{"schemaVersion":2,"config":{"digest":"sha256:x","size":1},"layers":[]}"#
                    .to_owned(),
                "sha256 digest",
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.example"}"#.to_owned(),
                "neither",
            ),
        ] {
            let e = parse_manifest(body.as_bytes(), None).unwrap_err();
            assert!(e.0.contains(why), "{body}: {e}");
        }
    }
}
