//! Building the pooled HTTPS client: rustls with the web PKI roots (plus an upstream's `ca_file`),
//! ALPN for HTTP/2 and HTTP/1.1, and a connect timeout that covers TCP and the TLS handshake.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Empty;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::guard::{Guard, GuardedResolver};
use crate::config::UpstreamConfig;
use crate::error::Error;

/// The client every upstream request goes through (one per upstream, so pools, trust roots and
/// address policies are never shared between upstreams).
pub type HttpClient =
    Client<TimeoutConnector<HttpsConnector<HttpConnector<GuardedResolver>>>, Empty<Bytes>>;

/// The same client with the system's resolver and no address policy: for `berth warm` and
/// `berth cache`, which reach berth itself (often on loopback).
pub type DirectClient = Client<TimeoutConnector<HttpsConnector<HttpConnector>>, Empty<Bytes>>;

/// Idle pooled connections are closed after this long; registries and CDNs close theirs at about
/// this age anyway, and reusing a half-closed one costs a failed request.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps a connector so that TCP connect plus TLS handshake together get `timeout`
/// (`HttpConnector`'s own timeout stops at TCP).
#[derive(Clone, Debug)]
pub struct TimeoutConnector<C> {
    inner: C,
    timeout: Duration,
}

impl<C> TimeoutConnector<C> {
    pub fn new(inner: C, timeout: Duration) -> Self {
        TimeoutConnector { inner, timeout }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
pub struct ConnectTimeout(Duration);

impl<C> tower_service::Service<Uri> for TimeoutConnector<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = self.timeout;
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(ConnectTimeout(timeout).into()),
            }
        })
    }
}

/// An HTTP(S) connector trusting the public roots (webpki) plus the PEM certificates of
/// `ca_file`; also what `berth warm` and `berth cache` use to reach berth itself. The error names
/// the file and what is wrong with it.
pub fn https_connector(ca_file: Option<&Path>) -> Result<HttpsConnector<HttpConnector>, String> {
    https_connector_over(ca_file, HttpConnector::new())
}

/// [`https_connector`] over a TCP connector of the caller's (its own resolver, a connect
/// timeout).
pub fn https_connector_over<R>(
    ca_file: Option<&Path>,
    mut http: HttpConnector<R>,
) -> Result<HttpsConnector<HttpConnector<R>>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(f) = ca_file {
        let certs = CertificateDer::pem_file_iter(f)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("{} holds no usable PEM certificate", f.display()));
        }
    }
    // An explicit provider, so that nothing depends on a process-wide default being installed.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();

    // The https connector hands it https:// URIs too; it only does the TCP part.
    http.enforce_http(false);
    http.set_nodelay(true);
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// Builds the pooled client for one upstream; its resolver applies `guard`.
pub fn build_client(cfg: &UpstreamConfig, guard: Arc<Guard>) -> Result<HttpClient, Error> {
    let http = HttpConnector::new_with_resolver(GuardedResolver::new(guard));
    let https = https_connector_over(cfg.ca_file.as_deref(), http)
        .map_err(|e| Error::internal(format!("upstream {}: ca_file: {e}", cfg.name)))?;
    let connector = TimeoutConnector::new(https, cfg.connect_timeout);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}
