//! Metric families of upstream traffic ([`UpstreamMetrics`]): requests, their time to headers,
//! token requests, retries, Docker Hub's rate-limit gauges, and each upstream's last failure for
//! `/healthz?verbose`. Registered in a registry that is handed in; the other rooms of `upstream`
//! record into them.
//!
//! Rule of dependency: a leaf under `upstream` (uses `prometheus`).

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::header::{HeaderMap, HeaderValue};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Metric families for upstream traffic, registered in a registry that is handed in.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    /// Each request sent, redirects included: `status` is the code, or `error` / `timeout`.
    pub(super) requests: IntCounterVec,
    /// Time to response headers.
    pub(super) duration: HistogramVec,
    /// Token requests by `outcome`: `issued`, `denied`, `failed`.
    pub(super) token_requests: IntCounterVec,
    /// Requests sent again, by `reason`: `connect`, `status_5xx`, `retry_after`.
    pub(super) retries: IntCounterVec,
    /// Docker Hub's pull allowance per window, from `ratelimit-limit`.
    ratelimit_limit: IntGaugeVec,
    /// What is left of it, from `ratelimit-remaining`.
    ratelimit_remaining: IntGaugeVec,
    /// Each upstream's last failure, by name, for `/healthz?verbose`. Kept here rather than in the
    /// [`Upstream`] so that it survives a reload that rebuilds the upstream's client.
    last_errors: LastErrors,
}

/// The last failure of each upstream, by name: when, and what.
pub type LastErrors = Arc<Mutex<std::collections::HashMap<String, (SystemTime, String)>>>;

impl UpstreamMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<UpstreamMetrics> {
        let requests = IntCounterVec::new(
            Opts::new(
                "berth_upstream_requests_total",
                "Requests sent to upstream registries (each redirect hop counts).",
            ),
            &["upstream", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "berth_upstream_request_duration_seconds",
                "Time from sending an upstream request to its response headers.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["upstream"],
        )?;
        let token_requests = IntCounterVec::new(
            Opts::new(
                "berth_upstream_token_requests_total",
                "Bearer token requests to upstream token realms.",
            ),
            &["upstream", "outcome"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "berth_upstream_retries_total",
                "Upstream requests sent again after a connection failure, a 5xx or a short Retry-After.",
            ),
            &["upstream", "reason"],
        )?;
        let ratelimit_limit = IntGaugeVec::new(
            Opts::new(
                "berth_upstream_ratelimit_limit",
                "Pulls allowed per window, from the upstream's last ratelimit-limit header.",
            ),
            &["upstream"],
        )?;
        let ratelimit_remaining = IntGaugeVec::new(
            Opts::new(
                "berth_upstream_ratelimit_remaining",
                "Pulls left in the window, from the upstream's last ratelimit-remaining header.",
            ),
            &["upstream"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(token_requests.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(ratelimit_limit.clone()))?;
        registry.register(Box::new(ratelimit_remaining.clone()))?;
        Ok(UpstreamMetrics {
            requests,
            duration,
            token_requests,
            retries,
            ratelimit_limit,
            ratelimit_remaining,
            last_errors: LastErrors::default(),
        })
    }

    /// Each upstream's last failure (a transport error, a timeout, a 5xx or 429 after retries).
    pub fn last_errors(&self) -> &LastErrors {
        &self.last_errors
    }

    pub(super) fn failed(&self, upstream: &str, what: String) {
        self.last_errors
            .lock()
            .unwrap()
            .insert(upstream.to_owned(), (SystemTime::now(), what));
    }

    /// Docker Hub's `ratelimit-limit` / `ratelimit-remaining` (`100;w=21600`) into the gauges.
    pub(super) fn record_rate_limit(&self, upstream: &str, headers: &HeaderMap) {
        for (name, gauge) in [
            ("ratelimit-limit", &self.ratelimit_limit),
            ("ratelimit-remaining", &self.ratelimit_remaining),
        ] {
            if let Some(n) = headers.get(name).and_then(rate_limit_value) {
                gauge.with_label_values(&[upstream]).set(n);
            }
        }
    }
}

/// The number in a `ratelimit-*` header: `100;w=21600` -> 100.
fn rate_limit_value(v: &HeaderValue) -> Option<i64> {
    let s = v.to_str().ok()?;
    s.split([';', ',']).next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_header_values() {
        let v = |s: &'static str| rate_limit_value(&HeaderValue::from_static(s));
        assert_eq!(v("100;w=21600"), Some(100));
        assert_eq!(v(" 76 ;w=21600"), Some(76));
        assert_eq!(v("0"), Some(0));
        assert_eq!(v("many;w=1"), None);
        assert_eq!(v(""), None);
    }
}
