//! `[cluster]`: the replicas of one berth, their shared secret (read at load), its defaults and its
//! checks.
//!
//! Rule of dependency: uses `config::value` only.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::value::{Secret, check_ca_file, check_registry_url, duration, read_secret};

/// `[cluster]`: the replicas of one berth (see `cluster`). Each blob has one owner among the
/// live peers; peers prove themselves to each other with the shared secret.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// How the other replicas reach this one: its registry listener's URL, `http://10.0.0.1:5000`
    /// (the peer protocol is served there, under `/_berth/peer/v1/`). One of `peers`.
    #[serde(rename = "self")]
    pub self_url: Url,
    /// Every replica, this one included, by the same URLs each of them gives as `self`: the
    /// owner of a digest is computed from these, so every replica must list the same set.
    pub peers: Vec<Url>,
    /// The shared secret (at least 32 bytes; surrounding white space ignored).
    pub secret_file: PathBuf,
    /// Each other peer's health route is probed this often.
    #[serde(default = "default_health_interval", with = "duration")]
    pub health_interval: Duration,
    /// A probe, or a peer request's connect plus response headers, gets this long.
    #[serde(default = "default_peer_timeout", with = "duration")]
    pub peer_timeout: Duration,
    /// A peer that fails this many probes in a row is marked down (a peer request that cannot
    /// connect marks it down at once); one good probe brings it back.
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// PEM bundle trusted for `https://` peers, on top of the web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The secret, read from `secret_file` at load time.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
}

/// Shortest cluster secret accepted, as for the admin token.
pub const MIN_CLUSTER_SECRET_BYTES: usize = 32;

impl ClusterConfig {
    /// A peer's identity: its origin (`http://10.0.0.1:5000`, the scheme's default port left
    /// out), what ownership is hashed over. Two spellings of one origin are one peer.
    pub fn peer_id(u: &Url) -> String {
        u.origin().ascii_serialization()
    }

    /// Checks the table and reads the secret. On error, the key under `[cluster]` and the reason.
    pub fn validate(&mut self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("cluster.{k}");
        let check = |u: &Url| -> Result<(), String> {
            check_registry_url(u)?;
            if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
                return Err(format!(
                    "{u}: no path or query (the peer protocol lives at the root of the registry listener)"
                ));
            }
            Ok(())
        };
        check(&self.self_url).map_err(|r| (key("self"), r))?;
        if self.peers.is_empty() {
            return Err((
                key("peers"),
                "must list every replica, this one included".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            check(p).map_err(|r| (format!("cluster.peers[{i}]"), r))?;
            if !seen.insert(Self::peer_id(p)) {
                return Err((
                    format!("cluster.peers[{i}]"),
                    format!("{} is listed more than once", Self::peer_id(p)),
                ));
            }
        }
        if !seen.contains(&Self::peer_id(&self.self_url)) {
            return Err((
                key("self"),
                format!(
                    "{} is not one of cluster.peers (list this replica there too)",
                    Self::peer_id(&self.self_url)
                ),
            ));
        }
        for (k, d) in [
            ("health_interval", self.health_interval),
            ("peer_timeout", self.peer_timeout),
        ] {
            if d.is_zero() {
                return Err((key(k), "must be more than 0s".into()));
            }
        }
        if self.down_after == 0 || self.down_after > 100 {
            return Err((key("down_after"), "must be between 1 and 100".into()));
        }
        if let Some(f) = &self.ca_file {
            check_ca_file(f).map_err(|r| (key("ca_file"), r))?;
        }
        let secret = read_secret(&self.secret_file, MIN_CLUSTER_SECRET_BYTES)
            .map_err(|r| (key("secret_file"), r))?;
        self.secret = Some(secret);
        Ok(())
    }
}

fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_peer_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_down_after() -> u32 {
    3
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    /// `[cluster]` with its defaults, the secret read and redacted, and every check naming its key.
    #[test]
    fn cluster_table_parses_and_is_checked() {
        let up = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "0123456789abcdef0123456789abcde\n").unwrap();
        let table = |body: &str, file: &Path| {
            format!(
                "[cluster]\n{body}secret_file = {:?}\n{up}",
                file.display().to_string()
            )
        };
        let three = "self = \"http://10.0.0.1:5000\"\npeers = [\"http://10.0.0.1:5000\", \
                     \"http://10.0.0.2:5000/\", \"https://berth-2.berth:443\"]\n";
        let c = Config::parse(&table(three, &secret), "f.toml").unwrap();
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!(cl.peers.len(), 3);
        assert_eq!(cl.health_interval, Duration::from_secs(2));
        assert_eq!(cl.peer_timeout, Duration::from_secs(2));
        assert_eq!(cl.down_after, 3);
        assert_eq!(
            cl.secret.as_ref().unwrap().expose(),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            ClusterConfig::peer_id(&cl.peers[2]),
            "https://berth-2.berth",
            "the default port is not part of a peer's identity"
        );
        assert!(!c.to_toml().contains("0123456789abcdef"), "{}", c.to_toml());
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        assert!(Config::parse(up, "f.toml").unwrap().cluster.is_none());

        let missing = dir.path().join("nope");
        for (text, want) in [
            (
                table(
                    "self = \"http://10.0.0.9:5000\"\npeers = [\"http://10.0.0.1:5000\"]\n",
                    &secret,
                ),
                "cluster.self: http://10.0.0.9:5000 is not one of cluster.peers",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\", \"http://A:5000/\"]\n",
                    &secret,
                ),
                "cluster.peers[1]: http://a:5000 is listed more than once",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\", \"ftp://b:21\"]\n",
                    &secret,
                ),
                "cluster.peers[1]: ftp://b/: scheme must be http or https",
            ),
            (
                table(
                    "self = \"unix://a\"\npeers = [\"http://a:5000\"]\n",
                    &secret,
                ),
                "cluster.self",
            ),
            (
                table(
                    "self = \"http://a:5000/x\"\npeers = [\"http://a:5000/x\"]\n",
                    &secret,
                ),
                "cluster.self: http://a:5000/x: no path",
            ),
            (
                table("self = \"http://a:5000\"\npeers = []\n", &secret),
                "cluster.peers: must list every replica",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\n",
                    &missing,
                ),
                "cluster.secret_file: cannot read",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\n",
                    &short,
                ),
                "cluster.secret_file: the secret has 31 bytes; at least 32",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\nhealth_interval = \"0s\"\n",
                    &secret,
                ),
                "cluster.health_interval",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\npeer_timeout = \"0s\"\n",
                    &secret,
                ),
                "cluster.peer_timeout",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\ndown_after = 0\n",
                    &secret,
                ),
                "cluster.down_after",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\nca_file = \"/surely/not/here.pem\"\n",
                    &secret,
                ),
                "cluster.ca_file",
            ),
            (
                table(
                    "self = \"http://a:5000\"\npeers = [\"http://a:5000\"]\nmembers = 3\n",
                    &secret,
                ),
                "members",
            ),
            (
                format!("[cluster]\nself = \"http://a:5000\"\npeers = [\"http://a:5000\"]\n{up}"),
                "secret_file",
            ),
        ] {
            let e = Config::parse(&text, "f.toml").unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
    }
}
