//! The piece tables over blobs the tests feed chunk by chunk (a channel as the blob's body).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::*;

const MIB: usize = 1 << 20;
const LONG: Duration = Duration::from_secs(30);

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// The sha256 of each piece of `bytes`, by the size rule.
fn hashes(bytes: &[u8]) -> Vec<PieceHash> {
    let layout = Layout::new(bytes.len() as u64);
    (0..layout.count())
        .map(|k| {
            let r = layout.range(k);
            Sha256::digest(&bytes[r.start as usize..r.end as usize]).into()
        })
        .collect()
}

type Feed = mpsc::UnboundedSender<Result<Bytes, Error>>;
type Rx = mpsc::UnboundedReceiver<Result<Bytes, Error>>;

/// Blobs whose bodies the test sends: by digest, the size and a receiver of chunks, taken by
/// the first follow (a later follow of the same digest finds nothing unless the test put more).
#[derive(Default)]
pub(crate) struct Fed {
    blobs: Mutex<HashMap<Digest, (u64, Rx)>>,
    pub(crate) follows: AtomicUsize,
}

impl Fed {
    pub(crate) fn put(&self, d: &Digest, size: u64) -> Feed {
        let (tx, rx) = mpsc::unbounded_channel();
        self.blobs.lock().unwrap().insert(d.clone(), (size, rx));
        tx
    }
}

impl Blobs for Fed {
    fn size<'a>(&'a self, d: &'a Digest) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async move { self.blobs.lock().unwrap().get(d).map(|(s, _)| *s) })
    }

    fn follow<'a>(&'a self, d: &'a Digest) -> BoxFuture<'a, Result<Option<Followed>, Error>> {
        self.follows.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let Some((size, rx)) = self.blobs.lock().unwrap().remove(d) else {
                return Ok(None);
            };
            let body = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            Ok(Some(Followed {
                size,
                body: Box::pin(body),
            }))
        })
    }
}

fn tables() -> Tables {
    Tables::new(IntGauge::new("t", "t").unwrap())
}

fn digest(n: u8) -> Digest {
    Digest::of(&[n])
}

fn send(feed: &Feed, bytes: &[u8]) {
    feed.send(Ok(Bytes::copy_from_slice(bytes))).unwrap();
}

/// A whole blob: every hash is sha256 of its piece, `from` skips the first ones, the table is
/// made once (a second ask follows nothing).
#[tokio::test]
async fn a_whole_blob_gets_its_whole_table() {
    let (fed, t) = (Fed::default(), tables());
    let bytes = data(3 * MIB + 17, 1);
    let d = digest(1);
    let feed = fed.put(&d, bytes.len() as u64);
    for chunk in bytes.chunks(300_000) {
        send(&feed, chunk);
    }
    drop(feed);
    let want = hashes(&bytes);
    assert_eq!(want.len(), 4);
    // Waits for the table to be complete: each answer has a hash past `from`.
    let mut got = Vec::new();
    while got.len() < want.len() {
        let p = t.pieces(&fed, &d, got.len() as u32, LONG).await.unwrap();
        assert_eq!(p.first as usize, got.len());
        got.extend(p.hashes);
    }
    assert_eq!(got, want);
    let all = t.pieces(&fed, &d, 0, LONG).await.unwrap();
    assert!(all.complete);
    assert_eq!(all.hashes, want);
    assert_eq!(all.layout, Layout::new(bytes.len() as u64));
    let tail = t.pieces(&fed, &d, 3, LONG).await.unwrap();
    assert_eq!((tail.first, tail.hashes.as_slice()), (3, &want[3..]));
    let end = t.pieces(&fed, &d, 4, LONG).await.unwrap();
    assert!(end.hashes.is_empty() && end.complete);
    assert_eq!(
        fed.follows.load(Ordering::SeqCst),
        1,
        "one table, one reader"
    );
    assert_eq!((t.len(), t.gauge.get()), (1, 1));
    assert_eq!(t.layout(&d), Some(Layout::new(bytes.len() as u64)));
    match t.pieces(&fed, &d, 5, LONG).await {
        Err(NoTable::BadFrom(m)) => assert!(m.contains("past the blob's 4 pieces"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// A table follows its blob: a request waiting past the known hashes gets the next one as soon
/// as its piece is whole, and one that waits in vain gets what is known after its wait.
#[tokio::test]
async fn a_waiting_request_gets_the_next_hash() {
    let (fed, t) = (Fed::default(), tables());
    let bytes = data(2 * MIB + 5, 2);
    let want = hashes(&bytes);
    let d = digest(2);
    let feed = fed.put(&d, bytes.len() as u64);
    // Nothing yet: a short wait answers an empty, incomplete table.
    let p = t
        .pieces(&fed, &d, 0, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(p.hashes.is_empty() && !p.complete);
    let t = Arc::new(t);
    let fed = Arc::new(fed);
    let ask = |from: u32| {
        let (t, fed, d) = (t.clone(), fed.clone(), d.clone());
        tokio::spawn(async move { t.pieces(fed.as_ref(), &d, from, LONG).await.unwrap() })
    };
    let waiting = ask(0);
    // Half a piece: no hash yet; the rest of piece 0: the waiting request gets it.
    send(&feed, &bytes[..MIB / 2]);
    send(&feed, &bytes[MIB / 2..MIB + 10]);
    let p = waiting.await.unwrap();
    assert_eq!((p.first, p.hashes.as_slice()), (0, &want[..1]));
    assert!(!p.complete);
    let waiting = ask(1);
    send(&feed, &bytes[MIB + 10..]);
    let p = waiting.await.unwrap();
    assert_eq!(p.first, 1);
    assert_eq!(p.hashes[0], want[1]);
    drop(feed);
    let mut all = t.pieces(fed.as_ref(), &d, 0, LONG).await.unwrap();
    while !all.complete {
        all = t.pieces(fed.as_ref(), &d, 0, LONG).await.unwrap();
    }
    assert_eq!(all.hashes, want);
}

/// A blob whose reading fails (its fill failed) or ends short: the table is dropped, a waiting
/// request is told, and the next ask starts over.
#[tokio::test]
async fn a_failed_blob_leaves_no_table() {
    let (fed, t) = (Fed::default(), tables());
    let bytes = data(2 * MIB, 3);
    let d = digest(3);
    let feed = fed.put(&d, bytes.len() as u64);
    send(&feed, &bytes[..MIB]);
    let p = t.pieces(&fed, &d, 0, LONG).await.unwrap();
    assert_eq!(p.hashes.len(), 1, "the first piece was hashed");
    let t = Arc::new(t);
    let fed = Arc::new(fed);
    let waiting = {
        let (t, fed, d) = (t.clone(), fed.clone(), d.clone());
        tokio::spawn(async move { t.pieces(fed.as_ref(), &d, 1, LONG).await })
    };
    feed.send(Err(Error::digest_mismatch("up", "wrong bytes")))
        .unwrap();
    match waiting.await.unwrap() {
        Err(NoTable::Unknown(m)) => assert!(m.contains("failed"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(t.is_empty());
    assert_eq!(t.gauge.get(), 0);
    assert_eq!(t.layout(&d), None);
    // Nothing to follow now: no table, 404.
    match t.pieces(fed.as_ref(), &d, 0, LONG).await {
        Err(NoTable::Unknown(m)) => assert!(m.contains("no such blob"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A new fill: a new table, from scratch.
    let feed = fed.put(&d, bytes.len() as u64);
    send(&feed, &bytes);
    drop(feed);
    let mut p = t.pieces(fed.as_ref(), &d, 0, LONG).await.unwrap();
    while !p.complete {
        p = t.pieces(fed.as_ref(), &d, 0, LONG).await.unwrap();
    }
    assert_eq!(p.hashes, hashes(&bytes));
    assert_eq!(fed.follows.load(Ordering::SeqCst), 3);

    // A body that ends before the size: dropped too.
    let short = digest(4);
    let feed = fed.put(&short, 2 * MIB as u64);
    send(&feed, &bytes[..MIB]);
    drop(feed);
    let mut outcome = t.pieces(fed.as_ref(), &short, 1, LONG).await;
    while let Ok(p) = &outcome {
        assert!(!p.complete);
        outcome = t.pieces(fed.as_ref(), &short, 1, LONG).await;
    }
    assert!(matches!(outcome, Err(NoTable::Unknown(_))), "{outcome:?}");
    // And one longer than its size.
    let long = digest(5);
    let feed = fed.put(&long, 10);
    send(&feed, &bytes[..11]);
    let outcome = t.pieces(fed.as_ref(), &long, 0, LONG).await;
    assert!(matches!(outcome, Err(NoTable::Unknown(_))), "{outcome:?}");
    assert_eq!(t.layout(&long), None);
}

/// An empty blob's table is complete at once, with no hash.
#[tokio::test]
async fn an_empty_blob_has_an_empty_complete_table() {
    let (fed, t) = (Fed::default(), tables());
    let d = digest(6);
    drop(fed.put(&d, 0));
    let p = t.pieces(&fed, &d, 0, LONG).await.unwrap();
    assert!(p.complete && p.hashes.is_empty());
}

/// At most `max` tables: the least recently asked one goes, and its task stops.
#[tokio::test]
async fn tables_are_bounded_least_recently_asked_first() {
    let fed = Fed::default();
    let t = Tables::with_max(IntGauge::new("t", "t").unwrap(), 2);
    let (a, b, c) = (digest(7), digest(8), digest(9));
    let feeds: Vec<Feed> = [&a, &b, &c].iter().map(|d| fed.put(d, 10)).collect();
    let short = Duration::from_millis(1);
    t.pieces(&fed, &a, 0, short).await.unwrap();
    t.pieces(&fed, &b, 0, short).await.unwrap();
    // `a` asked again: `b` is now the oldest.
    t.pieces(&fed, &a, 0, short).await.unwrap();
    t.pieces(&fed, &c, 0, short).await.unwrap();
    assert_eq!((t.len(), t.gauge.get()), (2, 2));
    assert!(t.layout(&a).is_some() && t.layout(&c).is_some());
    assert_eq!(t.layout(&b), None);
    // The dropped table's task ends at its next chunk: its reader is closed.
    send(&feeds[1], &[0; 10]);
    assert!(eventually_closed(&feeds[1]).await);
}

async fn eventually_closed(feed: &Feed) -> bool {
    tokio::time::timeout(LONG, feed.closed()).await.is_ok()
}

/// A blob that cannot be opened: its error, no table.
#[tokio::test]
async fn an_unreadable_blob_is_an_error() {
    struct Broken;
    impl Blobs for Broken {
        fn size<'a>(&'a self, _: &'a Digest) -> BoxFuture<'a, Option<u64>> {
            Box::pin(async { None })
        }
        fn follow<'a>(&'a self, _: &'a Digest) -> BoxFuture<'a, Result<Option<Followed>, Error>> {
            Box::pin(async { Err(Error::internal("disk gone")) })
        }
    }
    let t = tables();
    match t.pieces(&Broken, &digest(10), 0, LONG).await {
        Err(NoTable::Failed(e)) => assert!(e.to_string().contains("disk gone")),
        other => panic!("{other:?}"),
    }
    assert!(t.is_empty());
}

/// Blobs whose follow takes `delay` to answer, with a body that never sends a byte (a bucket
/// slow to answer, then slow to send).
struct Slow {
    delay: Duration,
}

impl Blobs for Slow {
    fn size<'a>(&'a self, _: &'a Digest) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async { None })
    }

    fn follow<'a>(&'a self, _: &'a Digest) -> BoxFuture<'a, Result<Option<Followed>, Error>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            Ok(Some(Followed {
                size: 3 * MIB as u64,
                body: Box::pin(futures_util::stream::pending()),
            }))
        })
    }
}

/// The wait for a hash counts from the call, the table's start included: a source slow to
/// answer does not make the call wait `WAIT` on top of it (a forwarded call has only half a
/// second more than that).
#[tokio::test(start_paused = true)]
async fn the_wait_for_a_hash_counts_from_the_call() {
    let t = tables();
    let slow = Slow {
        delay: Duration::from_millis(800),
    };
    let d = digest(9);
    let start = tokio::time::Instant::now();
    let p = t.pieces(&slow, &d, 0, WAIT).await.unwrap();
    assert!(p.hashes.is_empty() && !p.complete);
    assert_eq!(start.elapsed(), WAIT, "not 800 ms + WAIT");
    // With the table started, a call waits the whole WAIT.
    let start = tokio::time::Instant::now();
    t.pieces(&slow, &d, 0, WAIT).await.unwrap();
    assert_eq!(start.elapsed(), WAIT);
}
