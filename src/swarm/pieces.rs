//! A blob cut into pieces: the piece size rule, the range arithmetic, the table of piece hashes
//! as it becomes known, and the incremental hasher that makes it while a fill streams.
//!
//! The central berth hashes each piece (sha256) while its fill writes the blob, so the table is
//! known progressively: the hash of piece `k` exists once the fill passed the end of `k`. The
//! hashes always form a prefix (pieces `0..known`), because a fill writes in order. A node checks
//! every piece it gets from a peer against the table ([`PieceTable::verify`]); the whole digest
//! is still checked at the end by the node's fill, so the table only finds a liar early.
//!
//! The size rule: 1 MiB, doubled until the blob has at most 4096 pieces. 1 MiB keeps the
//! per-hop delay of verified-only forwarding small (one piece at the link's cap: about 10 ms at
//! 100 MB/s), while 4096 hashes (128 KiB of table, 2 x that in hex JSON) bound the table of a
//! blob of any size; a 4 GiB blob gets 1 MiB pieces, a 64 GiB blob 16 MiB ones. The rule is part
//! of the protocol (the node recomputes it from the size and refuses a table that disagrees).
//!
//! Rule of dependency: a leaf (sha2 only).

use std::ops::Range;

use sha2::{Digest as _, Sha256};

/// The smallest piece.
pub const MIN_PIECE_SIZE: u64 = 1 << 20;

/// The most pieces a blob is cut into.
pub const MAX_PIECES: u64 = 4096;

/// The sha256 of one piece.
pub type PieceHash = [u8; 32];

/// The piece size of a blob of `size` bytes: [`MIN_PIECE_SIZE`], doubled until there are at most
/// [`MAX_PIECES`] pieces.
pub fn piece_size_for(size: u64) -> u64 {
    let mut p = MIN_PIECE_SIZE;
    // Terminates before overflow: at p = 2^52, u64::MAX / p < 4096.
    while size.div_ceil(p) > MAX_PIECES {
        p *= 2;
    }
    p
}

/// How a blob of a given size is cut: the range arithmetic, no hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    size: u64,
    piece_size: u64,
}

impl Layout {
    /// The layout of a blob of `size` bytes, by the size rule.
    pub fn new(size: u64) -> Layout {
        Layout {
            size,
            piece_size: piece_size_for(size),
        }
    }

    /// The layout a peer announced, if it is the one the rule gives for that size.
    pub fn checked(size: u64, piece_size: u64) -> Option<Layout> {
        (piece_size == piece_size_for(size)).then_some(Layout { size, piece_size })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn piece_size(&self) -> u64 {
        self.piece_size
    }

    /// How many pieces: 0 for a 0-byte blob (nothing to check but its digest).
    pub fn count(&self) -> u32 {
        // At most MAX_PIECES by the size rule.
        self.size.div_ceil(self.piece_size) as u32
    }

    /// The piece holding byte `offset`, if the blob has that byte.
    pub fn piece_of(&self, offset: u64) -> Option<u32> {
        (offset < self.size).then(|| (offset / self.piece_size) as u32)
    }

    /// The bytes of piece `k` (the last one may be short); empty past the end.
    pub fn range(&self, k: u32) -> Range<u64> {
        let start = (u64::from(k) * self.piece_size).min(self.size);
        let end = (start + self.piece_size).min(self.size);
        start..end
    }

    /// The length of piece `k`.
    pub fn len(&self, k: u32) -> u64 {
        let r = self.range(k);
        r.end - r.start
    }

    /// The offset where the piece holding `offset` starts (`size` for `offset >= size`).
    pub fn piece_start(&self, offset: u64) -> u64 {
        match self.piece_of(offset) {
            Some(k) => self.range(k).start,
            None => self.size,
        }
    }

    /// How many whole pieces the first `bytes` bytes hold (the last short piece counts once the
    /// blob is complete).
    pub fn whole_pieces(&self, bytes: u64) -> u32 {
        if bytes >= self.size {
            self.count()
        } else {
            (bytes / self.piece_size) as u32
        }
    }
}

/// What [`PieceTable::verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The bytes are piece `k`.
    Good,
    /// They are not (wrong hash or wrong length): the source lied or broke.
    Bad,
    /// The hash of `k` is not known yet: wait for the table to grow.
    Unknown,
}

/// Why a table refused hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// The hashes would leave a gap after the known prefix.
    Gap { known: u32, first: u32 },
    /// More hashes than the blob has pieces.
    TooMany,
    /// A hash already known came again, different: the table's source contradicts itself.
    Conflict { piece: u32 },
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableError::Gap { known, first } => {
                write!(f, "hashes from piece {first} leave a gap after {known}")
            }
            TableError::TooMany => f.write_str("more hashes than the blob has pieces"),
            TableError::Conflict { piece } => write!(f, "piece {piece}'s hash changed"),
        }
    }
}

/// The piece hashes of one blob known so far (a prefix), and the check of a piece against them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceTable {
    layout: Layout,
    hashes: Vec<PieceHash>,
}

impl PieceTable {
    pub fn new(layout: Layout) -> PieceTable {
        PieceTable {
            layout,
            hashes: Vec::new(),
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// How many hashes are known (pieces `0..known`).
    pub fn known(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// Every piece's hash is known.
    pub fn is_complete(&self) -> bool {
        self.known() == self.layout.count()
    }

    pub fn hash(&self, k: u32) -> Option<&PieceHash> {
        self.hashes.get(k as usize)
    }

    /// The known hashes from piece `first` on.
    pub fn hashes_from(&self, first: u32) -> &[PieceHash] {
        self.hashes.get(first as usize..).unwrap_or(&[])
    }

    /// Adds `hashes` of pieces `first..`: they may overlap the known prefix (where they must be
    /// equal) but not leave a gap after it. All or nothing.
    pub fn extend(&mut self, first: u32, hashes: &[PieceHash]) -> Result<(), TableError> {
        let known = self.known();
        if first > known {
            return Err(TableError::Gap { known, first });
        }
        let end = u64::from(first) + hashes.len() as u64;
        if end > u64::from(self.layout.count()) {
            return Err(TableError::TooMany);
        }
        for (i, h) in hashes.iter().enumerate() {
            let k = first + i as u32;
            if let Some(old) = self.hashes.get(k as usize)
                && old != h
            {
                return Err(TableError::Conflict { piece: k });
            }
        }
        let skip = (known - first) as usize;
        self.hashes
            .extend_from_slice(hashes.get(skip..).unwrap_or(&[]));
        Ok(())
    }

    /// Checks `bytes` as piece `k`.
    pub fn verify(&self, k: u32, bytes: &[u8]) -> Check {
        if bytes.len() as u64 != self.layout.len(k) || k >= self.layout.count() {
            return Check::Bad;
        }
        self.verify_hash(k, &Sha256::digest(bytes).into())
    }

    /// Checks the hash of piece `k` as received (its length already checked by the hasher that
    /// made it).
    pub fn verify_hash(&self, k: u32, hash: &PieceHash) -> Check {
        match self.hash(k) {
            None if k < self.layout.count() => Check::Unknown,
            None => Check::Bad,
            Some(h) if h == hash => Check::Good,
            Some(_) => Check::Bad,
        }
    }
}

/// More bytes than the blob has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overrun;

/// Hashes pieces as a blob streams by, in chunks of any size: the central fill feeds it what it
/// writes, and gets each piece's hash as soon as the piece's last byte passed.
#[derive(Clone)]
pub struct PieceHasher {
    layout: Layout,
    /// Bytes fed so far.
    offset: u64,
    /// The hash of the current piece's bytes so far.
    current: Sha256,
}

impl PieceHasher {
    pub fn new(layout: Layout) -> PieceHasher {
        PieceHasher::resume(layout, 0, Sha256::new())
    }

    /// A hasher at `offset`, which must be a piece boundary (or the end).
    pub fn at_boundary(layout: Layout, offset: u64) -> Option<PieceHasher> {
        (offset == layout.piece_start(offset))
            .then(|| PieceHasher::resume(layout, offset, Sha256::new()))
    }

    /// A hasher at `offset` whose current piece's bytes so far hashed to `current`.
    fn resume(layout: Layout, offset: u64, current: Sha256) -> PieceHasher {
        PieceHasher {
            layout,
            offset,
            current,
        }
    }

    /// Bytes fed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Every byte of the blob was fed.
    pub fn is_done(&self) -> bool {
        self.offset == self.layout.size()
    }

    /// Feeds the next `chunk`; calls `done(k, hash)` for each piece it completes, in order.
    /// A chunk that would run past the blob's size is refused whole.
    pub fn update(
        &mut self,
        mut chunk: &[u8],
        mut done: impl FnMut(u32, PieceHash),
    ) -> Result<(), Overrun> {
        if chunk.len() as u64 > self.layout.size() - self.offset {
            return Err(Overrun);
        }
        while !chunk.is_empty() {
            let k = self
                .layout
                .piece_of(self.offset)
                .expect("checked: the offset is inside the blob");
            let end = self.layout.range(k).end;
            let take = (end - self.offset).min(chunk.len() as u64) as usize;
            self.current.update(&chunk[..take]);
            self.offset += take as u64;
            chunk = &chunk[take..];
            if self.offset == end {
                let hash = std::mem::take(&mut self.current).finalize();
                done(k, hash.into());
            }
        }
        Ok(())
    }

    /// A copy to go back to (the node side keeps one at its verified frontier, to resume there
    /// from another source).
    pub fn snapshot(&self) -> PieceHasher {
        PieceHasher::resume(self.layout, self.offset, self.current.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn sha(b: &[u8]) -> PieceHash {
        Sha256::digest(b).into()
    }

    fn blob(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_size_rule() {
        assert_eq!(piece_size_for(0), MIB);
        assert_eq!(piece_size_for(1), MIB);
        assert_eq!(piece_size_for(4096 * MIB), MIB);
        assert_eq!(piece_size_for(4096 * MIB + 1), 2 * MIB);
        assert_eq!(piece_size_for(8192 * MIB), 2 * MIB);
        assert_eq!(piece_size_for(64 << 30), 16 * MIB);
        // Any size: at most 4096 pieces, and half the piece would give more.
        for size in [1, MIB, 5 << 30, 1 << 40, u64::MAX / 3, u64::MAX] {
            let p = piece_size_for(size);
            assert!(size.div_ceil(p) <= MAX_PIECES, "{size}");
            assert!(p == MIB || size.div_ceil(p / 2) > MAX_PIECES, "{size}");
        }
        assert_eq!(Layout::new(u64::MAX).count(), 4096);
    }

    #[test]
    fn a_layout_announced_by_a_peer_must_follow_the_rule() {
        assert_eq!(Layout::checked(10 * MIB, MIB), Some(Layout::new(10 * MIB)));
        assert_eq!(Layout::checked(10 * MIB, 2 * MIB), None);
        assert_eq!(Layout::checked(10 * MIB, 0), None);
    }

    #[test]
    fn range_arithmetic() {
        let l = Layout::new(2 * MIB + 5);
        assert_eq!(l.count(), 3);
        assert_eq!(l.range(0), 0..MIB);
        assert_eq!(l.range(1), MIB..2 * MIB);
        // The last piece is short.
        assert_eq!(l.range(2), 2 * MIB..2 * MIB + 5);
        assert_eq!(l.len(2), 5);
        // Past the end: empty.
        assert_eq!(l.range(3), 2 * MIB + 5..2 * MIB + 5);
        assert_eq!(l.len(3), 0);
        assert_eq!(l.piece_of(0), Some(0));
        assert_eq!(l.piece_of(MIB - 1), Some(0));
        assert_eq!(l.piece_of(MIB), Some(1));
        assert_eq!(l.piece_of(2 * MIB + 4), Some(2));
        assert_eq!(l.piece_of(2 * MIB + 5), None);
        assert_eq!(l.piece_start(MIB + 7), MIB);
        assert_eq!(l.piece_start(2 * MIB + 5), 2 * MIB + 5);
        assert_eq!(l.whole_pieces(MIB - 1), 0);
        assert_eq!(l.whole_pieces(2 * MIB + 4), 2);
        assert_eq!(l.whole_pieces(2 * MIB + 5), 3);
        // An exact multiple has no short piece.
        let even = Layout::new(2 * MIB);
        assert_eq!(even.count(), 2);
        assert_eq!(even.len(1), MIB);
    }

    #[test]
    fn a_zero_byte_blob_has_no_pieces() {
        let l = Layout::new(0);
        assert_eq!(l.count(), 0);
        assert_eq!(l.piece_of(0), None);
        assert_eq!(l.range(0), 0..0);
        let t = PieceTable::new(l);
        assert!(t.is_complete());
        assert_eq!(t.verify(0, b""), Check::Bad);
        let mut h = PieceHasher::new(l);
        assert!(h.is_done());
        let mut seen = Vec::new();
        h.update(b"", |k, x| seen.push((k, x))).unwrap();
        assert!(seen.is_empty());
        assert_eq!(h.update(b"x", |_, _| {}), Err(Overrun));
    }

    #[test]
    fn verify_checks_hash_and_length() {
        let data = blob((MIB + 10) as usize);
        let l = Layout::new(data.len() as u64);
        let mut t = PieceTable::new(l);
        let p0 = &data[..MIB as usize];
        let p1 = &data[MIB as usize..];
        assert_eq!(t.verify(0, p0), Check::Unknown);
        t.extend(0, &[sha(p0)]).unwrap();
        assert_eq!(t.verify(0, p0), Check::Good);
        assert_eq!(t.verify(1, p1), Check::Unknown);
        t.extend(1, &[sha(p1)]).unwrap();
        assert!(t.is_complete());
        assert_eq!(t.verify(1, p1), Check::Good);
        // One flipped byte, a short piece, a long one, the wrong piece, a piece past the end.
        let mut flipped = p1.to_vec();
        flipped[3] ^= 1;
        assert_eq!(t.verify(1, &flipped), Check::Bad);
        assert_eq!(t.verify(0, &p0[1..]), Check::Bad);
        assert_eq!(t.verify(1, &data[MIB as usize - 1..]), Check::Bad);
        assert_eq!(t.verify(0, p1), Check::Bad);
        assert_eq!(t.verify(2, b""), Check::Bad);
        assert_eq!(t.verify_hash(2, &sha(b"")), Check::Bad);
    }

    #[test]
    fn the_table_grows_as_a_prefix() {
        let l = Layout::new(3 * MIB);
        let mut t = PieceTable::new(l);
        let h = [[1u8; 32], [2u8; 32], [3u8; 32]];
        assert_eq!(
            t.extend(1, &h[1..]),
            Err(TableError::Gap { known: 0, first: 1 })
        );
        t.extend(0, &h[..1]).unwrap();
        // Overlap that agrees: fine, and only the new ones are added.
        t.extend(0, &h[..2]).unwrap();
        assert_eq!(t.known(), 2);
        // Overlap that disagrees: refused whole, nothing added.
        assert_eq!(
            t.extend(1, &[[9u8; 32], h[2]]),
            Err(TableError::Conflict { piece: 1 })
        );
        assert_eq!(t.known(), 2);
        assert_eq!(t.extend(2, &[h[2], h[2]]), Err(TableError::TooMany));
        assert_eq!(t.known(), 2);
        t.extend(2, &h[2..]).unwrap();
        assert!(t.is_complete());
        assert_eq!(t.hashes_from(1), &h[1..]);
        assert_eq!(t.hashes_from(7), &[] as &[PieceHash]);
        // Nothing new is fine too.
        t.extend(3, &[]).unwrap();
        assert_eq!(t.known(), 3);
    }

    fn expected(data: &[u8]) -> Vec<(u32, PieceHash)> {
        let l = Layout::new(data.len() as u64);
        (0..l.count())
            .map(|k| {
                let r = l.range(k);
                (k, sha(&data[r.start as usize..r.end as usize]))
            })
            .collect()
    }

    #[test]
    fn the_hasher_yields_each_piece_when_it_completes() {
        let data = blob((2 * MIB + 3) as usize);
        let l = Layout::new(data.len() as u64);
        let mut h = PieceHasher::new(l);
        let mut seen = Vec::new();
        // Up to one byte before piece 0's end: nothing yet.
        h.update(&data[..MIB as usize - 1], |k, x| seen.push((k, x)))
            .unwrap();
        assert!(seen.is_empty());
        // Its last byte and the whole of piece 1 in one chunk: both.
        h.update(&data[MIB as usize - 1..2 * MIB as usize], |k, x| {
            seen.push((k, x))
        })
        .unwrap();
        assert_eq!(seen.len(), 2);
        assert!(!h.is_done());
        // A chunk running past the end is refused whole.
        let mut long = data[2 * MIB as usize..].to_vec();
        long.push(0);
        assert_eq!(h.update(&long, |k, x| seen.push((k, x))), Err(Overrun));
        assert_eq!(h.offset(), 2 * MIB);
        h.update(&data[2 * MIB as usize..], |k, x| seen.push((k, x)))
            .unwrap();
        assert!(h.is_done());
        assert_eq!(seen, expected(&data));
    }

    #[test]
    fn a_snapshot_resumes_where_it_was_taken() {
        let data = blob((MIB + 100) as usize);
        let l = Layout::new(data.len() as u64);
        let mut h = PieceHasher::new(l);
        h.update(&data[..1000], |_, _| {}).unwrap();
        let snap = h.snapshot();
        // Wrong bytes after the snapshot, then back to it and the right ones.
        h.update(&vec![0u8; 5000], |_, _| {}).unwrap();
        let mut h = snap;
        assert_eq!(h.offset(), 1000);
        let mut seen = Vec::new();
        h.update(&data[1000..], |k, x| seen.push((k, x))).unwrap();
        assert_eq!(seen, expected(&data));
    }

    #[test]
    fn a_hasher_may_start_at_a_piece_boundary() {
        let data = blob((2 * MIB + 1) as usize);
        let l = Layout::new(data.len() as u64);
        assert!(PieceHasher::at_boundary(l, 5).is_none());
        let mut h = PieceHasher::at_boundary(l, MIB).unwrap();
        let mut seen = Vec::new();
        h.update(&data[MIB as usize..], |k, x| seen.push((k, x)))
            .unwrap();
        assert_eq!(seen, expected(&data)[1..]);
        assert!(PieceHasher::at_boundary(l, l.size()).unwrap().is_done());
    }

    proptest! {
        // Each case hashes up to 3 MiB; 64 cases keep the test under a second.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the chunk boundaries, the hasher yields the hashes of the pieces, in order.
        #[test]
        fn any_chunking_gives_the_same_hashes(
            len in 0usize..(3 * MIB as usize + 17),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let data = blob(len);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(len + 1)).collect();
            cuts.push(0);
            cuts.push(len);
            cuts.sort_unstable();
            let mut h = PieceHasher::new(Layout::new(len as u64));
            let mut seen = Vec::new();
            for w in cuts.windows(2) {
                h.update(&data[w[0]..w[1]], |k, x| seen.push((k, x))).unwrap();
            }
            prop_assert!(h.is_done());
            prop_assert_eq!(seen, expected(&data));
        }
    }
}
