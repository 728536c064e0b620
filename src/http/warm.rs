//! The admin API's warm (`POST /admin/warm`): `berth warm`'s walk ([`Warmer`]), run inside this
//! berth against its own registry service.
//!
//! # How it fetches
//! The walk is `warm`'s, not written again: [`Warmer::local`] asks what a pulling client asks
//! (manifests by tag and digest, referrers lists, blobs read to their end), and [`Through`] hands
//! each request to this berth's [`App`], the very service behind the registry listener, in
//! process. So a warm is exactly a pull: routing (`?ns=` for a named registry), the signature
//! policy, per-upstream isolation, single-flight with concurrent clients, the metrics and one
//! request log line per request (user `admin:warm`) are the registry's own.
//!
//! Trade-off: in process rather than over a socket to the registry listener. A socket would need
//! the listener's bound address handed back from `server`, a client that trusts its certificate
//! for a loopback address (with `[server] tls_cert` the certificate names the public host), and a
//! password for `[auth]`, which the admin API has no business holding. In process, none of that
//! arises: TLS and the listener's connection limits are not involved, and the requests carry a
//! marker ([`AdminWarm`](super::AdminWarm), a request extension that hyper never makes from
//! bytes off a socket) which `access` reads as [`Principal::Admin`](crate::access::Principal):
//! may pull through every upstream, since the bearer token was checked already. The price is a
//! request and response built and boxed per manifest and blob (no parsing, no copy of a body's
//! bytes), which is nothing next to the transfers. Measured (`admin_warm::measure_...` in
//! tests/it, debug build, a 128 MiB image of 4 layers): warming it cold costs the same CPU either
//! way (about 0.33 CPU s in berth, hashing and writing; `berth warm` adds about 0.07 in its own
//! process); warming it again, all cached, takes 0.00-0.01 CPU s and 3-40 ms in process against
//! about 0.03 CPU s in berth, 0.08 in the client and 0.14-0.6 s over loopback, since a cached
//! blob's mapped windows are counted, never touched.
//!
//! # One at a time
//! At most one warm runs; a `POST` while one runs gets `429 TOOMANYREQUESTS` with
//! `Retry-After: 30` at once, rather than waiting. Trade-off: waiting would queue open requests
//! (each with its list of up to 1000 images) behind a warm of unknown length, and a caller behind
//! a proxy with a read timeout would be cut off anyway; a 429 costs the caller a retry loop, and
//! a retry of a list already warmed is all cache hits. One at a time keeps a warm's load (at
//! most [`JOBS`] transfers at once) beside the clients' pulls predictable.
//!
//! The run is a task of its own: a caller that hangs up does not stop it (the answer is lost,
//! the cache is warm), and the slot stays taken until it ends. It ends with the process; what it
//! was fetching is cleaned up like any fill whose client went away.
//!
//! Rule of dependency: uses `warm` (the walk and its [`Local`] transport), `admin` (the request
//! and answer), the parent's [`App`] and marker, and `error`. Only `http::admin` uses it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Empty};
use tokio::sync::Semaphore;

use super::{AdminWarm, App};
use crate::admin::{WarmRequest, Warmed};
use crate::error::Error;
use crate::warm::{Failure, Local, Reply, ReplyBody, Warmer};

/// Transfers (and manifest requests) at once, as `berth warm`'s default `--jobs`.
pub const JOBS: usize = 4;

/// What a caller refused while a warm runs is told to wait.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Runs the admin API's warms, one at a time.
pub struct Warms {
    app: Arc<App>,
    /// One permit: the warm running holds it.
    running: Arc<Semaphore>,
}

impl Warms {
    pub fn new(app: Arc<App>) -> Warms {
        Warms {
            app,
            running: Arc::new(Semaphore::new(1)),
        }
    }

    /// Warms what `asked` names, through this berth; a 429 ([`Error::busy`]) while another warm
    /// runs. Images that fail are in the answer, not an error.
    pub async fn run(&self, asked: WarmRequest) -> Result<Warmed, Error> {
        let permit = self.running.clone().try_acquire_owned().map_err(|_| {
            Error::busy(
                "a warm is running (one at a time): try again when it has ended",
                RETRY_AFTER,
            )
        })?;
        let warmer = Warmer::local(
            Arc::new(Through(self.app.clone())),
            JOBS,
            asked.platforms.clone(),
        )
        .with_referrers(asked.referrers);
        tracing::info!(
            images = asked.images.len(),
            referrers = asked.referrers,
            "admin: warm started"
        );
        let run = tokio::spawn(async move {
            let summary = warmer.run(&asked.images).await;
            drop(permit);
            Warmed::new(&asked.images, &summary)
        });
        let warmed = run
            .await
            .map_err(|e| Error::internal(format!("the warm ended early: {e}")))?;
        tracing::info!(
            warmed = warmed.warmed.len(),
            failed = warmed.failed.len(),
            manifests = warmed.manifests,
            blobs = warmed.blobs,
            bytes = warmed.bytes,
            seconds = warmed.seconds,
            "admin: warm done"
        );
        Ok(warmed)
    }
}

/// This berth's registry service, as `warm` calls it in process.
struct Through(Arc<App>);

impl Local for Through {
    fn call(&self, mut req: Request<Empty<Bytes>>) -> Reply {
        req.extensions_mut().insert(AdminWarm);
        let app = self.0.clone();
        Box::pin(async move {
            let resp: Response<super::Body> = match app.handle(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            resp.map(|b| -> ReplyBody { b.map_err(|e| Failure::new(e.to_string())).boxed_unsync() })
        })
    }
}
