//! Live reload (`SIGHUP`, `systemctl reload berth`): re-read the config file, validate it whole,
//! then apply what can change while serving.
//!
//! Nothing changes unless the whole new file is valid *and* every new or changed upstream's
//! client could be built (its CA bundle parsed, ...); a refused reload is logged with the file,
//! key and reason, counted in `berth_config_reloads_total{outcome="failure"}`, and the running
//! configuration keeps serving. What changes live:
//! - upstreams added, removed or changed: a new [`UpstreamSet`] is swapped in whole. An upstream
//!   whose settings are all equal keeps its client (connection pool, token cache); a changed one
//!   gets a new client (credentials, `tag_ttl`, `offline`, retries, timeouts). Fills and requests
//!   already running keep the upstream they started with, so no transfer is cut;
//! - storage limits (`max_size`, watermarks, `max_age`, `keep_referenced`): the index takes them
//!   at once and a maintenance pass evicts down to a lower limit;
//! - the log level (`[log] level`, unless `RUST_LOG` is set);
//! - the TLS certificate and key, re-read from the same paths;
//! - with `[auth]`: `anonymous_upstreams` and each upstream's `users` (the access policy is
//!   swapped before the upstream set, so a request routed to a new slot never meets a policy
//!   that does not know it as open).
//!
//! What needs a restart is named in a warning and otherwise ignored (the running value stays and is
//! compared again at the next reload): listen addresses, the metrics listener, the storage path and
//! `[storage.s3]`, `[cluster]` (peers, secret, timings), `[fleet]` (a node's upstreams are its
//! parent's, asked again at each reload under the running table), TLS file paths, `[server]`
//! limits, `[admin]`, the log format, whether `[auth]` is on and its htpasswd path and
//! check_concurrency (the file itself is re-read whenever it changes).
//!
//! The signature policies (`[[policy]]`) are replaced whole, their key files read again: a
//! changed policy decides its verdicts again.
//!
//! Rule of dependency: uses `config`, `access` (the policy), `fleet` (a node's upstreams),
//! `mirror`, `policy`, `upstream`, `upstreams`, `store` and `index` (the limits), `tls`,
//! `sdnotify`; never `server` or `assemble`. `assemble` builds it over the parts it built
//! (`Parts::reloader`), `server` hands it out, `main` calls it on `SIGHUP`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, Opts, Registry};

use crate::access::{Access, Settings};
use crate::config::Config;
use crate::index::Limits;
use crate::mirror::Mirror;
use crate::sdnotify::Notifier;
use crate::store::Store;
use crate::tls::Certs;
use crate::upstream::{Upstream, UpstreamMetrics};
use crate::upstreams::UpstreamSet;

/// Changes the log level filter (`[log] level`); `main` builds it over the subscriber's reload
/// handle.
pub type LogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// `berth_config_reloads_total{outcome}`.
#[derive(Clone, Debug)]
pub struct ReloadMetrics {
    reloads: IntCounterVec,
}

impl ReloadMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<ReloadMetrics> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "berth_config_reloads_total",
                "Configuration reloads (SIGHUP), by outcome: success, or failure (the old configuration stayed).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        for o in ["success", "failure"] {
            reloads.with_label_values(&[o]);
        }
        Ok(ReloadMetrics { reloads })
    }
}

/// Applies new configurations to a running server.
pub struct Reloader {
    /// The configuration in force (restart-only settings keep their running values).
    current: Mutex<Config>,
    mirror: Arc<Mirror>,
    store: Arc<Store>,
    upstream_metrics: UpstreamMetrics,
    /// Every listener's TLS pair (registry, metrics).
    certs: Vec<Arc<Certs>>,
    metrics: ReloadMetrics,
    notifier: Notifier,
    log_level: Option<LogLevel>,
    /// With `[auth]`: the login checker whose policy follows the upstreams.
    access: Option<Arc<Access>>,
}

/// What a reload changed (for the log line and tests).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub storage_limits: bool,
    pub log_level: bool,
    /// The signature policies (`[[policy]]`, their keys re-read): verdicts are decided again.
    pub policies: bool,
    /// Settings that differ but need a restart.
    pub need_restart: Vec<&'static str>,
}

impl Reloader {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        current: Config,
        mirror: Arc<Mirror>,
        store: Arc<Store>,
        upstream_metrics: UpstreamMetrics,
        certs: Vec<Arc<Certs>>,
        metrics: ReloadMetrics,
        notifier: Notifier,
    ) -> Reloader {
        Reloader {
            current: Mutex::new(current),
            mirror,
            store,
            upstream_metrics,
            certs,
            metrics,
            notifier,
            log_level: None,
            access: None,
        }
    }

    /// The login checker whose policy a reload replaces (`None`: berth runs without `[auth]`).
    pub fn with_access(mut self, access: Option<Arc<Access>>) -> Reloader {
        self.access = access;
        self
    }

    /// How the log level is changed (without it, `[log] level` needs a restart).
    pub fn with_log_level(mut self, f: LogLevel) -> Reloader {
        self.log_level = Some(f);
        self
    }

    /// Re-reads `path` and applies it; tells the service manager (`RELOADING=1` ... `READY=1`).
    /// The TLS pair is re-read either way.
    pub async fn reload_file(&self, path: &Path) -> Result<Changes, String> {
        self.notifier.reloading();
        tracing::info!(config = %path.display(), "reloading the configuration");
        let result = match Config::load(path) {
            Ok(cfg) => match self.with_parent_upstreams(cfg).await {
                Ok(cfg) => self.apply(cfg),
                Err(e) => Err(e),
            },
            Err(e) => Err(e.to_string()),
        };
        match &result {
            Ok(_) => self.metrics.reloads.with_label_values(&["success"]).inc(),
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                tracing::error!(config = %path.display(), error = %e, "configuration reload refused; the running configuration stays");
            }
        }
        for certs in &self.certs {
            let _ = certs.reload("reload");
        }
        if result.is_ok() {
            // A lower limit is met now rather than at the next scheduled pass.
            let store = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || store.sweep()).await;
        }
        self.notifier.ready("serving");
        result
    }

    /// For a fleet node, `new` with its parent's upstreams, asked again (or saved at the last
    /// good answer) under the running `[fleet]` table: a changed table needs a restart.
    async fn with_parent_upstreams(&self, mut new: Config) -> Result<Config, String> {
        let (fleet, storage) = {
            let current = self.current.lock().unwrap();
            (current.fleet.clone(), current.storage.path.clone())
        };
        if let Some(fleet) = fleet.filter(|f| f.is_node()) {
            new.upstreams = crate::fleet::node::upstreams(&fleet, &storage)
                .await
                .map_err(|e| format!("[fleet] {e}"))?;
        }
        Ok(new)
    }

    /// Applies a validated configuration: all or nothing.
    pub fn apply(&self, new: Config) -> Result<Changes, String> {
        let mut current = self.current.lock().unwrap();
        let mut changes = Changes::default();

        // Build first: a client that cannot be built refuses the whole reload.
        let old_set = self.mirror.upstreams();
        let manifests = self.mirror.manifests();
        let mut next = Vec::new();
        for u in &new.upstreams {
            let slot = manifests.upstream_slot(&u.name.to_ascii_lowercase());
            let kept = old_set.get(slot).map(|s| &s.upstream);
            let up = match kept {
                Some(old) if old.config() == u => old.clone(),
                _ => {
                    let up = Upstream::new(u, self.upstream_metrics.clone())
                        .map_err(|e| format!("upstream {}: {e}", u.name))?;
                    match kept {
                        Some(_) => changes.changed.push(u.name.clone()),
                        None => changes.added.push(u.name.clone()),
                    }
                    Arc::new(up)
                }
            };
            next.push((slot, up));
        }
        let kept_slots: Vec<usize> = next.iter().map(|(s, _)| *s).collect();
        changes.removed = old_set
            .iter()
            .filter(|(s, _)| !kept_slots.contains(s))
            .map(|(_, u)| u.name().to_owned())
            .collect();
        let level_changes = new.log.level != current.log.level;
        if level_changes && self.log_level.is_none() {
            return Err("log.level cannot change: the log level is not reloadable here".into());
        }

        // Commit. The policy first: a slot the new set adds is refused until its policy is in.
        if let (Some(access), Some(auth)) = (&self.access, &current.auth) {
            let mut auth = auth.clone();
            if let Some(new_auth) = &new.auth {
                auth.anonymous_upstreams = new_auth.anonymous_upstreams.clone();
            }
            access.set_policy(Settings::with_slots(
                &auth,
                next.iter().map(|(slot, u)| (*slot, u.config())),
            ));
        }
        if current.upstreams != new.upstreams {
            self.mirror.set_upstreams(UpstreamSet::new(next));
        }
        if current.policies != new.policies {
            self.mirror
                .set_policies(crate::policy::Policies::new(&new.policies));
            changes.policies = true;
        }
        let limits = Limits::from_config(&new.storage);
        let old_limits = Limits::from_config(&current.storage);
        if limits != old_limits {
            self.store.index().set_limits(limits);
            changes.storage_limits = true;
        }
        if level_changes && let Some(set) = &self.log_level {
            match set(&new.log.level) {
                Ok(()) => changes.log_level = true,
                Err(e) => {
                    tracing::warn!(level = %new.log.level, error = %e, "log level not changed")
                }
            }
        }
        changes.need_restart = restart_only(&current, &new);
        let mut merged = new;
        keep_restart_only(&current, &mut merged);
        *current = merged;
        drop(current);

        if !changes.need_restart.is_empty() {
            tracing::warn!(settings = %changes.need_restart.join(", "), "changed in the file but need a restart to take effect; running with the old values");
        }
        tracing::info!(
            added = %changes.added.join(","),
            removed = %changes.removed.join(","),
            changed = %changes.changed.join(","),
            storage_limits = changes.storage_limits,
            log_level = changes.log_level,
            policies = changes.policies,
            "configuration reloaded"
        );
        Ok(changes)
    }
}

/// Which restart-only settings differ.
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.server, &new.server);
    let mut v = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            v.push(name);
        }
    };
    check("server.listen", o.listen != n.listen);
    check(
        "server.tls_cert/tls_key",
        o.tls_cert != n.tls_cert || o.tls_key != n.tls_key,
    );
    check(
        "server.header_read_timeout",
        o.header_read_timeout != n.header_read_timeout,
    );
    check("server.max_headers", o.max_headers != n.max_headers);
    check(
        "server.shutdown_grace",
        o.shutdown_grace != n.shutdown_grace,
    );
    check("server.idle_timeout", o.idle_timeout != n.idle_timeout);
    let (om, nm) = (&old.metrics, &new.metrics);
    check(
        "metrics",
        om.listen != nm.listen
            || om.enabled != nm.enabled
            || om.tls_cert != nm.tls_cert
            || om.tls_key != nm.tls_key,
    );
    check("storage.path", old.storage.path != new.storage.path);
    check("storage.s3", old.storage.s3 != new.storage.s3);
    check(
        "admin",
        old.admin.enabled != new.admin.enabled
            || old.admin.token_file != new.admin.token_file
            || old.admin.token_env != new.admin.token_env
            || old.admin.socket != new.admin.socket
            || old.admin.token != new.admin.token,
    );
    check("log.format", old.log.format != new.log.format);
    check("cluster", old.cluster != new.cluster);
    check("fleet", old.fleet != new.fleet);
    check(
        "auth",
        old.auth.is_some() != new.auth.is_some()
            || old
                .auth
                .as_ref()
                .map(|a| (&a.htpasswd, a.check_concurrency))
                != new
                    .auth
                    .as_ref()
                    .map(|a| (&a.htpasswd, a.check_concurrency)),
    );
    v
}

/// Puts the running values of restart-only settings back into `new`.
fn keep_restart_only(old: &Config, new: &mut Config) {
    new.server = old.server.clone();
    new.metrics = old.metrics.clone();
    new.storage.path = old.storage.path.clone();
    new.storage.s3 = old.storage.s3.clone();
    new.admin = old.admin.clone();
    new.log.format = old.log.format;
    new.cluster = old.cluster.clone();
    new.fleet = old.fleet.clone();
    match (&old.auth, &mut new.auth) {
        (Some(o), Some(n)) => {
            n.htpasswd = o.htpasswd.clone();
            n.check_concurrency = o.check_concurrency;
        }
        (o, n) => *n = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_settings_are_named() {
        let base = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let old = Config::parse(base, "old").unwrap();
        let new = Config::parse(
            &format!("[server]\nlisten = \"127.0.0.1:5001\"\n[storage]\npath = \"/elsewhere\"\nmax_size = \"1GiB\"\n[log]\nformat = \"json\"\n{base}"),
            "new",
        )
        .unwrap();
        assert_eq!(
            restart_only(&old, &new),
            vec!["server.listen", "storage.path", "log.format"]
        );
        let mut merged = new.clone();
        keep_restart_only(&old, &mut merged);
        assert!(restart_only(&old, &merged).is_empty());
        // The live part stays new.
        assert_eq!(merged.storage.max_size, new.storage.max_size);
        // The keys of the admin socket, the metrics listener's TLS and the idle timeout.
        let mut new = old.clone();
        new.server.idle_timeout = std::time::Duration::from_secs(1);
        new.metrics.tls_cert = Some("/x.crt".into());
        new.admin.socket = Some("/run/berth/admin.sock".into());
        assert_eq!(
            restart_only(&old, &new),
            vec!["server.idle_timeout", "metrics", "admin"]
        );
    }

    #[test]
    fn the_cluster_needs_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
        let base = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let table = |peers: &str| {
            format!(
                "[cluster]\nself = \"http://a:5000\"\npeers = [{peers}]\nsecret_file = {:?}\n{base}",
                secret.display().to_string()
            )
        };
        let old = Config::parse(&table("\"http://a:5000\""), "old").unwrap();
        for new in [
            Config::parse(&table("\"http://a:5000\", \"http://b:5000\""), "new").unwrap(),
            Config::parse(base, "new").unwrap(),
        ] {
            assert_eq!(restart_only(&old, &new), vec!["cluster"]);
            let mut merged = new.clone();
            keep_restart_only(&old, &mut merged);
            assert_eq!(merged.cluster, old.cluster);
        }
        let same = Config::parse(&table("\"http://a:5000\""), "same").unwrap();
        assert!(restart_only(&old, &same).is_empty());
    }

    /// `[fleet]` (the parent's side here: its secret) needs a restart; its running table stays.
    #[test]
    fn the_fleet_needs_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        std::fs::write(&one, "0123456789abcdef0123456789abcdef").unwrap();
        std::fs::write(&two, "fedcba9876543210fedcba9876543210").unwrap();
        let base = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let table = |secret: &std::path::Path| {
            format!(
                "[fleet]\nsecret_file = {:?}\n{base}",
                secret.display().to_string()
            )
        };
        let old = Config::parse(&table(&one), "old").unwrap();
        for new in [
            Config::parse(&table(&two), "new").unwrap(),
            Config::parse(base, "new").unwrap(),
        ] {
            assert_eq!(restart_only(&old, &new), vec!["fleet"]);
            let mut merged = new.clone();
            keep_restart_only(&old, &mut merged);
            assert_eq!(merged.fleet, old.fleet);
        }
        let same = Config::parse(&table(&one), "same").unwrap();
        assert!(restart_only(&old, &same).is_empty());
    }

    #[test]
    fn the_bucket_tier_needs_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let base = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let table = |bucket: &str| {
            format!(
                "[storage.s3]\nbucket = \"{bucket}\"\naccess_key_id = \"k\"\nsecret_access_key_file = \"{}\"\n{base}",
                secret.display()
            )
        };
        let old = Config::parse(&table("one"), "old").unwrap();
        for new in [
            Config::parse(&table("two"), "new").unwrap(),
            Config::parse(base, "new").unwrap(),
        ] {
            assert_eq!(restart_only(&old, &new), vec!["storage.s3"]);
            let mut merged = new.clone();
            keep_restart_only(&old, &mut merged);
            assert_eq!(merged.storage.s3, old.storage.s3);
        }
        assert!(restart_only(&old, &Config::parse(&table("one"), "same").unwrap()).is_empty());
    }
}
