//! One serving berth per storage directory: an advisory lock on `<root>/berth.lock`, taken before
//! anything under the root is touched and held for the life of the server.
//!
//! Two berths on one directory would each keep its own access index and evict by it, deleting
//! blobs the other is serving, and each would empty `tmp/` of the other's fills at start. The
//! lock is `flock(2)`-style (`File::try_lock`): the kernel drops it when the process dies, however
//! it dies, so a crash never leaves a stale lock behind, and there is no pid to check for life.
//! The holder writes its pid into the file only so that a refused second berth can name it.
//!
//! Only `berth serve` takes it: `berth verify` and `berth cache` work beside a running server (they
//! are written to, see `verify` and `admin`), so they neither take nor check it.
//!
//! Rule of dependency: a leaf of `store`; std only.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name under the storage root.
pub const LOCK_FILE: &str = "berth.lock";

/// The lock, held while this value lives.
#[derive(Debug)]
pub struct DirLock {
    /// Kept open: closing the file releases the lock.
    _file: File,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "storage directory {} is in use by another berth ({}): two berths on one directory would \
         evict each other's blobs; stop it, or give this one another [storage] path",
        dir.display(),
        holder.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}"))
    )]
    Held { dir: PathBuf, holder: Option<u32> },
    #[error("storage directory {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl DirLock {
    /// Takes the lock of `root` (created if missing), or says who holds it. Never waits.
    pub fn acquire(root: &Path) -> Result<DirLock, LockError> {
        let path = root.join(LOCK_FILE);
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(root).map_err(io_err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                // Best effort: the holder may be between truncating and writing its pid.
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    dir: root.to_path_buf(),
                    holder: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        // flock locks belong to an open file, so a second open in this process is refused too.
        let e = DirLock::acquire(dir.path()).unwrap_err();
        match &e {
            LockError::Held { dir: d, holder } => {
                assert_eq!(d, dir.path());
                assert_eq!(*holder, Some(std::process::id()));
            }
            other => panic!("not held: {other:?}"),
        }
        let text = e.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        // Released with its file: the next berth takes it.
        DirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_root_that_cannot_be_made_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let e = DirLock::acquire(&file.join("cache")).unwrap_err();
        assert!(matches!(e, LockError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("plain-file"), "{e}");
    }
}
