//! Signature policy (`[[policy]]`): which manifests must carry a signature that verifies under
//! the operator's keys or trusted identities before berth serves them, and the verdicts.
//!
//! - A policy covers a scope: upstreams by name (or all) and repository globs (`*` matches any
//!   run of characters, `/` included: a glob too broad covers more, never less). The first
//!   policy whose scope matches a request applies.
//! - A manifest (or index) answered through a covered scope needs a signature of its digest that
//!   verifies under one of the policy's keys (`keys`), or keyless under its pinned Sigstore
//!   trusted root for one of its identities (`keyless`: a Fulcio certificate and a Rekor entry,
//!   offline): a layer of cosign's `sha256-<hex>.sig` manifest in the same repository whose
//!   simple-signing payload claims the digest (`cosign`), or a Sigstore bundle among its
//!   referrers whose DSSE envelope holds an in-toto statement about the digest, or whose message
//!   signature is over a simple-signing payload claiming it, carried beside the bundle in the
//!   same referrer (`bundle`).
//!   [`decide`] is that rule, pure; the mirror fetches the material (as content like any other:
//!   verified by digest, cached, so a verified image pulls offline).
//! - What a verified manifest names is served through that scope without signatures of its own:
//!   the children of an index (cosign signs the index a tag names), an image's config and layers
//!   ([`named`], [`Verdicts`]). A blob that no manifest served under the policy names is denied:
//!   the layers of an unsigned image cannot be pulled by digest around the policy.
//! - Signature material is always served, with its blobs: a manifest that no runtime runs (an
//!   artifact, a referrers list) needs no signature ([`is_runnable`]). What it names never lets a
//!   manifest through: only a verified index's children are manifests served unsigned.
//! - Verdicts are kept per (policy revision, digest), in memory and on disk (`verdicts`): a
//!   reload that changes a policy changes its revision, so every verdict it could change is
//!   decided again, and a restart finds the verified ones again. A denial is decided again on the
//!   next request (a signature may have been pushed since; the `.sig` tag's own cache keeps that
//!   cheap).
//!
//! Rule of dependency: uses `config` (the tables), `oci`, `metrics`; the mirror uses it, and it
//! fetches nothing itself.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{PolicyConfig, PolicyMode};
use crate::oci::{Digest, RepoName, media};

pub mod bundle;
pub mod cosign;
pub mod keyless;
pub mod keys;
mod verdicts;

pub use verdicts::Verdicts;

use keyless::Keyless;
use keys::Key;

/// The configured policies, in order.
#[derive(Debug, Default)]
pub struct Policies {
    list: Vec<Arc<Policy>>,
}

/// One policy, ready to decide.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub mode: PolicyMode,
    /// Lowercased upstream names; `None`: every upstream.
    upstreams: Option<Vec<String>>,
    repositories: Option<Vec<String>>,
    pub keys: Vec<Key>,
    /// The trusted root and identities, if the policy accepts keyless signatures.
    pub keyless: Option<Keyless>,
    /// Changes whenever anything that decides a verdict changes (scope, mode, keys, trusted
    /// root, identities).
    pub revision: u64,
}

impl Policies {
    pub fn new(cfgs: &[PolicyConfig]) -> Policies {
        Policies {
            list: cfgs.iter().map(|c| Arc::new(Policy::new(c))).collect(),
        }
    }

    /// The policy covering a request through upstream `upstream` for repository `repo`.
    pub fn scope(&self, upstream: &str, repo: &RepoName) -> Option<&Arc<Policy>> {
        self.list.iter().find(|p| p.covers(upstream, repo))
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The revisions of the policies (see [`Policy::revision`]).
    pub fn revisions(&self) -> Vec<u64> {
        self.list.iter().map(|p| p.revision).collect()
    }
}

impl Policy {
    fn new(c: &PolicyConfig) -> Policy {
        let upstreams = (!c.upstreams.iter().any(|u| u == "*"))
            .then(|| c.upstreams.iter().map(|u| u.to_ascii_lowercase()).collect());
        let mut h = StableHasher::default();
        (
            &c.name,
            c.mode == PolicyMode::Enforce,
            &upstreams,
            &c.repositories,
        )
            .hash(&mut h);
        for k in &c.public_keys {
            k.bits.hash(&mut h);
        }
        if let Some(root) = &c.root {
            (&root.digest, &c.identities).hash(&mut h);
        }
        Policy {
            name: c.name.clone(),
            mode: c.mode,
            upstreams,
            repositories: c.repositories.clone(),
            keys: c.public_keys.iter().map(Key::new).collect(),
            keyless: c.root.as_ref().map(|r| Keyless::new(r, &c.identities)),
            revision: h.finish(),
        }
    }

    /// What a signature must verify with, for a denial: "the 1 configured key", "the trusted
    /// root for 2 identities", or both.
    fn trusts(&self) -> String {
        let keys = match self.keys.len() {
            0 => None,
            1 => Some("the 1 configured key".to_owned()),
            n => Some(format!("any of the {n} configured keys")),
        };
        let keyless = self.keyless.as_ref().map(|k| match k.identities() {
            1 => "the trusted root for the 1 configured identity".to_owned(),
            n => format!("the trusted root for the {n} configured identities"),
        });
        match (keys, keyless) {
            (Some(k), Some(l)) => format!("{k} or {l}"),
            (Some(k), None) => k,
            (None, Some(l)) => l,
            (None, None) => "nothing (no keys, no trusted root)".to_owned(),
        }
    }

    fn covers(&self, upstream: &str, repo: &RepoName) -> bool {
        let up = self
            .upstreams
            .as_ref()
            .is_none_or(|list| list.iter().any(|u| u.eq_ignore_ascii_case(upstream)));
        let repo_ok = self
            .repositories
            .as_ref()
            .is_none_or(|globs| globs.iter().any(|g| glob(g, repo.as_str())));
        up && repo_ok
    }
}

/// SHA-256 as a [`Hasher`]: a revision the same in every run, so verdicts kept on disk under it
/// are found again after a restart (std's `DefaultHasher` promises no such thing).
#[derive(Default)]
struct StableHasher(sha2::Sha256);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.0, bytes);
    }

    fn finish(&self) -> u64 {
        let out = sha2::Digest::finalize(self.0.clone());
        u64::from_be_bytes(out[..8].try_into().expect("sha256 has 32 bytes"))
    }
}

/// `*` matches any run of characters (`/` included); everything else itself.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    // Where the last `*` was, and how much of the name it has taken.
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == b'*')
}

/// Whether a manifest is something a runtime runs, and so needs a signature: an index, or an
/// image manifest with an image config unless every layer is a document. Artifacts do not:
/// signatures, SBOMs and attestations (another config type, the empty config, or document layers
/// only: cosign's `.sig` manifest has an image config and simple-signing JSON layers) are the
/// material clients verify with, and no runtime unpacks them into a root filesystem. A layer is
/// a document only when its type says so plainly (`...json`, `...+xml`, `text/...`); any other
/// type counts as a filesystem (Docker unpacks layers of types it does not know), and so does a
/// manifest with no layers, or one that does not parse: a policy never loosens on doubt.
pub fn is_runnable(media_type: &str, bytes: &[u8]) -> bool {
    match media_type {
        media::OCI_INDEX | media::DOCKER_MANIFEST_LIST => !is_referrers_list(bytes),
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => {
            #[derive(serde::Deserialize)]
            struct Desc {
                #[serde(rename = "mediaType")]
                media_type: Option<String>,
            }
            #[derive(serde::Deserialize)]
            struct Image {
                config: Option<Desc>,
                #[serde(default)]
                layers: Vec<Desc>,
            }
            // Unreadable: treated as an image (a policy never loosens on doubt).
            let Ok(m) = serde_json::from_slice::<Image>(bytes) else {
                return true;
            };
            let config = m.config.and_then(|c| c.media_type);
            let image_config = config.as_deref().is_none_or(|t| {
                t == "application/vnd.oci.image.config.v1+json"
                    || t == "application/vnd.docker.container.image.v1+json"
            });
            let document =
                |t: &str| t.ends_with("json") || t.ends_with("+xml") || t.starts_with("text/");
            let documents_only = !m.layers.is_empty()
                && m.layers
                    .iter()
                    .all(|l| l.media_type.as_deref().is_some_and(document));
            image_config && !documents_only
        }
        // Schema 1 and anything else a runtime might still run.
        _ => !media_type.contains("artifact"),
    }
}

/// Whether an index is a referrers list (the referrers tag schema's `sha256-<hex>` index that
/// cosign and notation read): at least one descriptor, each with an `artifactType`. Serving one
/// unverified lets nothing through: what it lists is checked on its own when asked for.
fn is_referrers_list(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<serde_json::Value>,
    }
    serde_json::from_slice::<Index>(bytes).is_ok_and(|i| {
        !i.manifests.is_empty()
            && i.manifests
                .iter()
                .all(|d| d.get("artifactType").is_some_and(|t| t.is_string()))
    })
}

/// What a manifest names, split by what it lets through once served under a policy: `children`,
/// the manifests of an index (let through only from a verified index); `blobs`, an image's or an
/// artifact's config, layers and blobs.
pub fn named(bytes: &[u8]) -> (Vec<Digest>, Vec<Digest>) {
    let n = crate::oci::Named::of(bytes);
    let blobs = n
        .config
        .into_iter()
        .chain(n.layers)
        .chain(n.blobs)
        .collect();
    (n.manifests, blobs)
}

/// A verdict on one digest under one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A signature verified, under this key file.
    Verified { key: String },
    /// Why not, for a person to act on.
    Denied { reason: String },
}

/// One signature found for a digest: its layer, and its payload (or why it could not be read).
#[derive(Debug, Clone)]
pub struct Found {
    pub layer: cosign::SignatureLayer,
    pub payload: Result<Bytes, String>,
}

/// One Sigstore bundle among a digest's referrers: the referrer's digest, the bundle (or why it
/// could not be read), and the simple-signing payload the referrer carries beside it, which a
/// message signature is over (`None`: it carries none; see `bundle`).
#[derive(Debug, Clone)]
pub struct BundleFound {
    pub referrer: Digest,
    pub bundle: Result<Bytes, String>,
    pub payload: Option<Result<Bytes, String>>,
}

/// What was found of a digest's signatures.
#[derive(Debug, Clone, Default)]
pub struct Material {
    /// cosign's tag scheme: the `.sig` manifest's signatures (`None`: no such tag).
    pub signatures: Option<Vec<Found>>,
    /// Sigstore bundles attached as referrers.
    pub bundles: Vec<BundleFound>,
}

/// The verdict on `digest` under `policy` from the material found: verified when any one
/// signature (tag scheme or bundle) verifies under one of the keys.
pub fn decide(policy: &Policy, digest: &Digest, material: &Material) -> Verdict {
    let keys = policy.trusts();
    let found = material.signatures.as_deref().unwrap_or_default();
    if found.is_empty() && material.bundles.is_empty() {
        let tag = cosign::signature_tag(digest);
        return Verdict::Denied {
            reason: format!(
                "policy {:?}: {digest} is not signed (no cosign signature under tag {tag}, no Sigstore bundle among its referrers)",
                policy.name
            ),
        };
    }
    let mut why = Vec::new();
    for (i, f) in found.iter().enumerate() {
        let n = i + 1;
        let payload = match &f.payload {
            Ok(p) => p,
            Err(e) => {
                why.push(format!("#{n}: {e}"));
                continue;
            }
        };
        if let Err(e) = cosign::payload_claims(payload, digest) {
            why.push(format!("#{n}: {e}"));
            continue;
        }
        let Some(sig) = &f.layer.signature else {
            why.push(format!("#{n}: has no signature annotation"));
            continue;
        };
        if let Some(k) = policy.keys.iter().find(|k| k.verifies(payload, sig)) {
            return Verdict::Verified {
                key: k.file.display().to_string(),
            };
        }
        match (&f.layer.keyless, &policy.keyless) {
            (Some(annotations), Some(keyless)) => {
                match keyless.verify_cosign(annotations, payload, sig) {
                    Ok(who) => return Verdict::Verified { key: who },
                    Err(e) => why.push(format!("#{n}: {e}")),
                }
            }
            (Some(_), None) => why.push(format!(
                "#{n}: keyless (a certificate), and this policy has no trusted_root"
            )),
            (None, _) if policy.keys.is_empty() => why.push(format!(
                "#{n}: signed with a key, and this policy has no keys"
            )),
            (None, _) => why.push(format!("#{n}: does not verify with {keys}")),
        }
    }
    for b in &material.bundles {
        let payload = b
            .payload
            .as_ref()
            .map(|p| p.as_ref().map(|p| &p[..]).map_err(String::as_str));
        let checked = b.bundle.as_ref().map_err(String::clone).and_then(|bytes| {
            bundle::verify(
                bytes,
                payload,
                digest,
                &policy.keys,
                policy.keyless.as_ref(),
            )
        });
        match checked {
            Ok(key) => return Verdict::Verified { key },
            Err(e) => why.push(format!("bundle {}: {e}", b.referrer)),
        }
    }
    let n = found.len() + material.bundles.len();
    Verdict::Denied {
        reason: format!(
            "policy {:?}: no signature of {digest} verifies with {keys}; found {n} signature{}: {}",
            policy.name,
            if n == 1 { "" } else { "s" },
            why.join("; ")
        ),
    }
}

#[cfg(test)]
mod tests;
