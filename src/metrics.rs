//! The mirror's own metric families, registered in a registry handed in (no globals).
//!
//! Upstream traffic has its own families in `upstream::UpstreamMetrics`. The registry is rendered
//! by the metrics listener (`http::metrics`). Rule of dependency: a leaf.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Handles to every family the request path updates.
#[derive(Clone)]
pub struct Metrics {
    /// `berth_http_requests_total{route,method,status}`
    pub requests: IntCounterVec,
    /// `berth_http_request_duration_seconds{route}`: time to response headers.
    pub request_duration: HistogramVec,
    /// `berth_cache_lookups_total{kind,upstream,outcome}`: kind = blob|manifest|tag|referrers, outcome =
    /// hit|miss|stale|revalidated (referrers: hit|miss|stale).
    pub cache: IntCounterVec,
    /// `berth_served_bytes_total{source}`: source = cache|upstream|bucket (a fill in progress
    /// counts as where its bytes come from).
    pub served_bytes: IntCounterVec,
    /// `berth_upstream_fetched_bytes_total{upstream}`: bytes written to the cache from upstreams.
    pub fetched_bytes: IntCounterVec,
    /// `berth_digest_mismatches_total{upstream,kind}`: content refused because its digest was wrong.
    pub digest_mismatches: IntCounterVec,
    /// `berth_stale_serves_total{upstream}`: tags answered from an expired cache entry because the
    /// upstream failed.
    pub stale_serves: IntCounterVec,
    /// `berth_fills_in_flight`: blob fills running now.
    pub fills_in_flight: IntGauge,
    /// `berth_coalesced_requests_total{kind}`: requests that joined a fetch already running
    /// (kind = blob|manifest|referrers) instead of asking upstream again.
    pub coalesced: IntCounterVec,
    /// `berth_policy_verdicts_total{policy,verdict}`: manifest and blob answers a `[[policy]]`
    /// covered, verdict = verified (a good signature, or named by a manifest that had one) |
    /// denied | warned (served by a `warn` policy without).
    pub policy_verdicts: IntCounterVec,
    /// `berth_fill_waits_total`: blob requests that found only another repository's download
    /// of their digest, still waiting for its upstream's answer, and waited for that answer
    /// before joining it or starting their own (see `fill`).
    pub fill_waits: IntCounter,
    /// `berth_blob_first_byte_seconds`: time from a blob request to its first byte being ready.
    pub first_byte: Histogram,
    /// `berth_answers_total{source}`: blob answers (GET and HEAD) by where their bytes came
    /// from: `local` (this replica's disk), `bucket` or `upstream` (a fill from there, counted for
    /// each request reading it, joined ones included). `peer` is reserved for the cluster.
    pub answers: IntCounterVec,
    /// `berth_origin_confirmations_total`: cached digests an upstream was asked about (and
    /// confirmed) before they were answered through it, having come through another (`origins`).
    pub origin_confirmations: IntCounter,
    /// `berth_upstream_resumes_total{upstream,outcome}`: blob downloads picked up again after their
    /// body broke off: outcome = partial (206 from where it stopped) | restart (the upstream ignored
    /// `Range`; its body was read from the start, the bytes already had skipped) | failed (gave up).
    pub resumes: IntCounterVec,
    /// `berth_store_write_errors_total{kind}`: writes to the cache that failed, kind = enospc (the
    /// disk or quota was full; the fill went on from memory) | io (anything else).
    pub store_write_errors: IntCounterVec,
    /// `berth_zero_copy_bytes_total`: blob bytes sent with `sendfile` (plain-TCP hits and
    /// followers reading the written part of a fill), a subset of `berth_served_bytes_total`.
    pub zero_copy_bytes: IntCounter,
    /// Children of `requests` and `request_duration` for the answers that make up nearly all
    /// traffic, resolved on first use: `with_label_values` hashes the labels and takes a lock on
    /// every call, a cost that shows at tens of thousands of cached manifests a second.
    hot: Arc<HotRequests>,
}

/// The route labels with cached children, as [`crate::http::route::Route::kind`] names them.
const ROUTES: [&str; 5] = ["manifest", "blob", "base", "tags", "unknown"];

/// Per route: GET answered 200, HEAD answered 200, and the duration histogram.
#[derive(Default)]
struct HotRequests {
    ok: [[OnceLock<IntCounter>; 2]; ROUTES.len()],
    duration: [OnceLock<Histogram>; ROUTES.len()],
    /// `served_bytes` from the cache, from upstream.
    served: [OnceLock<IntCounter>; 2],
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "berth_http_requests_total",
                    "Requests answered, by route, method and status.",
                ),
                &["route", "method", "status"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "berth_http_request_duration_seconds",
                    "Time from request to response headers.",
                ),
                &["route"],
            )?,
            cache: IntCounterVec::new(
                Opts::new(
                    "berth_cache_lookups_total",
                    "Cache lookups by kind (blob, manifest, tag, referrers), upstream and outcome.",
                ),
                &["kind", "upstream", "outcome"],
            )?,
            served_bytes: IntCounterVec::new(
                Opts::new(
                    "berth_served_bytes_total",
                    "Blob bytes sent to clients, from the cache or from an upstream fill.",
                ),
                &["source"],
            )?,
            fetched_bytes: IntCounterVec::new(
                Opts::new(
                    "berth_upstream_fetched_bytes_total",
                    "Blob bytes fetched from upstreams into the cache.",
                ),
                &["upstream"],
            )?,
            digest_mismatches: IntCounterVec::new(
                Opts::new(
                    "berth_digest_mismatches_total",
                    "Upstream content refused because it did not match its digest.",
                ),
                &["upstream", "kind"],
            )?,
            stale_serves: IntCounterVec::new(
                Opts::new(
                    "berth_stale_serves_total",
                    "Tags served from an expired entry because the upstream failed.",
                ),
                &["upstream"],
            )?,
            fills_in_flight: IntGauge::new(
                "berth_fills_in_flight",
                "Blob fills from upstream running now.",
            )?,
            coalesced: IntCounterVec::new(
                Opts::new(
                    "berth_coalesced_requests_total",
                    "Requests that joined an upstream fetch already running instead of fetching again.",
                ),
                &["kind"],
            )?,
            policy_verdicts: IntCounterVec::new(
                Opts::new(
                    "berth_policy_verdicts_total",
                    "Manifest and blob answers a signature policy covered, by policy and verdict (verified, denied, warned).",
                ),
                &["policy", "verdict"],
            )?,
            fill_waits: IntCounter::new(
                "berth_fill_waits_total",
                "Blob requests that waited for another repository's download to get its upstream's answer before sharing it or starting their own.",
            )?,
            answers: IntCounterVec::new(
                Opts::new(
                    "berth_answers_total",
                    "Blob answers by where their bytes came from (local, bucket, upstream).",
                ),
                &["source"],
            )?,
            origin_confirmations: IntCounter::new(
                "berth_origin_confirmations_total",
                "Cached digests confirmed with an upstream before being answered through it, having been fetched through another.",
            )?,
            first_byte: Histogram::with_opts(
                HistogramOpts::new(
                    "berth_blob_first_byte_seconds",
                    "Time from a blob request to its response headers.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            )?,
            resumes: IntCounterVec::new(
                Opts::new(
                    "berth_upstream_resumes_total",
                    "Blob downloads picked up again after their body broke off, by outcome (partial, restart, failed).",
                ),
                &["upstream", "outcome"],
            )?,
            store_write_errors: IntCounterVec::new(
                Opts::new(
                    "berth_store_write_errors_total",
                    "Writes to the cache that failed, by kind (enospc, io).",
                ),
                &["kind"],
            )?,
            zero_copy_bytes: IntCounter::new(
                "berth_zero_copy_bytes_total",
                "Blob bytes sent from the file with sendfile instead of copied (plain-TCP connections).",
            )?,
            hot: Arc::default(),
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.cache.clone()))?;
        registry.register(Box::new(m.served_bytes.clone()))?;
        registry.register(Box::new(m.fetched_bytes.clone()))?;
        registry.register(Box::new(m.digest_mismatches.clone()))?;
        registry.register(Box::new(m.stale_serves.clone()))?;
        registry.register(Box::new(m.fills_in_flight.clone()))?;
        registry.register(Box::new(m.coalesced.clone()))?;
        registry.register(Box::new(m.fill_waits.clone()))?;
        registry.register(Box::new(m.policy_verdicts.clone()))?;
        registry.register(Box::new(m.first_byte.clone()))?;
        registry.register(Box::new(m.origin_confirmations.clone()))?;
        registry.register(Box::new(m.answers.clone()))?;
        registry.register(Box::new(m.resumes.clone()))?;
        registry.register(Box::new(m.store_write_errors.clone()))?;
        registry.register(Box::new(m.zero_copy_bytes.clone()))?;
        Ok(m)
    }

    /// Counts one answered request and observes its time to response headers.
    pub fn request(&self, route: &'static str, method: &str, status: u16, seconds: f64) {
        let Some(r) = ROUTES.iter().position(|k| *k == route) else {
            self.request_duration
                .with_label_values(&[route])
                .observe(seconds);
            self.count_request(route, method, status);
            return;
        };
        self.hot.duration[r]
            .get_or_init(|| self.request_duration.with_label_values(&[route]))
            .observe(seconds);
        let m = match (method, status) {
            ("GET", 200) => 0,
            ("HEAD", 200) => 1,
            _ => return self.count_request(route, method, status),
        };
        self.hot.ok[r][m]
            .get_or_init(|| self.requests.with_label_values(&[route, method, "200"]))
            .inc();
    }

    fn count_request(&self, route: &str, method: &str, status: u16) {
        let status = status.to_string();
        self.requests
            .with_label_values(&[route, method, &status])
            .inc();
    }

    /// Counts blob bytes sent to a client, by source (cache or upstream).
    pub fn served(&self, source: &'static str, bytes: u64) {
        let i = match source {
            "cache" => 0,
            "upstream" => 1,
            _ => return self.served_bytes.with_label_values(&[source]).inc_by(bytes),
        };
        self.hot.served[i]
            .get_or_init(|| self.served_bytes.with_label_values(&[source]))
            .inc_by(bytes);
    }

    /// Counts one cache lookup.
    /// Counts a blob answer by source (`berth_answers_total`).
    pub fn answer(&self, source: &str) {
        self.answers.with_label_values(&[source]).inc();
    }

    pub fn cache(&self, kind: &str, upstream: &str, outcome: &str) {
        self.cache
            .with_label_values(&[kind, upstream, outcome])
            .inc();
    }
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&registry.gather(), &mut buf) {
        buf = format!("# error encoding metrics: {e}\n");
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_and_labelled_request_counts_land_in_the_same_series() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        m.request("manifest", "GET", 200, 0.001);
        m.request("manifest", "GET", 200, 0.001);
        m.request("manifest", "HEAD", 200, 0.001);
        m.request("manifest", "GET", 404, 0.001);
        m.request("other", "GET", 200, 0.001);
        let count = |labels: &[&str]| m.requests.with_label_values(labels).get();
        assert_eq!(count(&["manifest", "GET", "200"]), 2);
        assert_eq!(count(&["manifest", "HEAD", "200"]), 1);
        assert_eq!(count(&["manifest", "GET", "404"]), 1);
        assert_eq!(count(&["other", "GET", "200"]), 1);
        let observed = |route: &str| {
            m.request_duration
                .with_label_values(&[route])
                .get_sample_count()
        };
        assert_eq!(observed("manifest"), 4);
        assert_eq!(observed("other"), 1);
        // Nothing is created before it is used.
        assert!(!render(&registry).contains("route=\"blob\""));
    }
}
