//! Assembly: the object graph of a running berth, built from one [`Config`] before any socket is
//! bound, so a bad config fails at start, not at the first pull.
//!
//! [`Parts::build`] first takes the storage directory's lock (`store::lock`: a second berth on the
//! same directory refuses to start, naming the holder; the parts hold it until the server is gone),
//! then opens the store (unindexed: `server::Server::run` rebuilds the index once `/healthz`
//! answers), the manifest cache and the origins, builds every upstream's client, the cluster view,
//! the fleet's side (`[fleet]`: on a parent, its tracker and piece tables over the mirror, read
//! as a client would, and with `[cluster]` the digests' owners, `fleet::owner`; on a node, its
//! swarm, `fill::swarm`), the bucket tier ([`bucket`], or one
//! handed in), the mirror over them, the access checker (`[auth]`), the admin API (`[admin]`), the
//! health state, every metric family on one `prometheus::Registry`, and the TLS acceptors of both
//! listeners. It binds no socket and spawns no task: `server` takes the [`Parts`] and binds,
//! accepts and drains.
//! [`Parts::reloader`] hands the same parts to the [`Reloader`] that applies later configurations.
//! A fleet node's upstreams come from its parent: [`effective`] asks for them before the build
//! (async, so `server` calls it first).
//!
//! Rule of dependency: reads the whole `Config` and hands each room its own section (besides
//! `main`, only `reload` also reads it whole, to compare); uses the rooms it builds (`access`,
//! `http::admin`, `cluster`, `fill::swarm`, `fleet`, `health`, `http` for the [`App`], `index` for
//! the limits, `manifests`, `metrics`, `mirror`, `origins`, `reload`, `sdnotify`, `store`, `tier`,
//! `tls`, `upstream`, `upstreams`); only `server` uses it (and names its [`StartError`] again as
//! `server::StartError`), nothing it builds imports it.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio_rustls::TlsAcceptor;

use crate::access;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::fleet::tables::Followed;
use crate::health::Health;
use crate::http::{App, PeerSide};
use crate::index::Limits;
use crate::manifests::Manifests;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::origins::Origins;
use crate::reload::{ReloadMetrics, Reloader};
use crate::sdnotify::Notifier;
use crate::store::Store;
use crate::store::lock::DirLock;
use crate::store::s3::{Bucket, BucketMetrics};
use crate::tier::Tier;
use crate::tls::Certs;
use crate::upstream::{Upstream, UpstreamMetrics};
use crate::upstreams::UpstreamSet;

/// Memory for hot manifests.
const MANIFEST_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

/// Everything a running berth is made of, built from one [`Config`]; `server` binds its
/// listeners around it.
pub struct Parts {
    /// What every registry request is answered with (the mirror, access, the peer side).
    pub app: Arc<App>,
    /// Every metric family, rendered at `/metrics`.
    pub prometheus: prometheus::Registry,
    /// The admin API, when `[admin] enabled` (on the metrics listener, or only on the socket).
    pub admin: Option<Arc<crate::http::admin::Api>>,
    /// For the maintenance pass (eviction by age, and by size once pins run out).
    pub store: Arc<Store>,
    /// Starting, serving or draining: `/healthz` and whether registry connections are accepted.
    pub health: Arc<Health>,
    /// HTTPS on the registry listener (`[server] tls_cert`).
    pub tls: Option<TlsAcceptor>,
    /// The TLS pair, re-read on reload and when its files change.
    pub certs: Option<Arc<Certs>>,
    /// HTTPS on the metrics listener (`[metrics] tls_cert`).
    pub metrics_tls: Option<TlsAcceptor>,
    /// The metrics listener's TLS pair, re-read like the registry's.
    pub metrics_certs: Option<Arc<Certs>>,
    /// The configuration it was built from (the [`Reloader`] starts with it).
    pub config: Config,
    upstream_metrics: UpstreamMetrics,
    reload_metrics: ReloadMetrics,
    /// This berth's hold on the storage directory, released with the server.
    _lock: DirLock,
}

/// The configuration berth runs on: `cfg` itself, or for a fleet node (`[fleet] parent`) `cfg`
/// with its parent's upstreams, asked now or saved at the last good answer (`fleet::node`).
/// Before [`Parts::build`]: the store and the manifest cache are laid out by upstream name.
pub async fn effective(cfg: &Config) -> Result<Config, StartError> {
    let mut cfg = cfg.clone();
    if let Some(fleet) = cfg.fleet.as_ref().filter(|f| f.is_node()) {
        cfg.upstreams = crate::fleet::node::upstreams(fleet, &cfg.storage.path)
            .await
            .map_err(StartError::Fleet)?;
    }
    Ok(cfg)
}

/// The bucket tier `[storage.s3]` names, if any.
pub fn bucket(cfg: &Config) -> Result<Option<Bucket>, StartError> {
    cfg.storage
        .s3
        .as_ref()
        .map(|s3| {
            Bucket::connect(s3, BucketMetrics::new()).map_err(|e| StartError::Bucket(e.to_string()))
        })
        .transpose()
}

impl Parts {
    /// Builds everything `cfg` asks for, over `bucket` as the bucket tier (see [`bucket`]; tests
    /// hand in one over a fault-injecting store). Its metric families are registered with the
    /// rest. Binds nothing.
    pub fn build(cfg: &Config, bucket: Option<Bucket>) -> Result<Parts, StartError> {
        let prometheus = prometheus::Registry::new();
        let tier = match bucket {
            Some(b) => {
                b.metrics().register(&prometheus)?;
                Some(Arc::new(Tier::new(Arc::new(b))))
            }
            None => None,
        };
        let metrics = Metrics::register(&prometheus)?;
        let upstream_metrics = UpstreamMetrics::register(&prometheus)?;

        let root = &cfg.storage.path;
        let storage_err = |source| StartError::Storage {
            path: root.display().to_string(),
            source,
        };
        // Before anything under the root is touched (the store empties `tmp/` when it opens).
        let lock = DirLock::acquire(root)?;
        // The index is rebuilt in `run`, after the listeners are bound and `/healthz` answers.
        let store = Arc::new(
            Store::open_unindexed(root, Limits::from_config(&cfg.storage)).map_err(storage_err)?,
        );
        store.index().metrics().register(&prometheus)?;
        let names = cfg
            .upstreams
            .iter()
            .map(|u| u.name.to_ascii_lowercase())
            .collect();
        let manifests = Manifests::new(store.clone(), root, MANIFEST_MEMORY_BYTES, names)
            .map_err(storage_err)?;
        let origins = Origins::open(root, &manifests.upstream_names()).map_err(storage_err)?;

        let reload_metrics = ReloadMetrics::register(&prometheus)?;
        // Slots in config order: `manifests` was given the names in that order.
        let mut upstreams = Vec::new();
        for (slot, u) in cfg.upstreams.iter().enumerate() {
            let up =
                Upstream::new(u, upstream_metrics.clone()).map_err(|e| StartError::Upstream {
                    name: u.name.clone(),
                    reason: e.to_string(),
                })?;
            upstreams.push((slot, Arc::new(up)));
        }
        let cluster = cfg
            .cluster
            .as_ref()
            .map(|c| Cluster::new(c, &prometheus).map(Arc::new))
            .transpose()
            .map_err(StartError::Cluster)?;
        let fleet = cfg
            .fleet
            .as_ref()
            .map(|f| crate::fleet::Fleet::new(f, &prometheus))
            .transpose()
            .map_err(StartError::Fleet)?;
        // A node's swarm shares its fleet now; a parent's fleet gets its tracker and piece tables
        // over the mirror, once that is built.
        let (node_fleet, parent_fleet) = match fleet {
            Some(f) if f.is_node() => (Some(Arc::new(f)), None),
            other => (None, other),
        };
        let swarm = match (&cfg.fleet, &node_fleet) {
            (Some(f), Some(fleet)) => {
                crate::fill::swarm::Swarm::new(f, fleet.clone(), store.clone())
                    .map_err(StartError::Fleet)?
                    .map(Arc::new)
            }
            _ => None,
        };
        let mirror = Arc::new(
            Mirror::new(
                UpstreamSet::new(upstreams),
                store.clone(),
                manifests,
                origins,
                metrics.clone(),
            )
            .with_tier(tier.clone())
            .with_cluster(cluster.clone())
            .with_swarm(swarm)
            .with_policies(crate::policy::Policies::new(&cfg.policies))
            .with_verdicts_in(root.join("policy")),
        );
        let mut health = Health::new(
            root.clone(),
            store.index().clone(),
            upstream_metrics.last_errors().clone(),
        );
        if let Some(t) = &tier {
            health = health
                .with_bucket(t.last_error().clone())
                .with_bucket_share(t.share().clone());
        }
        let health = Arc::new(health);
        let mut app = App::new(mirror, metrics);
        if let Some(auth) = &cfg.auth {
            let settings = access::Settings::new(auth, &cfg.upstreams);
            app.access = Some(Arc::new(access::Access::new(settings, &prometheus)?));
        }
        if let Some(cluster) = &cluster {
            app.peers = Some(PeerSide {
                cluster: cluster.clone(),
                health: health.clone(),
            });
        }
        app.fleet = match (parent_fleet, &cfg.fleet) {
            (Some(fleet), Some(f)) => {
                let blobs = Arc::new(MirrorBlobs(app.mirror.clone()));
                let mut limits = crate::swarm::tracker::Limits::default();
                if let Some(n) = f.parent_slots {
                    limits.parent_slots = n as usize;
                }
                let mut parent = crate::fleet::parent::Parent::new(blobs, limits, &prometheus)
                    .map_err(StartError::Fleet)?;
                // Replicas: one tracker per digest, its owner's (`fleet::owner`).
                if let Some(cluster) = cluster {
                    let owners = crate::fleet::owner::Owners::new(cluster, &prometheus)
                        .map_err(StartError::Fleet)?;
                    parent = parent.with_owners(owners);
                }
                Some(Arc::new(fleet.with_parent(parent)))
            }
            _ => node_fleet,
        };
        let app = Arc::new(app);
        // The admin API warms through `app`, in process (see `http::warm`).
        let admin = cfg.admin.token.clone().map(|token| {
            let bucket_max = cfg.storage.s3.as_ref().and_then(|s| s.max_size);
            Arc::new(
                crate::http::admin::Api::new(app.mirror.clone(), root.clone(), token)
                    .with_bucket_max(bucket_max.map(|m| m.as_u64()))
                    .with_warm(app.clone()),
            )
        });

        for w in cfg.warnings() {
            tracing::warn!("{w}");
        }
        // One reload counter for both pairs, registered only when there is a pair.
        let pairs = [
            (&cfg.server.tls_cert, &cfg.server.tls_key),
            (&cfg.metrics.tls_cert, &cfg.metrics.tls_key),
        ];
        let reloads = match pairs.iter().any(|(c, _)| c.is_some()) {
            true => Some(crate::tls::reload_counter(&prometheus).map_err(StartError::Tls)?),
            false => None,
        };
        let load = |(cert, key): (&Option<std::path::PathBuf>, &Option<std::path::PathBuf>)| match (
            cert, key, &reloads,
        ) {
            (Some(cert), Some(key), Some(reloads)) => {
                let certs = Arc::new(
                    Certs::load_counted(cert, key, reloads.clone()).map_err(StartError::Tls)?,
                );
                let acceptor =
                    TlsAcceptor::from(Arc::new(certs.server_config().map_err(StartError::Tls)?));
                Ok(Some((certs, acceptor)))
            }
            _ => Ok::<_, StartError>(None),
        };
        let (certs, tls) = load(pairs[0]).map(Option::unzip)?;
        let (metrics_certs, metrics_tls) = load(pairs[1]).map(Option::unzip)?;
        Ok(Parts {
            app,
            prometheus,
            admin,
            store,
            health,
            tls,
            certs,
            metrics_tls,
            metrics_certs,
            config: cfg.clone(),
            upstream_metrics,
            reload_metrics,
            _lock: lock,
        })
    }

    /// What applies a new configuration to these parts once they serve (see `reload`), telling
    /// `notifier` (the service manager) about it.
    pub fn reloader(&self, notifier: Notifier) -> Reloader {
        Reloader::new(
            self.config.clone(),
            self.app.mirror.clone(),
            self.store.clone(),
            self.upstream_metrics.clone(),
            self.certs
                .iter()
                .chain(&self.metrics_certs)
                .cloned()
                .collect(),
            self.reload_metrics.clone(),
            notifier,
        )
        .with_access(self.app.access.clone())
    }
}

/// The fleet parent reads blobs through the mirror, as a client would, starting nothing
/// (`fleet::tables::Blobs`).
struct MirrorBlobs(Arc<Mirror>);

impl crate::fleet::tables::Blobs for MirrorBlobs {
    fn size<'a>(&'a self, digest: &'a crate::oci::Digest) -> BoxFuture<'a, Option<u64>> {
        Box::pin(self.0.blob_size(digest))
    }

    fn follow<'a>(
        &'a self,
        digest: &'a crate::oci::Digest,
    ) -> BoxFuture<'a, Result<Option<Followed>, crate::error::Error>> {
        Box::pin(async move {
            let followed = self.0.follow_blob(digest).await?;
            Ok(followed.map(|(size, body)| Followed { size, body }))
        })
    }

    fn filling(&self, digest: &crate::oci::Digest) -> Option<u64> {
        self.0.blob_filling(digest)
    }
}

/// Why berth could not start: building the [`Parts`] (here), binding the listeners or
/// rebuilding the cache index (`server`).
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
    #[error("[auth] {0}")]
    Auth(#[from] crate::access::LoadError),
    #[error("[admin] socket: {0}")]
    AdminSocket(String),
    #[error("[storage.s3]: {0}")]
    Bucket(String),
    #[error("cache index of {path}: {reason}")]
    Index { path: String, reason: String },
    #[error("[cluster] {0}")]
    Cluster(String),
    #[error("[fleet] {0}")]
    Fleet(String),
    #[error("{0}")]
    Lock(#[from] crate::store::lock::LockError),
}
