//! The parent's upstream list: what a node needs to route requests as the parent does (names,
//! aliases, the default, the library rule) and to cache tags as long (the tag TTL), and nothing
//! that picks an address: the node's upstreams all point at `[fleet] parent`, each connecting
//! within `[fleet] parent_timeout` (the rest of their settings are a table's defaults).
//!
//! ```json
//! {"upstreams": [{"name": "docker.io", "aliases": ["registry-1.docker.io"], "default": true,
//!   "library_prefix": true, "tag_ttl_ms": 30000}]}
//! ```
//!
//! Parsed strictly on the node: a size limit, an entry limit, unknown fields refused (a parent
//! newer than its nodes must not be half understood), then every upstream made from it passes
//! the checks a `[[upstream]]` table gets (`config::check_upstreams`: host names, one default, no
//! name twice).
//!
//! Rule of dependency: uses `config` only (serde, `UpstreamConfig`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{FleetConfig, UpstreamConfig, check_upstreams};

/// Largest listing body a node reads.
pub const MAX_LISTING_BYTES: usize = 256 * 1024;
/// Most upstreams in a listing.
pub const MAX_UPSTREAMS: usize = 256;

/// The parent's upstreams, in its config order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    pub upstreams: Vec<Entry>,
}

/// One of the parent's upstreams, as a node routes to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Its name: the `ns` the node sends, and the name the node's own clients may use.
    pub name: String,
    pub aliases: Vec<String>,
    /// It serves requests that name no registry.
    pub default: bool,
    /// One-part names get `library/` in front (decided on the parent, so both name the same).
    pub library_prefix: bool,
    /// How long the parent trusts a tag answer; the node trusts its own as long.
    pub tag_ttl_ms: u64,
}

impl Listing {
    /// The listing of a running upstream set (the parent's side).
    pub fn of<'a>(upstreams: impl IntoIterator<Item = &'a UpstreamConfig>) -> Listing {
        Listing {
            upstreams: upstreams
                .into_iter()
                .map(|u| Entry {
                    name: u.name.clone(),
                    aliases: u.aliases.clone(),
                    default: u.default,
                    library_prefix: u.uses_library_prefix(),
                    tag_ttl_ms: u64::try_from(u.tag_ttl.as_millis()).unwrap_or(u64::MAX),
                })
                .collect(),
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a listing is plain data")
    }

    /// Reads a listing body (the node's side): the limits, then the shape.
    pub fn parse(body: &[u8]) -> Result<Listing, String> {
        if body.len() > MAX_LISTING_BYTES {
            return Err(format!(
                "the upstream list has {} bytes, more than {MAX_LISTING_BYTES}",
                body.len()
            ));
        }
        let l: Listing =
            serde_json::from_slice(body).map_err(|e| format!("the upstream list: {e}"))?;
        if l.upstreams.is_empty() || l.upstreams.len() > MAX_UPSTREAMS {
            return Err(format!(
                "the upstream list has {} upstreams; between 1 and {MAX_UPSTREAMS} are expected",
                l.upstreams.len()
            ));
        }
        Ok(l)
    }

    /// The node's upstreams: one per entry, at `[fleet] parent` with `?ns=<name>`, the node's
    /// login and CA bundle, checked as `[[upstream]]` tables are (passwords read).
    pub fn node_upstreams(&self, fleet: &FleetConfig) -> Result<Vec<UpstreamConfig>, String> {
        let parent = fleet.parent.as_ref().ok_or("not a node: no fleet.parent")?;
        let mut out = Vec::with_capacity(self.upstreams.len());
        for e in &self.upstreams {
            // Through serde, so every other setting takes the default a table without it gets.
            let mut u: UpstreamConfig =
                serde_json::from_value(serde_json::json!({"name": e.name, "url": parent}))
                    .map_err(|err| format!("the upstream list: {:?}: {err}", e.name))?;
            u.aliases = e.aliases.clone();
            u.default = e.default;
            u.library_prefix = Some(e.library_prefix);
            u.tag_ttl = Duration::from_millis(e.tag_ttl_ms);
            u.username = fleet.username.clone();
            u.password_file = fleet.password_file.clone();
            u.ca_file = fleet.ca_file.clone();
            u.namespace = Some(e.name.clone());
            // A live parent connects in milliseconds: a black-holed one costs each of the node's
            // registry requests (a stale tag's revalidation, a blob no node holds) its tries of
            // `parent_timeout`, not of the default 10 s. The answer's own bound stays the
            // upstream's (30 s): a manifest the parent fetches cold from a slow upstream is
            // still waited for, and served, rather than answered stale or 503.
            u.connect_timeout = fleet.parent_timeout();
            out.push(u);
        }
        check_upstreams(&mut out).map_err(|(k, r)| format!("the upstream list: {k}: {r}"))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parent_config() -> Config {
        Config::parse(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n\
             default = true\naliases = [\"registry-1.docker.io\"]\ntag_ttl = \"45s\"\n\
             [[upstream]]\nname = \"quay.io\"\nurl = \"https://quay.io\"\noffline = true\n\
             username = \"u\"\npassword_env = \"PATH\"\n",
            "parent.toml",
        )
        .unwrap()
    }

    fn node(dir: &std::path::Path, login: bool) -> FleetConfig {
        let secret = dir.join("s");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "node-pw\n").unwrap();
        let mut text = format!(
            "parent = \"http://parent:5000\"\nself = \"http://10.0.0.7:5000\"\npeers_dns = \"nodes\"\nsecret_file = {:?}\n",
            secret.display().to_string()
        );
        if login {
            text.push_str(&format!(
                "username = \"node\"\npassword_file = {:?}\n",
                pw.display().to_string()
            ));
        }
        let mut f: FleetConfig = toml::from_str(&text).unwrap();
        f.validate().unwrap();
        f
    }

    /// The parent lists names, aliases, the default, the library rule and the TTL, and never
    /// its upstream's address or credentials; the node makes upstreams at the parent with `ns`.
    #[test]
    fn a_listing_round_trips_into_node_upstreams() {
        let parent = parent_config();
        let listing = Listing::of(&parent.upstreams);
        let json = String::from_utf8(listing.to_json()).unwrap();
        assert!(!json.contains("https://"), "no address: {json}");
        assert!(
            !json.contains("password") && !json.contains("\"u\""),
            "{json}"
        );
        let back = Listing::parse(json.as_bytes()).unwrap();
        assert_eq!(back, listing);
        let e = &back.upstreams[0];
        assert!(e.default && e.library_prefix);
        assert_eq!(e.tag_ttl_ms, 45_000);
        assert!(!back.upstreams[1].library_prefix);

        let dir = tempfile::tempdir().unwrap();
        let ups = back.node_upstreams(&node(dir.path(), true)).unwrap();
        assert_eq!(ups.len(), 2);
        let d = &ups[0];
        assert_eq!(d.url.as_str(), "http://parent:5000/");
        assert_eq!(d.namespace.as_deref(), Some("docker.io"));
        assert!(d.default && d.uses_library_prefix());
        assert_eq!(d.aliases, ["registry-1.docker.io"]);
        assert_eq!(d.tag_ttl, Duration::from_secs(45));
        assert_eq!(d.credentials().unwrap().0, "node");
        assert_eq!(d.credentials().unwrap().1.expose(), "node-pw");
        let q = &ups[1];
        assert_eq!(q.namespace.as_deref(), Some("quay.io"));
        assert!(
            !q.offline,
            "the node asks the parent, which answers from its cache"
        );
        assert_eq!(q.retries, 2, "defaults as for a table without the key");
        assert_eq!(
            (q.connect_timeout, q.response_timeout),
            (crate::config::PARENT_TIMEOUT, Duration::from_secs(30)),
            "the connect within fleet.parent_timeout, the answer as any upstream's"
        );

        let anonymous = back.node_upstreams(&node(dir.path(), false)).unwrap();
        assert!(anonymous[0].credentials().is_none());
    }

    /// What a node refuses: too big, empty, unknown fields, a name that is no host, two defaults,
    /// a name twice.
    #[test]
    fn a_bad_listing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = node(dir.path(), false);
        let entry = |name: &str, default: bool| {
            format!(
                r#"{{"name":"{name}","aliases":[],"default":{default},"library_prefix":false,"tag_ttl_ms":1000}}"#
            )
        };
        let big = vec![b' '; MAX_LISTING_BYTES + 1];
        assert!(Listing::parse(&big).unwrap_err().contains("more than"));
        for (body, want) in [
            (r#"{"upstreams":[]}"#.to_owned(), "between 1 and 256"),
            ("not json".to_owned(), "the upstream list: expected"),
            (
                format!(r#"{{"upstreams":[{}],"tracker":"x"}}"#, entry("a.io", true)),
                "unknown field `tracker`",
            ),
            (
                r#"{"upstreams":[{"name":"a.io","url":"http://evil","aliases":[],"default":true,"library_prefix":false,"tag_ttl_ms":0}]}"#.to_owned(),
                "unknown field `url`",
            ),
            (
                r#"{"upstreams":[{"name":"a.io"}]}"#.to_owned(),
                "missing field",
            ),
        ] {
            let e = Listing::parse(body.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let many = format!(
            r#"{{"upstreams":[{}]}}"#,
            (0..=MAX_UPSTREAMS)
                .map(|i| entry(&format!("r{i}.io"), false))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(Listing::parse(many.as_bytes()).is_err());
        for (entries, want) in [
            (
                vec![entry("a/b", true)],
                "upstream[0].name: \"a/b\" is not a registry host name",
            ),
            (
                vec![entry("a.io", true), entry("b.io", true)],
                "upstream.default",
            ),
            (
                vec![entry("a.io", true), entry("A.io", false)],
                "upstream[1].name: \"a.io\" names more than one upstream",
            ),
        ] {
            let body = format!(r#"{{"upstreams":[{}]}}"#, entries.join(","));
            let l = Listing::parse(body.as_bytes()).unwrap();
            let e = l.node_upstreams(&f).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
