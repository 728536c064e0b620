//! How `warm`'s requests reach berth: over the network to a running berth (`berth warm`), or
//! handed to a registry service in this same process ([`Local`]: the admin API's
//! `POST /admin/warm`, which warms through its own berth without a socket, TLS or a login).
//!
//! Either way a request is what a pulling client sends (a GET with `Accept`), and the answer is a
//! response with a boxed body, so the walk and its checks (`client`) are the same code for both.
//!
//! Rule of dependency: a leaf of `warm`; uses `failure`, and from the crate `upstream::connect`
//! (the network client's type) and `error` (`chain`). What implements [`Local`] is outside
//! `warm` (`http::warm`): this file names no server type.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt as _, Empty, combinators::UnsyncBoxBody};

use super::failure::Failure;
use crate::upstream::connect::DirectClient;

/// A response head or a body that sends nothing for this long fails the transfer. berth bounds
/// its own upstream waits (`stall_timeout`, `response_timeout`), so this only catches a berth that
/// hangs; it is long so that a slow upstream behind berth is never cut off by warm first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// An answer's body, whichever way it came; a transfer that breaks says why as a [`Failure`].
/// (Not a boxed `dyn Error`: with one, rustc could not prove the walk's boxed futures `Send`, a
/// known limit of its checks on nested async code.)
pub type ReplyBody = UnsyncBoxBody<Bytes, Failure>;

/// An answer on its way.
pub type Reply = Pin<Box<dyn Future<Output = Response<ReplyBody>> + Send>>;

/// A registry service in this process that answers as its listener would. The requests it is
/// given carry an origin-form URI (`/v2/...`) and no `Authorization`: whoever hands one to
/// `warm` has already decided that this process may warm through it.
pub trait Local: Send + Sync {
    fn call(&self, req: Request<Empty<Bytes>>) -> Reply;
}

/// Which way requests go.
pub(super) enum Transport {
    /// A berth over HTTP(S); `base` is `scheme://host:port` without a trailing slash.
    Net {
        /// Boxed: one per run, and the other way holds a pointer.
        client: Box<DirectClient>,
        base: String,
        /// `Basic ...` for a berth with `[auth]`; marked sensitive so no log shows it.
        authorization: Option<HeaderValue>,
    },
    /// The registry service of this process.
    Local(Arc<dyn Local>),
}

impl Transport {
    /// How the berth is named in messages.
    pub(super) fn name(&self) -> &str {
        match self {
            Transport::Net { base, .. } => base,
            Transport::Local(_) => "this berth",
        }
    }

    /// Whether a login is sent (the answer to a 401 says which way to look).
    pub(super) fn logs_in(&self) -> bool {
        matches!(
            self,
            Transport::Net {
                authorization: Some(_),
                ..
            }
        )
    }

    /// GETs `path` (with its query) with `accept`, waiting at most [`IDLE_TIMEOUT`] for the head.
    pub(super) async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Response<ReplyBody>, Failure> {
        let uri = match self {
            Transport::Net { base, .. } => format!("{base}{path}"),
            Transport::Local(_) => path.to_owned(),
        };
        let mut req = Request::get(uri);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        if let Transport::Net {
            authorization: Some(auth),
            ..
        } = self
        {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| Failure::new(format!("bad request {path}: {e}")))?;
        match self {
            Transport::Net { client, .. } => {
                match tokio::time::timeout(IDLE_TIMEOUT, client.request(req)).await {
                    Err(_) => Err(no_answer()),
                    Ok(Err(e)) => Err(Failure::new(crate::error::chain(&e))),
                    Ok(Ok(resp)) => Ok(resp.map(boxed)),
                }
            }
            Transport::Local(local) => tokio::time::timeout(IDLE_TIMEOUT, local.call(req))
                .await
                .map_err(|_| no_answer()),
        }
    }
}

fn no_answer() -> Failure {
    Failure::new(format!("no answer within {}s", IDLE_TIMEOUT.as_secs()))
}

/// A network body, boxed as every answer is.
fn boxed(b: hyper::body::Incoming) -> ReplyBody {
    b.map_err(|e| Failure::new(crate::error::chain(&e)))
        .boxed_unsync()
}
