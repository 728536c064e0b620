//! Content-addressed blob files on local disk.
//!
//! Layout under the cache root:
//! - `blobs/sha256/<hex>`: exactly the bytes whose sha256 is `<hex>`. Only verified files are ever
//!   renamed here, so a file at a final path is always right, even after a crash.
//! - `tmp/`: fills in progress (`<hex>.<n>.part`); emptied on start.
//!
//! A fill is a [`PendingBlob`]: it hashes while it writes, publishes its progress on a `watch`
//! channel ([`FillState`]), and on [`PendingBlob::commit`] checks size and digest, fsyncs the file and
//! its directory, and renames it into place. Readers hold the temp file open, so they read the
//! growing file while it is written and keep reading the same inode after the rename. Dropping a
//! `PendingBlob` without committing deletes the temp file and tells every reader the fill failed.
//!
//! Readers ([`read_range`]) never hand out the last byte of a fill before it is committed: a client
//! can only ever see a complete body whose digest was checked.
//!
//! The interface is narrow on purpose (begin/commit, open, stat, remove, list) so that another tier
//! (object storage) can sit behind it later. Rule of dependency: uses `oci` and `error` only.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::error::Error;
use crate::oci::Digest;

/// Size of one read from a blob file. Large reads keep syscalls and wakeups few.
const READ_CHUNK: usize = 256 * 1024;

/// The blob store rooted at one directory.
#[derive(Debug)]
pub struct Store {
    blobs: PathBuf,
    tmp: PathBuf,
    /// Makes temp names unique when two fills of one digest overlap (a retry after a failure).
    seq: AtomicU64,
}

/// A blob file opened for reading, with its length.
#[derive(Debug, Clone)]
pub struct BlobFile {
    pub file: Arc<File>,
    pub len: u64,
}

/// Where a fill is; readers watch this.
#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for the upstream's response headers.
    Pending,
    /// Bytes are landing in the temp file. `total` is the size announced by the upstream.
    Writing {
        file: Arc<File>,
        written: u64,
        total: Option<u64>,
    },
    /// Verified and in place.
    Committed(BlobFile),
    /// The fill failed; nothing was cached.
    Failed(Error),
}

/// Why a commit was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    Size { expected: u64, actual: u64 },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Digest { expected: Digest, actual: Digest },
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl Store {
    /// Opens (creating) the store under `root` and removes temp files left by a crash.
    pub fn open(root: &Path) -> io::Result<Store> {
        let blobs = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(Store {
            blobs,
            tmp,
            seq: AtomicU64::new(0),
        })
    }

    /// The final path of a blob.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// The size of a cached blob, or `None` when it is not cached.
    pub async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens a cached blob for reading.
    pub async fn open_blob(&self, digest: &Digest) -> io::Result<Option<BlobFile>> {
        let path = self.blob_path(digest);
        let opened = tokio::task::spawn_blocking(move || -> io::Result<Option<BlobFile>> {
            match File::open(&path) {
                Ok(f) => {
                    let len = f.metadata()?.len();
                    Ok(Some(BlobFile {
                        file: Arc::new(f),
                        len,
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        });
        opened.await.map_err(io::Error::other)?
    }

    /// Reads a whole small blob (a manifest) into memory.
    pub async fn read_small(&self, digest: &Digest, limit: u64) -> io::Result<Option<Bytes>> {
        let Some(blob) = self.open_blob(digest).await? else {
            return Ok(None);
        };
        if blob.len > limit {
            return Err(io::Error::other(format!(
                "{digest} is {} bytes, more than {limit}",
                blob.len
            )));
        }
        let data = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; blob.len as usize];
            blob.file
                .read_exact_at(&mut buf, 0)
                .map(|_| Bytes::from(buf))
        });
        data.await.map_err(io::Error::other)?.map(Some)
    }

    /// Removes a cached blob; true if it was there.
    pub async fn remove(&self, digest: &Digest) -> io::Result<bool> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every cached blob with its size. Files whose name is not a digest are skipped.
    pub fn list(&self) -> io::Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.blobs)? {
            let entry = entry?;
            let name = entry.file_name();
            if let Some(d) = name.to_str().and_then(Digest::from_hex) {
                out.push((d, entry.metadata()?.len()));
            }
        }
        Ok(out)
    }

    /// Total bytes of cached blobs.
    pub fn bytes_on_disk(&self) -> io::Result<u64> {
        Ok(self.list()?.iter().map(|(_, n)| n).sum())
    }

    /// Starts a fill for `digest`. `total` is the announced size, checked at commit. Progress goes
    /// to `progress` (readers subscribe to its receiver).
    pub fn begin(
        &self,
        digest: &Digest,
        total: Option<u64>,
        progress: watch::Sender<FillState>,
    ) -> io::Result<PendingBlob> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self
            .tmp
            .join(format!("{}.{}.{n}.part", digest.hex(), std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp_path)?;
        let file = Arc::new(file);
        progress.send_replace(FillState::Writing {
            file: file.clone(),
            written: 0,
            total,
        });
        Ok(PendingBlob {
            file: Some(file),
            tmp_path,
            final_path: self.blob_path(digest),
            dir: self.blobs.clone(),
            hasher: Some(Sha256::new()),
            written: 0,
            total,
            digest: digest.clone(),
            progress,
            done: false,
        })
    }

    /// Stores small content (a manifest) in one step: write, verify, commit.
    pub async fn put(&self, digest: &Digest, data: Bytes) -> Result<(), CommitError> {
        if self.stat(digest).await?.is_some() {
            return Ok(());
        }
        let (tx, _rx) = watch::channel(FillState::Pending);
        let mut pending = self.begin(digest, Some(data.len() as u64), tx)?;
        pending.write(data).await?;
        pending.commit().await.map(|_| ())
    }
}

/// A blob being written. Drop without [`commit`](Self::commit) = failure: the temp file goes away
/// and readers see [`FillState::Failed`].
pub struct PendingBlob {
    /// `None` only while a blocking write holds it.
    file: Option<Arc<File>>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    dir: PathBuf,
    hasher: Option<Sha256>,
    written: u64,
    total: Option<u64>,
    digest: Digest,
    progress: watch::Sender<FillState>,
    done: bool,
}

impl PendingBlob {
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Appends `data`, hashing it on the way, and tells readers.
    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.write_all(vec![data]).await
    }

    /// Appends several chunks in one blocking call (fewer thread hand-offs than one call each).
    pub async fn write_all(&mut self, chunks: Vec<Bytes>) -> io::Result<()> {
        let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        if let Some(total) = self.total
            && self.written + len > total
        {
            return Err(io::Error::other(format!(
                "more than the announced {total} bytes"
            )));
        }
        let file = self.file.take().expect("file present between writes");
        let mut hasher = self.hasher.take().expect("hasher present between writes");
        let (file, hasher, res) = tokio::task::spawn_blocking(move || {
            let mut res = Ok(());
            for c in &chunks {
                hasher.update(c);
                res = (&*file).write_all(c);
                if res.is_err() {
                    break;
                }
            }
            (file, hasher, res)
        })
        .await
        .map_err(io::Error::other)?;
        self.file = Some(file.clone());
        self.hasher = Some(hasher);
        res?;
        self.written += len;
        self.progress.send_replace(FillState::Writing {
            file,
            written: self.written,
            total: self.total,
        });
        Ok(())
    }

    /// Verifies size and digest, makes the file durable and renames it into place.
    ///
    /// On an error the fill is still open: the caller ends it with [`fail`](Self::fail) (or drop).
    pub async fn commit(&mut self) -> Result<BlobFile, CommitError> {
        let hasher = self.hasher.take().expect("commit is called once");
        let actual = Digest::from_sha256(&hasher.finalize());
        if let Some(expected) = self.total
            && expected != self.written
        {
            return Err(CommitError::Size {
                expected,
                actual: self.written,
            });
        }
        if actual != self.digest {
            return Err(CommitError::Digest {
                expected: self.digest.clone(),
                actual,
            });
        }
        let file = self.file.clone().expect("file present");
        let (tmp, fin, dir) = (
            self.tmp_path.clone(),
            self.final_path.clone(),
            self.dir.clone(),
        );
        let f = file.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            f.sync_all()?;
            std::fs::rename(&tmp, &fin)?;
            File::open(&dir)?.sync_all()
        })
        .await
        .map_err(io::Error::other)??;
        self.done = true;
        let blob = BlobFile {
            file,
            len: self.written,
        };
        self.progress
            .send_replace(FillState::Committed(blob.clone()));
        Ok(blob)
    }

    /// Ends the fill with `err`, which every reader receives.
    pub fn fail(mut self, err: Error) {
        self.progress.send_replace(FillState::Failed(err));
        self.cleanup();
    }

    fn cleanup(&mut self) {
        if !self.done {
            self.done = true;
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

impl Drop for PendingBlob {
    fn drop(&mut self) {
        if !self.done {
            self.progress.send_if_modified(|s| {
                if matches!(s, FillState::Failed(_)) {
                    false
                } else {
                    *s = FillState::Failed(Error::internal("blob fill abandoned"));
                    true
                }
            });
            self.cleanup();
        }
    }
}

/// Where the bytes of a read come from.
pub enum Source {
    /// A committed file: everything up to its length is final.
    File(BlobFile),
    /// A fill in progress: follow it.
    Fill(watch::Receiver<FillState>),
}

/// Streams bytes `start..end` (end exclusive; `None` = to the end of the blob) of a blob.
///
/// From a fill, it reads what has been written so far and waits for more, but holds back the final
/// byte until the fill is committed, so a failed verification always leaves the reader short.
pub fn read_range(
    source: Source,
    start: u64,
    end: Option<u64>,
) -> impl Stream<Item = Result<Bytes, Error>> + Send {
    struct St {
        source: Source,
        pos: u64,
        end: u64,
        done: bool,
    }
    let st = St {
        source,
        pos: start,
        end: end.unwrap_or(u64::MAX),
        done: false,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.done || st.pos >= st.end {
            return None;
        }
        match next_chunk(&mut st.source, st.pos, st.end).await {
            Ok(Some(bytes)) => {
                st.pos += bytes.len() as u64;
                Some((Ok(bytes), st))
            }
            Ok(None) => None,
            Err(e) => {
                st.done = true;
                Some((Err(e), st))
            }
        }
    })
}

/// The next chunk at `pos` (before `end`), waiting on a fill if needed; `None` at the end of the blob.
async fn next_chunk(source: &mut Source, pos: u64, end: u64) -> Result<Option<Bytes>, Error> {
    // How far we may read now.
    let (file, limit) = loop {
        match source {
            Source::File(b) => break (b.file.clone(), b.len),
            Source::Fill(rx) => {
                let state = rx.borrow_and_update().clone();
                match state {
                    FillState::Committed(b) => {
                        *source = Source::File(b);
                        continue;
                    }
                    FillState::Failed(e) => return Err(e),
                    FillState::Writing {
                        file,
                        written,
                        total,
                    } => {
                        // Hold back the last byte until the digest is verified.
                        let readable = match total {
                            Some(t) => written.min(t.saturating_sub(1)),
                            None => written.saturating_sub(1),
                        };
                        if readable > pos {
                            break (file, readable);
                        }
                    }
                    FillState::Pending => {}
                }
                if rx.changed().await.is_err() {
                    return Err(Error::internal("blob fill ended without a result"));
                }
            }
        }
    };
    let stop = end.min(limit);
    if pos >= stop {
        return Ok(None);
    }
    let n = (stop - pos).min(READ_CHUNK as u64) as usize;
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::zeroed(n);
        let mut filled = 0;
        while filled < n {
            match file.read_at(&mut buf[filled..], pos + filled as u64) {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf.freeze())
    })
    .await
    .map_err(|e| Error::internal(format!("blob read task: {e}")))?;
    match read {
        Ok(bytes) if bytes.is_empty() => Err(Error::internal(
            "blob file is shorter than its recorded length",
        )),
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) => Err(Error::io("reading blob", &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn digest_of(data: &[u8]) -> Digest {
        Digest::of(data)
    }

    async fn collect(s: impl Stream<Item = Result<Bytes, Error>>) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut s = std::pin::pin!(s);
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn put_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = Bytes::from_static(b"hello blob");
        let d = digest_of(&data);
        assert_eq!(store.stat(&d).await.unwrap(), None);
        store.put(&d, data.clone()).await.unwrap();
        assert_eq!(store.stat(&d).await.unwrap(), Some(10));
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), b"hello blob");
        let blob = store.open_blob(&d).await.unwrap().unwrap();
        assert_eq!(
            collect(read_range(Source::File(blob.clone()), 0, None))
                .await
                .unwrap(),
            b"hello blob"
        );
        assert_eq!(
            collect(read_range(Source::File(blob), 6, Some(8)))
                .await
                .unwrap(),
            b"bl"
        );
        assert_eq!(store.list().unwrap(), vec![(d.clone(), 10)]);
        assert!(store.remove(&d).await.unwrap());
        assert!(!store.remove(&d).await.unwrap());
    }

    #[tokio::test]
    async fn wrong_bytes_are_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = digest_of(b"right");
        let err = store
            .put(&d, Bytes::from_static(b"wrong"))
            .await
            .unwrap_err();
        assert!(matches!(err, CommitError::Digest { .. }), "{err}");
        assert_eq!(store.stat(&d).await.unwrap(), None);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "temp file removed"
        );
    }

    #[tokio::test]
    async fn short_fill_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = digest_of(b"abcdef");
        let (tx, _rx) = watch::channel(FillState::Pending);
        let mut p = store.begin(&d, Some(6), tx).unwrap();
        p.write(Bytes::from_static(b"abc")).await.unwrap();
        assert!(matches!(
            p.commit().await.unwrap_err(),
            CommitError::Size {
                expected: 6,
                actual: 3
            }
        ));
        assert_eq!(store.stat(&d).await.unwrap(), None);
    }

    #[tokio::test]
    async fn reader_follows_a_growing_fill_and_gets_the_last_byte_only_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let d = digest_of(&data);
        let (tx, rx) = watch::channel(FillState::Pending);
        let reader = tokio::spawn(collect(read_range(Source::Fill(rx.clone()), 0, None)));
        let mut p = store.begin(&d, Some(data.len() as u64), tx).unwrap();
        for chunk in data.chunks(100_000) {
            p.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        // Everything is written, but not committed: a second reader can't have the final byte yet.
        let mut probe = std::pin::pin!(read_range(
            Source::Fill(rx.clone()),
            data.len() as u64 - 1,
            None
        ));
        assert!(
            futures_util::FutureExt::now_or_never(probe.next()).is_none(),
            "last byte held back"
        );
        p.commit().await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), data);
        assert_eq!(
            probe.next().await.unwrap().unwrap().as_ref(),
            &data[data.len() - 1..]
        );
    }

    #[tokio::test]
    async fn reader_of_a_failed_fill_gets_an_error_not_a_short_success() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = digest_of(b"expected content");
        let (tx, rx) = watch::channel(FillState::Pending);
        let reader = tokio::spawn(collect(read_range(Source::Fill(rx), 0, None)));
        let mut p = store.begin(&d, Some(16), tx).unwrap();
        p.write(Bytes::from_static(b"unexpected conte"))
            .await
            .unwrap();
        let err = match p.commit().await {
            Err(e) => e,
            Ok(_) => panic!("wrong bytes committed"),
        };
        assert!(matches!(err, CommitError::Digest { .. }));
        p.fail(Error::internal(err.to_string()));
        // Readers are told.
        assert!(reader.await.unwrap().is_err());
        assert_eq!(store.stat(&d).await.unwrap(), None);
    }

    #[tokio::test]
    async fn open_removes_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("tmp/abc.1.0.part"), b"junk").unwrap();
        let _store = Store::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
