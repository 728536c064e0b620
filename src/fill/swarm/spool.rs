//! A holder's bytes kept back until the whole digest checks (`drive`'s directory route): an
//! unnamed file in the store's temp directory, hashed as it is written, read back once checked.
//!
//! Rule of dependency: uses `oci::Digest`, sha2, libc (`O_TMPFILE`) and tokio's blocking pool;
//! nothing of its parent or siblings.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::oci::Digest;

/// A holder's bytes `base..` in an unnamed file (gone with its handle, crash or not), hashed as
/// they are written, after the hash of the bytes before `base` (which the fill has).
pub struct Spool {
    file: Arc<File>,
    base: u64,
    /// The hash of bytes `..base`.
    prefix: Sha256,
    hasher: Sha256,
    /// The end of the bytes received (`base` and on).
    len: u64,
    /// The whole digest checked.
    pub checked: bool,
}

impl Spool {
    pub fn new(dir: &std::path::Path, base: u64, prefix: Sha256) -> std::io::Result<Spool> {
        Ok(Spool {
            file: Arc::new(unnamed_in(dir)?),
            base,
            hasher: prefix.clone(),
            prefix,
            len: base,
            checked: false,
        })
    }

    /// Starts again from `base` (the file's old bytes are overwritten before they are read).
    pub fn reset(&mut self) {
        (self.hasher, self.len, self.checked) = (self.prefix.clone(), self.base, false);
    }

    pub async fn write(&mut self, c: &Bytes) -> std::io::Result<()> {
        let (file, at, c2) = (self.file.clone(), self.len - self.base, c.clone());
        tokio::task::spawn_blocking(move || file.write_all_at(&c2, at))
            .await
            .map_err(std::io::Error::other)??;
        self.hasher.update(c);
        self.len += c.len() as u64;
        Ok(())
    }

    /// Whether the bytes are the blob: `size` of them, hashing to `digest`.
    pub fn check(&mut self, digest: &Digest, size: u64) -> bool {
        self.checked = self.len == size
            && Digest::from_sha256(self.hasher.clone().finalize().as_slice()) == *digest;
        self.checked
    }

    /// Bytes `at..at + n` (at most 1 MiB, and what was received; `at` past `base`).
    pub async fn read(&self, at: u64, n: u64) -> std::io::Result<Bytes> {
        let n = n.min(self.len.saturating_sub(at)).min(1 << 20) as usize;
        let (file, at) = (self.file.clone(), at - self.base);
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; n];
            file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// A file in `dir` with no name (`O_TMPFILE`; where the filesystem has none, a file unlinked
/// at once, which the store's start would remove anyway): nothing to clean up after a crash.
fn unnamed_in(dir: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut open = std::fs::OpenOptions::new();
    open.read(true).write(true);
    if let Ok(f) = open.clone().custom_flags(libc::O_TMPFILE).open(dir) {
        return Ok(f);
    }
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("holder.{}.{n}.spool", std::process::id()));
    let f = open.create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spool from byte `base`: its hash continues the prefix's, a reset goes back to `base`
    /// (a liar's bytes forgotten), and its bytes read back at their offsets in the blob.
    #[tokio::test]
    async fn a_spool_checks_the_whole_blob_from_its_base() {
        let dir = tempfile::tempdir().unwrap();
        let blob = Bytes::from_static(b"0123456789");
        let d = Digest::of(&blob);
        let mut s = Spool::new(dir.path(), 4, Sha256::new_with_prefix(&blob[..4])).unwrap();
        s.write(&Bytes::from_static(b"45X789")).await.unwrap();
        assert!(!s.check(&d, 10), "a wrong byte");
        s.reset();
        s.write(&blob.slice(4..7)).await.unwrap();
        assert!(!s.check(&d, 10), "short");
        s.write(&blob.slice(7..)).await.unwrap();
        assert!(s.check(&d, 10));
        assert_eq!(s.read(4, 100).await.unwrap(), blob.slice(4..));
        assert_eq!(s.read(8, 1).await.unwrap(), blob.slice(8..9));
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "the spool has no name"
        );
    }
}
