//! Listeners, TLS handshakes, connection limits and graceful shutdown: binds, accepts and drains.
//!
//! [`Server::bind`] has `assemble` build everything (for a fleet node, after asking its parent
//! for its upstreams, `assemble::effective`) from the [`Config`] (store, upstreams,
//! metrics, mirror, ...: [`Parts`]) and then binds both listeners, so a bad config or a busy port
//! fails before anything is served ([`Server::bind_parts`] takes parts built already);
//! [`Server::run`] serves until the shutdown future completes, then stops accepting and gives
//! running transfers `shutdown_grace` to finish. Shutdown is a value: tests pass their own future.
//!
//! Life cycle ([`Health`]): `run` first rebuilds the cache index (one directory scan) while the
//! metrics listener already answers (`/healthz` 503 "starting") and registry connections wait in
//! the listen backlog; then it serves (200, `READY=1` to systemd); on shutdown it drains (503,
//! `STOPPING=1`) with the metrics listener open until the drain is over. Binding before the scan
//! keeps a busy port a start-up error that comes at once; accepting only after it keeps every pull
//! under the eviction accounting the index provides.
//!
//! Client connections: HTTP/1.1 and HTTP/2 (ALPN on TLS), a header read timeout against slowloris,
//! a cap on header count (431 beyond) and header bytes; request bodies are never read. At most
//! `max_connections` registry connections are served at once: the accept loop takes a permit
//! before it accepts, so beyond the cap new connections wait in the kernel's backlog (and are
//! refused by the kernel once that is full) instead of costing memory here, while transfers under
//! way go on. The metrics listener is not counted, so `/metrics` and the admin API stay reachable
//! during a flood. HTTP/2 connections are pinged when quiet (dead peers are dropped) and carry a
//! bounded number of streams. A registry connection with no request in flight for `idle_timeout`
//! is closed gracefully ([`idle`], which also says what hyper's HTTP/1 header timeout already
//! covers). Plain-TCP connections write through `zerocopy::SendfileStream`, so cached blob bytes go
//! out with `sendfile`.
//!
//! The metrics listener speaks HTTPS when `[metrics] tls_cert`/`tls_key` are set (its own
//! [`Certs`], reloaded like the registry's); what it answers is `http::metrics`'s router. The
//! admin API is served on it, or with `[admin] socket` only on that Unix socket
//! ([`admin_socket`]), never on both.
//!
//! While it runs, the server also starts and stops the work tied to its life: the store's
//! maintenance pass (at the pace of `sweep_every`) and, with a bucket tier, its stale-upload
//! sweep and share eviction, on a fleet node the directory's notes of the blobs it holds
//! (`fill::swarm`), all once the index is rebuilt; the memory trimmer after bursts of
//! connections ([`conn`]); the systemd watchdog; the certificate watchers.
//!
//! With `[cluster]`, the registry listener also answers the peer routes (`http`, `cluster`), and
//! the cluster's prober runs from the start of `run` to its end. [`Server::bind_with_registry`]
//! takes a registry listener bound already, for callers that must know its address before the
//! config is final (tests naming each replica's `self`).
//!
//! Rule of dependency: the top of the library (only `main` and the tests use it); uses
//! `assemble` for what it serves, `http` (the registry service and the metrics router),
//! `zerocopy` (sendfile), `reload` (the [`Reloader`] it hands out), `config` (`[server]`),
//! `logwriter` (where request lines go), and the handles it starts and stops (`store`, `index`
//! and `store::s3::evict` limits, `tier`, `cluster`'s prober, `tls`, `sdnotify`, `health`). It
//! builds nothing from the configuration but its listeners.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::assemble::{self, Parts};
use crate::cluster::Cluster;
use crate::config::{Config, ServerConfig};
use crate::health::{Health, Phase};
use crate::http::Body;
use crate::http::metrics::MetricsService;
use crate::index::Limits;
use crate::mirror::Mirror;
use crate::reload::Reloader;
use crate::sdnotify::Notifier;
use crate::store::s3::Bucket;
use crate::store::s3::evict::Limits as ShareLimits;
use crate::tls::Certs;
use crate::zerocopy::SendfileStream;
use conn::{Bursts, Head, Prefixed};

mod admin_socket;
pub mod conn;
mod idle;

use admin_socket::AdminSocket;
use idle::{Activity, Drain, Tracked};

pub use crate::assemble::StartError;

/// hyper's HTTP/1 header count limit when none is set.
const HYPER_MAX_HEADERS: usize = 100;
/// Most bytes of request head accepted on HTTP/1 (hyper answers 431 beyond).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A bound, ready-to-run berth.
pub struct Server {
    registry: TcpListener,
    metrics_listener: Option<TcpListener>,
    /// `[admin] socket`: where the admin API is served instead of the metrics listener.
    admin_socket: Option<AdminSocket>,
    /// What the listeners serve, built from the configuration (`assemble`).
    parts: Parts,
    settings: ServerConfig,
    /// The service manager (systemd `Type=notify`); disabled unless handed in.
    notifier: Notifier,
}

impl Server {
    /// Builds the mirror from `cfg` ([`Parts::build`]) and binds its listeners.
    pub async fn bind(cfg: &Config) -> Result<Server, StartError> {
        let cfg = &assemble::effective(cfg).await?;
        Self::bind_parts(Parts::build(cfg, assemble::bucket(cfg)?)?, None).await
    }

    /// As [`bind`](Self::bind), serving the registry on `registry`, a listener bound already
    /// (its address is known before the server is built: a cluster's `self`, socket activation);
    /// `[server] listen` is then not bound.
    pub async fn bind_with_registry(
        cfg: &Config,
        registry: std::net::TcpListener,
    ) -> Result<Server, StartError> {
        let cfg = &assemble::effective(cfg).await?;
        Self::bind_parts(Parts::build(cfg, assemble::bucket(cfg)?)?, Some(registry)).await
    }

    /// As [`bind`](Self::bind), with the bucket tier given rather than made from
    /// `[storage.s3]` (tests hand in one over a fault-injecting store). Its metric families are
    /// registered on the server's registry.
    pub async fn bind_with_bucket(
        cfg: &Config,
        bucket: Option<Bucket>,
    ) -> Result<Server, StartError> {
        let cfg = &assemble::effective(cfg).await?;
        Self::bind_parts(Parts::build(cfg, bucket)?, None).await
    }

    /// Binds the listeners `parts.config` names around what was built: the registry listener
    /// (or takes `registry`, bound already), the metrics listener, the admin socket.
    pub async fn bind_parts(
        parts: Parts,
        registry: Option<std::net::TcpListener>,
    ) -> Result<Server, StartError> {
        let cfg = &parts.config;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let registry = match registry {
            Some(l) => {
                let addr = l.local_addr().unwrap_or(cfg.server.listen);
                let bind_err = |source| StartError::Bind { addr, source };
                l.set_nonblocking(true).map_err(bind_err)?;
                TcpListener::from_std(l).map_err(bind_err)?
            }
            None => bind(cfg.server.listen).await?,
        };
        let metrics_listener = match cfg.metrics.enabled {
            true => Some(bind(cfg.metrics.listen).await?),
            false => None,
        };
        let admin_socket = match (&parts.admin, &cfg.admin.socket) {
            (Some(_), Some(path)) => {
                Some(AdminSocket::bind(path).map_err(StartError::AdminSocket)?)
            }
            _ => None,
        };
        Ok(Server {
            registry,
            metrics_listener,
            admin_socket,
            settings: cfg.server.clone(),
            parts,
            notifier: Notifier::default(),
        })
    }

    /// What applies a new configuration to this server once it runs (see `reload`).
    pub fn reloader(&self) -> Reloader {
        self.parts.reloader(self.notifier.clone())
    }

    /// Tells `notifier` (systemd's `NOTIFY_SOCKET`) what the server does: `READY=1` once the
    /// index is rebuilt and pulls are served, `STATUS=` lines, `STOPPING=1`, and `WATCHDOG=1`
    /// when the service manager asks for it.
    pub fn notify_to(mut self, notifier: Notifier) -> Server {
        self.notifier = notifier;
        self
    }

    /// The mirror this server answers with.
    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.parts.app.mirror
    }

    /// This berth's view of its cluster, with `[cluster]`.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.parts.app.peers.as_ref().map(|p| &p.cluster)
    }

    /// Where the server is in its life (what `/healthz` answers from).
    pub fn health(&self) -> &Arc<Health> {
        &self.parts.health
    }

    /// Writes request lines to `writer` directly rather than through `tracing`'s formatting (the
    /// same line, for a fraction of the cost; `main` passes its log writer when not colouring).
    pub fn log_requests_to(self, writer: Option<crate::logwriter::BatchWriter>) -> Server {
        if let Some(w) = writer {
            let _ = self.parts.app.request_log.set(w);
        }
        self
    }

    /// Request lines as JSON objects (`[log] format = "json"`); needs
    /// [`log_requests_to`](Self::log_requests_to).
    pub fn json_request_log(self, json: bool) -> Server {
        self.parts
            .app
            .json_log
            .store(json, std::sync::atomic::Ordering::Relaxed);
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
        self.parts.tls.is_some()
    }

    /// Whether the metrics listener speaks HTTPS.
    pub fn metrics_is_tls(&self) -> bool {
        self.parts.metrics_tls.is_some()
    }

    /// The admin API's Unix socket, when `[admin] socket` is set.
    pub fn admin_socket(&self) -> Option<&std::path::Path> {
        self.admin_socket.as_ref().map(AdminSocket::path)
    }

    /// Rebuilds the cache index, then serves until `shutdown` completes, then drains connections
    /// for at most `shutdown_grace`. The metrics listener (`/healthz`, `/metrics`) answers from the
    /// start to the end of the drain; the registry listener accepts only once the index is
    /// rebuilt (connections made before wait in its backlog). Fails only when the index cannot be
    /// rebuilt.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let notifier = self.notifier.clone();
        let watchdog = crate::sdnotify::watchdog_interval()
            .filter(|_| notifier.is_enabled())
            .map(|every| {
                let n = notifier.clone();
                // A tick proves the runtime still schedules tasks and its timers still fire.
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    loop {
                        tick.tick().await;
                        n.watchdog();
                    }
                })
            });
        let mut cert_watch = None;
        // Peers are probed from the start: whom to ask does not wait for this berth's index.
        // Stopped when `run` returns, however it returns.
        let _prober = self
            .parts
            .app
            .peers
            .as_ref()
            .map(|p| AbortOnDrop(p.cluster.spawn_prober()));
        let metrics_cert_watch = self.parts.metrics_certs.clone().map(Certs::watch);
        let graceful = Drain::default();
        let builder = Arc::new(self.conn_builder());

        // The metrics listener (and the admin socket) run on their own until the drain is over,
        // so `/healthz` answers 503 while starting and draining. One stop signal for both.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
        let mut side_tasks = Vec::new();
        let svc = MetricsService::new(
            self.parts.prometheus.clone(),
            self.parts.health.clone(),
            self.parts.app.mirror.clone(),
        );
        if let Some(listener) = self.metrics_listener.take() {
            let svc = svc.clone().with_admin(
                self.parts
                    .admin
                    .clone()
                    .filter(|_| self.admin_socket.is_none()),
            );
            let tls = self
                .parts
                .metrics_tls
                .clone()
                .map(|t| (t, self.settings.header_read_timeout));
            side_tasks.push(tokio::spawn(serve_metrics(
                listener,
                tls,
                builder.clone(),
                svc,
                stop_rx.clone(),
            )));
        }
        if let Some(socket) = self.admin_socket.take() {
            let svc = svc.clone().admin_only(self.parts.admin.clone());
            side_tasks.push(tokio::spawn(serve_admin_socket(
                socket,
                builder.clone(),
                svc,
                stop_rx.clone(),
            )));
        }
        let stop_side = move || {
            stop_tx.send_replace(());
        };

        let store = self.parts.store.clone();
        let n = notifier.clone();
        let root = self.parts.health.storage().display().to_string();
        let mut rebuild = Some(tokio::task::spawn_blocking(move || {
            store.rebuild_index(|count| {
                n.status(&format!("rebuilding index of {count} blobs"));
                tracing::info!(files = count, "rebuilding the cache index");
            })
        }));
        let mut sweeper = None;

        let app = self.parts.app.clone();
        let idle_timeout = Some(self.settings.idle_timeout).filter(|t| !t.is_zero());
        let slots = Arc::new(Semaphore::new(self.settings.max_connections));
        let bursts = Arc::new(Bursts::default());
        let trimmer = spawn_trimmer(bursts.clone(), slots.clone(), self.settings.max_connections);
        let mut stale_uploads = None;
        let mut keep_share: Option<tokio::task::JoinHandle<()>> = None;
        let mut announce = None;
        // The permit for the next registry connection, taken before accepting it.
        let mut slot: Option<OwnedSemaphorePermit> = None;
        tokio::pin!(shutdown);
        loop {
            let serving = rebuild.is_none();
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                done = async { rebuild.as_mut().expect("guarded").await }, if !serving => {
                    rebuild = None;
                    let indexed = match done {
                        Ok(Ok(n)) => n,
                        Ok(Err(e)) => { stop_side(); return Err(self.index_failed(&root, e.to_string(), watchdog)) }
                        Err(e) => { stop_side(); return Err(self.index_failed(&root, e.to_string(), watchdog)) }
                    };
                    sweeper = Some(self.spawn_sweeper());
                    // Every STALE_EVERY, multipart uploads a killed replica left open are aborted.
                    stale_uploads = self
                        .parts.app
                        .mirror
                        .tier()
                        .map(|t| tokio::spawn(t.clone().abort_stale_uploads()));
                    // Pulls flushed as access markers, and the share's eviction pass.
                    keep_share = self.parts.app.mirror.tier().map(|t| {
                        let limits = ShareLimits::from_config(&self.parts.config.storage);
                        tokio::spawn(t.clone().keep_share(self.parts.store.clone(), limits))
                    });
                    // A fleet node tells the directory of the blobs it holds (paced).
                    announce = self.parts.app.mirror.swarm().map(|s| tokio::spawn(s.clone().announce_held()));
                    cert_watch = self.parts.certs.clone().map(Certs::watch);
                    self.parts.health.set(Phase::Serving);
                    tracing::info!(blobs = indexed, bytes = self.parts.store.index().bytes(), "cache index rebuilt; serving");
                    notifier.ready(&format!("serving ({indexed} blobs cached)"));
                    continue;
                }
                permit = slots.clone().acquire_owned(), if serving && slot.is_none() => {
                    slot = permit.ok();
                    continue;
                }
                r = self.registry.accept(), if serving && slot.is_some() => r,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let mut watcher = graceful.watcher();
            let builder = builder.clone();
            // Held for the connection's life: its end lets the next one in.
            let permit = slot.take();
            // Each request is open from its call until hyper drops its response body.
            let activity = Activity::new();
            let svc = service_fn({
                let (app, activity) = (app.clone(), activity.clone());
                move |req: Request<Incoming>| {
                    let open = activity.open();
                    let answer = app.clone().handle(req);
                    async move { answer.await.map(|r| r.map(|b| Tracked::new(b, open))) }
                }
            });
            let idle = idle_timeout.map(|t| (activity, t));
            let tls = self.parts.tls.clone();
            let (maps, zero_copy) = (
                self.parts.store.mappings().clone(),
                self.parts.app.metrics.zero_copy_bytes.clone(),
            );
            let handshake_timeout = self.settings.header_read_timeout;
            let conn = async move {
                let _permit = permit;
                match tls {
                    None => {
                        let head = tokio::select! {
                            h = conn::wait_for_head(&stream, handshake_timeout) => h,
                            _ = watcher.changed() => return,
                        };
                        match head {
                            Ok(Head::Arrived(first)) => {
                                let stream = Prefixed::new(
                                    first,
                                    SendfileStream::new(stream, maps, zero_copy),
                                );
                                // Boxed: a connection still waiting for its head holds only this
                                // task's small state, not hyper's.
                                Box::pin(serve_conn(watcher, idle, builder, stream, svc, peer))
                                    .await
                            }
                            Ok(Head::Closed) => {}
                            Ok(Head::TimedOut) => {
                                tracing::debug!(%peer, "no whole request head within header_read_timeout; closed")
                            }
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "connection failed before its request head")
                            }
                        }
                    }
                    Some(acceptor) => {
                        // Boxed, as the plain connection's hyper state is: the handshake's state
                        // would otherwise size every waiting connection's task.
                        let handshake = Box::pin(tokio::time::timeout(
                            handshake_timeout,
                            acceptor.accept(stream),
                        ));
                        match handshake.await {
                            Ok(Ok(s)) => {
                                Box::pin(serve_conn(watcher, idle, builder, s, svc, peer)).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            };
            bursts.opened(self.settings.max_connections - slots.available_permits());
            tokio::spawn(conn);
        }
        self.parts.health.set(Phase::Draining);
        drop(self.registry);
        trimmer.abort();
        if let Some(t) = stale_uploads {
            t.abort();
        }
        if let Some(t) = keep_share {
            t.abort();
        }
        if let Some(t) = announce {
            t.abort();
        }
        if let Some(s) = sweeper {
            s.abort();
        }
        if let Some(r) = rebuild {
            r.abort();
        }
        let transfers = || {
            self.parts
                .app
                .in_flight
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        notifier.stopping(&format!("draining {} transfers", transfers()));
        tracing::info!(connections = graceful.count(), transfers = transfers(), grace = ?self.settings.shutdown_grace, "shutting down: no new connections; draining");
        let drained = graceful.shutdown();
        tokio::pin!(drained);
        let deadline = tokio::time::sleep(self.settings.shutdown_grace);
        tokio::pin!(deadline);
        let mut status = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = &mut drained => break,
                _ = &mut deadline => {
                    tracing::warn!("shutdown grace period over; dropping the remaining connections");
                    break;
                }
                _ = status.tick() => notifier.status(&format!("draining {} transfers", transfers())),
            }
        }
        stop_side();
        for t in side_tasks {
            let _ = t.await;
        }
        if let Some(w) = watchdog {
            w.abort();
        }
        for w in cert_watch.into_iter().chain(metrics_cert_watch) {
            w.abort();
        }
        Ok(())
    }

    /// Start-up failed on the index: stops what `run` started and says why.
    fn index_failed(
        &self,
        root: &str,
        reason: String,
        watchdog: Option<tokio::task::JoinHandle<()>>,
    ) -> StartError {
        if let Some(w) = watchdog {
            w.abort();
        }
        self.notifier
            .send(&format!("STATUS=cannot rebuild the cache index: {reason}"));
        StartError::Index {
            path: root.to_owned(),
            reason,
        }
    }

    /// The maintenance pass, at once and then at the pace the limits ask for; limits may change
    /// on reload, so the pace is worked out again after each pass (and checked every minute
    /// without limits).
    fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let store = self.parts.store.clone();
        tokio::spawn(async move {
            loop {
                let every = sweep_every(&store.index().limits());
                if every.is_some() {
                    let store = store.clone();
                    let _ = tokio::task::spawn_blocking(move || store.sweep()).await;
                }
                tokio::time::sleep(every.unwrap_or(Duration::from_secs(60))).await;
            }
        })
    }

    fn conn_builder(&self) -> auto::Builder<TokioExecutor> {
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
        builder
    }
}

/// Accepts on the metrics listener until `stop`, then lets its connections finish briefly.
async fn serve_metrics(
    listener: TcpListener,
    tls: Option<(TlsAcceptor, Duration)>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    svc: MetricsService,
    mut stop: tokio::sync::watch::Receiver<()>,
) {
    let graceful = Drain::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed (metrics)");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = svc.clone().service();
        let (watcher, builder) = (graceful.watcher(), builder.clone());
        match tls.clone() {
            None => {
                tokio::spawn(serve_conn(watcher, None, builder, stream, svc, peer));
            }
            Some((acceptor, handshake_timeout)) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_conn(watcher, None, builder, s, svc, peer).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed (metrics)")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out (metrics)"),
                    }
                });
            }
        }
    }
    drop(listener);
    // A scrape in progress finishes; idle keep-alive connections are closed at once.
    let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
}

/// Accepts on the admin socket until `stop`; the socket file goes when `socket` drops.
async fn serve_admin_socket(
    socket: AdminSocket,
    builder: Arc<auto::Builder<TokioExecutor>>,
    svc: MetricsService,
    mut stop: tokio::sync::watch::Receiver<()>,
) {
    let graceful = Drain::default();
    // `serve_conn` logs a peer address; a Unix peer has none worth logging.
    let peer = SocketAddr::from(([0, 0, 0, 0], 0));
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => break,
            r = socket.listener().accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed (admin socket)");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let svc = svc.clone().service();
        tokio::spawn(serve_conn(
            graceful.watcher(),
            None,
            builder.clone(),
            stream,
            svc,
            peer,
        ));
    }
    drop(socket);
    let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
}

/// Every few seconds, hands the memory of a burst of connections that is over back to the OS
/// (see [`conn`]).
fn spawn_trimmer(
    bursts: Arc<Bursts>,
    slots: Arc<Semaphore>,
    max: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let open = max - slots.available_permits();
            if bursts.settle(open) {
                let _ = tokio::task::spawn_blocking(crate::trim::malloc_trim).await;
                tracing::debug!(
                    open,
                    "a burst of connections is over; freed memory handed back"
                );
            }
        }
    })
}

/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

/// Serves one connection until it ends, shutdown drains it (`stop` changes), or, with `idle`,
/// it has carried no request for that long.
async fn serve_conn<I, S, B>(
    mut stop: tokio::sync::watch::Receiver<()>,
    idle: Option<(Arc<Activity>, Duration)>,
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
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let quiet_for = || {
        let idle = idle.clone();
        async move {
            match idle {
                Some((activity, timeout)) => activity.idle_for(timeout).await,
                None => std::future::pending().await,
            }
        }
    };
    let quiet = quiet_for();
    tokio::pin!(quiet);
    // Server shutdown asked for: from then on only the drain's deadline ends the connection.
    let mut draining = false;
    // The idle close asked for. HTTP/2's graceful close waits for the client to answer a PING
    // after the first GOAWAY; one that never does would keep the connection (and its
    // `max_connections` slot) until keep-alive gives up on it. So if it is still open and quiet
    // a whole `idle_timeout` later, it is dropped; a request it started meanwhile still counts.
    let mut asked = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                if !asked {
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = &mut quiet, if !draining => {
                let timeout = idle.as_ref().map(|i| i.1);
                if asked {
                    tracing::debug!(%peer, ?timeout, "dropping an idle connection that did not close when asked");
                    break;
                }
                asked = true;
                tracing::debug!(%peer, ?timeout, "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                quiet.set(quiet_for());
            }
        }
    }
}

// Keeps the body type of the registry service nameable in one place.
#[allow(dead_code)]
type RegistryResponse = Response<Body>;
