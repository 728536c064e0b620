//! Configuration: the TOML file as a whole, how it is loaded, and the order its checks run in.
//!
//! Only the top (`main`, `server`, `reload`, `admin::cli`) reads the whole [`Config`]; every other
//! module is handed its own small piece (an [`UpstreamConfig`], a storage path). A bad file fails
//! here, before any port is bound, with the file, the key and the reason (a file that cannot be
//! read: its path and why). Secrets are read once at load time and carried in [`Secret`], whose
//! `Debug` and `Serialize` never show them.
//!
//! One file per section, each holding its type, its defaults and its own checks: `server`,
//! `metrics`, `storage` (with `[storage.s3]`), `upstreams` (`[[upstream]]`), `auth`, `cluster`,
//! `fleet`, `admin`, `log`, `policy` (`[[policy]]`, its keys and its Sigstore `trusted_root` read
//! and parsed at load, by `keys` and `trusted_root`). `value` holds what several share: durations,
//! sizes and percentages as the file writes them, [`Secret`], and the checks of a registry URL, a
//! CA bundle and a TLS pair. This file holds [`Config`], [`Config::load`] and [`Config::parse`],
//! the order the checks run in (which is the order errors are reported in), the checks that span
//! sections, and [`Config::warnings`]. Every section type is re-exported here: callers name
//! `crate::config::UpstreamConfig`, never a section file.
//!
//! Rule of dependency: a leaf of the crate (no `crate::` import). Inside it, this file uses the
//! section files; they use `value` (and `auth` uses `upstreams`, the names it refers to); none of
//! them uses this file (and `policy` uses `keys` and `trusted_root`, which uses `keys`).

use std::path::Path;

use serde::{Deserialize, Serialize};

mod admin;
mod auth;
mod cluster;
mod fleet;
mod keys;
mod log;
mod metrics;
mod policy;
mod server;
mod storage;
mod trusted_root;
mod upstreams;
mod value;

pub use admin::{AdminConfig, MIN_ADMIN_TOKEN_BYTES};
pub use auth::AuthConfig;
pub use cluster::{ClusterConfig, MIN_CLUSTER_SECRET_BYTES};
pub use fleet::{FleetConfig, MIN_FLEET_SECRET_BYTES, PARENT_TIMEOUT};
pub use keys::{KeyAlgorithm, PublicKeyConfig, parse_public_key, parse_spki};
pub use log::{LogConfig, LogFormat};
pub use metrics::MetricsConfig;
pub use policy::{IdentityConfig, Matcher, PolicyConfig, PolicyMode};
pub use server::ServerConfig;
pub use storage::{MAX_READ_STREAMS, S3Config, S3Credentials, StorageConfig};
#[cfg(test)]
pub(crate) use trusted_root::tests::root_json as trusted_root_for_tests;
pub use trusted_root::{
    CertificateAuthority, LogKey, TrustedRoot, Validity, load as load_trusted_root,
    parse as parse_trusted_root,
};
pub use upstreams::UpstreamConfig;
pub use value::Secret;

use value::{check_tls_files, check_tls_pair};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    /// The admin API on the metrics listener (`berth cache ...` talks to it). Off by default.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Log level and line format.
    #[serde(default)]
    pub log: LogConfig,
    /// Client login (`access`). Without it, anyone who reaches the listener may pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Replicas that share the work of filling blobs (`cluster`). Absent: a single berth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// A berth on every node in front of a central one (`fleet`): with `parent`, this berth is a
    /// node (its upstreams are its parent's); without, the parent. Absent: neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetConfig>,
    /// The registries berth mirrors; the only hosts it ever connects to.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// Signature policies (`policy`): what must be signed, by which keys. None: nothing is
    /// checked.
    #[serde(default, rename = "policy", skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyConfig>,
}

/// A configuration problem: the file, and which key and why (or that the file cannot be read).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file itself cannot be read (missing, a directory, no permission): no key to name.
    #[error("cannot read {file}: {error}")]
    Unreadable { file: String, error: std::io::Error },
    /// The text does not parse (`key` is where: `line L, column C`), or a key fails its check.
    #[error("{file}: {key}: {reason}")]
    Invalid {
        file: String,
        key: String,
        reason: String,
    },
}

/// The configuration berth runs on without `--config`.
pub const EMBEDDED_DEFAULT: &str = r#"
[server]
listen = "127.0.0.1:5000"

[metrics]
listen = "127.0.0.1:9090"

[storage]
path = "./berth-data"

[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
default = true
aliases = ["registry-1.docker.io", "index.docker.io"]
auth_realms = ["https://auth.docker.io/token"]
tag_ttl = "30s"
"#;

impl Config {
    /// The embedded default: local disk cache, Docker Hub as the default upstream.
    pub fn embedded_default() -> Config {
        Config::parse(EMBEDDED_DEFAULT, "<embedded default>")
            .expect("the embedded default config is valid")
    }

    /// Reads, parses and validates a config file (and reads the secrets it names).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Unreadable {
            file: file.clone(),
            error,
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            file: file.to_owned(),
            key: toml_error_place(text, &e),
            reason: e.message().to_owned(),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Every check, in the order errors are reported in: each section's own, and those that span
    /// sections. Reads the secrets the file names.
    fn validate(&mut self, file: &str) -> Result<(), ConfigError> {
        let err = |(key, reason): (String, String)| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            reason,
        };
        let tls = [
            ("server", &self.server.tls_cert, &self.server.tls_key),
            ("metrics", &self.metrics.tls_cert, &self.metrics.tls_key),
        ];
        for (table, cert, key) in tls {
            check_tls_pair(table, cert.as_deref(), key.as_deref()).map_err(err)?;
        }
        self.storage
            .validate(|v| std::env::var(v).ok())
            .map_err(err)?;
        let tls = [
            ("server", &self.server.tls_cert, &self.server.tls_key),
            ("metrics", &self.metrics.tls_cert, &self.metrics.tls_key),
        ];
        for (table, cert, key) in tls {
            check_tls_files(table, cert.as_deref(), key.as_deref()).map_err(err)?;
        }
        self.log.validate().map_err(err)?;
        self.server.validate().map_err(err)?;
        self.admin.validate().map_err(err)?;
        if self.admin.enabled && self.admin.socket.is_none() && !self.metrics.enabled {
            return Err(err((
                "admin.enabled".into(),
                "the admin API is served on the metrics listener: set [metrics] enabled = true"
                    .into(),
            )));
        }
        if let Some(f) = &mut self.fleet {
            f.validate().map_err(err)?;
        }
        match self.fleet.as_ref().is_some_and(FleetConfig::is_node) {
            // Filled from the parent's list at start (`fleet`), then checked by `check_upstreams`.
            true if !self.upstreams.is_empty() => {
                return Err(err((
                    "upstream".into(),
                    "a fleet node's upstreams come from its parent (fleet.parent): remove the [[upstream]] tables".into(),
                )));
            }
            true => {}
            false => upstreams::check_set(&self.upstreams).map_err(err)?,
        }
        auth::validate(self.auth.as_ref(), &self.upstreams).map_err(err)?;
        if let Some(c) = &mut self.cluster {
            c.validate().map_err(err)?;
        }
        upstreams::validate(&mut self.upstreams).map_err(err)?;
        let names: Vec<String> = self.upstreams.iter().map(|u| u.name.clone()).collect();
        policy::validate(&mut self.policies, &names).map_err(err)
    }

    /// What is allowed but probably a mistake, one sentence each (logged at start, printed by
    /// `berth check-config`).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let m = &self.metrics;
        if self.admin.enabled
            && self.admin.socket.is_none()
            && m.enabled
            && m.tls_cert.is_none()
            && !m.listen.ip().is_loopback()
        {
            w.push(format!(
                "the admin API is served on {} over plain HTTP: its bearer token crosses the network in clear text (set [metrics] tls_cert/tls_key, or [admin] socket)",
                m.listen
            ));
        }
        // Every node holds the fleet's secret; the cluster's admits peer requests (blobs through
        // any upstream without a client login, the forwarded tracker calls): one secret for both
        // makes every node a replica to the others.
        let cluster = self.cluster.as_ref().and_then(|c| c.secret.as_ref());
        let fleet = self.fleet.as_ref().and_then(|f| f.secret.as_ref());
        if let (Some(c), Some(f)) = (cluster, fleet)
            && c.expose() == f.expose()
        {
            w.push(
                "[cluster] and [fleet] share one secret: every fleet node holds it, so any node could make the replicas' peer requests (blobs without a client login); give the cluster a secret of its own".into(),
            );
        }
        w
    }

    /// The effective configuration as TOML, secrets redacted (for `berth check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// The checks of an upstream set made elsewhere than in the file (a fleet node's, from its
/// parent's list): the set's and each upstream's, as `[[upstream]]` tables get them, passwords
/// read. On error, the key (`upstream[i].<key>`) and the reason.
pub fn check_upstreams(upstreams: &mut [UpstreamConfig]) -> Result<(), (String, String)> {
    upstreams::check_set(upstreams)?;
    upstreams::validate(upstreams)
}

/// Where in the file a TOML error is (`line L, column C`); toml's message names the key.
fn toml_error_place(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}")
        }
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn embedded_default_is_docker_hub() {
        let c = Config::embedded_default();
        assert_eq!(c.server.listen, ServerConfig::default().listen);
        assert_eq!(c.metrics.listen, MetricsConfig::default().listen);
        assert_eq!(c.storage.path, std::path::PathBuf::from("./berth-data"));
        let u = &c.upstreams[0];
        assert!(u.default && u.uses_library_prefix());
        assert_eq!(u.url.as_str(), "https://registry-1.docker.io/");
        assert_eq!(u.tag_ttl, Duration::from_secs(30));
        assert_eq!(u.retries, 2);
        assert_eq!(u.resume_attempts, 3);
        assert_eq!(u.retry_backoff, Duration::from_millis(200));
        assert_eq!(u.retry_backoff_max, Duration::from_secs(5));
    }

    #[test]
    fn the_example_file_is_valid() {
        // Keeps config.example.toml honest: every key it shows must parse.
        // SAFETY-free: set the variable the example's Aliyun upstream reads.
        let text = include_str!("../../config.example.toml");
        let text = text.replace(
            "password_file = \"/etc/berth/aliyun.password\"",
            "password_env = \"PATH\"",
        );
        let c = Config::parse(&text, "config.example.toml").unwrap();
        assert!(c.upstreams.len() >= 5);
    }

    /// A file that cannot be read is named, with the reason; there is no key to name (it once
    /// said `-` where the key goes).
    #[test]
    fn an_unreadable_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nonexistent.toml");
        let e = Config::load(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
        assert!(!e.contains(": -:"), "{e}");
        let e = Config::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read {}: ", dir.path().display())),
            "a directory: {e}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e =
            Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlistn = 1\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        assert!(e.to_string().starts_with("f.toml: "), "{e}");
    }

    #[test]
    fn metrics_tls_admin_socket_and_idle_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
        let base = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let admin = format!("[admin]\nenabled = true\ntoken_file = {:?}\n", token);
        let cases = [
            (
                format!("[metrics]\ntls_cert = \"/x\"\n{base}"),
                "metrics.tls_key: tls_cert is set, tls_key is missing",
            ),
            (
                format!("[metrics]\ntls_key = \"/x\"\n{base}"),
                "metrics.tls_cert: tls_key is set, tls_cert is missing",
            ),
            (
                format!(
                    "[metrics]\ntls_cert = \"/surely/not/here.crt\"\ntls_key = \"/surely/not/here.key\"\n{base}"
                ),
                "metrics.tls_cert: cannot read",
            ),
            (
                format!("{admin}socket = \"/surely/not/here/admin.sock\"\n{base}"),
                "admin.socket: /surely/not/here/admin.sock: the directory it goes in does not exist",
            ),
            (
                format!("[server]\nidle_timeout = \"soon\"\n{base}"),
                "line 2",
            ),
        ];
        for (text, want) in cases {
            let e = Config::parse(&text, "f.toml").unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }

        // With the API off, its socket is not looked at (as its token is not read).
        Config::parse(
            &format!("[admin]\nsocket = \"/surely/not/here/admin.sock\"\n{base}"),
            "f",
        )
        .unwrap();
        let plain = Config::parse(base, "f").unwrap();
        assert_eq!(plain.server.idle_timeout, Duration::from_secs(300));
        let off = Config::parse(&format!("[server]\nidle_timeout = \"0s\"\n{base}"), "f").unwrap();
        assert!(off.server.idle_timeout.is_zero());
        let sock = dir.path().join("admin.sock");
        let c = Config::parse(
            &format!("[metrics]\nenabled = false\n{admin}socket = {sock:?}\n{base}"),
            "f",
        )
        .unwrap();
        assert_eq!(c.admin.socket.as_deref(), Some(sock.as_path()));

        // The admin token in clear text over a network: a warning, not an error.
        let exposed = Config::parse(
            &format!("[metrics]\nlisten = \"0.0.0.0:9090\"\n{admin}{base}"),
            "f",
        )
        .unwrap();
        let w = exposed.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("0.0.0.0:9090") && w[0].contains("plain HTTP"),
            "{w:?}"
        );
        for quiet in [
            format!("{admin}{base}"),
            format!("[metrics]\nlisten = \"0.0.0.0:9090\"\n{admin}socket = {sock:?}\n{base}"),
            format!("[metrics]\nlisten = \"0.0.0.0:9090\"\n{base}"),
            // Only the files' presence is checked at load: any file stands in for a pair here.
            format!(
                "[metrics]\nlisten = \"0.0.0.0:9090\"\ntls_cert = {token:?}\ntls_key = {token:?}\n{admin}{base}"
            ),
        ] {
            let c = Config::parse(&quiet, "f").unwrap();
            assert!(c.warnings().is_empty(), "{quiet}: {:?}", c.warnings());
        }
    }

    /// One secret for `[cluster]` and `[fleet]`: a warning (nodes could speak as replicas);
    /// two: none.
    #[test]
    fn a_secret_shared_by_cluster_and_fleet_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "0123456789abcdef0123456789abcdef").unwrap();
        std::fs::write(&b, "fedcba9876543210fedcba9876543210").unwrap();
        let cfg = |cluster: &std::path::Path, fleet: &std::path::Path| {
            let text = format!(
                "[cluster]\nself = \"http://a:5000\"\npeers = [\"http://a:5000\"]\nsecret_file = {cluster:?}\n\
                 [fleet]\nsecret_file = {fleet:?}\n\
                 [[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n"
            );
            Config::parse(&text, "f").unwrap().warnings()
        };
        let w = cfg(&a, &a);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("share one secret"), "{w:?}");
        assert!(
            !w[0].contains("0123456789abcdef"),
            "the secret is not shown"
        );
        assert!(cfg(&a, &b).is_empty());
    }

    #[test]
    fn secrets_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let text = format!(
            "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\nusername = \"me\"\npassword_file = \"{}\"\n",
            pw.display()
        );
        let c = Config::parse(&text, "f.toml").unwrap();
        assert_eq!(c.upstreams[0].credentials().unwrap().1.expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.to_toml().contains("hunter2"));
        assert!(c.to_toml().contains("<redacted>"));
    }
}
