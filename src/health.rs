//! Readiness: where the server is in its life (starting, serving, draining) and the `/healthz`
//! answer built from it.
//!
//! `/healthz` is a readiness check, not a liveness one: 503 while the cache index is being rebuilt
//! (the registry listener is bound but not yet accepting) and once shutdown has begun (so a load
//! balancer stops sending new pulls while running ones drain), 200 while serving. `?verbose` says
//! why, as plain text or, with `?verbose=json` or `Accept: application/json`, as JSON: the
//! phase, the index's state and entry count, each upstream's last error and when, the bucket's
//! last error and its share as the last eviction pass counted it (with `[storage.s3]`), and the
//! free space of the storage path. An upstream's error does not make berth unready: cached content is
//! still served, and a mirror taken out of rotation for its upstream's outage helps nobody.
//!
//! Rule of dependency: uses `index`, `upstream` and `tier` (their last-error maps, the share);
//! `assemble` builds it, `server` moves it through its phases, `http` answers `/healthz` from it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::SystemTime;

use http::StatusCode;

use crate::index::Index;
use crate::upstream::LastErrors;

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Listeners bound, cache index being rebuilt: registry connections wait in the backlog.
    Starting = 0,
    Serving = 1,
    /// Shutdown begun: no new connections, running transfers finishing.
    Draining = 2,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
        }
    }
}

/// The server's phase and what `/healthz?verbose` reports.
pub struct Health {
    phase: AtomicU8,
    storage: PathBuf,
    index: Arc<Index>,
    last_errors: LastErrors,
    /// The bucket's last error (`[storage.s3]`), when there is a bucket.
    bucket: Option<crate::tier::LastError>,
    /// The bucket's share as its last eviction pass left it.
    share: Option<crate::tier::ShareState>,
}

/// One `/healthz` answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Health {
    pub fn new(storage: PathBuf, index: Arc<Index>, last_errors: LastErrors) -> Health {
        Health {
            phase: AtomicU8::new(Phase::Starting as u8),
            storage,
            index,
            last_errors,
            bucket: None,
            share: None,
        }
    }

    /// Reports the bucket tier's last error too.
    pub fn with_bucket(mut self, last_error: crate::tier::LastError) -> Health {
        self.bucket = Some(last_error);
        self
    }

    /// Reports the bucket's share (its size at the last eviction pass) too.
    pub fn with_bucket_share(mut self, share: crate::tier::ShareState) -> Health {
        self.share = Some(share);
        self
    }

    /// The cache root whose free space is reported.
    pub fn storage(&self) -> &std::path::Path {
        &self.storage
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    pub fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// The answer to `/healthz` with `query`; `upstreams` are the configured upstreams' names now.
    pub fn answer(&self, query: Option<&str>, wants_json: bool, upstreams: &[String]) -> Answer {
        let phase = self.phase();
        let status = match phase {
            Phase::Serving => StatusCode::OK,
            Phase::Starting | Phase::Draining => StatusCode::SERVICE_UNAVAILABLE,
        };
        let verbose = query.and_then(|q| {
            q.split('&').find_map(|kv| match kv.split_once('=') {
                Some(("verbose", v)) => Some(v),
                None if kv == "verbose" => Some(""),
                _ => None,
            })
        });
        let Some(verbose) = verbose else {
            let body = match phase {
                Phase::Serving => "ok\n".to_owned(),
                other => format!("{}\n", other.as_str()),
            };
            return Answer {
                status,
                content_type: "text/plain",
                body,
            };
        };
        let report = self.report(phase, upstreams);
        if verbose == "json" || wants_json {
            Answer {
                status,
                content_type: "application/json",
                body: format!("{}\n", report),
            }
        } else {
            Answer {
                status,
                content_type: "text/plain",
                body: text(&report),
            }
        }
    }

    fn report(&self, phase: Phase, upstreams: &[String]) -> serde_json::Value {
        use serde_json::json;
        let errors = self.last_errors.lock().unwrap().clone();
        let ups: Vec<_> = upstreams
            .iter()
            .map(|name| match errors.get(name) {
                Some((at, what)) => json!({
                    "name": name,
                    "last_error": what,
                    "last_error_at": httpdate::fmt_http_date(*at),
                    "last_error_seconds_ago": SystemTime::now().duration_since(*at).map_or(0, |d| d.as_secs()),
                }),
                None => json!({ "name": name, "last_error": null }),
            })
            .collect();
        let disk = match rustix::fs::statvfs(&self.storage) {
            Ok(s) => json!({
                "path": self.storage.display().to_string(),
                "free_bytes": s.f_bavail.saturating_mul(s.f_frsize),
                "total_bytes": s.f_blocks.saturating_mul(s.f_frsize),
            }),
            Err(e) => json!({
                "path": self.storage.display().to_string(),
                "error": e.to_string(),
            }),
        };
        let bucket = self.bucket.as_ref().map(|b| match &*b.lock().unwrap() {
            Some((at, what)) => json!({
                "last_error": what,
                "last_error_at": httpdate::fmt_http_date(*at),
                "last_error_seconds_ago": SystemTime::now().duration_since(*at).map_or(0, |d| d.as_secs()),
            }),
            None => json!({ "last_error": null }),
        });
        let bucket = bucket.map(|mut b| {
            if let Some(Some(sh)) = self.share.as_ref().map(|s| *s.lock().unwrap()) {
                b["share"] = json!({
                    "objects": sh.objects,
                    "bytes": sh.bytes,
                    "max_bytes": sh.max_bytes,
                    "counted_at": httpdate::fmt_http_date(sh.at),
                });
            }
            b
        });
        json!({
            "status": phase.as_str(),
            "ready": phase == Phase::Serving,
            "index": {
                "state": if phase == Phase::Starting { "rebuilding" } else { "ready" },
                "entries": self.index.len(),
                "bytes": self.index.bytes(),
            },
            "upstreams": ups,
            "bucket": bucket,
            "storage": disk,
        })
    }
}

/// The verbose report as lines of `key: value`.
fn text(r: &serde_json::Value) -> String {
    use std::fmt::Write;
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(out, "status: {}", s(&r["status"]));
    let ix = &r["index"];
    let _ = writeln!(
        out,
        "index: {}, {} entries, {} bytes",
        s(&ix["state"]),
        ix["entries"],
        ix["bytes"]
    );
    for u in r["upstreams"].as_array().into_iter().flatten() {
        match u["last_error"].as_str() {
            None => {
                let _ = writeln!(out, "upstream {}: no error", s(&u["name"]));
            }
            Some(e) => {
                let _ = writeln!(
                    out,
                    "upstream {}: last error at {} ({}s ago): {e}",
                    s(&u["name"]),
                    s(&u["last_error_at"]),
                    u["last_error_seconds_ago"]
                );
            }
        }
    }
    let b = &r["bucket"];
    if !b.is_null() {
        match b["last_error"].as_str() {
            None => {
                let _ = writeln!(out, "bucket: no error");
            }
            Some(e) => {
                let _ = writeln!(
                    out,
                    "bucket: last error at {} ({}s ago): {e}",
                    s(&b["last_error_at"]),
                    b["last_error_seconds_ago"]
                );
            }
        }
    }
    if let Some(sh) = b.get("share") {
        let max = match sh["max_bytes"].as_u64() {
            Some(m) => format!(" of max {m}"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "bucket share: {} objects, {} bytes{max} (counted at {})",
            sh["objects"],
            sh["bytes"],
            s(&sh["counted_at"])
        );
    }
    let st = &r["storage"];
    match st.get("free_bytes") {
        Some(free) => {
            let _ = writeln!(
                out,
                "storage {}: {} bytes free of {}",
                s(&st["path"]),
                free,
                st["total_bytes"]
            );
        }
        None => {
            let _ = writeln!(out, "storage {}: {}", s(&st["path"]), s(&st["error"]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(dir: &std::path::Path) -> Health {
        let index = Arc::new(Index::new(Default::default()));
        index.insert([1; 32], 10, 0);
        Health::new(dir.to_owned(), index, LastErrors::default())
    }

    #[test]
    fn ready_only_while_serving() {
        let dir = tempfile::tempdir().unwrap();
        let h = health(dir.path());
        let a = h.answer(None, false, &[]);
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
        );
        h.set(Phase::Serving);
        let a = h.answer(Some("x=1"), false, &[]);
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ok\n"));
        h.set(Phase::Draining);
        assert_eq!(
            h.answer(None, false, &[]).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn verbose_names_index_upstream_errors_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let h = health(dir.path());
        h.set(Phase::Serving);
        h.last_errors.lock().unwrap().insert(
            "a.io".into(),
            (SystemTime::now(), "503 Service Unavailable /v2/x".into()),
        );
        let names = ["a.io".to_owned(), "b.io".to_owned()];
        let a = h.answer(Some("verbose=json"), false, &names);
        assert_eq!(a.content_type, "application/json");
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["status"], "serving");
        assert_eq!(v["index"]["entries"], 1);
        assert_eq!(v["index"]["state"], "ready");
        assert_eq!(
            v["upstreams"][0]["last_error"],
            "503 Service Unavailable /v2/x"
        );
        assert!(v["upstreams"][1]["last_error"].is_null());
        assert!(v["storage"]["free_bytes"].as_u64().unwrap() > 0);

        let a = h.answer(Some("verbose"), false, &names);
        assert_eq!(a.content_type, "text/plain");
        assert!(a.body.contains("index: ready, 1 entries"), "{}", a.body);
        assert!(
            a.body.contains("upstream a.io: last error at"),
            "{}",
            a.body
        );
        assert!(a.body.contains("upstream b.io: no error"), "{}", a.body);
        assert!(a.body.contains("bytes free of"), "{}", a.body);
        assert_eq!(
            h.answer(Some("verbose"), true, &names).content_type,
            "application/json"
        );
    }

    #[test]
    fn verbose_shows_the_bucket_share_after_a_pass() {
        let dir = tempfile::tempdir().unwrap();
        let share = crate::tier::ShareState::default();
        let h = health(dir.path())
            .with_bucket(crate::tier::LastError::default())
            .with_bucket_share(share.clone());
        h.set(Phase::Serving);
        *share.lock().unwrap() = Some(crate::tier::ShareInfo {
            objects: 3,
            bytes: 4096,
            max_bytes: Some(8192),
            at: SystemTime::now(),
        });
        let a = h.answer(Some("verbose"), false, &[]);
        assert!(
            a.body
                .contains("bucket share: 3 objects, 4096 bytes of max 8192 (counted at "),
            "{}",
            a.body
        );
        let a = h.answer(Some("verbose=json"), false, &[]);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["bucket"]["share"]["bytes"], 4096);
        assert_eq!(v["bucket"]["share"]["max_bytes"], 8192);
    }

    #[test]
    fn verbose_names_the_bucket_and_its_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let last = crate::tier::LastError::default();
        let h = health(dir.path()).with_bucket(last.clone());
        h.set(Phase::Serving);
        let a = h.answer(Some("verbose"), false, &[]);
        assert!(a.body.contains("bucket: no error"), "{}", a.body);
        *last.lock().unwrap() = Some((SystemTime::now(), "head: connection refused".into()));
        let a = h.answer(Some("verbose=json"), false, &[]);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["bucket"]["last_error"], "head: connection refused");
        assert_eq!(
            a.status,
            StatusCode::OK,
            "a bucket error does not make berth unready"
        );
        let a = h.answer(Some("verbose"), false, &[]);
        assert!(a.body.contains("bucket: last error at"), "{}", a.body);
        assert!(!a.body.contains("bucket share"), "no pass yet: {}", a.body);
        // Without a bucket, no line at all.
        let plain = health(dir.path()).answer(Some("verbose"), false, &[]);
        assert!(!plain.body.contains("bucket"), "{}", plain.body);
    }

    #[test]
    fn an_unreadable_storage_path_is_reported_not_fatal() {
        let h = health(std::path::Path::new("/surely/not/here"));
        let a = h.answer(Some("verbose"), false, &[]);
        assert!(a.body.contains("storage /surely/not/here: "), "{}", a.body);
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
