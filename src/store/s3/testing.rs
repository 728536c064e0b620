//! For tests only (`#[doc(hidden)]`): an in-memory object store that injects the bucket's faults,
//! shared by the bucket's unit tests (`store/s3/tests.rs`) and the request-path tests
//! (`tests/it/tier.rs`), so both meet one definition of "the bucket is down" or "a part broke off".
//!
//! It lives in the library rather than in `tests/support` because the unit tests need it too, and
//! a test crate cannot reach into `src`; it costs the library nothing it did not already build
//! (`async-trait` and `object_store::memory` are compiled either way).
//! Rule of dependency: no module of berth (`object_store`, tokio and futures only); it knows
//! nothing of [`super::Bucket`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt as _, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    UploadPart,
};
use tokio::sync::Notify;

/// Faults to inject (set by the test at any time), and what the store saw.
#[derive(Default)]
pub struct Faults {
    /// Every request fails (the bucket's server is down).
    pub down: AtomicBool,
    /// Fail the part with this number (1-based, over all uploads); 0: none.
    pub fail_part: AtomicUsize,
    /// Every multipart completion fails.
    pub fail_complete: AtomicBool,
    /// Hold every completion forever (a server that takes its time).
    pub hold_complete: AtomicBool,
    /// Hold every part upload until this is cleared and [`Faults::parts_released`] notified (a
    /// bucket slower than the upstream).
    pub hold_parts: AtomicBool,
    pub parts_released: Notify,
    /// Hold every GET body after its first KiB until [`Faults::release`] is notified.
    pub hold_get: AtomicBool,
    pub release: Notify,
    /// The next GET of a blob (a key under `blobs/`) sends this many bytes, then breaks off
    /// (0: none).
    pub break_get_after: AtomicUsize,
    /// Parts sent, over all uploads.
    pub parts: AtomicUsize,
    /// Completions begun, and those that succeeded.
    pub completing: AtomicUsize,
    pub completes: AtomicUsize,
    pub aborts: AtomicUsize,
    /// Fail every delete.
    pub fail_deletes: AtomicBool,
    /// Another replica pulls whatever's access marker is looked at next (an eviction pass's
    /// check just before deleting): the marker is written first.
    pub pull_on_check: AtomicBool,
    /// Whole-object PUTs of blobs (an upload smaller than a part).
    pub blob_puts: AtomicUsize,
    /// The key each multipart upload was started for.
    pub started: Mutex<Vec<String>>,
    /// Woken on every part, completion and abort.
    changed: Notify,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Faults")
    }
}

impl Faults {
    /// Waits until `cond` holds, re-checked on every part, completion and abort; panics naming
    /// `what` after 10 s.
    pub async fn until(&self, what: &str, cond: impl Fn(&Faults) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let changed = self.changed.notified();
            if cond(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("timed out waiting for {what}");
            }
        }
    }

    fn check(&self) -> object_store::Result<()> {
        match self.down.load(Ordering::SeqCst) {
            true => Err(injected("bucket down")),
            false => Ok(()),
        }
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected: {what}").into(),
    }
}

fn is_blob(location: &Path) -> bool {
    location.as_ref().contains("blobs/")
}

/// An [`InMemory`] store with [`Faults`]. Two `Faulty` over one `Arc<InMemory>` are two
/// replicas' views of one bucket, each with its own faults.
#[derive(Debug)]
pub struct Faulty {
    inner: Arc<InMemory>,
    faults: Arc<Faults>,
}

impl Faulty {
    pub fn new(inner: Arc<InMemory>) -> (Faulty, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        let store = Faulty {
            inner,
            faults: faults.clone(),
        };
        (store, faults)
    }
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.faults.check()?;
        if is_blob(location) {
            self.faults.blob_puts.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.faults.check()?;
        self.faults
            .started
            .lock()
            .unwrap()
            .push(location.to_string());
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            faults: self.faults.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.faults.check()?;
        let head = options.head;
        if head
            && location.as_ref().contains("/access/")
            && self.faults.pull_on_check.swap(false, Ordering::SeqCst)
        {
            self.inner.put(location, PutPayload::new()).await?;
        }
        let got = self.inner.get_opts(location, options).await?;
        let hold = self.faults.hold_get.load(Ordering::SeqCst);
        let cut = match head || !is_blob(location) {
            true => 0,
            false => self.faults.break_get_after.swap(0, Ordering::SeqCst),
        };
        if head || (!hold && cut == 0) {
            return Ok(got);
        }
        let GetResult {
            payload,
            meta,
            range,
            attributes,
            extensions,
        } = got;
        // The only variant without object_store's `fs` feature.
        let GetResultPayload::Stream(s) = payload;
        let all: Vec<Bytes> = s.try_collect().await?;
        let all = Bytes::from(all.concat());
        let body = match cut {
            0 => {
                // 1 KiB pieces, everything after the first held back.
                let pieces: Vec<Bytes> = all.chunks(1024).map(Bytes::copy_from_slice).collect();
                let faults = self.faults.clone();
                stream::iter(pieces.into_iter().enumerate())
                    .then(move |(i, piece)| {
                        let faults = faults.clone();
                        async move {
                            if i == 1 {
                                faults.release.notified().await;
                            }
                            Ok(piece)
                        }
                    })
                    .boxed()
            }
            cut => stream::iter([
                Ok(all.slice(..cut.min(all.len()))),
                Err(injected("connection reset")),
            ])
            .boxed(),
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(body),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        if self.faults.fail_deletes.load(Ordering::SeqCst) {
            return locations.map(|_| Err(injected("delete refused"))).boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Err(e) = self.faults.check() {
            return stream::iter([Err(e)]).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.faults.check()?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.faults.check()?;
        self.inner.copy_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    faults: Arc<Faults>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let n = self.faults.parts.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = self.faults.fail_part.load(Ordering::SeqCst) == n;
        let part = self.inner.put_part(data);
        let faults = self.faults.clone();
        Box::pin(async move {
            loop {
                let released = faults.parts_released.notified();
                if !faults.hold_parts.load(Ordering::SeqCst) {
                    break;
                }
                released.await;
            }
            // The part's bytes went (half) out and the connection broke: the server has no part.
            let res = match fail {
                true => Err(injected("part upload broke off")),
                false => part.await,
            };
            faults.changed.notify_waiters();
            res
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.faults.completing.fetch_add(1, Ordering::SeqCst);
        self.faults.changed.notify_waiters();
        if self.faults.hold_complete.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let res = match self.faults.fail_complete.load(Ordering::SeqCst) {
            true => Err(injected("complete failed")),
            false => self.inner.complete().await,
        };
        if res.is_ok() {
            self.faults.completes.fetch_add(1, Ordering::SeqCst);
        }
        self.faults.changed.notify_waiters();
        res
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.faults.aborts.fetch_add(1, Ordering::SeqCst);
        self.faults.changed.notify_waiters();
        self.inner.abort().await
    }
}
