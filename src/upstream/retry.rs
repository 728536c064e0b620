//! The retry and resume policy: what is sent again, why, and after how long.
//!
//! A request whose connection fails (refused, reset, connect timeout) or that ends in
//! 500/502/503/504 is sent again, the whole auth and redirect chain from the start, up to
//! `retries` more times with jittered exponential backoff. That all happens before `send`
//! returns, so no byte of a failed attempt ever reaches the caller. A 429 or 503 with a
//! `Retry-After` no longer than `retry_backoff_max` is waited out; a longer one is returned, so the
//! client hears it. A missing response (`response_timeout`) is not retried: the upstream has the
//! request and is slow, and waiting again would outlast the client's patience. A body that breaks
//! off after the response is the caller's to resume, with the same backoff
//! ([`Upstream::backoff`]).
//!
//! Rule of dependency: under `upstream`, uses its parent's [`Upstream`] (to send tries) and
//! `response` (what a try returns); `config` and `error`.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use tracing::debug;
use url::Url;

use super::Upstream;
use super::response::UpstreamResponse;
use crate::config::UpstreamConfig;
use crate::error::Error;

impl Upstream {
    /// Sends tries (`attempt`) until the policy hands the outcome to the caller: the last response
    /// for any status, or the last error. Records the last failure and counts each retry by its
    /// reason.
    pub(super) async fn with_retries(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        scope: Option<&str>,
    ) -> Result<UpstreamResponse, Error> {
        let mut retry = 0;
        loop {
            let outcome = self.attempt(method, url, headers, scope).await;
            let seen = match &outcome {
                Ok(resp) => {
                    Attempted::Status(resp.status, retry_after(&resp.headers, SystemTime::now()))
                }
                Err(f) if f.retryable => Attempted::ConnectFailed,
                Err(_) => Attempted::Final,
            };
            let Some((reason, wait)) = retry_plan(&self.cfg, retry, seen, jitter_unit()) else {
                match &outcome {
                    Ok(r)
                        if r.status.is_server_error()
                            || r.status == StatusCode::TOO_MANY_REQUESTS =>
                    {
                        self.metrics
                            .failed(&self.cfg.name, format!("{} {}", r.status, url.path()))
                    }
                    Err(f) => self.metrics.failed(&self.cfg.name, f.error.to_string()),
                    Ok(_) => {}
                }
                return outcome.map_err(|f| {
                    let mut e = f.error;
                    if retry > 0 {
                        let d = e.detail.take().unwrap_or_default();
                        e.detail = Some(format!("{d} (after {} attempts)", retry + 1));
                    }
                    e
                });
            };
            match &outcome {
                Ok(resp) => debug!(upstream = %self.name, status = resp.status.as_u16(),
                    retry = retry + 1, ?wait, "retrying upstream request"),
                Err(f) => debug!(upstream = %self.name, error = %f.error,
                    retry = retry + 1, ?wait, "retrying upstream request"),
            }
            // Dropping an unread response closes its connection; the retry gets a fresh one.
            drop(outcome);
            self.metrics
                .retries
                .with_label_values(&[&self.cfg.name, reason.as_str()])
                .inc();
            tokio::time::sleep(wait).await;
            retry += 1;
        }
    }
}

/// `Retry-After` as seconds or an HTTP date (a date in the past means now).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A failed exchange, and whether sending it again is safe and may help.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) error: Error,
    /// The connection failed before any response: refused, reset, closed, connect timeout.
    pub(super) retryable: bool,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure {
            error,
            retryable: false,
        }
    }
}

/// What one attempt came to, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempted {
    /// A final response with its status and parsed `Retry-After`.
    Status(StatusCode, Option<Duration>),
    /// The connection failed before any response.
    ConnectFailed,
    /// Any other error (response timeout, refused redirect, token trouble): not retried.
    Final,
}

/// Why a request is sent again: the `reason` label of `berth_upstream_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetryReason {
    Connect,
    Status5xx,
    RetryAfter,
}

impl RetryReason {
    fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Status5xx => "status_5xx",
            RetryReason::RetryAfter => "retry_after",
        }
    }
}

/// Whether to send again after retry number `retry` (0 = after the first attempt), why, and after
/// how long; `None` hands the outcome to the caller. `unit` in [0, 1) draws the jitter.
fn retry_plan(
    cfg: &UpstreamConfig,
    retry: u32,
    seen: Attempted,
    unit: f64,
) -> Option<(RetryReason, Duration)> {
    if retry >= cfg.retries {
        return None;
    }
    let backoff = || backoff(cfg.retry_backoff, cfg.retry_backoff_max, retry, unit);
    match seen {
        Attempted::ConnectFailed => Some((RetryReason::Connect, backoff())),
        Attempted::Final => None,
        // The upstream said when: wait that long if it is short, else let the client hear it.
        Attempted::Status(
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE,
            Some(after),
        ) => (after <= cfg.retry_backoff_max).then_some((RetryReason::RetryAfter, after)),
        Attempted::Status(s, _) if matches!(s.as_u16(), 500 | 502 | 503 | 504) => {
            Some((RetryReason::Status5xx, backoff()))
        }
        Attempted::Status(..) => None,
    }
}

/// "Full jitter": a uniform draw (`unit` in [0, 1)) below `base * 2^retry`, capped at `max`, so
/// that mirrors failing together do not come back together.
pub(super) fn backoff(base: Duration, max: Duration, retry: u32, unit: f64) -> Duration {
    let ceiling = base.saturating_mul(2u32.saturating_pow(retry)).min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// A uniform draw from [0, 1). std's `RandomState` is keyed afresh from OS randomness (per thread,
/// then incremented) on every `new()`, which is random enough to spread retries without a crate.
pub(super) fn jitter_unit() -> f64 {
    let bits = RandomState::new().hash_one(0u8) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// Whether a transport error happened before the upstream could answer: the connection was not
/// made (refused, connect timeout) or broke before a response (reset, closed). A certificate the
/// upstream will present again is not worth a retry.
pub(super) fn retryable_transport(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut connect = e.is_connect();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if is_tls_error(io) {
                return false;
            }
            connect |= matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        if err.is::<rustls::Error>() {
            return false;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            connect |= h.is_incomplete_message() || h.is_canceled();
        }
        source = err.source();
    }
    connect
}

/// A TLS failure (certificate, handshake), which tokio-rustls wraps in an `io::Error`, sometimes
/// twice; `io::Error::source` skips the wrapped error itself, so this looks inside by hand.
fn is_tls_error(io: &std::io::Error) -> bool {
    let mut inner = io.get_ref();
    while let Some(e) = inner {
        if e.is::<rustls::Error>() {
            return true;
        }
        inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
    }
    false
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::upstream::tests::upstream;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&earlier).unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_cap() {
        let (base, max) = (Duration::from_millis(200), Duration::from_secs(5));
        for retry in 0..12 {
            let ceiling = (base * 2u32.pow(retry)).min(max);
            assert_eq!(backoff(base, max, retry, 0.0), Duration::ZERO);
            assert!(backoff(base, max, retry, 0.999_999) <= ceiling);
            assert!(backoff(base, max, retry, 0.999_999) >= ceiling.mul_f64(0.99));
            assert_eq!(backoff(base, max, retry, 0.5), ceiling / 2);
        }
        assert_eq!(backoff(base, max, 2, 0.5), Duration::from_millis(400));
        assert_eq!(
            backoff(base, max, 40, 1.0),
            max,
            "no overflow for large retry counts"
        );
        for _ in 0..1000 {
            let u = jitter_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
        // Not constant: a thousand draws land in both halves.
        let draws: Vec<f64> = (0..1000).map(|_| jitter_unit()).collect();
        assert!(draws.iter().any(|u| *u < 0.5) && draws.iter().any(|u| *u >= 0.5));
    }

    #[test]
    fn what_is_retried() {
        let cfg = upstream("https://u.io").cfg;
        let plan = |retry, seen| retry_plan(&cfg, retry, seen, 0.5);
        let status = |code: u16, after: Option<u64>| {
            Attempted::Status(
                StatusCode::from_u16(code).unwrap(),
                after.map(Duration::from_secs),
            )
        };
        let backoff_0 = Some(Duration::from_millis(100));
        for code in [500, 502, 503, 504] {
            assert_eq!(
                plan(0, status(code, None)).map(|p| p.0),
                Some(RetryReason::Status5xx),
                "{code}"
            );
        }
        assert_eq!(
            plan(0, status(502, None)).map(|p| p.1),
            backoff_0,
            "backoff, not a Retry-After, for 502"
        );
        for code in [200, 206, 304, 400, 401, 403, 404, 501, 505] {
            assert_eq!(plan(0, status(code, None)), None, "{code}");
        }
        assert_eq!(
            plan(0, Attempted::ConnectFailed),
            Some((RetryReason::Connect, Duration::from_millis(100)))
        );
        assert_eq!(plan(0, Attempted::Final), None);
        // Retry-After: waited out when short, handed back when long; 429 needs one.
        assert_eq!(plan(0, status(429, None)), None);
        assert_eq!(
            plan(1, status(429, Some(5))),
            Some((RetryReason::RetryAfter, Duration::from_secs(5)))
        );
        assert_eq!(plan(0, status(429, Some(6))), None);
        assert_eq!(
            plan(0, status(503, Some(0))),
            Some((RetryReason::RetryAfter, Duration::ZERO))
        );
        assert_eq!(plan(0, status(503, Some(3600))), None);
        // The budget: `retries` (2) more attempts, then the outcome goes to the caller.
        assert!(plan(1, Attempted::ConnectFailed).is_some());
        assert_eq!(plan(2, Attempted::ConnectFailed), None);
        assert_eq!(plan(2, status(503, None)), None);
    }
}
