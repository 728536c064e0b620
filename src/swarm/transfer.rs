//! Node to node: `GET /_berth/fleet/v1/blobs/<digest>` with `Range: bytes=F-`, the serving side
//! ([`Uploads::serve`]) and the fetching side ([`fetch`], [`BlobBody`]). Functions only: the
//! route, the fleet proof (checked before `serve`, signed by the caller of `fetch`) and the
//! transport's TLS belong to the wiring.
//!
//! The serving node streams its verified bytes only: a blob it holds whole, or one it is still
//! receiving up to its verified frontier ([`Outgoing`]), following the frontier as it moves. When
//! the frontier stays put for a tick (its own source is slow or being replaced), it ends the
//! body cleanly short of the blob's end: that short, clean end is the "waiting" word of
//! [`select`](super::select) (the child asks again from where it is, and gives the node
//! `STARVE` before it looks elsewhere), where a silent node is a stall and a broken body is a
//! closed one. The body has no `Content-Length` for that reason (chunked), and a
//! `Content-Range: bytes F-(size-1)/size` that says what the whole answer would be.
//!
//! At `max_uploads` bodies in flight the node answers `429` at once (the child asks the tracker
//! for another source); with nothing to serve, `404`; a range it cannot serve, `416`. A
//! receiving node that gives up (its frontier's sender dropped before the end) breaks the bodies
//! it serves, so its children see a closed body, not a wait.
//!
//! Rule of dependency: uses `oci::Digest`, `swarm::node` and `swarm::tracker::Reason`; hyper,
//! tokio. No other module of berth.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::node::NodeUrl;
use super::tracker::Reason;
use crate::oci::Digest;

/// Where node-to-node blob requests go (the digest follows).
pub const BLOBS_PATH: &str = "/_berth/fleet/v1/blobs/";

/// How long a serving node waits for its frontier to move before it ends a body short (the
/// "waiting" word): half the child's stall time, so a waiting node always speaks first.
pub const WAIT_TICK: Duration = Duration::from_secs(1);

/// The largest chunk read from the file and sent at once.
const CHUNK: usize = 64 * 1024;

/// A body served to peers.
pub type ServeBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// A blob this node can serve: its file and how far it is verified.
pub struct Outgoing {
    /// The blob's file, complete or growing (the bytes below the frontier are final), read at
    /// offsets: an open handle rather than a path, because a growing file is a temp file that
    /// the fill renames (or unlinks) under the reader, which keeps reading the same inode.
    pub file: Arc<File>,
    pub size: u64,
    /// Verified bytes; a sender dropped before `size` means the transfer was given up.
    pub frontier: watch::Receiver<u64>,
}

/// This node's upload slots (`[fleet] max_uploads`), shared by every digest it serves.
#[derive(Clone)]
pub struct Uploads {
    slots: Arc<Semaphore>,
    tick: Duration,
}

impl Uploads {
    /// `max_uploads` bodies at once; `tick` is [`WAIT_TICK`] but for tests.
    pub fn new(max_uploads: usize, tick: Duration) -> Uploads {
        Uploads {
            slots: Arc::new(Semaphore::new(max_uploads)),
            tick,
        }
    }

    /// Answers a peer's (already authenticated) request for a blob, given its `Range` and what
    /// this node has of it.
    pub fn serve(
        &self,
        range: Option<&HeaderValue>,
        blob: Option<Outgoing>,
    ) -> Response<ServeBody> {
        let Some(blob) = blob else {
            return status(StatusCode::NOT_FOUND);
        };
        let from = match range.map(parse_range) {
            None => 0,
            Some(Some(from)) if from < blob.size => from,
            Some(_) => {
                let mut r = status(StatusCode::RANGE_NOT_SATISFIABLE);
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{}", blob.size))
                        .expect("digits make a valid header value"),
                );
                return r;
            }
        };
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return status(StatusCode::TOO_MANY_REQUESTS);
        };
        let size = blob.size;
        let stream = futures_util::stream::unfold(
            Stream {
                blob,
                pos: from,
                tick: self.tick,
                _permit: permit,
            },
            Stream::next,
        );
        let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
        if range.is_some() {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {from}-{}/{size}", size - 1))
                    .expect("digits make a valid header value"),
            );
        }
        r
    }
}

fn status(s: StatusCode) -> Response<ServeBody> {
    let mut r = Response::new(BodyExt::boxed_unsync(
        Empty::<Bytes>::new().map_err(|never| match never {}),
    ));
    *r.status_mut() = s;
    r
}

/// `bytes=F-`, the only range a node asks for (from its frontier to the end).
fn parse_range(v: &HeaderValue) -> Option<u64> {
    let s = v.to_str().ok()?.strip_prefix("bytes=")?.strip_suffix('-')?;
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One body being served: where it is, and the slot it holds until it ends.
struct Stream {
    blob: Outgoing,
    pos: u64,
    tick: Duration,
    _permit: OwnedSemaphorePermit,
}

type Item = Result<Frame<Bytes>, std::io::Error>;

impl Stream {
    async fn next(mut self) -> Option<(Item, Stream)> {
        loop {
            if self.pos >= self.blob.size {
                return None;
            }
            let frontier = (*self.blob.frontier.borrow_and_update()).min(self.blob.size);
            if self.pos < frontier {
                return match self.read(frontier).await {
                    Ok(b) => Some((Ok(Frame::data(b)), self)),
                    Err(e) => Some((Err(e), self)),
                };
            }
            match tokio::time::timeout(self.tick, self.blob.frontier.changed()).await {
                Ok(Ok(())) => continue,
                // Given up: send what was verified, then break the body.
                Ok(Err(_)) if *self.blob.frontier.borrow() > self.pos => continue,
                Ok(Err(_)) => {
                    let e = std::io::Error::other("the serving node gave the blob up");
                    self.blob.size = self.pos;
                    return Some((Err(e), self));
                }
                // The frontier did not move for a tick: end short, the "waiting" word.
                Err(_) => return None,
            }
        }
    }

    async fn read(&mut self, frontier: u64) -> std::io::Result<Bytes> {
        let want = (frontier - self.pos).min(CHUNK as u64) as usize;
        let (file, pos) = (self.blob.file.clone(), self.pos);
        let buf = tokio::task::spawn_blocking(move || -> std::io::Result<BytesMut> {
            let mut buf = BytesMut::zeroed(want);
            let n = file.read_at(&mut buf, pos)?;
            buf.truncate(n);
            Ok(buf)
        })
        .await
        .map_err(std::io::Error::other)??;
        if buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the blob's file is shorter than its verified frontier",
            ));
        }
        self.pos += buf.len() as u64;
        Ok(buf.freeze())
    }
}

/// What a fetched body did next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Bytes(Bytes),
    /// It ended cleanly short of the blob's end: the source waits for its own source.
    Waiting,
    /// It ended at the blob's end.
    Done,
    /// It broke off.
    Closed,
}

/// A body from a peer, from the offset asked for.
pub struct BlobBody {
    body: Incoming,
    pos: u64,
    size: u64,
}

impl BlobBody {
    /// The offset of the next byte.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn next(&mut self) -> Event {
        loop {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if data.is_empty() {
                            continue;
                        }
                        self.pos += data.len() as u64;
                        return Event::Bytes(data);
                    }
                }
                Some(Err(_)) => return Event::Closed,
                None if self.pos >= self.size => return Event::Done,
                None => return Event::Waiting,
            }
        }
    }
}

/// Asks `node` for `digest` from byte `from` on, with the request's fleet proof
/// (`authorization`, made by the caller for `GET` and the path). A refusal says why, as the
/// tracker is told: `busy` for a 429, `unreachable` for no connection or any other answer.
pub async fn fetch<C>(
    client: &Client<C, Empty<Bytes>>,
    node: &NodeUrl,
    digest: &Digest,
    from: u64,
    authorization: HeaderValue,
) -> Result<BlobBody, Reason>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let req = Request::get(format!("{node}{}", path(digest)))
        .header(header::RANGE, format!("bytes={from}-"))
        .header(header::AUTHORIZATION, authorization)
        .body(Empty::new())
        .map_err(|_| Reason::Unreachable)?;
    let resp = client.request(req).await.map_err(|_| Reason::Unreachable)?;
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => {}
        StatusCode::TOO_MANY_REQUESTS => return Err(Reason::Busy),
        _ => return Err(Reason::Unreachable),
    }
    let (start, size) = resp
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(content_range)
        .ok_or(Reason::Unreachable)?;
    if start != from {
        return Err(Reason::Unreachable);
    }
    Ok(BlobBody {
        body: resp.into_body(),
        pos: from,
        size,
    })
}

/// The request path of `digest` (what the fleet proof signs).
pub fn path(digest: &Digest) -> String {
    format!("{BLOBS_PATH}{digest}")
}

/// `bytes F-L/S` with `L = S - 1` (a node always serves to the end): `(F, S)`.
fn content_range(v: &HeaderValue) -> Option<(u64, u64)> {
    let s = v.to_str().ok()?.strip_prefix("bytes ")?;
    let (range, size) = s.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, size): (u64, u64, u64) =
        (first.parse().ok()?, last.parse().ok()?, size.parse().ok()?);
    (first <= last && last.checked_add(1) == Some(size)).then_some((first, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_a_node_asks_for() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_range(&h("bytes=0-")), Some(0));
        assert_eq!(parse_range(&h("bytes=1048576-")), Some(1 << 20));
        for bad in [
            "bytes=0-10",
            "bytes=-5",
            "bytes=-",
            "items=0-",
            "bytes=+1-",
            "bytes= 1-",
        ] {
            assert_eq!(parse_range(&h(bad)), None, "{bad}");
        }
        assert_eq!(content_range(&h("bytes 5-9/10")), Some((5, 10)));
        for bad in [
            "bytes 5-8/10",
            "bytes 9-5/10",
            "bytes */10",
            "bytes 0-9",
            "5-9/10",
        ] {
            assert_eq!(content_range(&h(bad)), None, "{bad}");
        }
        let d = Digest::of(b"x");
        assert_eq!(path(&d), format!("/_berth/fleet/v1/blobs/{d}"));
    }
}
