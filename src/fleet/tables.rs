//! The parent's piece tables (`GET /_berth/fleet/v1/pieces/<digest>?from=K`): made lazily, on
//! the first ask for a digest, by a small task per digest that reads the blob the way a client
//! of the parent would ([`Blobs::follow`]: the committed file, a fill in progress followed as
//! it grows, or with a bucket tier the bucket's object, checked whole) and hashes it into a [`PieceTable`] with a [`PieceHasher`], publishing how many
//! hashes are known on a `watch`. A request that finds no hash past its `from` waits for the
//! next one until [`WAIT`] after it arrived (the time its table took to start counted in: a
//! bucket's answer can take a while, and a forwarded call's budget, `owner::PIECES_WAIT`, is
//! only half a second more), so nodes need not poll hard.
//!
//! Why a second pass rather than hashing inside the fill: the fill (`fill::job`) and the store
//! are the invariant files of berth's verify-before-serve promise, mutation-tested as such; a
//! reader beside them changes nothing they guarantee. The cost is a second sha256 pass over the
//! blob on the parent (about 1.3 GB/s per core with SHA-NI), mostly from the page cache (the
//! fill just wrote the bytes, or the file is cached), and only for the digests nodes ask about.
//! The table follows the fill at its pace, one piece behind at most; its last hash is known only
//! once the fill verified the whole digest (the reader holds back the last byte until then), so
//! a table is never complete over a wrong body.
//!
//! A table goes to any node of the fleet, whatever upstream its blob came through (no origin
//! check as a client's blob request has): it holds only hashes of a blob whose digest the node
//! named, and a node holds the fleet secret; the bytes themselves come from the parent only
//! through its ordinary, checked registry routes. The hashing runs on the runtime's workers in
//! slices of one read (up to 1 MiB, about a millisecond of sha256), not on a blocking thread.
//!
//! A fill that fails (a wrong digest, the upstream gone): the reader ends in an error, the table
//! is dropped, and the next ask starts over (with a new fill by then, or 404). No blob, no
//! running fill of known size and no bucket object: no table (the node asks again later).
//!
//! Bounded memory: at most [`MAX_TABLES`] tables (the least recently asked one is dropped, its
//! task stops at its next chunk), each at most `MAX_PIECES` hashes (32 bytes each: 128 KiB).
//!
//! Rule of dependency: part of `fleet`; uses `swarm::pieces` (the table and its hasher) and
//! `swarm::protocol` (the answer), `oci`, `error`; reads blobs through the [`Blobs`] it defines
//! (the mirror, wired in `assemble`), never the mirror or the store itself. `fleet::parent` uses
//! it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use prometheus::IntGauge;
use tokio::sync::watch;

use crate::error::Error;
use crate::oci::Digest;
use crate::swarm::pieces::{Layout, PieceHash, PieceHasher, PieceTable};
use crate::swarm::protocol::Pieces;

/// A blob's bytes, as a client of the parent reads them.
pub type BlobBody = Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

/// A blob followed from its start: its size and its bytes.
pub struct Followed {
    pub size: u64,
    pub body: BlobBody,
}

/// How the parent reads blobs (the mirror, in `assemble`): a trait so that `fleet` never calls
/// the mirror or the store, and the tables are tested over any stream.
pub trait Blobs: Send + Sync {
    /// The size of `digest` as the parent knows it now (a committed blob, a running fill that
    /// knows it); starts nothing.
    fn size<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Option<u64>>;
    /// The whole blob as a client would read it (the committed file, a running fill followed
    /// as it grows, or the bucket's object, its last bytes only once its digest checked);
    /// `None` when there is none of them. Starts no fill and keeps nothing.
    fn follow<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<Followed>, Error>>;
    /// The bytes a fill of `digest` running now has received (0 while its upstream has not
    /// answered); `None` when none runs. Starts nothing. By default none is seen.
    fn filling(&self, _digest: &Digest) -> Option<u64> {
        None
    }
}

/// The most piece tables kept at once: a few hundred blobs pulled across the fleet at the same
/// time, 128 KiB each at most.
pub const MAX_TABLES: usize = 256;

/// How long a request that finds no new hash waits for one.
pub const WAIT: Duration = Duration::from_secs(1);

/// How far a table's task has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    known: u32,
    /// The blob could not be read whole (its fill failed): the table is dropped.
    failed: bool,
}

/// One digest's table and its progress.
struct Table {
    hashes: Mutex<PieceTable>,
    progress: watch::Sender<Progress>,
}

impl Table {
    fn layout(&self) -> Layout {
        self.hashes.lock().unwrap().layout()
    }

    fn add(&self, new: &[PieceHash]) {
        let mut t = self.hashes.lock().unwrap();
        let known = t.known();
        t.extend(known, new)
            .expect("the hasher gives the next pieces, in order, never past the blob");
        let known = t.known();
        drop(t);
        self.progress.send_replace(Progress {
            known,
            failed: false,
        });
    }
}

/// Why a pieces request gets no table.
#[derive(Debug, Clone)]
pub enum NoTable {
    /// No blob and no running fill of known size, or the fill failed (the words say which).
    Unknown(String),
    /// `from` past the blob's pieces.
    BadFrom(String),
    /// The blob could not be opened (the store's error).
    Failed(Error),
}

#[derive(Default)]
struct Lru {
    entries: HashMap<Digest, (Arc<Table>, u64)>,
    tick: u64,
}

/// The piece tables of the digests nodes asked about.
pub struct Tables {
    lru: Arc<Mutex<Lru>>,
    /// `berth_fleet_piece_tables`.
    gauge: IntGauge,
    max: usize,
}

impl Tables {
    pub fn new(gauge: IntGauge) -> Tables {
        Tables::with_max(gauge, MAX_TABLES)
    }

    fn with_max(gauge: IntGauge, max: usize) -> Tables {
        Tables {
            lru: Arc::default(),
            gauge,
            max,
        }
    }

    /// How many tables are kept.
    pub fn len(&self) -> usize {
        self.lru.lock().unwrap().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The layout of `digest`'s table, if one is kept (its size is known).
    pub fn layout(&self, digest: &Digest) -> Option<Layout> {
        let lru = self.lru.lock().unwrap();
        lru.entries.get(digest).map(|(t, _)| t.layout())
    }

    /// The hashes of `digest` from piece `from` on: from its table, made now if there is none
    /// (over `blobs`), after waiting until `wait` after the call for a hash past `from` if there
    /// is none yet.
    pub async fn pieces(
        &self,
        blobs: &dyn Blobs,
        digest: &Digest,
        from: u32,
        wait: Duration,
    ) -> Result<Pieces, NoTable> {
        let deadline = tokio::time::Instant::now() + wait;
        let table = self.table(blobs, digest).await?;
        let count = table.layout().count();
        if from > count {
            return Err(NoTable::BadFrom(format!(
                "from={from} is past the blob's {count} pieces"
            )));
        }
        let mut rx = table.progress.subscribe();
        let _ = tokio::time::timeout_at(
            deadline,
            rx.wait_for(|p| p.failed || p.known > from || p.known == count),
        )
        .await;
        if rx.borrow().failed {
            return Err(NoTable::Unknown(
                "the parent's fill of this blob failed: ask again later".to_owned(),
            ));
        }
        let t = table.hashes.lock().unwrap();
        Ok(Pieces::of(&t, from))
    }

    /// `digest`'s table, started now if there is none.
    async fn table(&self, blobs: &dyn Blobs, digest: &Digest) -> Result<Arc<Table>, NoTable> {
        if let Some(t) = self.get(digest) {
            return Ok(t);
        }
        let Followed { size, body } = blobs
            .follow(digest)
            .await
            .map_err(NoTable::Failed)?
            .ok_or_else(|| {
                NoTable::Unknown(
                    "the parent holds no such blob and fills none of known size: ask again later"
                        .to_owned(),
                )
            })?;
        let layout = Layout::new(size);
        let table = Arc::new(Table {
            hashes: Mutex::new(PieceTable::new(layout)),
            progress: watch::channel(Progress {
                known: 0,
                failed: false,
            })
            .0,
        });
        {
            let mut lru = self.lru.lock().unwrap();
            // Another request made it meanwhile: that one (this reader is dropped).
            lru.tick += 1;
            let tick = lru.tick;
            if let Some((t, used)) = lru.entries.get_mut(digest) {
                *used = tick;
                return Ok(t.clone());
            }
            if lru.entries.len() >= self.max {
                let oldest = lru
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(d, _)| d.clone());
                if let Some(d) = oldest {
                    lru.entries.remove(&d);
                }
            }
            lru.entries.insert(digest.clone(), (table.clone(), tick));
            self.gauge.set(lru.entries.len() as i64);
        }
        let task = Hashing {
            table: Arc::downgrade(&table),
            lru: self.lru.clone(),
            gauge: self.gauge.clone(),
            digest: digest.clone(),
            layout,
        };
        tokio::spawn(task.run(body));
        Ok(table)
    }

    fn get(&self, digest: &Digest) -> Option<Arc<Table>> {
        let mut lru = self.lru.lock().unwrap();
        lru.tick += 1;
        let tick = lru.tick;
        let (t, used) = lru.entries.get_mut(digest)?;
        *used = tick;
        Some(t.clone())
    }
}

/// One table's task: reads the blob, hashes it piece by piece.
struct Hashing {
    /// Weak: a table dropped from the LRU stops its task at the next chunk.
    table: Weak<Table>,
    lru: Arc<Mutex<Lru>>,
    gauge: IntGauge,
    digest: Digest,
    layout: Layout,
}

impl Hashing {
    async fn run(self, mut body: BlobBody) {
        let mut hasher = PieceHasher::new(self.layout);
        let whole = loop {
            match body.next().await {
                None => break hasher.is_done(),
                Some(Err(e)) => {
                    tracing::debug!(digest = %self.digest, error = %e, "fleet: piece table dropped, its blob failed");
                    break false;
                }
                Some(Ok(chunk)) => {
                    let Some(table) = self.table.upgrade() else {
                        return;
                    };
                    let mut new = Vec::new();
                    if hasher.update(&chunk, |_, h| new.push(h)).is_err() {
                        tracing::warn!(digest = %self.digest, "fleet: a blob longer than its size; piece table dropped");
                        break false;
                    }
                    if !new.is_empty() {
                        table.add(&new);
                    }
                }
            }
        };
        if whole {
            return;
        }
        let Some(table) = self.table.upgrade() else {
            return;
        };
        {
            let mut lru = self.lru.lock().unwrap();
            if lru
                .entries
                .get(&self.digest)
                .is_some_and(|(t, _)| Arc::ptr_eq(t, &table))
            {
                lru.entries.remove(&self.digest);
                self.gauge.set(lru.entries.len() as i64);
            }
        }
        let known = table.hashes.lock().unwrap().known();
        table.progress.send_replace(Progress {
            known,
            failed: true,
        });
    }
}

#[cfg(test)]
mod tests;
