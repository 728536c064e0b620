//! An image reference as people write it (`nginx`, `quay.io/coreos/flannel:v0.11.0`,
//! `registry.local:5000/team/app@sha256:...`), parsed with Docker's rules, and the berth paths it
//! maps to (the default upstream, or containerd's `?ns=<host>` for a named registry); the lines
//! of a list file.
//!
//! Rule of dependency: a leaf of `warm`; uses only `oci` (names, tags, digests) and `error` (to
//! read the OCI types' reasons); its tests check the paths against `http::route`, the server's
//! own parser. Everything else in `warm` may use it.

use std::fmt;
use std::str::FromStr;

use crate::oci::{Digest, Reference, RepoName, Tag};

/// Host names that mean Docker Hub; a reference naming one goes to berth's default upstream, the
/// way Docker sends `docker.io` pulls to its `registry-mirrors`.
pub const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "registry-1.docker.io", "index.docker.io"];

/// An image reference as people write it: `nginx`, `nginx:1.25`, `library/nginx@sha256:<hex>`,
/// `quay.io/coreos/flannel:v0.11.0`, `registry.local:5000/team/app:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// The registry host, lowercased; `None` for none written or Docker Hub (berth's default
    /// upstream).
    pub registry: Option<String>,
    /// The repository as written (berth adds `library/` itself where its upstream wants it).
    pub name: RepoName,
    /// The tag (`latest` when none is written) or the digest, which wins when both are written.
    pub reference: Reference,
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an image reference: {reason}")]
pub struct BadRef {
    pub input: String,
    pub reason: String,
}

/// Docker's rule: the first component of a name with more than one is a registry host if it has a
/// `.` or a `:`, or is `localhost`.
fn looks_like_host(s: &str) -> bool {
    s.contains('.') || s.contains(':') || s == "localhost"
}

/// `host` or `host:port` (IPv6 in brackets), as registries are named.
fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(']') || host.ends_with(']') => (host, Some(port)),
        _ => (h, None),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'[' | b']' | b':'))
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

impl FromStr for ImageRef {
    type Err = BadRef;

    fn from_str(input: &str) -> Result<Self, BadRef> {
        let bad = |reason: String| BadRef {
            input: input.to_owned(),
            reason,
        };
        // The OCI types say what is wrong in their detail; their message is generic.
        let why = |e: crate::error::Error| e.detail.unwrap_or(e.message);
        let s = input.trim();
        if s.is_empty() {
            return Err(bad("empty".into()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>().map_err(|e| bad(why(e)))?)),
            None => (s, None),
        };
        // A tag follows the last `:` after the last `/` (an earlier `:` is a registry's port).
        let last = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last..].rfind(':') {
            Some(i) => (&rest[..last + i], Some(&rest[last + i + 1..])),
            None => (rest, None),
        };
        let (registry, name) = match path.split_once('/') {
            Some((first, name)) if looks_like_host(first) => {
                if !valid_host(first) {
                    return Err(bad(format!("{first:?} is not a registry host")));
                }
                let host = first.to_ascii_lowercase();
                let hub = DOCKER_HUB_HOSTS.contains(&host.as_str());
                ((!hub).then_some(host), name)
            }
            _ => (None, path),
        };
        let name: RepoName = name.parse().map_err(|e| bad(why(e)))?;
        let tag: Option<Tag> = tag.map(str::parse).transpose().map_err(|e| bad(why(e)))?;
        let reference = match (digest, tag) {
            (Some(d), _) => Reference::Digest(d),
            (None, Some(t)) => Reference::Tag(t),
            (None, None) => Reference::Tag("latest".parse().expect("a valid tag")),
        };
        Ok(ImageRef {
            registry,
            name,
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.name),
            Reference::Digest(d) => write!(f, "{}@{d}", self.name),
        }
    }
}

impl ImageRef {
    /// berth's path for a manifest of this repository: the default upstream, or containerd's
    /// `?ns=<host>` for a named registry.
    pub fn manifest_path(&self, reference: &Reference) -> String {
        format!("/v2/{}/manifests/{reference}{}", self.name, self.ns_query())
    }

    /// berth's path for a blob of this repository.
    pub fn blob_path(&self, digest: &Digest) -> String {
        format!("/v2/{}/blobs/{digest}{}", self.name, self.ns_query())
    }

    /// berth's path for the referrers (OCI 1.1) of a manifest of this repository, unfiltered.
    pub fn referrers_path(&self, subject: &Digest) -> String {
        format!("/v2/{}/referrers/{subject}{}", self.name, self.ns_query())
    }

    fn ns_query(&self) -> String {
        match &self.registry {
            Some(host) => format!(
                "?ns={}",
                url::form_urlencoded::byte_serialize(host.as_bytes()).collect::<String>()
            ),
            None => String::new(),
        }
    }
}

/// The references in a list file with their line numbers: one per line, `#` starts a comment,
/// blank lines are skipped.
pub fn refs_in_file(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.split('#').next().unwrap_or("").trim();
        (!line.is_empty()).then_some((i + 1, line))
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A reference as a test writes it (the other warm files' tests use it too).
    pub(in crate::warm) fn r(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// A digest's hex of one repeated character.
    pub(in crate::warm) fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn references_as_people_write_them() {
        let cases = [
            ("nginx", None, "nginx", "latest"),
            ("nginx:1.25", None, "nginx", "1.25"),
            ("library/nginx", None, "library/nginx", "latest"),
            ("docker.io/library/nginx", None, "library/nginx", "latest"),
            ("docker.io/nginx:1", None, "nginx", "1"),
            (
                "registry-1.docker.io/bitnami/redis:7",
                None,
                "bitnami/redis",
                "7",
            ),
            ("index.docker.io/nginx", None, "nginx", "latest"),
            (
                "quay.io/coreos/flannel:v0.11.0",
                Some("quay.io"),
                "coreos/flannel",
                "v0.11.0",
            ),
            (
                "registry.local:5000/team/app:tag",
                Some("registry.local:5000"),
                "team/app",
                "tag",
            ),
            (
                "registry.local:5000/team/app",
                Some("registry.local:5000"),
                "team/app",
                "latest",
            ),
            ("localhost/app", Some("localhost"), "app", "latest"),
            (
                "localhost:5000/a/b/c:v1",
                Some("localhost:5000"),
                "a/b/c",
                "v1",
            ),
            (
                "Quay.IO/coreos/flannel",
                Some("quay.io"),
                "coreos/flannel",
                "latest",
            ),
            ("[::1]:5000/app:1", Some("[::1]:5000"), "app", "1"),
            ("  nginx  ", None, "nginx", "latest"),
            // Not hosts: no dot, no colon, not localhost.
            ("team/app", None, "team/app", "latest"),
            ("localhostx/app", None, "localhostx/app", "latest"),
        ];
        for (input, registry, name, reference) in cases {
            let got = r(input);
            assert_eq!(got.registry.as_deref(), registry, "{input}");
            assert_eq!(got.name.as_str(), name, "{input}");
            assert_eq!(got.reference.to_string(), reference, "{input}");
        }
    }

    #[test]
    fn digests_win_over_tags() {
        let d = format!("sha256:{}", hex('a'));
        let got = r(&format!("library/nginx@{d}"));
        assert_eq!(got.reference.to_string(), d);
        assert_eq!(got.to_string(), format!("library/nginx@{d}"));
        let got = r(&format!("quay.io/x/y:1.0@{d}"));
        assert_eq!(
            (got.registry.as_deref(), got.reference.to_string()),
            (Some("quay.io"), d.clone())
        );
        let got = r(&format!("registry.local:5000/app@{d}"));
        assert_eq!(got.registry.as_deref(), Some("registry.local:5000"));
        assert_eq!(got.name.as_str(), "app");
    }

    #[test]
    fn malformed_references_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("Nginx", "not a valid repository name"),
            ("nginx:", "not a valid tag"),
            ("nginx:-x", "not a valid tag"),
            ("nginx@sha256:abc", "sha256 digest"),
            ("nginx@md5:abc", "not supported"),
            ("nginx@abc", "not a digest"),
            ("nginx@sha512:{}", "not supported"),
            ("quay.io/", "repository name"),
            ("a b", "repository name"),
            ("quay.io:x/app", "registry host"),
            ("ex_ample.com/app", "registry host"),
            ("//app", "repository name"),
        ] {
            let bad = bad.replace("{}", &"a".repeat(128));
            let e = bad.parse::<ImageRef>().unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
            assert_eq!(e.input, bad);
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "nginx:latest",
            "library/nginx:1.25",
            "quay.io/coreos/flannel:v0.11.0",
            "registry.local:5000/team/app:tag",
        ] {
            assert_eq!(r(s).to_string(), s);
            assert_eq!(r(&r(s).to_string()), r(s));
        }
        assert_eq!(r("docker.io/nginx").to_string(), "nginx:latest");
    }

    #[test]
    fn berth_paths() {
        let d: Digest = format!("sha256:{}", hex('b')).parse().unwrap();
        assert_eq!(
            r("nginx").manifest_path(&r("nginx").reference),
            "/v2/nginx/manifests/latest"
        );
        assert_eq!(
            r("docker.io/library/nginx:1").manifest_path(&Reference::Digest(d.clone())),
            format!("/v2/library/nginx/manifests/{d}")
        );
        let q = r("quay.io/coreos/flannel:v0.11.0");
        assert_eq!(
            q.manifest_path(&q.reference),
            "/v2/coreos/flannel/manifests/v0.11.0?ns=quay.io"
        );
        assert_eq!(
            q.blob_path(&d),
            format!("/v2/coreos/flannel/blobs/{d}?ns=quay.io")
        );
        assert_eq!(
            q.referrers_path(&d),
            format!("/v2/coreos/flannel/referrers/{d}?ns=quay.io")
        );
        assert_eq!(
            r("nginx").referrers_path(&d),
            format!("/v2/nginx/referrers/{d}")
        );
        let l = r("registry.local:5000/team/app:tag");
        assert_eq!(
            l.manifest_path(&l.reference),
            "/v2/team/app/manifests/tag?ns=registry.local%3A5000"
        );
    }

    #[test]
    fn the_paths_are_what_berth_routes() {
        // The mapping agrees with the server's own parser.
        use crate::http::route::{Hosts, Route, Via, parse};
        let cfg = crate::config::Config::parse(
            r#"
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            default = true
            [[upstream]]
            name = "registry.local:5000"
            url = "http://registry.local:5000"
            "#,
            "t",
        )
        .unwrap();
        let hosts = Hosts::new(&cfg.upstreams);
        for (input, upstream, name) in [
            ("nginx:1.25", 0, "library/nginx"),
            ("docker.io/library/nginx", 0, "library/nginx"),
            ("registry.local:5000/team/app:tag", 1, "team/app"),
        ] {
            let img = r(input);
            let path = img.manifest_path(&img.reference);
            let (p, q) = path
                .split_once('?')
                .map_or((path.as_str(), None), |(p, q)| (p, Some(q)));
            let route = parse(&http::Method::GET, p, q, &hosts).unwrap();
            let t = route.target().unwrap();
            assert_eq!((t.upstream, t.name.as_str()), (upstream, name), "{input}");
            assert!(matches!(route, Route::Manifest { .. }));
            assert_eq!(t.via == Via::Default, img.registry.is_none(), "{input}");
            let d: crate::oci::Digest = format!("sha256:{}", hex('c')).parse().unwrap();
            let path = img.referrers_path(&d);
            let (p, q) = path
                .split_once('?')
                .map_or((path.as_str(), None), |(p, q)| (p, Some(q)));
            let route = parse(&http::Method::GET, p, q, &hosts).unwrap();
            let t = route.target().unwrap();
            assert_eq!((t.upstream, t.name.as_str()), (upstream, name), "{input}");
            assert!(matches!(route, Route::Referrers { .. }), "{input}");
        }
        let img = r("ghcr.io/a/b");
        let path = img.manifest_path(&img.reference);
        let (p, q) = path.split_once('?').unwrap();
        let e = parse(&http::Method::GET, p, Some(q), &hosts).unwrap_err();
        assert_eq!(
            e.kind,
            crate::error::Kind::NotFound(crate::error::Missing::Repository)
        );
    }

    #[test]
    fn list_files() {
        let text = "# images for the rollout\n\nnginx:1.25\n  quay.io/coreos/flannel:v0.11.0   # cni\n\t\n#alpine\nredis\n";
        let got: Vec<(usize, &str)> = refs_in_file(text).collect();
        assert_eq!(
            got,
            vec![
                (3, "nginx:1.25"),
                (4, "quay.io/coreos/flannel:v0.11.0"),
                (7, "redis")
            ]
        );
    }
}
