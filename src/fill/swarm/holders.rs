//! A node's part in the directory (`swarm::directory`): the holders it keeps as a directory
//! node, answered on `PUT`/`GET /_berth/fleet/v1/holders/<digest>` (the route is `http::fleet`'s,
//! the proof checked before), the notes it sends when one of its fills commits, and the
//! question it asks the directory when its parent cannot be reached.
//!
//! - Keeping: a [`Book`] of at most [`MAX_BOOK`] digests (the oldest forgotten first), behind a
//!   mutex held for a map operation only; at most [`MAX_CALLS`] directory calls handled at once
//!   (each one a small body read within the route's timeout and a map operation), `429` beyond.
//!   A note is taken from any node of the set for any digest, whether or not this node is one of
//!   the digest's directory nodes in its own view: two nodes whose views of the set differ
//!   moments apart then still find each other, and the book's bound holds whatever is sent.
//! - Telling: a fill that commits here is told to the digest's directory nodes (this node's own
//!   book when it is one of them), in the background: [`NOTERS`] notes at once, at most
//!   [`MAX_WAITING`] waiting (more are dropped, logged: a holder missing from the directory costs
//!   a pull that cannot reach the parent one holder less, never a wrong byte), each call within
//!   `link::CALL_TIMEOUT`, tried again after a `429` or a failure at most [`NOTE_TRIES`] times.
//!   Nothing of it delays or fails the pull.
//! - Forgetting: the book lives in memory. A directory node restarted forgets it; the digest's
//!   two other directory nodes still answer.
//! - Telling again ([`Directory::announce`]): a node that starts (its store's index rebuilt)
//!   tells the directory of every blob on its disk, in the background, at most
//!   [`ANNOUNCE_PER_SECOND`] digests a second, [`ANNOUNCERS`] at once, each as a commit's note
//!   (`NOTE_TRIES` tries per directory node): so a node restarted with its blobs while the
//!   parent is down is found by the others, and a directory node restarted hears again of the
//!   blobs its holders keep as they restart. Why paced: a DaemonSet's rollout restarts nodes
//!   together, each with thousands of blobs, and the notes must not crowd out the directory's
//!   [`MAX_CALLS`] or the node's own pulls: at 50 digests a second (three notes each) a node
//!   with 10,000 blobs is told in under four minutes, a few small requests a second to each
//!   directory node in a fleet of any size. It never delays the start (the server serves
//!   meanwhile) and stops with the server. Every file of the store is told, manifests too (the
//!   index does not know which is which; a note of a digest no fill asks for costs a request
//!   and a book entry, never a byte). A directory node down at that moment misses the notes
//!   sent to it: the other two still know, as for a commit's note.
//! - Asking: the digest's directory nodes are asked at once, each within `link::CALL_TIMEOUT`;
//!   their answers are merged in directory order, this node left out, and holders that sent
//!   this node a wrong body in the last [`LIAR_MEMORY`] put last (so a liar costs one pull a
//!   failed try, not every pull).
//!
//! Rule of dependency: uses `swarm` (`directory`, `protocol`, `node`), `fleet` (the proof, the
//! path), its sibling `link` (the client, the timeout, the node set); nothing of its parent or
//! other siblings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::link::{Link, Members};
use crate::fleet::holders_path;
use crate::oci::Digest;
use crate::swarm::directory::{Book, directory};
use crate::swarm::node::{Fleet as Nodes, NodeUrl};
use crate::swarm::protocol::{HolderNote, Holders, MAX_SMALL_BODY, ProtocolError};

/// Digests a directory node keeps holders of (each at most `directory::MAX_HOLDERS` URLs of at
/// most `node::MAX_NODE_URL` bytes: a bound of a few hundred MB in the worst case, a few MB for
/// a fleet's usual tens of thousands of blobs).
pub const MAX_BOOK: usize = 100_000;
/// Directory calls handled at once (`429` beyond).
pub const MAX_CALLS: usize = 64;
/// Notes sent at once, and notes waiting to be sent.
pub const NOTERS: usize = 4;
pub const MAX_WAITING: usize = 1024;
/// Tries of one note to one directory node, the n-th after n times [`NOTE_BACKOFF`].
pub const NOTE_TRIES: u32 = 3;
pub const NOTE_BACKOFF: Duration = Duration::from_millis(300);
/// Digests told a second at most by a node's start ([`Directory::announce`]).
pub const ANNOUNCE_PER_SECOND: u32 = 50;
/// Digests being told at once by a node's start.
pub const ANNOUNCERS: usize = 4;
/// How long a holder that sent a wrong body is tried last.
pub const LIAR_MEMORY: Duration = Duration::from_secs(600);
/// Liars remembered at most (the oldest forgotten first).
const MAX_LIARS: usize = 1024;

/// A node's directory state.
pub struct Directory {
    book: Mutex<Book>,
    calls: Arc<Semaphore>,
    noters: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    liars: Mutex<HashMap<NodeUrl, Instant>>,
}

impl Default for Directory {
    fn default() -> Directory {
        Directory {
            book: Mutex::new(Book::new(MAX_BOOK)),
            calls: Arc::new(Semaphore::new(MAX_CALLS)),
            noters: Arc::new(Semaphore::new(NOTERS)),
            waiting: Arc::default(),
            liars: Mutex::default(),
        }
    }
}

impl Directory {
    /// A slot for one directory call; `None` at [`MAX_CALLS`] (answer `429`).
    pub fn call(&self) -> Option<OwnedSemaphorePermit> {
        self.calls.clone().try_acquire_owned().ok()
    }

    /// A node's note that it holds `digest` (the body of a `PUT`), from a node of `nodes`.
    pub fn note(&self, digest: &Digest, body: &[u8], nodes: &Nodes) -> Result<(), ProtocolError> {
        let n = HolderNote::parse(body, nodes)?;
        self.book
            .lock()
            .unwrap()
            .add(digest, n.node, Instant::now());
        Ok(())
    }

    /// The holders of `digest` this node keeps, among `nodes` (the body of a `GET`).
    pub fn holders(&self, digest: &Digest, nodes: &Nodes) -> Holders {
        let holders = self
            .book
            .lock()
            .unwrap()
            .holders(digest, nodes, Instant::now());
        Holders { holders }
    }

    /// `node` sent a wrong body: it is tried last for [`LIAR_MEMORY`].
    pub fn lied(&self, node: &NodeUrl) {
        let mut liars = self.liars.lock().unwrap();
        let now = Instant::now();
        liars.retain(|_, at| now.saturating_duration_since(*at) < LIAR_MEMORY);
        if liars.len() >= MAX_LIARS
            && let Some(oldest) = liars
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(n, _)| n.clone())
        {
            liars.remove(&oldest);
        }
        liars.insert(node.clone(), now);
    }

    /// Puts the holders that lied lately last, keeping the order otherwise.
    fn liars_last(&self, holders: Vec<NodeUrl>) -> Vec<NodeUrl> {
        let liars = self.liars.lock().unwrap();
        let now = Instant::now();
        let lied = |h: &NodeUrl| {
            liars
                .get(h)
                .is_some_and(|at| now.saturating_duration_since(*at) < LIAR_MEMORY)
        };
        let (last, mut first): (Vec<_>, Vec<_>) = holders.into_iter().partition(|h| lied(h));
        first.extend(last);
        first
    }

    /// Asks `digest`'s directory nodes for its holders (this node's own book when it is one).
    pub async fn ask(&self, link: &Link, digest: &Digest, nodes: &Nodes) -> Vec<NodeUrl> {
        let dir = directory(digest, nodes);
        let answers = futures_util::future::join_all(dir.iter().map(|d| async move {
            if *d == link.me {
                return self.holders(digest, nodes).holders;
            }
            match ask_one(link, d, digest, nodes).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::info!(digest = %digest, directory = %d, error = %e, "fleet: a directory node did not answer");
                    Vec::new()
                }
            }
        }))
        .await;
        let mut merged: Vec<NodeUrl> = Vec::new();
        for h in answers.into_iter().flatten() {
            if h != link.me && !merged.contains(&h) {
                merged.push(h);
            }
        }
        self.liars_last(merged)
    }

    /// Tells `digest`'s directory nodes, in the background, that this node holds it.
    pub fn tell(self: &Arc<Self>, link: &Arc<Link>, members: &Arc<Members>, digest: &Digest) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(digest = %digest, "fleet: {MAX_WAITING} holder notes already wait; the directory is not told of this one");
            return;
        }
        let (this, link, members, digest) =
            (self.clone(), link.clone(), members.clone(), digest.clone());
        tokio::spawn(async move {
            let permit = this.noters.clone().acquire_owned().await;
            this.waiting.fetch_sub(1, Ordering::AcqRel);
            let Ok(_permit) = permit else { return };
            let nodes = members.current().await;
            this.tell_now(&link, &nodes, &digest).await;
        });
    }

    /// Tells the directory of every digest in `held` (the store's blobs at start), paced at
    /// [`ANNOUNCE_PER_SECOND`], [`ANNOUNCERS`] at once; returns once every note was sent (or
    /// given up).
    pub async fn announce(
        self: Arc<Self>,
        link: Arc<Link>,
        members: Arc<Members>,
        held: Vec<Digest>,
    ) {
        let slots = Arc::new(Semaphore::new(ANNOUNCERS));
        let mut tick = tokio::time::interval(Duration::from_secs(1) / ANNOUNCE_PER_SECOND);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let count = held.len();
        for digest in held {
            tick.tick().await;
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let nodes = members.current().await;
            let (this, link) = (self.clone(), link.clone());
            tokio::spawn(async move {
                this.tell_now(&link, &nodes, &digest).await;
                drop(slot);
            });
        }
        // Every slot back: every note sent or given up.
        let _all = slots.acquire_many(ANNOUNCERS as u32).await;
        tracing::info!(
            blobs = count,
            "fleet: the directory was told of the blobs this node holds"
        );
    }

    /// Tells `digest`'s directory nodes now (this node's own book when it is one of them), side
    /// by side, each tried [`NOTE_TRIES`] times.
    async fn tell_now(&self, link: &Link, nodes: &Nodes, digest: &Digest) {
        // The directory nodes side by side: one that does not answer delays no other.
        let told = directory(digest, nodes).into_iter().map(|d| async move {
            if d == link.me {
                let mut book = self.book.lock().unwrap();
                book.add(digest, link.me.clone(), Instant::now());
                return;
            }
            for tries in 1..=NOTE_TRIES {
                match tell_one(link, &d, digest).await {
                    Ok(()) => return,
                    Err(e) if tries == NOTE_TRIES => {
                        tracing::info!(digest = %digest, directory = %d, error = %e, "fleet: a directory node was not told this node holds the blob");
                    }
                    Err(_) => tokio::time::sleep(NOTE_BACKOFF * tries).await,
                }
            }
        });
        futures_util::future::join_all(told).await;
    }
}

/// `GET <node>/_berth/fleet/v1/holders/<digest>`, fleet-signed, within `link::CALL_TIMEOUT`
/// ([`Link::call`]).
async fn ask_one(
    link: &Link,
    node: &NodeUrl,
    digest: &Digest,
    nodes: &Nodes,
) -> Result<Vec<NodeUrl>, String> {
    let path = holders_path(digest);
    let url = format!("{node}{path}");
    let (status, body) = link
        .call(Method::GET, &url, &path, None, MAX_SMALL_BODY)
        .await?;
    if status != StatusCode::OK {
        return Err(format!("it answered {status}"));
    }
    Holders::parse(&body, nodes, &link.me)
        .map(|h| h.holders)
        .map_err(|e| e.to_string())
}

/// `PUT <node>/_berth/fleet/v1/holders/<digest>` with this node's note, fleet-signed, within
/// `link::CALL_TIMEOUT` ([`Link::call`]).
async fn tell_one(link: &Link, node: &NodeUrl, digest: &Digest) -> Result<(), String> {
    let path = holders_path(digest);
    let note = HolderNote {
        node: link.me.clone(),
    };
    let url = format!("{node}{path}");
    let (status, _) = link
        .call(
            Method::PUT,
            &url,
            &path,
            Some(note.encode()),
            MAX_SMALL_BODY,
        )
        .await?;
    match status {
        StatusCode::OK | StatusCode::NO_CONTENT => Ok(()),
        s => Err(format!("it answered {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> NodeUrl {
        format!("http://10.0.0.{i}:5000").parse().unwrap()
    }

    /// A note from a node of the set is kept and answered; one naming a stranger, or no note
    /// at all, is refused and keeps nothing.
    #[test]
    fn notes_from_the_set_are_kept_and_answered() {
        let d = Digest::of(b"x");
        let nodes = Nodes::new([node(1), node(2)]);
        let dir = Directory::default();
        let note = |n: NodeUrl| HolderNote { node: n }.encode();
        dir.note(&d, &note(node(2)), &nodes).unwrap();
        assert_eq!(dir.holders(&d, &nodes).holders, vec![node(2)]);
        assert!(matches!(
            dir.note(&d, &note(node(3)), &nodes),
            Err(ProtocolError::NotInFleet(_))
        ));
        assert!(matches!(
            dir.note(&d, b"{}", &nodes),
            Err(ProtocolError::Malformed(_))
        ));
        assert_eq!(dir.holders(&d, &nodes).holders, vec![node(2)]);
        assert!(dir.holders(&Digest::of(b"y"), &nodes).holders.is_empty());
    }

    /// At most MAX_CALLS at once; a slot given back is free again.
    #[test]
    fn calls_are_bounded() {
        let dir = Directory::default();
        let held: Vec<_> = (0..MAX_CALLS).map(|_| dir.call().unwrap()).collect();
        assert!(dir.call().is_none());
        drop(held);
        assert!(dir.call().is_some());
    }

    /// A start's notes are paced: 100 digests at ANNOUNCE_PER_SECOND take 99 ticks (the first
    /// at once); a node that is a digest's only directory node notes itself in its own book.
    #[tokio::test(start_paused = true)]
    async fn a_start_tells_the_directory_at_a_bounded_rate() {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
        let mut cfg: crate::config::FleetConfig = toml::from_str(&format!(
            "parent = \"http://p:5000\"\nself = \"{}\"\npeers = [\"{}\"]\nsecret_file = {:?}\n",
            node(1),
            node(1),
            secret.display().to_string()
        ))
        .unwrap();
        cfg.validate().unwrap();
        let fleet = crate::fleet::Fleet::new(&cfg, &prometheus::Registry::new()).unwrap();
        let https = crate::upstream::connect::TimeoutConnector::new(
            crate::upstream::connect::https_connector(None).unwrap(),
            Duration::from_secs(1),
        );
        let link = Arc::new(Link {
            fleet: Arc::new(fleet),
            me: node(1),
            parent: "http://p:5000".parse().unwrap(),
            get: Client::builder(TokioExecutor::new()).build(https.clone()),
            post: Client::builder(TokioExecutor::new()).build(https),
            max_uploads: 4,
            parent_timeout: Duration::from_secs(1),
        });
        let nodes = Nodes::new([node(1)]);
        let members = Arc::new(Members::Fixed(nodes.clone()));
        let directory = Arc::new(Directory::default());
        let held: Vec<Digest> = (0..100u32).map(|i| Digest::of(&i.to_be_bytes())).collect();
        let started = tokio::time::Instant::now();
        directory
            .clone()
            .announce(link, members, held.clone())
            .await;
        let took = started.elapsed();
        let tick = Duration::from_secs(1) / ANNOUNCE_PER_SECOND;
        assert!(took >= tick * 99 && took < tick * 110, "{took:?}");
        for d in &held {
            assert_eq!(directory.holders(d, &nodes).holders, vec![node(1)]);
        }
    }

    /// A holder that lied lately is tried last; the others keep their order.
    #[test]
    fn liars_are_tried_last() {
        let dir = Directory::default();
        dir.lied(&node(1));
        assert_eq!(
            dir.liars_last(vec![node(1), node(2), node(3)]),
            vec![node(2), node(3), node(1)]
        );
        assert_eq!(dir.liars_last(vec![node(3)]), vec![node(3)]);
    }
}
