//! TEMPORARY stub with the agreed API; replaced by the real client from the `upstream` branch.
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use crate::config::UpstreamConfig;
use crate::error::Error;
use crate::oci::RepoName;

pub struct Upstream {
    cfg: UpstreamConfig,
}
#[derive(Clone)]
pub struct UpstreamMetrics;
impl UpstreamMetrics {
    pub fn register(_r: &prometheus::Registry) -> prometheus::Result<UpstreamMetrics> {
        Ok(UpstreamMetrics)
    }
}
pub struct UpstreamRequest {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub repository: Option<RepoName>,
}
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: UpstreamBody,
}
pub enum NotFoundKind {
    Manifest,
    Blob,
    Repository,
}
pub struct UpstreamBody;
impl UpstreamBody {
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        Ok(None)
    }
}
impl UpstreamResponse {
    pub async fn error_for_status(self, _kind: NotFoundKind) -> Result<UpstreamResponse, Error> {
        Ok(self)
    }
    pub async fn bytes(self, _limit: usize) -> Result<Bytes, Error> {
        Ok(Bytes::new())
    }
}
impl Upstream {
    pub fn new(cfg: &UpstreamConfig, _m: UpstreamMetrics) -> Result<Upstream, Error> {
        Ok(Upstream { cfg: cfg.clone() })
    }
    pub fn name(&self) -> &str {
        &self.cfg.name
    }
    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }
    pub async fn send(&self, _req: UpstreamRequest) -> Result<UpstreamResponse, Error> {
        Err(Error::upstream_unavailable(&self.cfg.name, "stub"))
    }
}
