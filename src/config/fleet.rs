//! `[fleet]`: a berth on every node in front of a central berth (see `fleet`), its secret and the
//! node's credentials (read at load), its defaults and its checks.
//!
//! One table, two roles: with `parent` this berth is a **node** (its upstreams are its parent's,
//! asked for at start and on reload, so a node's file has no `[[upstream]]`); without it, this
//! berth is the **parent** (the central berth) and `[fleet]` only gives it the secret its nodes
//! prove themselves with. The keys only a node has (`self`, `peers_dns`/`peers`, `username`,
//! `password_file`, `ca_file`, `parent_timeout`) are refused on a parent rather than ignored.
//!
//! Rule of dependency: uses `config::value` only.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use url::Url;

use std::time::Duration;

use super::value::{Secret, check_ca_file, check_registry_url, opt_duration, read_secret};

/// `[fleet]`: node mode (with `parent`) or the parent's side of it (without).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The central berth (one, or replicas behind one name) this node's misses go to, e.g.
    /// `http://berth.berth.svc:5000`. Unset: this berth is the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Url>,
    /// How other nodes reach this one (its registry listener), e.g. `http://10.0.3.7:5000`.
    #[serde(rename = "self", default, skip_serializing_if = "Option::is_none")]
    pub self_url: Option<Url>,
    /// The node set as a DNS name whose A/AAAA records are the nodes (a headless Service), each
    /// reached on the port and scheme of `self`. Or `peers`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers_dns: Option<String>,
    /// The node set as URLs, this node included. Or `peers_dns`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<Url>>,
    /// The fleet's HMAC secret (at least 32 bytes; surrounding white space ignored), the same on
    /// the parent and every node, and another than the `[cluster]` one.
    pub secret_file: PathBuf,
    /// Blobs this node serves to other nodes at once (more wait, or go elsewhere).
    #[serde(default = "default_max_uploads")]
    pub max_uploads: u32,
    /// On the parent: how many nodes it feeds directly per blob while other sources exist, the
    /// heads of a simultaneous pull's chains (so about this many copies leave it per blob). The
    /// ratio of its link to a node's: 1 (the default) never oversubscribes a parent whose link is
    /// no faster than a node's; a parent with a link N times a node's may take N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_slots: Option<u32>,
    /// On a node: how long its fleet calls to the parent (the `HEAD` before a swarm fill, the
    /// tracker's calls, a swarm fill's blob request, the upstream list at start) may take to
    /// connect and to bring the response's head (and its connections to other nodes, and each
    /// of its registry requests to the parent, to connect: `fleet::listing`). Past it the
    /// parent is taken for down for that
    /// pull, whose blob then comes from the holders the directory names (`fill::swarm` says why
    /// a few seconds, and what a slow parent taken for down costs). Unset: [`PARENT_TIMEOUT`].
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_timeout: Option<Duration>,
    /// The node's login at the parent, when the parent has `[auth]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding that login's password (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM bundle trusted for an `https://` parent, on top of the web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The secret, read from `secret_file` at load time.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
}

/// `parent_timeout`'s default.
pub const PARENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The range of `parent_timeout`: below a second a parent answering from a busy disk is taken for
/// down; past five minutes the bound bounds nothing a runtime waits for.
pub const PARENT_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(300));

/// Shortest fleet secret accepted, as for the cluster's.
pub const MIN_FLEET_SECRET_BYTES: usize = 32;
/// Most `max_uploads`: a node's uplink is shared by this many transfers; beyond a few dozen each
/// gets too thin a slice to be worth choosing.
pub const MAX_UPLOADS_LIMIT: u32 = 64;

impl FleetConfig {
    /// Whether this berth is a node (it has a parent).
    pub fn is_node(&self) -> bool {
        self.parent.is_some()
    }

    /// A node's bound on connecting to its parent and on the parent's response head
    /// (`parent_timeout`, or its default).
    pub fn parent_timeout(&self) -> Duration {
        self.parent_timeout.unwrap_or(PARENT_TIMEOUT)
    }

    /// Checks the table and reads the secret (and a node's password). On error, the key under
    /// `[fleet]` and the reason.
    pub fn validate(&mut self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("fleet.{k}");
        let root_url = |u: &Url| -> Result<(), String> {
            check_registry_url(u)?;
            if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
                return Err(format!(
                    "{u}: no path or query (berth answers at the root of its registry listener)"
                ));
            }
            Ok(())
        };
        match &self.parent {
            None => {
                let node_only = [
                    ("self", self.self_url.is_some()),
                    ("peers_dns", self.peers_dns.is_some()),
                    ("peers", self.peers.is_some()),
                    ("username", self.username.is_some()),
                    ("password_file", self.password_file.is_some()),
                    ("ca_file", self.ca_file.is_some()),
                    ("parent_timeout", self.parent_timeout.is_some()),
                ];
                if let Some((k, _)) = node_only.iter().find(|(_, set)| *set) {
                    return Err((
                        key(k),
                        "only a node has it: set fleet.parent too, or remove it (without parent, this berth is the fleet's parent)".into(),
                    ));
                }
            }
            Some(parent) => {
                if self.parent_slots.is_some() {
                    return Err((
                        key("parent_slots"),
                        "only the parent has it (a node's tracker is its parent)".into(),
                    ));
                }
                root_url(parent).map_err(|r| (key("parent"), r))?;
                self.validate_node(parent.clone(), &root_url)?;
            }
        }
        if self
            .parent_slots
            .is_some_and(|n| n == 0 || n > MAX_UPLOADS_LIMIT)
        {
            return Err((
                key("parent_slots"),
                format!("must be between 1 and {MAX_UPLOADS_LIMIT}"),
            ));
        }
        if self.max_uploads == 0 || self.max_uploads > MAX_UPLOADS_LIMIT {
            return Err((
                key("max_uploads"),
                format!("must be between 1 and {MAX_UPLOADS_LIMIT}"),
            ));
        }
        let secret = read_secret(&self.secret_file, MIN_FLEET_SECRET_BYTES)
            .map_err(|r| (key("secret_file"), r))?;
        self.secret = Some(secret);
        Ok(())
    }

    /// A node's own keys: `self`, the node set, the login and the CA bundle.
    fn validate_node(
        &self,
        parent: Url,
        root_url: &dyn Fn(&Url) -> Result<(), String>,
    ) -> Result<(), (String, String)> {
        let key = |k: &str| format!("fleet.{k}");
        let me = self.self_url.as_ref().ok_or_else(|| {
            (
                key("self"),
                "a node needs it: how other nodes reach this one (its registry listener's URL)"
                    .to_owned(),
            )
        })?;
        root_url(me).map_err(|r| (key("self"), r))?;
        let id = |u: &Url| u.origin().ascii_serialization();
        if id(me) == id(&parent) {
            return Err((key("parent"), "a node cannot be its own parent".into()));
        }
        match (&self.peers_dns, &self.peers) {
            (Some(_), Some(_)) => {
                return Err((key("peers"), "set peers_dns or peers, not both".into()));
            }
            (None, None) => {
                return Err((
                    key("peers"),
                    "a node needs peers_dns (a headless Service's name) or peers (every node's URL)"
                        .into(),
                ));
            }
            (Some(name), None) => {
                if !valid_dns_name(name) {
                    return Err((
                        key("peers_dns"),
                        format!(
                            "{name:?} is not a DNS name (no scheme or port: nodes are reached on self's)"
                        ),
                    ));
                }
            }
            (None, Some(peers)) => {
                if peers.is_empty() {
                    return Err((
                        key("peers"),
                        "must list every node, this one included".into(),
                    ));
                }
                let mut seen = HashSet::new();
                for (i, p) in peers.iter().enumerate() {
                    let k = format!("fleet.peers[{i}]");
                    root_url(p).map_err(|r| (k.clone(), r))?;
                    if !seen.insert(id(p)) {
                        return Err((k, format!("{} is listed more than once", id(p))));
                    }
                }
                if !seen.contains(&id(me)) {
                    return Err((
                        key("self"),
                        format!(
                            "{} is not one of fleet.peers (list this node there too)",
                            id(me)
                        ),
                    ));
                }
            }
        }
        match (&self.username, &self.password_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err((
                    key("username"),
                    "username and password_file go together".into(),
                ));
            }
            (Some(_), Some(f)) => {
                std::fs::read_to_string(f).map_err(|e| {
                    (
                        key("password_file"),
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?;
            }
            (None, None) => {}
        }
        if let Some(f) = &self.ca_file {
            check_ca_file(f).map_err(|r| (key("ca_file"), r))?;
        }
        let (low, high) = PARENT_TIMEOUT_RANGE;
        if let Some(t) = self.parent_timeout
            && !(low..=high).contains(&t)
        {
            return Err((
                key("parent_timeout"),
                format!("must be between {low:?} and {high:?}, not {t:?}"),
            ));
        }
        Ok(())
    }
}

/// A DNS name: labels of letters, digits and `-`, joined by dots, 253 bytes at most.
fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

fn default_max_uploads() -> u32 {
    4
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    struct Files {
        _dir: tempfile::TempDir,
        secret: PathBuf,
        short: PathBuf,
        password: PathBuf,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "0123456789abcdef0123456789abcde\n").unwrap();
        let password = dir.path().join("pw");
        std::fs::write(&password, "hunter2\n").unwrap();
        Files {
            _dir: dir,
            secret,
            short,
            password,
        }
    }

    const UP: &str = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
    const NODE: &str =
        "parent = \"http://berth.berth.svc:5000\"\nself = \"http://10.0.3.7:5000\"\n";

    fn table(body: &str, secret: &Path) -> String {
        format!(
            "[fleet]\n{body}secret_file = {:?}\n",
            secret.display().to_string()
        )
    }

    /// A node's table: no `[[upstream]]` (they come from the parent), defaults, the secret read
    /// and never shown.
    #[test]
    fn a_node_table_parses_with_its_defaults() {
        let f = files();
        let text = table(
            &format!("{NODE}peers_dns = \"berth-node.berth.svc\"\n"),
            &f.secret,
        );
        let c = Config::parse(&text, "f.toml").unwrap();
        let fl = c.fleet.as_ref().unwrap();
        assert!(fl.is_node());
        assert_eq!(fl.max_uploads, 4);
        assert_eq!(fl.parent_timeout(), PARENT_TIMEOUT);
        assert_eq!(fl.peers_dns.as_deref(), Some("berth-node.berth.svc"));
        assert_eq!(
            fl.secret.as_ref().unwrap().expose(),
            "0123456789abcdef0123456789abcdef"
        );
        assert!(c.upstreams.is_empty());
        assert!(!c.to_toml().contains("0123456789abcdef"), "{}", c.to_toml());
        assert!(!format!("{c:?}").contains("0123456789abcdef"));

        let with_login = table(
            &format!(
                "{NODE}peers = [\"http://10.0.3.7:5000\", \"http://10.0.3.8:5000\"]\nmax_uploads = 8\nparent_timeout = \"2s\"\nusername = \"node\"\npassword_file = {:?}\n",
                f.password.display().to_string()
            ),
            &f.secret,
        );
        let c = Config::parse(&with_login, "f.toml").unwrap();
        assert!(
            c.to_toml().contains("parent_timeout = \"2s\""),
            "{}",
            c.to_toml()
        );
        let fl = c.fleet.unwrap();
        assert_eq!(fl.parent_timeout(), Duration::from_secs(2));
        assert_eq!(fl.max_uploads, 8);
        assert_eq!(fl.peers.unwrap().len(), 2);
        assert_eq!(fl.username.as_deref(), Some("node"));
    }

    /// The parent's table: the secret only, beside its own `[[upstream]]` tables.
    #[test]
    fn a_parent_table_is_the_secret_only() {
        let f = files();
        let c = Config::parse(&format!("{}{UP}", table("", &f.secret)), "f.toml").unwrap();
        let fl = c.fleet.unwrap();
        assert!(!fl.is_node());
        assert!(fl.secret.is_some());
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(fl.parent_slots, None, "the tracker's default then");
        assert!(Config::parse(UP, "f.toml").unwrap().fleet.is_none());
        let slots = format!("{}{UP}", table("parent_slots = 3\n", &f.secret));
        let fl = Config::parse(&slots, "f.toml").unwrap().fleet.unwrap();
        assert_eq!(fl.parent_slots, Some(3));
    }

    /// `parent_slots` is the parent's, from 1 to MAX_UPLOADS_LIMIT.
    #[test]
    fn parent_slots_are_the_parents_and_bounded() {
        let f = files();
        let dns = "peers_dns = \"nodes.svc\"\n";
        let on_node = table(&format!("{NODE}{dns}parent_slots = 2\n"), &f.secret);
        let e = Config::parse(&on_node, "f.toml").unwrap_err().to_string();
        assert!(
            e.contains("fleet.parent_slots: only the parent has it"),
            "{e}"
        );
        for n in [0, MAX_UPLOADS_LIMIT + 1] {
            let t = format!("{}{UP}", table(&format!("parent_slots = {n}\n"), &f.secret));
            let e = Config::parse(&t, "f.toml").unwrap_err().to_string();
            assert!(
                e.contains("fleet.parent_slots: must be between 1 and"),
                "{e}"
            );
        }
    }

    /// Every check names its key.
    #[test]
    fn every_check_names_its_key() {
        let f = files();
        let dns = "peers_dns = \"nodes.svc\"\n";
        let missing = f.secret.with_file_name("nope");
        let pw = f.password.display().to_string();
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{}{UP}", table(&format!("{NODE}{dns}"), &f.secret)),
                "upstream: a fleet node's upstreams come from its parent",
            ),
            (
                table("self = \"http://10.0.3.7:5000\"\n", &f.secret) + UP,
                "fleet.self: only a node has it",
            ),
            (
                table(dns, &f.secret) + UP,
                "fleet.peers_dns: only a node has it",
            ),
            (
                table("username = \"n\"\n", &f.secret) + UP,
                "fleet.username: only a node has it",
            ),
            (
                table("ca_file = \"/x.pem\"\n", &f.secret) + UP,
                "fleet.ca_file: only a node has it",
            ),
            (
                table(
                    &format!("parent = \"ftp://p:21\"\nself = \"http://a:1\"\n{dns}"),
                    &f.secret,
                ),
                "fleet.parent: ftp://p/: scheme must be http or https",
            ),
            (
                table(
                    &format!("parent = \"http://p:5000/v2\"\nself = \"http://a:1\"\n{dns}"),
                    &f.secret,
                ),
                "fleet.parent: http://p:5000/v2: no path",
            ),
            (
                table(&format!("parent = \"http://p:5000\"\n{dns}"), &f.secret),
                "fleet.self: a node needs it",
            ),
            (
                table(
                    &format!("parent = \"http://p:5000\"\nself = \"http://p:5000/\"\n{dns}"),
                    &f.secret,
                ),
                "fleet.parent: a node cannot be its own parent",
            ),
            (
                table(
                    &format!("parent = \"http://p:5000\"\nself = \"http://a:1?x\"\n{dns}"),
                    &f.secret,
                ),
                "fleet.self: http://a:1/?x: no path or query",
            ),
            (
                table(NODE, &f.secret),
                "fleet.peers: a node needs peers_dns",
            ),
            (
                table(
                    &format!("{NODE}{dns}peers = [\"http://10.0.3.7:5000\"]\n"),
                    &f.secret,
                ),
                "fleet.peers: set peers_dns or peers, not both",
            ),
            (
                table(&format!("{NODE}peers_dns = \"http://nodes\"\n"), &f.secret),
                "fleet.peers_dns: \"http://nodes\" is not a DNS name",
            ),
            (
                table(&format!("{NODE}peers_dns = \"nodes:5000\"\n"), &f.secret),
                "fleet.peers_dns: \"nodes:5000\" is not a DNS name",
            ),
            (
                table(&format!("{NODE}peers = []\n"), &f.secret),
                "fleet.peers: must list every node",
            ),
            (
                table(
                    &format!(
                        "{NODE}peers = [\"http://10.0.3.7:5000\", \"http://10.0.3.7:5000/\"]\n"
                    ),
                    &f.secret,
                ),
                "fleet.peers[1]: http://10.0.3.7:5000 is listed more than once",
            ),
            (
                table(
                    &format!("{NODE}peers = [\"http://10.0.3.7:5000\", \"unix://x\"]\n"),
                    &f.secret,
                ),
                "fleet.peers[1]",
            ),
            (
                table(
                    &format!("{NODE}peers = [\"http://10.0.3.8:5000\"]\n"),
                    &f.secret,
                ),
                "fleet.self: http://10.0.3.7:5000 is not one of fleet.peers",
            ),
            (
                table(&format!("{NODE}{dns}username = \"n\"\n"), &f.secret),
                "fleet.username: username and password_file go together",
            ),
            (
                table(&format!("{NODE}{dns}password_file = {pw:?}\n"), &f.secret),
                "fleet.username: username and password_file go together",
            ),
            (
                table(
                    &format!("{NODE}{dns}username = \"n\"\npassword_file = \"/surely/not/here\"\n"),
                    &f.secret,
                ),
                "fleet.password_file: cannot read /surely/not/here",
            ),
            (
                table(
                    &format!("{NODE}{dns}ca_file = \"/surely/not/here.pem\"\n"),
                    &f.secret,
                ),
                "fleet.ca_file",
            ),
            (
                table("parent_timeout = \"3s\"\n", &f.secret) + UP,
                "fleet.parent_timeout: only a node has it",
            ),
            (
                table(
                    &format!("{NODE}{dns}parent_timeout = \"500ms\"\n"),
                    &f.secret,
                ),
                "fleet.parent_timeout: must be between 1s and 300s, not 500ms",
            ),
            (
                table(
                    &format!("{NODE}{dns}parent_timeout = \"301s\"\n"),
                    &f.secret,
                ),
                "fleet.parent_timeout: must be between 1s and 300s, not 301s",
            ),
            (
                table(&format!("{NODE}{dns}max_uploads = 0\n"), &f.secret),
                "fleet.max_uploads: must be between 1 and 64",
            ),
            (
                table(&format!("{NODE}{dns}max_uploads = 65\n"), &f.secret),
                "fleet.max_uploads: must be between 1 and 64",
            ),
            (
                table(&format!("{NODE}{dns}"), &missing),
                "fleet.secret_file: cannot read",
            ),
            (
                table(&format!("{NODE}{dns}"), &f.short),
                "fleet.secret_file: the secret has 31 bytes; at least 32",
            ),
            (
                table(&format!("{NODE}{dns}tracker = 1\n"), &f.secret),
                "tracker",
            ),
            (format!("[fleet]\n{NODE}{dns}"), "secret_file"),
        ];
        for (text, want) in cases {
            let e = Config::parse(&text, "f.toml").unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn dns_names() {
        for good in [
            "nodes",
            "berth-node.berth.svc",
            "berth-node.berth.svc.",
            "a1.b-2",
        ] {
            assert!(valid_dns_name(good), "{good}");
        }
        let long = format!("{}.x", "a".repeat(64));
        for bad in [
            "", ".", "a..b", "-a.b", "a-.b", "a_b", "a:1", "http://a", &long,
        ] {
            assert!(!valid_dns_name(bad), "{bad}");
        }
    }
}
