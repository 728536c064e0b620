//! Closing connections that carry no request: the per-connection idle timer, and the drain
//! signal every connection listens to.
//!
//! A registry connection counts its open requests ([`Activity`]): one is open from the moment
//! hyper hands it to the service until hyper drops its response body, so a blob still streaming
//! after its headers went out keeps the connection busy however long it takes, and a request
//! whose client went away mid-way ends when hyper drops its future or body. When the count has
//! been zero for `[server] idle_timeout`, the connection is shut down gracefully: HTTP/2 sends
//! GOAWAY and closes once no stream is left, HTTP/1 closes between requests. HTTP/2's graceful
//! close (hyper, h2) sends a first GOAWAY with a PING and closes only once the client answers it;
//! a client that never answers is dropped after another quiet `idle_timeout` (`server`'s
//! connection loop), so a GOAWAY it ignores does not let it keep its slot. The hot path pays
//! one atomic add when a request starts and one subtract when it ends; only the end that leaves
//! the connection quiet wakes the timer (a `Notify`, no lock of ours).
//!
//! hyper 1.12 (Cargo.lock) already closes an idle HTTP/1 keep-alive connection: after each
//! response its HTTP/1 dispatcher starts reading the next head at once, and `header_read_timeout`
//! (default 10 s) runs from there, so a keep-alive connection that sends nothing is closed when it
//! runs out (see `proto/h1/conn.rs`, `State::idle` sets `notify_read` when the timeout is set).
//! So for HTTP/1 the idle timeout only matters when it is the shorter of the two
//! (`tests/it/idle.rs` holds hyper to this, so an upgrade that changes it fails there). Nothing closed
//! an idle HTTP/2 connection: keep-alive pings only drop a peer that stopped answering, and a
//! live client that keeps a connection open and quiet held a `max_connections` slot for good.
//!
//! Why not hyper-util's `GracefulShutdown`: the connection it watches must be a
//! `GracefulConnection`, a sealed trait, so nothing else (the idle timer) can ask the same
//! connection to shut down while it is watched. [`Drain`] is the same few lines on a
//! `tokio::sync::watch` channel: a signal, and a wait until every connection let go of it.
//!
//! Rule of dependency: a leaf under `server` (tokio, hyper's body trait).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, watch};

/// The open requests of one connection.
#[derive(Debug, Default)]
pub struct Activity {
    /// Low 32 bits: requests open now; high 32 bits: requests started (wrapping), so one load
    /// tells both whether the connection is quiet and whether anything started since.
    state: AtomicU64,
    /// Woken when the last open request ends.
    quiet: Notify,
}

const ONE_OPEN: u64 = 1;
const ONE_STARTED: u64 = 1 << 32;

fn open_now(state: u64) -> u64 {
    state & 0xffff_ffff
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity::default())
    }

    /// A request starts; it is open until the returned guard drops.
    pub fn open(self: &Arc<Self>) -> Open {
        self.state
            .fetch_add(ONE_OPEN | ONE_STARTED, Ordering::AcqRel);
        Open(self.clone())
    }

    /// Completes once no request has been open for `timeout` in a row.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let quiet = self.quiet.notified();
            tokio::pin!(quiet);
            // Registered before the load, so an end between the two is not missed.
            quiet.as_mut().enable();
            let seen = self.state.load(Ordering::Acquire);
            if open_now(seen) > 0 {
                quiet.await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(timeout) => {
                    if self.state.load(Ordering::Acquire) == seen {
                        return;
                    }
                }
                // A request came and went: the quiet time starts again now.
                _ = quiet => {}
            }
        }
    }

    #[cfg(test)]
    fn open_count(&self) -> u64 {
        open_now(self.state.load(Ordering::Acquire))
    }
}

/// One open request; dropping it ends the request.
#[derive(Debug)]
pub struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        let before = self.0.state.fetch_sub(ONE_OPEN, Ordering::AcqRel);
        if open_now(before) == 1 {
            self.0.quiet.notify_one();
        }
    }
}

/// A response body that keeps its request open until hyper drops it.
pub struct Tracked<B> {
    inner: B,
    _open: Open,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, open: Open) -> Tracked<B> {
        Tracked { inner, _open: open }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The drain signal of one listener's connections (see the module docs for why not
/// hyper-util's).
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<()>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            tx: watch::channel(()).0,
        }
    }
}

impl Drain {
    /// For one connection: changes when the drain starts; held until the connection ends.
    pub fn watcher(&self) -> watch::Receiver<()> {
        self.tx.subscribe()
    }

    /// Connections still open.
    pub fn count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Tells every connection to finish, then waits until all have.
    pub async fn shutdown(self) {
        self.tx.send_replace(());
        self.tx.closed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_a_quiet_stretch_and_never_while_a_request_is_open() {
        let a = Activity::new();
        let t = Duration::from_secs(300);

        // Quiet from the start: idle after the timeout, not before.
        let start = tokio::time::Instant::now();
        a.idle_for(t).await;
        assert_eq!(start.elapsed(), t);

        // An open request holds it however long it lasts.
        let open = a.open();
        let waiting = tokio::spawn({
            let a = a.clone();
            async move {
                a.idle_for(t).await;
                tokio::time::Instant::now()
            }
        });
        tokio::time::sleep(t * 10).await;
        assert!(!waiting.is_finished());
        let ended = tokio::time::Instant::now();
        drop(open);
        assert_eq!(a.open_count(), 0);
        assert_eq!(waiting.await.unwrap() - ended, t);

        // A request that comes and goes restarts the quiet time.
        let waiting = tokio::spawn({
            let a = a.clone();
            async move {
                a.idle_for(t).await;
                tokio::time::Instant::now()
            }
        });
        tokio::time::sleep(t / 2).await;
        drop(a.open());
        let ended = tokio::time::Instant::now();
        assert_eq!(waiting.await.unwrap() - ended, t);
    }

    #[tokio::test]
    async fn drain_waits_for_every_watcher() {
        let d = Drain::default();
        let mut w = d.watcher();
        assert_eq!(d.count(), 1);
        let conn = tokio::spawn(async move {
            w.changed().await.unwrap();
        });
        d.shutdown().await;
        conn.await.unwrap();
    }
}
