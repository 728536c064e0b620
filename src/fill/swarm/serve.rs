//! A fleet node serving other nodes (`GET /_berth/fleet/v1/blobs/<digest>`, the proof checked
//! by the route): a fill running here, up to what it has written (only verified bytes reach a
//! node's fill, see the parent module), followed as it grows; else the committed blob from the
//! store; through `swarm::transfer::Uploads` (`[fleet] max_uploads` bodies at once, 429
//! beyond). Every fill on a node is registered here while it runs, whatever its source, so a
//! fill that went to the parent the old way is served too; one that commits is handed to the
//! `committed` callback (the parent module tells the directory with it).
//!
//! Rule of dependency: uses `swarm::transfer` (the serving side), `store` (the fill's states,
//! the committed blob), `oci`, prometheus (the served-bytes counter); nothing of its parent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Response};
use http_body_util::BodyExt;
use prometheus::IntCounter;
use tokio::sync::watch;

use crate::oci::Digest;
use crate::store::{FillState, Store};
use crate::swarm::transfer::{Outgoing, ServeBody, Uploads, WAIT_TICK};

/// What a node serves, and its upload slots.
pub struct Serving {
    uploads: Uploads,
    store: Arc<Store>,
    /// The fills running on this node, by digest, until they commit or fail.
    running: Arc<Mutex<HashMap<Digest, watch::Receiver<FillState>>>>,
    /// `berth_fleet_served_bytes_total`.
    served: IntCounter,
    /// Called with each registered fill's digest once it commits.
    committed: Committed,
}

/// What is done with a blob this node has just committed.
pub type Committed = Arc<dyn Fn(&Digest) + Send + Sync>;

impl Serving {
    pub fn new(
        uploads: Uploads,
        store: Arc<Store>,
        served: IntCounter,
        committed: Committed,
    ) -> Serving {
        Serving {
            uploads,
            store,
            running: Arc::default(),
            served,
            committed,
        }
    }

    /// Answers another node's (authenticated) request for `digest` from `range` on: a fill
    /// running here (its verified prefix, following it), else the committed blob, else 404.
    /// The bytes sent are counted in `berth_fleet_served_bytes_total`.
    pub async fn serve(&self, range: Option<&HeaderValue>, digest: &Digest) -> Response<ServeBody> {
        let running = self.running.lock().unwrap().get(digest).cloned();
        let mut blob = match running {
            // A fill that has just joined the swarm opens its file a moment later: a child the
            // tracker sent at once waits that moment rather than count this node unreachable.
            Some(mut fill) => {
                let started = fill.wait_for(|s| !matches!(s, FillState::Pending));
                let _ = tokio::time::timeout(WAIT_TICK, started).await;
                follow(fill)
            }
            None => None,
        };
        if blob.is_none()
            && let Ok(Some(b)) = self.store.open_blob(digest).await
        {
            blob = Some(Outgoing {
                file: b.file,
                size: b.len,
                frontier: watch::channel(b.len).1,
            });
        }
        let served = self.served.clone();
        self.uploads.serve(range, blob).map(move |b| {
            b.map_frame(move |f| {
                if let Some(d) = f.data_ref() {
                    served.inc_by(d.len() as u64);
                }
                f
            })
            .boxed_unsync()
        })
    }

    /// Notes a fill running on this node, to serve it to other nodes until it ends (and to hand
    /// it to `committed` if it commits).
    pub fn register(&self, digest: &Digest, fill: &watch::Receiver<FillState>) {
        self.running
            .lock()
            .unwrap()
            .insert(digest.clone(), fill.clone());
        let (running, digest, mut fill) = (self.running.clone(), digest.clone(), fill.clone());
        let committed = self.committed.clone();
        tokio::spawn(async move {
            // Committed: the store serves it from now on. Failed or gone: nothing to serve.
            let done = fill
                .wait_for(|s| matches!(s, FillState::Committed(_) | FillState::Failed(_)))
                .await
                .is_ok_and(|s| matches!(*s, FillState::Committed(_)));
            {
                let mut map = running.lock().unwrap();
                if map.get(&digest).is_some_and(|r| r.same_channel(&fill)) {
                    map.remove(&digest);
                }
            }
            if done {
                committed(&digest);
            }
        });
    }
}

/// What a fill running here can serve: its verified prefix, followed as it grows (a task maps
/// the fill's states to a frontier, and drops it, breaking the bodies, if the fill fails); a
/// verified one whole. A fill whose size is unknown is not served.
fn follow(mut fill: watch::Receiver<FillState>) -> Option<Outgoing> {
    let (file, size, written) = match &*fill.borrow_and_update() {
        FillState::Writing(p) => (p.file.clone(), p.total?, p.written),
        FillState::Verified(b) | FillState::Committed(b) => {
            return Some(Outgoing {
                file: b.file.clone(),
                size: b.len,
                frontier: watch::channel(b.len).1,
            });
        }
        FillState::Pending | FillState::Failed(_) => return None,
    };
    let (tx, rx) = watch::channel(written);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                changed = fill.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = match &*fill.borrow_and_update() {
                        FillState::Writing(p) => p.written,
                        FillState::Verified(b) | FillState::Committed(b) => b.len,
                        FillState::Pending | FillState::Failed(_) => return,
                    };
                    tx.send_replace(next);
                    if next >= size {
                        return;
                    }
                }
            }
        }
    });
    Some(Outgoing {
        file,
        size,
        frontier: rx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::store::{BlobFile, Progress};

    fn writing(file: &Arc<std::fs::File>, written: u64, total: Option<u64>) -> FillState {
        FillState::Writing(Progress {
            file: file.clone(),
            written,
            received: written,
            total,
            spool: Arc::default(),
            pass_through: false,
            verified: false,
            maps: None,
        })
    }

    /// A running fill is served up to what it has written, following it; its failure drops the
    /// frontier's sender (the bodies served break); a verified one is served whole; one not
    /// begun, failed, or of unknown size is not served.
    #[tokio::test]
    async fn a_running_fill_is_followed_until_it_ends() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let (tx, rx) = watch::channel(writing(&file, 10, Some(100)));
        let mut out = follow(rx).unwrap();
        assert_eq!((out.size, *out.frontier.borrow_and_update()), (100, 10));
        tx.send_replace(writing(&file, 40, Some(100)));
        out.frontier.changed().await.unwrap();
        assert_eq!(*out.frontier.borrow_and_update(), 40);
        tx.send_replace(FillState::Failed(Error::internal("gone")));
        assert!(
            out.frontier.changed().await.is_err(),
            "a failed fill gives up"
        );

        let (tx, rx) = watch::channel(writing(&file, 0, Some(100)));
        let mut out = follow(rx).unwrap();
        let blob = BlobFile {
            file: file.clone(),
            len: 100,
            lease: None,
            maps: None,
        };
        tx.send_replace(FillState::Verified(blob.clone()));
        out.frontier.changed().await.unwrap();
        assert_eq!(*out.frontier.borrow_and_update(), 100);
        let whole = follow(watch::channel(FillState::Committed(blob)).1).unwrap();
        assert_eq!((whole.size, *whole.frontier.borrow()), (100, 100));

        assert!(follow(watch::channel(FillState::Pending).1).is_none());
        assert!(follow(watch::channel(FillState::Failed(Error::internal("x"))).1).is_none());
        assert!(follow(watch::channel(writing(&file, 5, None)).1).is_none());
    }
}
