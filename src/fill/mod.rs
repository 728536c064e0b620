//! Blob fills: which running download a request may share (here: single-flight), the fill task
//! that picks its source and streams it into the store while verifying it ([`job`]), and the
//! bodies it reads ([`source`]: bucket, owner peer, a fleet node's swarm ([`swarm`]) or
//! upstream).
//!
//! # Sharing
//!
//! A blob's bytes are the same whichever repository names it, so one download can serve every
//! client that asks for the digest: that is how N concurrent pulls cost one upstream fetch. But
//! whether the upstream *gives* those bytes depends on who asks: the same digest under a
//! repository that does not hold it, or that the upstream's account may not read, gets 404 or 403.
//! Sharing a download before its answer is known would let one client's failing request fail
//! everyone who joined it (a request for a popular layer under a bogus repository, sent at the
//! right moment, would break other clients' pulls). So a request may join:
//! - a download for the same upstream and repository (its answer is this request's answer);
//! - a download for the same upstream and another repository once the upstream has answered it
//!   with content ([`FillState::Writing`] or later): the bytes flow, and they are checked against
//!   the digest as always;
//! - never one through another upstream (what one upstream serves says nothing about another's,
//!   which may be private).
//!
//! A request that finds only another repository's download still waiting for its answer waits for
//! that answer ([`Share::Wait`], once) rather than asking upstream at the same moment: content, and
//! it joins; a failure, and it starts its own download. Dedup costs at most one round trip; a
//! failing request of someone else's costs nothing.
//!
//! Rule of dependency: this file uses `store` (the fill states) and `oci` and knows nothing of
//! upstreams; `job` uses `store`, `tier`, `cluster`, `upstream`, `origins` (the records, and the
//! origin check it shares with the mirror), `metrics`, `error`, `oci` and `source`; `source` uses
//! `store`, `tier`, `upstream`, `error`, `swarm` and nothing of `job`; `swarm` (a fleet node's
//! fills from the swarm, and its serving of other nodes) uses `swarm` (the core), `fleet`,
//! `config`, `store`, `upstream`, `oci`, `error`. The mirror decides when to fill,
//! builds the job and spawns it; nothing here imports the mirror or `http`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;

pub mod job;
pub mod source;
pub mod swarm;

use crate::oci::{Digest, RepoName};
use crate::store::FillState;

/// Where a download's bytes come from (`"bucket"` or `"upstream"`), set once by the download
/// before its first byte, read by every request that shares it (for `berth_answers_total`).
pub type FillSource = Arc<OnceLock<&'static str>>;

/// One running download.
struct Running {
    upstream: usize,
    repo: RepoName,
    rx: watch::Receiver<FillState>,
    source: FillSource,
}

/// What a request for a blob does about the downloads running for its digest.
pub enum Share {
    /// Read this download.
    Join(watch::Receiver<FillState>, FillSource),
    /// Wait until this download (another repository's) has its upstream's answer, then ask again.
    Wait(watch::Receiver<FillState>),
    /// No download to share: start one, reporting through this sender (already registered).
    Start(
        watch::Sender<FillState>,
        watch::Receiver<FillState>,
        FillSource,
    ),
}

/// The downloads running now, by digest.
#[derive(Default)]
pub struct Fills {
    running: Mutex<HashMap<Digest, Vec<Running>>>,
}

/// Whether the upstream has answered a download with content.
fn has_content(state: &FillState) -> bool {
    matches!(
        state,
        FillState::Writing(_) | FillState::Verified(_) | FillState::Committed(_)
    )
}

impl Fills {
    /// Decides, under one lock (so two requests never both start), what a request for `digest`
    /// through `upstream`'s `repo` does. `may_wait` is false once it has waited.
    pub fn share(
        &self,
        upstream: usize,
        repo: &RepoName,
        digest: &Digest,
        may_wait: bool,
    ) -> Share {
        let mut running = self.running.lock().unwrap();
        let list = running.entry(digest.clone()).or_default();
        let same_upstream = || list.iter().filter(|r| r.upstream == upstream);
        let usable = |r: &&Running| !matches!(*r.rx.borrow(), FillState::Failed(_));
        if let Some(r) = same_upstream()
            .filter(usable)
            .find(|r| r.repo == *repo || has_content(&r.rx.borrow()))
        {
            return Share::Join(r.rx.clone(), r.source.clone());
        }
        if may_wait
            && let Some(r) = same_upstream()
                .filter(usable)
                .find(|r| matches!(*r.rx.borrow(), FillState::Pending))
        {
            return Share::Wait(r.rx.clone());
        }
        let (tx, rx) = watch::channel(FillState::Pending);
        let source = FillSource::default();
        list.push(Running {
            upstream,
            repo: repo.clone(),
            rx: rx.clone(),
            source: source.clone(),
        });
        Share::Start(tx, rx, source)
    }

    /// Takes a download out (it ended, or will not serve new readers): only that one, by its
    /// channel.
    pub fn remove(&self, digest: &Digest, rx: &watch::Receiver<FillState>) {
        let mut running = self.running.lock().unwrap();
        if let Some(list) = running.get_mut(digest) {
            list.retain(|r| !r.rx.same_channel(rx));
            if list.is_empty() {
                running.remove(digest);
            }
        }
    }

    /// The size of `digest` as a download through `upstream` that has its content knows it (a
    /// HEAD need not ask upstream).
    pub fn known_size(&self, upstream: usize, digest: &Digest) -> Option<u64> {
        self.with_content(upstream, digest).map(|(_, size)| size)
    }

    /// A download of `digest` through `upstream` that has its content and knows its size, to
    /// read without joining it as a request would (nothing is registered or started).
    pub fn with_content(
        &self,
        upstream: usize,
        digest: &Digest,
    ) -> Option<(watch::Receiver<FillState>, u64)> {
        let running = self.running.lock().unwrap();
        running.get(digest)?.iter().find_map(|r| {
            if r.upstream != upstream {
                return None;
            }
            let size = match &*r.rx.borrow() {
                FillState::Writing(p) => p.total,
                FillState::Verified(b) | FillState::Committed(b) => Some(b.len),
                _ => None,
            };
            Some((r.rx.clone(), size?))
        })
    }

    /// The most bytes a download of `digest` (through any upstream) has received: 0 while it
    /// waits for its upstream's answer; `None` when none runs (or only failed ones). Starts
    /// nothing.
    pub fn received(&self, digest: &Digest) -> Option<u64> {
        let running = self.running.lock().unwrap();
        running
            .get(digest)?
            .iter()
            .filter_map(|r| match &*r.rx.borrow() {
                FillState::Pending => Some(0),
                FillState::Writing(p) => Some(p.received),
                FillState::Verified(b) | FillState::Committed(b) => Some(b.len),
                FillState::Failed(_) => None,
            })
            .max()
    }

    /// How many downloads run for `digest`.
    #[cfg(test)]
    fn count(&self, digest: &Digest) -> usize {
        self.running.lock().unwrap().get(digest).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    fn started(s: Share) -> (watch::Sender<FillState>, watch::Receiver<FillState>) {
        match s {
            Share::Start(tx, rx, _) => (tx, rx),
            _ => panic!("expected a start"),
        }
    }

    #[test]
    fn who_shares_what() {
        let fills = Fills::default();
        let d = Digest::of(b"layer");
        let (a, b) = (repo("team/a"), repo("team/b"));
        let (tx, rx) = started(fills.share(0, &a, &d, true));
        // Same repository: joins at once, even before the answer.
        assert!(matches!(fills.share(0, &a, &d, true), Share::Join(j, _) if j.same_channel(&rx)));
        // Another repository: waits for the answer; having waited, starts its own.
        assert!(matches!(fills.share(0, &b, &d, true), Share::Wait(w) if w.same_channel(&rx)));
        let (_tx_b, rx_b) = started(fills.share(0, &b, &d, false));
        assert_eq!(fills.count(&d), 2);
        // Another upstream never shares.
        let (_tx_c, rx_c) = started(fills.share(1, &a, &d, true));
        assert!(!rx_c.same_channel(&rx));
        // Once a's download has content, b's requests may join it (or b's own).
        tx.send_replace(FillState::Verified(crate::store::BlobFile {
            file: std::sync::Arc::new(tempfile::tempfile().unwrap()),
            len: 5,
            lease: None,
            maps: None,
        }));
        assert!(
            matches!(fills.share(0, &repo("team/z"), &d, true), Share::Join(j, _) if j.same_channel(&rx))
        );
        assert_eq!(fills.known_size(0, &d), Some(5));
        assert_eq!(fills.known_size(1, &d), None);
        assert_eq!(fills.received(&d), Some(5));
        assert_eq!(fills.received(&Digest::of(b"no fill")), None);
        // A reader that must not join finds the same download, and registers nothing.
        assert!(matches!(fills.with_content(0, &d), Some((r, 5)) if r.same_channel(&rx)));
        assert_eq!(fills.count(&d), 3);
        // A failed download is joined by nobody, even of its own repository: a's next request
        // waits for b's answer, or starts anew.
        tx.send_replace(FillState::Failed(Error::blob_unknown("gone")));
        assert!(matches!(fills.share(0, &a, &d, true), Share::Wait(w) if w.same_channel(&rx_b)));
        let (_tx_a2, rx_a2) = started(fills.share(0, &a, &d, false));
        // The fleet parent's "does a fill run?" sees every upstream's, the furthest one, a
        // failed one as none.
        assert_eq!(
            fills.received(&d),
            Some(0),
            "b's and c's wait for their answers"
        );
        fills.remove(&d, &rx_a2);
        fills.remove(&d, &rx);
        fills.remove(&d, &rx_b);
        fills.remove(&d, &rx_c);
        assert_eq!(fills.count(&d), 0);
        assert_eq!(fills.received(&d), None);
    }
}
