//! The bucket tier's metric families ([`BucketMetrics`]): requests by operation and outcome, their
//! time, multipart aborts by reason, and the share's eviction and size. [`BucketMetrics::register`]
//! puts them in the registry the caller hands it (no global); the bucket holds the handles and
//! every room of `store::s3` records through them.
//!
//! Rule of dependency: part of `store::s3`; `prometheus` only, no sibling.

use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// The bucket tier's metric families.
#[derive(Clone)]
pub struct BucketMetrics {
    /// `berth_bucket_requests_total{op,outcome}`
    pub requests: IntCounterVec,
    /// `berth_bucket_request_seconds{op}`: to the answer's headers (a GET), or to completion.
    pub seconds: HistogramVec,
    /// `berth_bucket_multipart_aborts_total{reason}`: reason = digest | size | source | error |
    /// dropped | stale.
    pub aborts: IntCounterVec,
    /// `berth_bucket_evictions_total{reason}`: objects evicted from the share (size, age).
    pub evictions: IntCounterVec,
    /// `berth_bucket_evicted_bytes_total{reason}`
    pub evicted_bytes: IntCounterVec,
    /// `berth_bucket_bytes`: the share (blobs and manifests) as the last eviction pass saw it,
    /// less what it evicted.
    pub share_bytes: IntGauge,
    /// `berth_bucket_objects`: the objects of that share.
    pub share_objects: IntGauge,
}

impl BucketMetrics {
    pub fn new() -> BucketMetrics {
        BucketMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "berth_bucket_requests_total",
                    "Requests to the bucket tier, by operation and outcome.",
                ),
                &["op", "outcome"],
            )
            .expect("valid metric"),
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "berth_bucket_request_seconds",
                    "Time of bucket requests, by operation (a GET: to its headers; an upload: to completion).",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
                &["op"],
            )
            .expect("valid metric"),
            aborts: IntCounterVec::new(
                Opts::new(
                    "berth_bucket_multipart_aborts_total",
                    "Multipart uploads aborted, by reason (digest, size, source, error, dropped, stale).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            evictions: IntCounterVec::new(
                Opts::new(
                    "berth_bucket_evictions_total",
                    "Objects evicted from the bucket's share, by reason (size, age).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            evicted_bytes: IntCounterVec::new(
                Opts::new(
                    "berth_bucket_evicted_bytes_total",
                    "Bytes evicted from the bucket's share, by reason (size, age).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            share_bytes: IntGauge::new(
                "berth_bucket_bytes",
                "Bytes of blobs and manifests in the bucket, as the last eviction pass saw them.",
            )
            .expect("valid metric"),
            share_objects: IntGauge::new(
                "berth_bucket_objects",
                "Blobs and manifests in the bucket, as the last eviction pass saw them.",
            )
            .expect("valid metric"),
        }
    }

    /// Registers every family in `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.requests.clone()))?;
        registry.register(Box::new(self.seconds.clone()))?;
        registry.register(Box::new(self.aborts.clone()))?;
        registry.register(Box::new(self.evictions.clone()))?;
        registry.register(Box::new(self.evicted_bytes.clone()))?;
        registry.register(Box::new(self.share_bytes.clone()))?;
        registry.register(Box::new(self.share_objects.clone()))
    }

    /// Counts one request of `op` with its `outcome` and observes its time since `started`.
    pub(super) fn record(&self, op: &str, outcome: &str, started: Instant) {
        self.requests.with_label_values(&[op, outcome]).inc();
        self.seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
    }
}

impl Default for BucketMetrics {
    fn default() -> Self {
        BucketMetrics::new()
    }
}
