//! Reading a large blob from the bucket as several ranged GETs at once
//! ([`Bucket::get_blob`] with `[storage.s3] read_streams` above 1).
//!
//! Why: S3 and most S3-compatible stores serve one GET stream at a fraction of what a node's link
//! carries (AWS documents byte-range fetches as the way to more throughput, and its own transfer
//! clients read large objects as parallel ranges). A fresh replica that fills a 2 GB layer from
//! one such stream keeps its clients at that stream's pace.
//!
//! How: the first GET asks for the first [`READ_PART`] bytes only; its answer names the object's
//! size, and streams to the fill at once (the first byte waits for nothing else). Beside it, the
//! later parts are fetched in order, at most `read_streams - 1` at a time, each held as the chunks
//! its connection delivered (no copy into one buffer), and handed on strictly in order once the
//! part before has gone. So the bytes the fill sees are exactly the object's, in order, and the
//! fill checks its digest over the whole as for any source: a part is never trusted on its own.
//! A part whose GET fails or ends early is asked again from where it broke, up to
//! [`PART_RETRIES`] times (`object_store` also retries a broken body by itself); beyond that the
//! stream ends in the error, and the fill resumes from the upstream as it does when a single
//! bucket stream breaks. An object of one part or less is read by that first GET alone.
//!
//! Memory, the trade-off: a reading fill holds up to `read_streams + 1` parts: those in flight
//! or fetched but not yet their turn (`read_streams - 1`), the one ready next, and the one being
//! handed on: `(read_streams + 1) * 8 MiB`, and more where the connection's chunks are slices of
//! larger buffers (measured: 4 streams, peak RSS 71 MiB against 25 MiB for one stream, in
//! BENCHMARKS.md). That is why the default is 1 (one stream, as before): on a bucket that is
//! close (RGW on the same host, measured there too) a second stream only splits the same cores.
//! Set it where one stream is the bottleneck (AWS S3, a remote RGW): there it multiplies a fresh
//! replica's read of a large blob (4 streams capped at 40 MB/s each: 2.7x one stream).
//!
//! Requests: each part after the first is one `op="get_range"` request in
//! `berth_bucket_requests_total`, so `op="get"` still counts one per object read.
//!
//! Rule of dependency: part of `store::s3`; reads through its parent's [`Bucket`] and uses its
//! vocabulary; `client` calls it from `get_blob`.

use std::collections::VecDeque;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange};

use super::{BlobRead, Bucket, BucketError};

/// Bytes of one ranged read (the first GET's, and each part's after it).
pub const READ_PART: u64 = 8 * 1024 * 1024;

/// Times a part is asked again after its GET failed or ended short.
pub const PART_RETRIES: u32 = 2;

/// The ranges after the first part of an object of `size` bytes, in order.
fn later_parts(size: u64) -> impl Iterator<Item = Range<u64>> {
    (1..size.div_ceil(READ_PART)).map(move |i| i * READ_PART..((i + 1) * READ_PART).min(size))
}

/// The error of a ranged read of `range` that did not deliver it.
fn range_error(range: &Range<u64>, reason: impl Into<String>) -> BucketError {
    BucketError::Range {
        start: range.start,
        end: range.end,
        reason: reason.into(),
    }
}

impl Bucket {
    /// The whole object at `key` as parallel ranged reads, given the answer to a read of its
    /// first [`READ_PART`] bytes (`first`): that answer itself when it is the whole object.
    pub(super) fn read_in_parts(&self, key: Path, first: BlobRead) -> BlobRead {
        let size = first.size;
        if size <= READ_PART {
            return first;
        }
        let bucket = self.clone();
        let rest = futures_util::stream::iter(later_parts(size))
            .map(move |range| {
                let bucket = bucket.clone();
                let key = key.clone();
                async move { bucket.read_part(&key, range).await }
            })
            .buffered(self.read_streams - 1)
            .fuse();
        let body = InOrder {
            first: Some(first.body),
            first_left: READ_PART,
            rest: Box::pin(rest),
            ready: None,
            current: VecDeque::new(),
            done: false,
        };
        BlobRead {
            size,
            range: 0..size,
            body: body.boxed(),
        }
    }

    /// One part, whole: its chunks in order. A GET that fails or ends before the part's end is
    /// asked again from the byte it stopped at, [`PART_RETRIES`] times.
    async fn read_part(
        &self,
        key: &Path,
        range: Range<u64>,
    ) -> Result<VecDeque<Bytes>, BucketError> {
        let mut chunks = VecDeque::new();
        let mut at = range.start;
        let mut retries = 0;
        loop {
            let error = match self
                .part_from(key, at..range.end, &mut chunks, &mut at)
                .await
            {
                Ok(()) if at == range.end => return Ok(chunks),
                Ok(()) => range_error(&range, format!("the answer ended at byte {at}")),
                Err(e) => e,
            };
            if retries == PART_RETRIES {
                return Err(error);
            }
            retries += 1;
            tracing::debug!(%key, at, %error, "a ranged bucket read broke off; asking again");
        }
    }

    /// Reads `range` of `key` into `chunks`, moving `at` past each chunk.
    async fn part_from(
        &self,
        key: &Path,
        range: Range<u64>,
        chunks: &mut VecDeque<Bytes>,
        at: &mut u64,
    ) -> Result<(), BucketError> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let got = self
            .timed("get_range", self.store.get_opts(key, options))
            .await?
            .ok_or_else(|| range_error(&range, "the object is gone"))?;
        if got.range != range {
            return Err(range_error(
                &range,
                format!("answered bytes {:?}", got.range),
            ));
        }
        let mut body = got.into_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if *at + chunk.len() as u64 > range.end {
                return Err(range_error(&range, "the answer ran past the range"));
            }
            *at += chunk.len() as u64;
            chunks.push_back(chunk);
        }
        Ok(())
    }
}

/// The first part's stream, then the later parts in order; the next part is fetched while the
/// one before streams.
struct InOrder {
    first: Option<BoxStream<'static, Result<Bytes, BucketError>>>,
    /// Bytes the first part still owes.
    first_left: u64,
    rest: Pin<Box<dyn Stream<Item = Result<VecDeque<Bytes>, BucketError>> + Send>>,
    /// The part after the first, once fetched while the first still streams.
    ready: Option<VecDeque<Bytes>>,
    /// The part being handed on.
    current: VecDeque<Bytes>,
    done: bool,
}

impl Stream for InOrder {
    type Item = Result<Bytes, BucketError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.current.pop_front() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if this.first.is_none() {
                // The first part has gone: the later ones, in order.
                match ready!(this.rest.as_mut().poll_next(cx)) {
                    Some(Ok(part)) => this.current = part,
                    Some(Err(e)) => return Poll::Ready(this.fail(e)),
                    None => this.done = true,
                }
                continue;
            }
            // While the first part streams, the next one is fetched and held.
            if this.ready.is_none()
                && let Poll::Ready(Some(got)) = this.rest.as_mut().poll_next(cx)
            {
                match got {
                    Ok(part) => this.ready = Some(part),
                    Err(e) => return Poll::Ready(this.fail(e)),
                }
            }
            let first = this.first.as_mut().expect("checked above");
            match ready!(first.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => {
                    let Some(left) = this.first_left.checked_sub(chunk.len() as u64) else {
                        let e = range_error(&(0..READ_PART), "the answer ran past the range");
                        return Poll::Ready(this.fail(e));
                    };
                    this.first_left = left;
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Some(Err(e)) => return Poll::Ready(this.fail(e)),
                None if this.first_left != 0 => {
                    let at = READ_PART - this.first_left;
                    let e = range_error(&(0..READ_PART), format!("the answer ended at byte {at}"));
                    return Poll::Ready(this.fail(e));
                }
                None => {
                    this.first = None;
                    this.current = this.ready.take().unwrap_or_default();
                }
            }
        }
    }
}

impl InOrder {
    /// Ends the stream in `e` (nothing after it).
    fn fail(&mut self, e: BucketError) -> Option<Result<Bytes, BucketError>> {
        self.done = true;
        self.first = None;
        self.ready = None;
        self.current.clear();
        Some(Err(e))
    }
}
