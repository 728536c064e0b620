//! `berth verify`: re-hash every cached blob, move bad ones aside, clear crash leftovers.
//!
//! One blocking pass over `blobs/sha256/`: each regular file is hashed (streaming) and compared
//! with its name. A file whose sha256 differs, or whose name is not 64 lowercase hex digits, is
//! moved (not deleted: an operator may want to look at it) into `quarantine/`, under its own name,
//! with a `.1`, `.2`, ... suffix when that name is taken. Temp files in `tmp/` whose writer is gone
//! are removed.
//!
//! Then `manifests/sha256/`, the media types of cached manifests: a file whose name is not a digest
//! or whose content is not a media type (`type/subtype`, printable, at most 255 bytes) is moved to
//! `quarantine/` too (the manifest then reads as a miss and is fetched again); one whose manifest
//! is no longer in `blobs/` (evicted, removed, quarantined) is an orphan and is removed.
//!
//! It may run while berth serves the same directory:
//! - berth renames a file into `blobs/sha256/` only after verifying it, so every file found there
//!   is complete; a fill in progress is never looked at;
//! - a temp file is only removed when the process named in it (see [`store::temp_file_owner`]) is
//!   not running, so live fills are left alone;
//! - moving a bad file away is a rename: a reader holding it open keeps its inode, the next request
//!   misses and fetches the blob again;
//! - before moving a file, the path is checked to still name the inode that was hashed, so a blob
//!   replaced meanwhile stays (a remaining race can at worst move a good file away: a miss, never
//!   a wrong byte served).
//!
//! With `--bucket`, [`bucket`] then re-hashes the objects of `[storage.s3]` and deletes the bad
//! ones.
//!
//! Rule of dependency: uses `store` (layout, and the bucket client for [`bucket`]) and `oci`
//! (digests) only.

pub mod bucket;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::oci::Digest;
use crate::store;

/// Bytes read per call while hashing.
const HASH_CHUNK: usize = 1024 * 1024;

/// What a verification pass found and did.
#[derive(Debug, Default)]
pub struct Report {
    /// The store root that was verified.
    pub root: PathBuf,
    /// Entries of `blobs/sha256/` looked at (files that vanished during the pass are not counted).
    pub checked: u64,
    /// Bytes in the entries checked.
    pub bytes: u64,
    /// Files whose content matched their name.
    pub ok: u64,
    /// Entries moved into `quarantine/`.
    pub quarantined: Vec<Quarantined>,
    /// Media-type files of `manifests/sha256/` looked at.
    pub media_types: u64,
    /// Media-type files removed because their manifest is no longer cached.
    pub orphans_removed: Vec<PathBuf>,
    /// Temp files removed from `tmp/` (their writer is gone).
    pub temp_removed: Vec<PathBuf>,
    /// Temp files kept because the process writing them is running.
    pub temp_in_use: Vec<PathBuf>,
    /// Entries that could not be read or moved; the pass went on without them.
    pub errors: Vec<(PathBuf, io::Error)>,
}

/// One entry moved out of `blobs/sha256/`.
#[derive(Debug)]
pub struct Quarantined {
    pub from: PathBuf,
    pub to: PathBuf,
    pub reason: Reason,
}

/// Why an entry was quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The content's sha256 is not the one its name says.
    Mismatch { actual: Digest },
    /// The name is not a sha256 hex digest.
    BadName,
    /// Not a regular file (a directory, a symlink): berth never puts one there.
    NotAFile,
    /// A manifest's media-type file that does not hold a media type.
    BadMediaType,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Mismatch { actual } => write!(f, "content is {actual}"),
            Reason::BadName => f.write_str("name is not a sha256 digest"),
            Reason::NotAFile => f.write_str("not a regular file"),
            Reason::BadMediaType => f.write_str("not a media type"),
        }
    }
}

impl Report {
    /// Moves `path` (inode `id`) into `quarantine` for `reason` and records what happened.
    fn quarantine(&mut self, path: PathBuf, id: (u64, u64), quarantine: &Path, reason: Reason) {
        match move_aside(&path, id, quarantine) {
            Ok(Some(to)) => self.quarantined.push(Quarantined {
                from: path,
                to,
                reason,
            }),
            // Gone or replaced meanwhile: nothing of ours to move.
            Ok(None) => {}
            Err(e) => self.errors.push((path, e)),
        }
    }

    /// 0: all fine (removing crash leftovers is fine); 1: something was quarantined; 2: errors.
    pub fn exit_code(&self) -> u8 {
        exit_code(!self.errors.is_empty(), !self.quarantined.is_empty())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "store: {}", self.root.display())?;
        writeln!(f, "files checked: {}", self.checked)?;
        writeln!(f, "bytes: {}", self.bytes)?;
        writeln!(f, "ok: {}", self.ok)?;
        writeln!(f, "quarantined: {}", self.quarantined.len())?;
        for q in &self.quarantined {
            writeln!(
                f,
                "  {} -> {} ({})",
                q.from.display(),
                q.to.display(),
                q.reason
            )?;
        }
        writeln!(f, "manifest media types: {}", self.media_types)?;
        writeln!(
            f,
            "orphan media types removed: {}",
            self.orphans_removed.len()
        )?;
        for p in &self.orphans_removed {
            writeln!(f, "  {}", p.display())?;
        }
        writeln!(f, "temp files removed: {}", self.temp_removed.len())?;
        for p in &self.temp_removed {
            writeln!(f, "  {}", p.display())?;
        }
        if !self.temp_in_use.is_empty() {
            writeln!(f, "temp files in use (kept): {}", self.temp_in_use.len())?;
        }
        if !self.errors.is_empty() {
            writeln!(f, "errors: {}", self.errors.len())?;
            for (p, e) in &self.errors {
                writeln!(f, "  {}: {e}", p.display())?;
            }
        }
        Ok(())
    }
}

/// Verifies the store rooted at `root` (blocking). `Err` only when the store itself cannot be
/// read (no such directory, say); trouble with single entries lands in [`Report::errors`].
pub fn run(root: &Path) -> io::Result<Report> {
    let blobs = store::blobs_dir(root);
    let quarantine = root.join("quarantine");
    let mut report = Report {
        root: root.to_owned(),
        ..Report::default()
    };
    let entries = std::fs::read_dir(&blobs)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", blobs.display())))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        match check(&entry) {
            Ok(None) => {}
            Ok(Some(Checked {
                len, reason: None, ..
            })) => {
                report.checked += 1;
                report.bytes += len;
                report.ok += 1;
            }
            Ok(Some(Checked {
                len,
                reason: Some(reason),
                id,
            })) => {
                report.checked += 1;
                report.bytes += len;
                report.quarantine(path, id, &quarantine, reason);
            }
            Err(e) => report.errors.push((path, e)),
        }
    }
    check_media_types(root, &blobs, &quarantine, &mut report)?;
    clear_tmp(root, &mut report)?;
    Ok(report)
}

/// The pass over `manifests/sha256/` (see the module docs).
fn check_media_types(
    root: &Path,
    blobs: &Path,
    quarantine: &Path,
    report: &mut Report,
) -> io::Result<()> {
    let Some(entries) = read_dir_if_any(&root.join("manifests").join("sha256"))? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        // `.<hex>.tmp`: a type being written right now by a running berth (or a crash's leftover,
        // a few bytes, replaced on the manifest's next fetch).
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                report.errors.push((path, e));
                continue;
            }
        };
        report.media_types += 1;
        let id = (meta.dev(), meta.ino());
        let reason = match name.to_str().and_then(Digest::from_hex) {
            None => Some(Reason::BadName),
            Some(_) if !meta.is_file() => Some(Reason::NotAFile),
            Some(d) => {
                if !blobs.join(d.hex()).exists() {
                    match std::fs::remove_file(&path) {
                        Ok(()) => report.orphans_removed.push(path),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => report.errors.push((path, e)),
                    }
                    continue;
                }
                match std::fs::read(&path) {
                    Ok(text) => (!is_media_type(&text)).then_some(Reason::BadMediaType),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        report.errors.push((path, e));
                        continue;
                    }
                }
            }
        };
        if let Some(reason) = reason {
            report.quarantine(path, id, quarantine, reason);
        }
    }
    Ok(())
}

/// Whether a media-type file holds what berth writes there: one `type/subtype` (parameters
/// allowed), printable ASCII, at most 255 bytes, an optional trailing newline.
fn is_media_type(text: &[u8]) -> bool {
    let t = text.strip_suffix(b"\n").unwrap_or(text);
    let Ok(t) = std::str::from_utf8(t) else {
        return false;
    };
    let essence = t.split(';').next().unwrap_or("").trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    t.len() <= 255 && t.bytes().all(|b| (0x20..0x7f).contains(&b)) && token(ty) && token(sub)
}

/// One entry's verdict: its length, why it is bad (`None`: good), and the inode that was judged.
struct Checked {
    len: u64,
    reason: Option<Reason>,
    id: (u64, u64),
}

/// Hashes one entry; `Ok(None)` when it vanished before it could be read.
fn check(entry: &std::fs::DirEntry) -> io::Result<Option<Checked>> {
    let not_found = |e: io::Error| -> io::Result<Option<Checked>> {
        match e.kind() {
            io::ErrorKind::NotFound => Ok(None),
            _ => Err(e),
        }
    };
    let meta = match entry.metadata() {
        Ok(m) => m,
        Err(e) => return not_found(e),
    };
    let id = (meta.dev(), meta.ino());
    if !meta.file_type().is_file() {
        return Ok(Some(Checked {
            len: 0,
            reason: Some(Reason::NotAFile),
            id,
        }));
    }
    let Some(expected) = entry.file_name().to_str().and_then(Digest::from_hex) else {
        return Ok(Some(Checked {
            len: meta.len(),
            reason: Some(Reason::BadName),
            id,
        }));
    };
    let mut file = match File::open(entry.path()) {
        Ok(f) => f,
        Err(e) => return not_found(e),
    };
    // Judge the inode we read, whatever the path names by the time we are done.
    let meta = file.metadata()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut len = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let actual = Digest::from_sha256(&hasher.finalize());
    Ok(Some(Checked {
        len,
        reason: (actual != expected).then_some(Reason::Mismatch { actual }),
        id: (meta.dev(), meta.ino()),
    }))
}

/// Moves `path` into `quarantine` if it still names inode `id`; the new path, or `None` when the
/// entry is gone or was replaced.
fn move_aside(path: &Path, id: (u64, u64), quarantine: &Path) -> io::Result<Option<PathBuf>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == id => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(quarantine)?;
    let name = path.file_name().expect("a directory entry has a name");
    let mut to = quarantine.join(name);
    let mut n = 0u32;
    // Never overwrite an earlier quarantined file (two concurrent verify runs could still race
    // here; both files would then be bad ones).
    while std::fs::symlink_metadata(&to).is_ok() {
        n += 1;
        to = quarantine.join(format!("{}.{n}", name.to_string_lossy()));
    }
    match std::fs::rename(path, &to) {
        Ok(()) => Ok(Some(to)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The entries of `dir`; `None` when there is no such directory. Errors name the directory.
fn read_dir_if_any(dir: &Path) -> io::Result<Option<std::fs::ReadDir>> {
    match std::fs::read_dir(dir) {
        Ok(e) => Ok(Some(e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    }
}

/// Removes temp files whose writer is gone.
fn clear_tmp(root: &Path, report: &mut Report) -> io::Result<()> {
    // berth creates it on start; a store that never ran has none.
    let Some(entries) = read_dir_if_any(&store::tmp_dir(root))? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_file() => {}
            _ => continue,
        }
        let owner = entry.file_name().to_str().and_then(store::temp_file_owner);
        if owner.is_some_and(process_running) {
            report.temp_in_use.push(path);
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => report.temp_removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => report.errors.push((path, e)),
        }
    }
    Ok(())
}

/// Whether process `pid` exists. Without `/proc` this cannot be told, and the answer is yes: a
/// leftover kept is harmless (berth clears it on its next start), a live fill removed is not.
fn process_running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// `berth verify`'s exit code: 2 when something could not be checked or mended, else 1 when
/// something bad was taken out of the cache, else 0.
fn exit_code(errors: bool, removed: bool) -> u8 {
    match (errors, removed) {
        (true, _) => 2,
        (false, true) => 1,
        (false, false) => 0,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_store_is_fine_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(run(dir.path()).is_err(), "no blobs/sha256: not a store");
        std::fs::create_dir_all(store::blobs_dir(dir.path())).unwrap();
        let r = run(dir.path()).unwrap();
        assert_eq!((r.checked, r.exit_code()), (0, 0));
        assert!(
            !dir.path().join("quarantine").exists(),
            "created only when needed"
        );
    }

    #[test]
    fn media_types_are_what_berth_writes() {
        for good in [
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v1+prettyjws\n",
            "application/json; charset=utf-8",
        ] {
            assert!(is_media_type(good.as_bytes()), "{good}");
        }
        let long = format!("a/{}", "b".repeat(300));
        for bad in [
            &b""[..],
            b"\n",
            b"json",
            b"application/",
            b"/json",
            b"a/b\x00",
            b"\xff\xfe/x",
            b"a/b\n\n",
            long.as_bytes(),
        ] {
            assert!(!is_media_type(bad), "{bad:?}");
        }
    }

    #[test]
    fn quarantine_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = store::blobs_dir(dir.path());
        std::fs::create_dir_all(&blobs).unwrap();
        for round in 0..3 {
            std::fs::write(blobs.join("junk"), format!("round {round}")).unwrap();
            let r = run(dir.path()).unwrap();
            assert_eq!(r.quarantined.len(), 1);
            assert_eq!(r.quarantined[0].reason, Reason::BadName);
        }
        let q = dir.path().join("quarantine");
        for (name, text) in [
            ("junk", "round 0"),
            ("junk.1", "round 1"),
            ("junk.2", "round 2"),
        ] {
            assert_eq!(std::fs::read_to_string(q.join(name)).unwrap(), text);
        }
    }

    #[test]
    fn temp_files_of_a_running_berth_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(store::blobs_dir(dir.path())).unwrap();
        let tmp = store::tmp_dir(dir.path());
        std::fs::create_dir_all(&tmp).unwrap();
        let hex = "b".repeat(64);
        let live = tmp.join(format!("{hex}.{}.0.part", std::process::id()));
        std::fs::write(&live, b"filling").unwrap();
        let r = run(dir.path()).unwrap();
        assert!(live.exists());
        assert_eq!(r.temp_in_use, vec![live]);
        assert!(r.temp_removed.is_empty());
        assert_eq!(r.exit_code(), 0);
    }
}
