//! The request log: one line per request (route, upstream, outcome, status, bytes, duration),
//! written when its response body is finished or dropped, so streamed blobs are logged with the
//! bytes really sent; the in-flight count and the bytes-served metrics are settled at the same
//! moment. Lines go to the `logwriter` when one is set (text or JSON), else through `tracing`,
//! always under the parent's target (`berth::http`), which filters and readers name.
//!
//! Rule of dependency: uses the parent `http` (the [`App`] it reports to, the request's
//! `LogFields`, [`Body`], the log target), `route` (to name the route), `access` (the user's
//! name), `logwriter`; only the parent uses it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::route::Route;
use super::{App, Body, LOG_TARGET, LogFields};
use crate::access::Principal;
use crate::error::Error;
use crate::logwriter::BatchWriter;

/// Logs and counts a request when its body ends (or is dropped by a client that went away).
pub(super) struct RequestLog {
    pub(super) started: Instant,
    /// The body's announced length (not for HEAD, which sends none).
    pub(super) length: Option<u64>,
    pub(super) method: Method,
    pub(super) uri: http::Uri,
    pub(super) status: StatusCode,
    pub(super) fields: LogFields,
    pub(super) bytes: u64,
    pub(super) served_from: Option<&'static str>,
    /// For the metrics and the upstream's name (the request's own handle, moved here).
    pub(super) app: Arc<App>,
}

impl RequestLog {
    /// Whether every byte of the body went out: its end was seen, or all the bytes it announced.
    fn complete(&self, end_seen: bool) -> bool {
        end_seen || self.length == Some(self.bytes)
    }

    fn finish(self, complete: bool) {
        self.app.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(source) = self.served_from
            && self.bytes > 0
        {
            self.app.metrics.served(source, self.bytes);
        }
        // A good health probe from a peer comes every `health_interval` from each of them: it
        // is counted, not logged (refused and failed ones are).
        if self.status == StatusCode::OK && self.uri.path() == crate::cluster::HEALTH_PATH {
            return;
        }
        match self.app.request_log.get() {
            Some(w) => {
                if tracing::enabled!(target: LOG_TARGET, tracing::Level::INFO) {
                    if self.app.json_log.load(Ordering::Relaxed) {
                        self.json(w, complete);
                    } else {
                        w.info(LOG_TARGET, &self.line(complete));
                    }
                }
            }
            None => tracing::info!(target: LOG_TARGET, "{}", self.line(complete)),
        }
    }

    /// The access line, as `tracing`'s key=value fields would read (names quoted), written by
    /// hand: formatting eleven fields through the subscriber was about a sixth of the CPU of a
    /// cached manifest answer.
    fn line(&self, complete: bool) -> String {
        use std::fmt::Write;
        let f = &self.fields;
        let target = f.route.as_ref().and_then(Route::target);
        let upstream = target.map(|t| self.app.mirror.upstream_name(t.upstream));
        let mut s = String::with_capacity(160 + self.uri.path().len());
        s.push_str("request method=");
        s.push_str(self.method.as_str());
        s.push_str(" path=");
        s.push_str(self.uri.path());
        for (key, value) in [
            (" route=", f.kind),
            (" upstream=", upstream.as_deref().unwrap_or("-")),
            (" repo=", target.map_or("-", |t| t.name.as_str())),
        ] {
            s.push_str(key);
            quoted(&mut s, value);
        }
        s.push_str(" reference=\"");
        let _ = match &f.route {
            Some(Route::Manifest { reference, .. }) => write!(s, "{reference}"),
            Some(Route::Blob { digest, .. }) => write!(s, "{digest}"),
            Some(Route::Referrers { subject, .. }) => write!(s, "{subject}"),
            _ => write!(s, "-"),
        };
        s.push_str("\" outcome=");
        quoted(&mut s, f.outcome);
        let _ = write!(
            s,
            " status={} bytes={} complete={complete} ms={}",
            self.status.as_u16(),
            self.bytes,
            self.started.elapsed().as_millis()
        );
        // Last, so that lines without logins read as before.
        s.push_str(" user=");
        quoted(&mut s, f.user.as_ref().map_or("-", Principal::name));
        s
    }
}

impl RequestLog {
    /// The access line as one JSON object, with the text line's fields (numbers as numbers).
    fn json(&self, w: &BatchWriter, complete: bool) {
        use crate::logwriter::JsonValue::{Bool, Num, Str};
        let f = &self.fields;
        let target = f.route.as_ref().and_then(Route::target);
        let upstream = target.map(|t| self.app.mirror.upstream_name(t.upstream));
        let reference = match &f.route {
            Some(Route::Manifest { reference, .. }) => reference.to_string(),
            Some(Route::Blob { digest, .. }) => digest.to_string(),
            Some(Route::Referrers { subject, .. }) => subject.to_string(),
            _ => "-".to_owned(),
        };
        w.info_json(
            LOG_TARGET,
            "request",
            &[
                ("method", Str(self.method.as_str())),
                ("path", Str(self.uri.path())),
                ("route", Str(f.kind)),
                ("upstream", Str(upstream.as_deref().unwrap_or("-"))),
                ("repo", Str(target.map_or("-", |t| t.name.as_str()))),
                ("reference", Str(&reference)),
                ("outcome", Str(f.outcome)),
                ("status", Num(u64::from(self.status.as_u16()))),
                ("bytes", Num(self.bytes)),
                ("complete", Bool(complete)),
                ("ms", Num(self.started.elapsed().as_millis() as u64)),
                ("user", Str(f.user.as_ref().map_or("-", Principal::name))),
            ],
        );
    }
}

/// `value` in double quotes, escaped as `{:?}` would if it needs it (names are validated, so it
/// almost never does).
fn quoted(s: &mut String, value: &str) {
    if value
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b.is_ascii_control())
    {
        use std::fmt::Write;
        let _ = write!(s, "{value:?}");
    } else {
        s.push('"');
        s.push_str(value);
        s.push('"');
    }
}

/// A body that counts what it sends and logs the request when it is done.
pub(super) struct LoggedBody {
    pub(super) inner: Body,
    pub(super) log: Option<RequestLog>,
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(log)) = (frame.data_ref(), self.log.as_mut()) {
                    log.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(target: LOG_TARGET, error = %e, "response body failed; the client gets a short response");
                if let Some(log) = self.log.take() {
                    log.finish(false);
                }
            }
            Poll::Ready(None) => {
                if let Some(log) = self.log.take() {
                    log.finish(true);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let complete = log.complete(self.inner.is_end_stream());
            log.finish(complete);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_escaped_only_when_needed() {
        let mut s = String::new();
        quoted(&mut s, "library/app");
        s.push(' ');
        quoted(&mut s, "a\"b\\c\n");
        assert_eq!(s, r#""library/app" "a\"b\\c\n""#);
    }
}
