//! What the metrics listener answers: `/metrics` (the Prometheus text), `/healthz` (the life
//! cycle, `health`), and the admin API (`http::admin`) when it is enabled there; on the admin
//! socket, the admin API only. One router, [`MetricsService`]; `server` accepts the connections
//! and serves each with it.
//!
//! The admin API is not answered while the cache index is being rebuilt (503 "starting"): it
//! reads the index.
//!
//! Rule of dependency: uses `http::admin`, `health`, `metrics` (the rendering), `mirror` (the
//! names of the upstreams configured now) and [`super::Body`]; `server` uses it, nothing else.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;

use super::Body;
use crate::health::{Health, Phase};
use crate::metrics;
use crate::mirror::Mirror;

/// What the metrics listener answers: `/metrics`, `/healthz`, and the admin API when enabled
/// there; on the admin socket, only the admin API.
#[derive(Clone)]
pub struct MetricsService {
    prometheus: prometheus::Registry,
    admin: Option<Arc<super::admin::Api>>,
    /// Whether `/metrics` and `/healthz` are answered (not on the admin socket).
    metrics: bool,
    health: Arc<Health>,
    /// For the names of the upstreams configured now.
    mirror: Arc<Mirror>,
}

impl MetricsService {
    /// `/metrics` and `/healthz`, without the admin API.
    pub fn new(
        prometheus: prometheus::Registry,
        health: Arc<Health>,
        mirror: Arc<Mirror>,
    ) -> MetricsService {
        MetricsService {
            prometheus,
            admin: None,
            metrics: true,
            health,
            mirror,
        }
    }

    /// The admin API answered too, under `/admin` (`None`: not here).
    pub fn with_admin(mut self, admin: Option<Arc<super::admin::Api>>) -> MetricsService {
        self.admin = admin;
        self
    }

    /// Only the admin API (the admin socket): `/metrics` and `/healthz` answer 404.
    pub fn admin_only(mut self, admin: Option<Arc<super::admin::Api>>) -> MetricsService {
        self.admin = admin;
        self.metrics = false;
        self
    }

    /// This router as a hyper service, for one connection.
    pub fn service(
        self,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = std::convert::Infallible,
        Future = impl Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send,
    > + Send
    + 'static {
        service_fn(move |req| {
            let svc = self.clone();
            async move { Ok::<_, std::convert::Infallible>(svc.handle(req).await) }
        })
    }

    async fn handle(self, req: Request<Incoming>) -> Response<Body> {
        match &self.admin {
            Some(api) if super::admin::is_admin_path(req.uri().path()) => {
                // The admin API reads the index: not before it is rebuilt.
                if self.health.phase() == Phase::Starting {
                    return plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "starting: the cache index is being rebuilt\n".into(),
                    )
                    .map(|b| b.map_err(|never| match never {}).boxed_unsync());
                }
                api.handle(req).await
            }
            _ => self
                .answer(&req)
                .map(|b| b.map_err(|never| match never {}).boxed_unsync()),
        }
    }

    /// `/metrics` and `/healthz`.
    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if !self.metrics {
            return plain(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: this socket serves the admin API (/admin/...)\n".to_owned(),
            );
        }
        match req.uri().path() {
            "/metrics" => plain(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render(&self.prometheus),
            ),
            "/healthz" => {
                let wants_json = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/json"));
                let names = self.mirror.upstream_names();
                let a = self.health.answer(req.uri().query(), wants_json, &names);
                plain(a.status, a.content_type, a.body)
            }
            _ => plain(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /metrics or /healthz\n".to_owned(),
            ),
        }
    }
}

fn plain(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}
