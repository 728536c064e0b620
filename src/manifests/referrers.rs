//! Referrers answers: the last known list of referrers of a subject, per upstream, repository,
//! subject digest and `artifactType` filter, in memory and on disk, kept like a tag answer (see
//! the parent): trusted for the upstream's `tag_ttl`, then refreshed, and standing in while the
//! upstream is unreachable, after a restart too (read back from disk, it counts as never checked).
//!
//! On disk: `tags/<upstream>/<repository>/_referrers/sha256-<hex>` for the whole list, and
//! `sha256-<hex>.<16 hex>` for a filtered one (the first 16 hex digits of the sha256 of the
//! `artifactType`, which the file also names, and which is checked on reading). The list is
//! descriptors, not content: it is never written to the blob store, so nothing is ever stored
//! under a digest it does not hash to. Replaced atomically, not fsynced: a crash costs one refresh.
//!
//! Rule of dependency: under `manifests`, uses its parent's `Manifests` (the tag directory, the
//! upstream names, the file helpers), `oci`.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Manifests, write_replacing};
use crate::oci::referrers::{self, Descriptor};
use crate::oci::{Digest, RepoName};

/// The file's name under `_referrers` for a list of `subject`'s referrers, filtered or not.
fn file_name(subject: &Digest, artifact_type: Option<&str>) -> String {
    let base = referrers::fallback_tag(subject);
    match artifact_type {
        None => base.as_str().to_owned(),
        Some(t) => format!("{base}.{}", &Digest::of(t.as_bytes()).hex()[..16]),
    }
}

/// Which list: the upstream's slot, the repository, the subject and the filter asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReferrersKey {
    pub upstream: usize,
    pub repo: RepoName,
    pub subject: Digest,
    pub artifact_type: Option<String>,
}

/// A list of referrers as answered: the descriptors, and their encoded index.
#[derive(Debug, Clone)]
pub struct ReferrersEntry {
    pub list: Arc<[Descriptor]>,
    /// The image index a client gets ([`referrers::encode`] of `list`).
    pub body: Bytes,
    /// Whether `list` is filtered by the key's `artifactType` (the answer's
    /// `OCI-Filters-Applied`).
    pub filtered: bool,
    /// When this process last had it from the upstream; `None` for one read back from disk.
    pub checked: Option<Instant>,
}

impl ReferrersEntry {
    pub fn new(list: Vec<Descriptor>, filtered: bool) -> ReferrersEntry {
        ReferrersEntry {
            body: Bytes::from(referrers::encode(&list)),
            list: list.into(),
            filtered,
            checked: Some(Instant::now()),
        }
    }

    /// Whether the answer is younger than `ttl`.
    pub fn is_fresh(&self, ttl: std::time::Duration) -> bool {
        self.checked.is_some_and(|c| c.elapsed() < ttl)
    }
}

/// The file's content.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    artifact_type: Option<String>,
    filtered: bool,
    manifests: Vec<Descriptor>,
}

impl Manifests {
    /// The last known list for `key`: from memory, or from disk after a restart.
    pub async fn referrers(&self, key: &ReferrersKey) -> Option<ReferrersEntry> {
        if let Some(e) = self.referrers.get(key).await {
            return Some(e);
        }
        let text = tokio::fs::read(self.referrers_path(key)?).await.ok()?;
        let saved: Saved = serde_json::from_slice(&text).ok()?;
        if saved.artifact_type != key.artifact_type {
            return None;
        }
        // Written by this code, but read as any input is: re-encoded through the parser.
        let list = referrers::parse(&referrers::encode(&saved.manifests))?;
        let entry = ReferrersEntry {
            checked: None,
            ..ReferrersEntry::new(list, saved.filtered)
        };
        self.referrers.insert(key.clone(), entry.clone()).await;
        Some(entry)
    }

    /// Records a list in memory and on disk. A failure to write the file is logged: the answer
    /// still serves from memory.
    pub async fn set_referrers(&self, key: ReferrersKey, entry: ReferrersEntry) {
        if let Some(path) = self.referrers_path(&key) {
            let saved = Saved {
                artifact_type: key.artifact_type.clone(),
                filtered: entry.filtered,
                manifests: entry.list.to_vec(),
            };
            let data = serde_json::to_vec(&saved).expect("strings and numbers serialise");
            let written = tokio::task::spawn_blocking(move || write_replacing(&path, &data)).await;
            if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
                tracing::warn!(error = %e, "could not record a referrers answer on disk");
            }
        }
        self.referrers.insert(key, entry).await;
    }

    fn referrers_path(&self, key: &ReferrersKey) -> Option<PathBuf> {
        let names = self.upstream_names.read().unwrap();
        let upstream = names.get(key.upstream)?;
        Some(
            self.tags_dir
                .join(upstream)
                .join(key.repo.as_str())
                .join("_referrers")
                .join(file_name(&key.subject, key.artifact_type.as_deref())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn descriptor(t: &str) -> Descriptor {
        Descriptor {
            media_type: crate::oci::media::OCI_MANIFEST.into(),
            digest: Digest::of(t.as_bytes()).to_string(),
            size: 2,
            artifact_type: Some(t.into()),
            annotations: Some([("k".to_owned(), "v".to_owned())].into()),
        }
    }

    #[tokio::test]
    async fn lists_survive_a_restart_as_never_checked_and_filters_apart() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let store = Arc::new(Store::open(dir.path()).unwrap());
            Manifests::new(store, dir.path(), 1 << 20, vec!["up".into()]).unwrap()
        };
        let subject = Digest::of(b"subject");
        let key = |t: Option<&str>| ReferrersKey {
            upstream: 0,
            repo: "team/app".parse().unwrap(),
            subject: subject.clone(),
            artifact_type: t.map(str::to_owned),
        };
        let ms = open();
        let all = ReferrersEntry::new(vec![descriptor("a/sbom"), descriptor("a/sig")], false);
        let sigs = ReferrersEntry::new(vec![descriptor("a/sig")], true);
        ms.set_referrers(key(None), all.clone()).await;
        ms.set_referrers(key(Some("a/sig")), sigs.clone()).await;
        assert!(
            ms.referrers(&key(None))
                .await
                .unwrap()
                .is_fresh(std::time::Duration::from_secs(60))
        );
        drop(ms);

        let ms = open();
        let back = ms.referrers(&key(None)).await.unwrap();
        assert_eq!(back.body, all.body);
        assert!(!back.filtered);
        assert!(back.checked.is_none(), "read back from disk: never checked");
        let back = ms.referrers(&key(Some("a/sig"))).await.unwrap();
        assert_eq!((back.body, back.filtered), (sigs.body.clone(), true));
        assert!(ms.referrers(&key(Some("a/other"))).await.is_none());
        assert!(
            dir.path()
                .join("tags/up/team/app/_referrers")
                .join(referrers::fallback_tag(&subject).as_str())
                .is_file()
        );

        // A file whose filter is not the one asked for (a 64-bit prefix collision, or a file
        // copied by hand) answers nothing.
        let path = ms.referrers_path(&key(Some("a/sig"))).unwrap();
        let other = ms.referrers_path(&key(Some("a/other"))).unwrap();
        std::fs::copy(path, other).unwrap();
        assert!(open().referrers(&key(Some("a/other"))).await.is_none());
    }
}
