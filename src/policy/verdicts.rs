//! The verdicts reached, and what manifests served under a policy let through, per policy
//! revision: in memory, and the verified verdicts on disk too, so a restart does not verify the
//! world again.
//!
//! On disk: `<storage>/policy/<revision, 16 hex>/<digest hex>`, holding the key file (or
//! identity) the signature verified with. A file is written once, atomically (temp file, rename),
//! not fsynced: a verdict lost in a crash is decided again from the cached material. Directories
//! of revisions no policy has any more are removed when the policies are set (start, reload).
//! What a served manifest names (`children`, `blobs`) is kept in memory only: it is learnt again
//! when the manifest is served, which a client does before it asks for what it names.
//!
//! Rule of dependency: uses its parent's `Policy` and `oci` (and std's files).

use std::io;
use std::path::{Path, PathBuf};

use super::Policy;
use crate::oci::Digest;

/// Verdicts, and what manifests served under a policy name, per policy revision.
pub struct Verdicts {
    /// Where verified verdicts are kept; `None`: memory only.
    dir: Option<PathBuf>,
    verified: moka::sync::Cache<(u64, Digest), String>,
    /// Manifests named by a verified index: served through that scope without a signature of
    /// their own.
    children: moka::sync::Cache<(u64, Digest), ()>,
    /// Blobs named by a manifest served under the policy (a verified image, or signature
    /// material): the only blobs served through that scope.
    blobs: moka::sync::Cache<(u64, Digest), ()>,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts {
            dir: None,
            verified: moka::sync::Cache::new(100_000),
            children: moka::sync::Cache::new(100_000),
            blobs: moka::sync::Cache::new(1_000_000),
        }
    }
}

impl Verdicts {
    /// Verdicts kept under `dir` (created when the first one is written).
    pub fn on_disk(dir: PathBuf) -> Verdicts {
        Verdicts {
            dir: Some(dir),
            ..Verdicts::default()
        }
    }

    fn file(&self, revision: u64, digest: &Digest) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{revision:016x}")).join(digest.hex()))
    }

    /// What a verified verdict was reached with, if one was: from memory, or from disk. (A read
    /// of a small file, once per digest and process: not worth a blocking-pool hop.)
    pub fn verified(&self, policy: &Policy, digest: &Digest) -> Option<String> {
        let key = (policy.revision, digest.clone());
        if let Some(v) = self.verified.get(&key) {
            return Some(v);
        }
        let text = std::fs::read_to_string(self.file(policy.revision, digest)?).ok()?;
        let with = text.trim().to_owned();
        self.verified.insert(key, with.clone());
        Some(with)
    }

    /// Keeps a verified verdict, in memory and on disk (a failure to write is logged: the
    /// verdict still holds in memory).
    pub fn set_verified(&self, policy: &Policy, digest: &Digest, with: String) {
        let key = (policy.revision, digest.clone());
        if self.verified.contains_key(&key) {
            return;
        }
        self.verified.insert(key, with.clone());
        if let Some(path) = self.file(policy.revision, digest)
            && let Err(e) = write_replacing(&path, with.as_bytes())
        {
            tracing::warn!(path = %path.display(), error = %e, "could not keep a policy verdict on disk");
        }
    }

    /// Removes the kept verdicts of every revision but `current` (the policies just set).
    pub fn keep_only(&self, current: &[u64]) {
        let Some(dir) = &self.dir else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let keep = name
                .to_str()
                .and_then(|n| u64::from_str_radix(n, 16).ok())
                .is_some_and(|r| current.contains(&r));
            if !keep && let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "could not remove old policy verdicts");
            }
        }
    }

    /// Whether `digest` is a manifest named by an index verified under `policy`.
    pub fn is_child(&self, policy: &Policy, digest: &Digest) -> bool {
        self.children
            .contains_key(&(policy.revision, digest.clone()))
    }

    /// Whether `digest` is a blob named by a manifest served under `policy`.
    pub fn is_named_blob(&self, policy: &Policy, digest: &Digest) -> bool {
        self.blobs.contains_key(&(policy.revision, digest.clone()))
    }

    /// Records the manifests a verified index names.
    pub fn allow_children(&self, policy: &Policy, children: impl IntoIterator<Item = Digest>) {
        for d in children {
            self.children.insert((policy.revision, d), ());
        }
    }

    /// Records the blobs a manifest served under `policy` names.
    pub fn allow_blobs(&self, policy: &Policy, blobs: impl IntoIterator<Item = Digest>) {
        for d in blobs {
            self.blobs.insert((policy.revision, d), ());
        }
    }
}

/// Replaces `path` with `data` atomically (a temp file beside it, then a rename).
fn write_replacing(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("v");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PolicyConfig, PolicyMode};
    use crate::policy::Policies;

    fn policies(name: &str) -> Policies {
        let (_, key) = crate::policy::keys::tests::p256();
        Policies::new(&[PolicyConfig {
            name: name.into(),
            upstreams: vec!["*".into()],
            repositories: None,
            mode: PolicyMode::Enforce,
            keys: vec![key.file.clone()],
            trusted_root: None,
            identities: Vec::new(),
            root: None,
            public_keys: vec![key],
        }])
    }

    #[test]
    fn verified_verdicts_survive_a_restart_and_old_revisions_go() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("policy");
        let set = policies("release");
        let p = set.scope("x", &"a/b".parse().unwrap()).unwrap();
        let d = Digest::of(b"image");
        let v = Verdicts::on_disk(root.clone());
        assert_eq!(v.verified(p, &d), None);
        v.set_verified(p, &d, "release.pub".into());
        let again = Verdicts::on_disk(root.clone());
        assert_eq!(again.verified(p, &d).as_deref(), Some("release.pub"));
        // Another revision (another key) finds nothing, and setting it removes the old one's.
        let other = policies("release");
        let q = other.scope("x", &"a/b".parse().unwrap()).unwrap();
        assert_ne!(p.revision, q.revision);
        assert_eq!(again.verified(q, &d), None);
        again.keep_only(&other.revisions());
        assert!(std::fs::read_dir(&root).unwrap().next().is_none());
        assert_eq!(Verdicts::on_disk(root).verified(p, &d), None);
        // What a manifest names is memory only.
        v.allow_blobs(p, [d.clone()]);
        assert!(v.is_named_blob(p, &d));
        assert!(!Verdicts::default().is_named_blob(p, &d));
    }

    #[test]
    fn a_revision_is_the_same_in_every_run() {
        // Pinned: a change of the hasher or of what the revision covers shows here (and costs
        // every kept verdict once).
        let cfg = PolicyConfig {
            name: "release".into(),
            upstreams: vec!["*".into()],
            repositories: None,
            mode: PolicyMode::Enforce,
            keys: vec!["k.pub".into()],
            trusted_root: None,
            identities: Vec::new(),
            root: None,
            public_keys: vec![crate::config::PublicKeyConfig {
                file: "k.pub".into(),
                algorithm: crate::config::KeyAlgorithm::Ed25519,
                bits: vec![7; 32],
            }],
        };
        let a = Policies::new(std::slice::from_ref(&cfg)).revisions();
        assert_eq!(a, Policies::new(&[cfg]).revisions());
        assert_eq!(format!("{:016x}", a[0]), "d0789b96db3c2db5");
    }
}
