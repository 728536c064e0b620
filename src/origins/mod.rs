//! Which upstreams a cached digest came through.
//!
//! berth caches content by digest, and a digest's bytes are the same whoever serves them; but who
//! may *read* them is not. A blob fetched with berth's credentials from a private upstream must
//! not be readable by digest through a public one just because it sits in the cache. So every
//! digest that an upstream served (a verified fill, a verified manifest, a tag it resolved to) is
//! recorded for that upstream, and the mirror answers a cached digest through upstream U only if
//! it is recorded for U; otherwise it asks U whether it has the digest (a HEAD: [`check`])
//! and records the answer: yes, and the cache serves; no, and the client gets U's own "no",
//! learning nothing about what is cached.
//!
//! Digests with no record at all were cached before berth kept records (a cache made by an older
//! version): they are served as before (the open model they were cached under), so an upgrade
//! does not make an offline mirror's cache unreadable.
//!
//! Storage: one append-only file per upstream name, `origins/<name>`, one hex digest a line,
//! read once at start into a map of digest -> bitmask of upstream slots. A record is a 65-byte
//! append (atomic for so small a write); a crash loses at most a record, which costs one
//! confirmation later, never a wrong answer; a torn last line is skipped and ended at the next
//! start. Records of evicted blobs stay in the files (a digest once served by an upstream stays
//! so; 65 bytes each). Slots from 64 up are not recorded: their digests are confirmed every time.
//!
//! The question itself ("may this upstream serve this digest?": these records, the bucket's
//! marker, the upstream's HEAD) is asked in one place, [`check`].
//!
//! Rule of dependency: this file (the records) uses `oci` only, a leaf beside `store`; [`check`]
//! uses these records, `tier`, `upstream`, `metrics`. `mirror` and `fill` use both.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::oci::Digest;

pub mod check;

/// What the records say about a digest and an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Recorded for this upstream.
    Recorded,
    /// Recorded for other upstreams only: ask this one.
    Elsewhere,
    /// No record at all (cached before records were kept).
    Unrecorded,
}

/// Most upstream slots with records (a `u64` bitmask per digest).
const SLOTS: usize = 64;

pub struct Origins {
    dir: PathBuf,
    /// Digest (raw) -> slots it is recorded for.
    map: Mutex<HashMap<[u8; 32], u64>>,
    /// Serializes appends, so lines never interleave.
    append: Mutex<()>,
}

fn key(d: &Digest) -> [u8; 32] {
    let mut k = [0u8; 32];
    // A Digest always holds 64 lowercase hex characters.
    let _ = hex::decode_to_slice(d.hex(), &mut k);
    k
}

impl Origins {
    /// Reads the records under `root/origins/` for the upstreams in `names` (by slot).
    pub fn open(root: &Path, names: &[String]) -> io::Result<Origins> {
        let dir = root.join("origins");
        std::fs::create_dir_all(&dir)?;
        let mut map: HashMap<[u8; 32], u64> = HashMap::new();
        for (slot, name) in names.iter().enumerate().take(SLOTS) {
            let bytes = match std::fs::read(dir.join(name)) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // A torn last line (a crash mid-append) parses as no digest and is skipped.
            for line in bytes.split(|&b| b == b'\n') {
                if let Some(d) = std::str::from_utf8(line).ok().and_then(Digest::from_hex) {
                    *map.entry(key(&d)).or_default() |= 1 << slot;
                }
            }
            if bytes.last().is_some_and(|&b| b != b'\n') {
                // End the torn line, so the next record starts on a line of its own.
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(dir.join(name))?
                    .write_all(b"\n")?;
            }
        }
        Ok(Origins {
            dir,
            map: Mutex::new(map),
            append: Mutex::new(()),
        })
    }

    /// What is recorded about `digest` for the upstream in `slot`.
    pub fn check(&self, slot: usize, digest: &Digest) -> Provenance {
        let map = self.map.lock().unwrap();
        match map.get(&key(digest)) {
            None => Provenance::Unrecorded,
            Some(bits) if slot < SLOTS && bits & (1 << slot) != 0 => Provenance::Recorded,
            Some(_) => Provenance::Elsewhere,
        }
    }

    /// Records that the upstream `name` in `slot` served `digest`. A failure to write the record
    /// is logged: it only costs a confirmation later.
    pub fn record(&self, slot: usize, name: &str, digest: &Digest) {
        if slot >= SLOTS {
            return;
        }
        {
            let mut map = self.map.lock().unwrap();
            let bits = map.entry(key(digest)).or_default();
            if *bits & (1 << slot) != 0 {
                return;
            }
            *bits |= 1 << slot;
        }
        let _one = self.append.lock().unwrap();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .and_then(|mut f| f.write_all(format!("{}\n", digest.hex()).as_bytes()));
        if let Err(e) = written {
            tracing::warn!(upstream = name, %digest, error = %e, "could not record where a digest came from");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_restart_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["docker.io".to_owned(), "private.example:5000".to_owned()];
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let o = Origins::open(dir.path(), &names).unwrap();
        assert_eq!(o.check(0, &a), Provenance::Unrecorded);
        o.record(1, &names[1], &a);
        o.record(1, &names[1], &a); // once on disk
        assert_eq!(o.check(1, &a), Provenance::Recorded);
        assert_eq!(o.check(0, &a), Provenance::Elsewhere);
        o.record(0, &names[0], &b);
        // A crash mid-append leaves half a line.
        let file = dir.path().join("origins/private.example:5000");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(&b.hex().as_bytes()[..20]).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);

        let o = Origins::open(dir.path(), &names).unwrap();
        assert_eq!(o.check(1, &a), Provenance::Recorded);
        assert_eq!(o.check(0, &a), Provenance::Elsewhere);
        assert_eq!(o.check(0, &b), Provenance::Recorded);
        assert_eq!(o.check(1, &b), Provenance::Elsewhere);
        // The torn line was ended: a new record is read back.
        let c = Digest::of(b"c");
        o.record(1, &names[1], &c);
        let o = Origins::open(dir.path(), &names).unwrap();
        assert_eq!(o.check(1, &c), Provenance::Recorded);
        // Slots past the bitmask are never recorded, so always confirmed.
        o.record(70, "far", &a);
        assert_eq!(o.check(70, &a), Provenance::Elsewhere);
    }
}
