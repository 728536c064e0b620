//! Listeners, TLS, connection limits and graceful shutdown.
//!
//! [`Server::bind`] builds everything from the [`Config`] (store, upstreams, metrics, mirror) and
//! binds both listeners, so a bad config or a busy port fails before anything is served;
//! [`Server::run`] serves until the shutdown future completes, then stops accepting and gives
//! running transfers `shutdown_grace` to finish. Shutdown is a value: tests pass their own future.
//!
//! Client connections: HTTP/1.1 and HTTP/2 (ALPN on TLS), a header read timeout against slowloris,
//! a cap on header count (431 beyond) and header bytes; request bodies are never read. At most
//! `max_connections` registry connections are served at once: the accept loop takes a permit
//! before it accepts, so beyond the cap new connections wait in the kernel's backlog (and are
//! refused by the kernel once that is full) instead of costing memory here, while transfers under
//! way go on. The metrics listener is not counted, so `/metrics` and the admin API stay reachable
//! during a flood. HTTP/2 connections are pinged when quiet (dead peers are dropped) and carry a
//! bounded number of streams. Plain-TCP
//! connections write through `zerocopy::SendfileStream`, so cached blob bytes go out with
//! `sendfile`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::config::{Config, ServerConfig, StorageConfig};
use crate::http::route::Hosts;
use crate::http::{App, Body};
use crate::index::Limits;
use crate::manifests::Manifests;
use crate::metrics::{self, Metrics};
use crate::mirror::Mirror;
use crate::store::Store;
use crate::upstream::{Upstream, UpstreamMetrics};
use crate::zerocopy::SendfileStream;

/// Memory for hot manifests.
const MANIFEST_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
/// hyper's HTTP/1 header count limit when none is set.
const HYPER_MAX_HEADERS: usize = 100;
/// Most bytes of request head accepted on HTTP/1 (hyper answers 431 beyond).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A bound, ready-to-run berth.
pub struct Server {
    registry: TcpListener,
    metrics_listener: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    prometheus: prometheus::Registry,
    /// The admin API on the metrics listener, when `[admin] enabled`.
    admin: Option<Arc<admin::api::Api>>,
    settings: ServerConfig,
    /// For the maintenance pass (eviction by age, and by size once pins run out).
    store: Arc<Store>,
}

/// Why berth could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cache directory {path}: {source}")]
    Storage {
        path: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream {name}: {reason}")]
    Upstream { name: String, reason: String },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Server {
    /// Builds the mirror from `cfg` and binds its listeners.
    pub async fn bind(cfg: &Config) -> Result<Server, StartError> {
        let prometheus = prometheus::Registry::new();
        let metrics = Metrics::register(&prometheus)?;
        let upstream_metrics = UpstreamMetrics::register(&prometheus)?;

        let root = &cfg.storage.path;
        let storage_err = |source| StartError::Storage {
            path: root.display().to_string(),
            source,
        };
        let store = Arc::new(Store::open_with(root, limits(&cfg.storage)).map_err(storage_err)?);
        store.index().metrics().register(&prometheus)?;
        let names = cfg
            .upstreams
            .iter()
            .map(|u| u.name.to_ascii_lowercase())
            .collect();
        let manifests = Manifests::new(store.clone(), root, MANIFEST_MEMORY_BYTES, names)
            .map_err(storage_err)?;

        let mut upstreams = Vec::new();
        for u in &cfg.upstreams {
            let up =
                Upstream::new(u, upstream_metrics.clone()).map_err(|e| StartError::Upstream {
                    name: u.name.clone(),
                    reason: e.to_string(),
                })?;
            upstreams.push(Arc::new(up));
        }
        let mirror = Arc::new(Mirror::new(
            upstreams,
            store.clone(),
            manifests,
            metrics.clone(),
        ));
        let admin = cfg
            .admin
            .token
            .clone()
            .map(|token| Arc::new(admin::api::Api::new(mirror.clone(), root.clone(), token)));
        let app = Arc::new(App::new(mirror, Hosts::new(&cfg.upstreams), metrics));

        let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            _ => None,
        };
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let registry = bind(cfg.server.listen).await?;
        let metrics_listener = match cfg.metrics.enabled {
            true => Some(bind(cfg.metrics.listen).await?),
            false => None,
        };
        Ok(Server {
            registry,
            metrics_listener,
            tls,
            app,
            prometheus,
            admin,
            settings: cfg.server.clone(),
            store,
        })
    }

    /// Writes request lines to `writer` directly rather than through `tracing`'s formatting (the
    /// same line, for a fraction of the cost; `main` passes its log writer when not colouring).
    pub fn log_requests_to(self, writer: Option<crate::logwriter::BatchWriter>) -> Server {
        if let Some(w) = writer {
            let _ = self.app.request_log.set(w);
        }
        self
    }

    /// The registry listener's address (useful when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.registry
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener has an address"))
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes, then drains connections for at most `shutdown_grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let sweeper = sweep_every(self.store.index().limits()).map(|every| {
            let store = self.store.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    let store = store.clone();
                    let _ = tokio::task::spawn_blocking(move || store.sweep()).await;
                }
            })
        });
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_read_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        // hyper's own limit is 100 headers, kept in an inline array; asking for a number, even
        // 100, makes it build a vector of that many slots for every request head it parses.
        if self.settings.max_headers != HYPER_MAX_HEADERS {
            builder.http1().max_headers(self.settings.max_headers);
        }
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            .max_concurrent_streams(self.settings.http2_max_concurrent_streams)
            .keep_alive_interval(self.settings.http2_keepalive_interval)
            .keep_alive_timeout(self.settings.http2_keepalive_timeout);
        let builder = Arc::new(builder);

        let app = self.app.clone();
        let registry_svc = move |req: Request<Incoming>| app.clone().handle(req);
        let prometheus = self.prometheus.clone();
        let admin = self.admin.clone();
        let metrics_svc = move |req: Request<Incoming>| {
            let (prometheus, admin) = (prometheus.clone(), admin.clone());
            async move {
                let resp = match admin {
                    Some(api) if admin::api::is_admin_path(req.uri().path()) => {
                        api.handle(&req).await
                    }
                    _ => metrics_answer(&prometheus, &req)
                        .map(|b| b.map_err(|never| match never {}).boxed_unsync()),
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        };

        let slots = Arc::new(Semaphore::new(self.settings.max_connections));
        // The permit for the next registry connection, taken before accepting it.
        let mut slot: Option<OwnedSemaphorePermit> = None;
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                permit = slots.clone().acquire_owned(), if slot.is_none() => {
                    slot = permit.ok();
                    continue;
                }
                r = self.registry.accept(), if slot.is_some() => r.map(|c| (c, true)),
                r = accept_opt(self.metrics_listener.as_ref()) => r.map(|c| (c, false)),
            };
            let ((stream, peer), is_registry) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let watcher = graceful.watcher();
            let builder = builder.clone();
            if is_registry {
                // Held for the connection's life: its end lets the next one in.
                let permit = slot.take();
                let svc = service_fn(registry_svc.clone());
                let tls = self.tls.clone();
                let (maps, zero_copy) = (
                    self.store.mappings().clone(),
                    self.app.metrics.zero_copy_bytes.clone(),
                );
                let handshake_timeout = self.settings.header_read_timeout;
                tokio::spawn(async move {
                    let _permit = permit;
                    match tls {
                        None => {
                            let stream = SendfileStream::new(stream, maps, zero_copy);
                            serve_conn(watcher, builder, stream, svc, peer).await
                        }
                        Some(acceptor) => {
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => serve_conn(watcher, builder, s, svc, peer).await,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed")
                                }
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            } else {
                let svc = service_fn(metrics_svc.clone());
                tokio::spawn(serve_conn(watcher, builder, stream, svc, peer));
            }
        }
        drop(self.registry);
        drop(self.metrics_listener);
        if let Some(s) = sweeper {
            s.abort();
        }
        tracing::info!(connections = graceful.count(), grace = ?self.settings.shutdown_grace, "shutting down: no new connections; draining");
        if tokio::time::timeout(self.settings.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; dropping the remaining connections");
        }
    }
}

/// What the store may hold, from the `[storage]` settings.
fn limits(st: &StorageConfig) -> Limits {
    Limits {
        max_size: st.max_size.map(|m| m.as_u64()),
        high: st.high_watermark,
        low: st.low_watermark,
        max_age: st.max_age,
        keep_referenced: st.keep_referenced,
    }
}

/// How often the store's maintenance pass runs: often enough that `max_age` is kept to within a
/// tenth, and that pins which ran out are noticed within a minute; never without limits.
fn sweep_every(limits: &Limits) -> Option<Duration> {
    let age = limits
        .max_age
        .map(|a| (a / 10).clamp(Duration::from_secs(10), Duration::from_secs(600)));
    let size = limits.max_size.map(|_| Duration::from_secs(60));
    age.into_iter().chain(size).min()
}

/// Serves one connection until it ends or shutdown drains it.
async fn serve_conn<I, S, B>(
    watcher: hyper_util::server::graceful::Watcher,
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: I,
    svc: S,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn accept_opt(l: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// `/metrics` and `/healthz` on the metrics listener.
fn metrics_answer(
    registry: &prometheus::Registry,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::render(registry),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /healthz\n".to_owned(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, StartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StartError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| StartError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

// Keeps the body type of the registry service nameable in one place.
#[allow(dead_code)]
type RegistryResponse = Response<Body>;
