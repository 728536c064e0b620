//! Method + path + query -> a typed [`Route`], before any I/O.
//!
//! Three ways of naming the registry share one listener:
//! - `?ns=<host>` (containerd): the upstream whose name or alias is `<host>`;
//! - a path prefix `/v2/<host>/<name>/...` (podman, skopeo with a mirror location carrying a path),
//!   when the first component is an upstream's name or alias;
//! - nothing (Docker's `registry-mirrors`): the default upstream.
//!
//! A first component that looks like a host (has a `.` or `:`, or is `localhost`) but names no
//! upstream is refused with `NAME_UNKNOWN` rather than sent to the default upstream: Docker Hub
//! namespaces never contain dots, so this only ever refuses requests meant for another registry.
//! No upstream address is ever built from what the client sent.
//!
//! Paths are parsed from the right: in `/v2/<name>/manifests/<ref>` the name itself may contain
//! `manifests`.
//!
//! The route names what it asks for in the mirror's words ([`Target`], [`Via`]: defined in
//! `mirror`, re-exported here); this file builds them.
//!
//! Rule of dependency: uses `mirror` (those two types only), `upstreams` (the host table),
//! `cluster` and `fleet::owner` (the peer paths), `oci`, `error`; pure, no I/O.

use http::Method;

use crate::error::{Error, Kind, Malformed};
use crate::oci::{Digest, Reference, RepoName, Tag, referrers};

/// Largest `n` accepted on a tag list.
pub const MAX_TAGS_PAGE: u32 = 10_000;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        target: Target,
        reference: Reference,
    },
    Blob {
        target: Target,
        digest: Digest,
    },
    TagsList {
        target: Target,
        n: Option<u32>,
        last: Option<Tag>,
    },
    /// `/v2/<name>/referrers/<digest>[?artifactType=<media type>]` (OCI 1.1).
    Referrers {
        target: Target,
        subject: Digest,
        artifact_type: Option<String>,
    },
}

impl Route {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::TagsList { .. } => "tags",
            Route::Referrers { .. } => "referrers",
        }
    }

    pub fn target(&self) -> Option<&Target> {
        match self {
            Route::Base => None,
            Route::Manifest { target, .. }
            | Route::Blob { target, .. }
            | Route::TagsList { target, .. }
            | Route::Referrers { target, .. } => Some(target),
        }
    }
}

/// The request's meaning in the mirror's words: the parser builds them.
pub use crate::mirror::{Target, Via};

pub use crate::upstreams::Hosts;

/// Parses a request into a route. Only GET and HEAD exist; everything is validated here.
pub fn parse(
    method: &Method,
    path: &str,
    query: Option<&str>,
    hosts: &Hosts,
) -> Result<Route, Error> {
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => {
            check_method(method)?;
            return Ok(Route::Base);
        }
        Some(r) if r.starts_with('/') => &r[1..],
        _ => {
            return Err(Error::not_found_route(format!(
                "{} is not a registry API path",
                clip(path)
            )));
        }
    };
    check_method(method)?;

    let (name, tail) = split_route(rest).ok_or_else(|| {
        Error::not_found_route(format!("{} is not a registry API path", clip(path)))
    })?;
    let params = Query::parse(query);
    let target = resolve_target(name, params.ns.as_deref(), hosts)?;
    match tail {
        Tail::Manifest(r) => Ok(Route::Manifest {
            target,
            reference: manifest_reference(r)?,
        }),
        Tail::Blob(d) => Ok(Route::Blob {
            target,
            digest: d.parse()?,
        }),
        Tail::TagsList => {
            let n = match params.n.as_deref() {
                None => None,
                Some(s) => Some(
                    s.parse::<u32>()
                        .ok()
                        .filter(|n| *n <= MAX_TAGS_PAGE)
                        .ok_or_else(|| {
                            Error::pagination_invalid(format!(
                                "n must be a whole number from 0 to {MAX_TAGS_PAGE}"
                            ))
                        })?,
                ),
            };
            let last = params.last.as_deref().map(str::parse).transpose()?;
            Ok(Route::TagsList { target, n, last })
        }
        Tail::Referrers(d) => {
            let artifact_type = params.artifact_type;
            if let Some(t) = &artifact_type
                && !referrers::is_media_type(t)
            {
                return Err(Error::bad_request(format!(
                    "artifactType {:?} is not a media type (type/subtype)",
                    clip(t)
                )));
            }
            Ok(Route::Referrers {
                target,
                subject: d.parse()?,
                artifact_type,
            })
        }
    }
}

/// What a peer request asks for (a path under `cluster::PEER_PREFIX`, parsed only once its
/// proof checked out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRoute {
    /// `/_berth/peer/v1/healthz`: whether this berth serves.
    Health,
    /// `/_berth/peer/v1/blobs/<upstream>/<repo>/<digest>`: a blob through the upstream of that
    /// name (percent-decoded here, looked up among the configured ones by the caller).
    Blob {
        upstream: String,
        repo: RepoName,
        digest: Digest,
    },
    /// `POST /_berth/peer/v1/fleet/swarm/<digest>/<body digest>`: a node's swarm call, forwarded
    /// by the replica it reached to this one, the digest's owner (`fleet::owner`).
    FleetSwarm { digest: Digest, body: Digest },
    /// `GET /_berth/peer/v1/fleet/pieces/<digest>`: a node's piece-table call, forwarded so.
    FleetPieces(Digest),
}

/// Parses a peer request's method and path.
pub fn parse_peer(method: &Method, path: &str) -> Result<PeerRoute, Error> {
    use crate::fleet::owner;
    if let Some(rest) = path.strip_prefix(owner::FORWARD_SWARM_PATH) {
        let (digest, body) = owner::parse_swarm_rest(rest).ok_or_else(|| {
            Error::not_found_route("a forwarded swarm call names a digest and its body's")
        })?;
        if *method != Method::POST {
            return Err(Error::unsupported("a forwarded swarm call is a POST"));
        }
        return Ok(PeerRoute::FleetSwarm { digest, body });
    }
    if let Some(rest) = path.strip_prefix(owner::FORWARD_PIECES_PATH) {
        if *method != Method::GET {
            return Err(Error::unsupported("piece hashes are read with GET"));
        }
        return Ok(PeerRoute::FleetPieces(rest.parse()?));
    }
    check_method(method)?;
    if path == crate::cluster::HEALTH_PATH {
        return Ok(PeerRoute::Health);
    }
    let not_found = || Error::not_found_route(format!("{} is not a peer API path", clip(path)));
    let rest = path
        .strip_prefix(crate::cluster::BLOBS_PATH)
        .ok_or_else(not_found)?;
    let (upstream, rest) = rest.split_once('/').ok_or_else(not_found)?;
    let (repo, digest) = rest.rsplit_once('/').ok_or_else(not_found)?;
    let upstream = percent_encoding::percent_decode_str(upstream)
        .decode_utf8()
        .ok()
        .filter(|u| !u.is_empty())
        .ok_or_else(not_found)?
        .into_owned();
    Ok(PeerRoute::Blob {
        upstream,
        repo: repo.parse()?,
        digest: digest.parse()?,
    })
}

/// A manifest reference. One that is neither a tag nor shaped like a digest names no manifest:
/// `404 MANIFEST_UNKNOWN`, as the Distribution registry answers (its router matches no such path)
/// and the OCI conformance suite expects. One with a `:` is a digest the client got wrong (bad
/// encoding, unsupported algorithm): `400 DIGEST_INVALID`, which tells that client what to fix,
/// the answer blob routes give, and the registry's own for a digest it cannot parse.
fn manifest_reference(r: &str) -> Result<Reference, Error> {
    r.parse().map_err(|e: Error| match e.kind {
        Kind::Invalid(Malformed::Tag) => {
            Error::manifest_unknown(format!("{:?} is neither a tag nor a digest", clip(r)))
        }
        _ => e,
    })
}

fn check_method(method: &Method) -> Result<(), Error> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(Error::unsupported(format!(
            "{method} is not supported: berth is a read-only mirror"
        )))
    }
}

enum Tail<'a> {
    Manifest(&'a str),
    Blob(&'a str),
    TagsList,
    Referrers(&'a str),
}

/// Splits `<name>/manifests/<ref>`, `<name>/blobs/<digest>`, `<name>/referrers/<digest>`,
/// `<name>/tags/list` from the right.
fn split_route(rest: &str) -> Option<(&str, Tail<'_>)> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some((name, Tail::TagsList));
    }
    let (head, last) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    match kind {
        "manifests" => Some((name, Tail::Manifest(last))),
        "blobs" => Some((name, Tail::Blob(last))),
        "referrers" => Some((name, Tail::Referrers(last))),
        _ => None,
    }
}

/// Picks the upstream and the repository name.
fn resolve_target(name: &str, ns: Option<&str>, hosts: &Hosts) -> Result<Target, Error> {
    let (upstream, name, via) = if let Some(ns) = ns {
        let i = hosts.lookup(ns).ok_or_else(|| {
            Error::name_unknown(format!("registry {:?} is not mirrored here", clip(ns)))
        })?;
        (i, name, Via::Namespace(ns.to_owned()))
    } else if let Some((first, rest)) = name.split_once('/')
        && looks_like_host(first)
    {
        let i = hosts.lookup(first).ok_or_else(|| {
            Error::name_unknown(format!("registry {:?} is not mirrored here", clip(first)))
        })?;
        (i, rest, Via::Prefix(first.to_owned()))
    } else {
        let i = hosts
            .default_slot()
            .ok_or_else(|| Error::name_unknown("no registry named (use ?ns= or a /v2/<registry>/ prefix) and no default upstream is configured"))?;
        (i, name, Via::Default)
    };
    let mut name: RepoName = name.parse()?;
    if hosts.library_prefix(upstream) {
        name = name.with_library_prefix();
    }
    Ok(Target {
        upstream,
        name,
        via,
    })
}

/// Does a first path component name a registry host rather than a namespace?
fn looks_like_host(s: &str) -> bool {
    s.contains('.') || s.contains(':') || s == "localhost"
}

/// The query parameters berth reads; others are ignored.
#[derive(Default)]
struct Query {
    ns: Option<String>,
    n: Option<String>,
    last: Option<String>,
    /// The referrers filter; the first one given (the spec names one).
    artifact_type: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let mut q = Query::default();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "ns" => q.ns = Some(v.into_owned()),
                "n" => q.n = Some(v.into_owned()),
                "last" => q.last = Some(v.into_owned()),
                "artifactType" if q.artifact_type.is_none() => {
                    q.artifact_type = Some(v.into_owned())
                }
                _ => {}
            }
        }
        q
    }
}

pub(super) fn clip(s: &str) -> &str {
    match s.char_indices().nth(100) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::{Answered, Code};

    fn hosts() -> Hosts {
        let cfg = crate::config::Config::parse(
            r#"
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            default = true
            aliases = ["registry-1.docker.io"]
            [[upstream]]
            name = "quay.io"
            url = "https://quay.io"
            [[upstream]]
            name = "127.0.0.1:5001"
            url = "http://127.0.0.1:5001"
            "#,
            "t",
        )
        .unwrap();
        Hosts::new(&cfg.upstreams)
    }

    fn get(path: &str, query: Option<&str>) -> Result<Route, Error> {
        parse(&Method::GET, path, query, &hosts())
    }

    fn target(r: &Route) -> (usize, &str, &Via) {
        let t = r.target().unwrap();
        (t.upstream, t.name.as_str(), &t.via)
    }

    #[test]
    fn referrers() {
        let hex = "a".repeat(64);
        let r = get(
            &format!("/v2/quay.io/team/app/referrers/sha256:{hex}"),
            Some("artifactType=application%2Fvnd.dev.sigstore.bundle.v0.3%2Bjson&artifactType=a/b"),
        )
        .unwrap();
        assert_eq!(r.kind(), "referrers");
        assert_eq!(target(&r).1, "team/app");
        let Route::Referrers {
            subject,
            artifact_type,
            ..
        } = &r
        else {
            panic!("{r:?}")
        };
        assert_eq!(subject.hex(), hex);
        // The first filter counts (the spec names one).
        assert_eq!(
            artifact_type.as_deref(),
            Some("application/vnd.dev.sigstore.bundle.v0.3+json")
        );
        // A repository may be called `referrers`.
        let r = get(&format!("/v2/a/referrers/referrers/sha256:{hex}"), None).unwrap();
        assert_eq!(target(&r).1, "a/referrers");
        // The subject is a digest; the filter a media type.
        assert_eq!(
            get("/v2/x/referrers/latest", None).unwrap_err().code(),
            Code::DigestInvalid
        );
        let e = get(
            &format!("/v2/x/referrers/sha256:{hex}"),
            Some("artifactType=not-a-type"),
        )
        .unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
        let e = parse(
            &Method::DELETE,
            &format!("/v2/x/referrers/sha256:{hex}"),
            None,
            &hosts(),
        )
        .unwrap_err();
        assert_eq!(e.code(), Code::Unsupported);
    }

    #[test]
    fn base() {
        assert_eq!(get("/v2/", None).unwrap(), Route::Base);
        assert_eq!(get("/v2", None).unwrap(), Route::Base);
        assert_eq!(
            parse(&Method::HEAD, "/v2/", None, &hosts()).unwrap(),
            Route::Base
        );
    }

    #[test]
    fn default_upstream_gets_library_prefix() {
        let r = get("/v2/nginx/manifests/latest", None).unwrap();
        assert_eq!(target(&r), (0, "library/nginx", &Via::Default));
        let r = get("/v2/bitnami/nginx/manifests/1.0", None).unwrap();
        assert_eq!(target(&r).1, "bitnami/nginx");
    }

    #[test]
    fn containerd_ns() {
        let r = get("/v2/coreos/flannel/manifests/v0.11.0", Some("ns=quay.io")).unwrap();
        assert_eq!(
            target(&r),
            (1, "coreos/flannel", &Via::Namespace("quay.io".into()))
        );
        // Aliases and case.
        let r = get(
            &format!("/v2/library/alpine/blobs/sha256:{}", "b".repeat(64)),
            Some("ns=Registry-1.Docker.IO"),
        )
        .unwrap();
        assert_eq!(target(&r).0, 0);
        let e = get("/v2/x/manifests/latest", Some("ns=evil.example.com")).unwrap_err();
        assert_eq!((e.code(), e.status().as_u16()), (Code::NameUnknown, 404));
    }

    #[test]
    fn path_prefix() {
        let r = get("/v2/quay.io/coreos/flannel/manifests/v0.11.0", None).unwrap();
        assert_eq!(
            target(&r),
            (1, "coreos/flannel", &Via::Prefix("quay.io".into()))
        );
        let r = get("/v2/docker.io/nginx/manifests/latest", None).unwrap();
        assert_eq!(
            target(&r),
            (0, "library/nginx", &Via::Prefix("docker.io".into()))
        );
        let r = get("/v2/127.0.0.1:5001/team/app/tags/list", None).unwrap();
        assert_eq!(target(&r).0, 2);
        let e = get("/v2/ghcr.io/a/b/manifests/latest", None).unwrap_err();
        assert_eq!(e.code(), Code::NameUnknown);
        let e = get("/v2/localhost/a/manifests/latest", None).unwrap_err();
        assert_eq!(e.code(), Code::NameUnknown);
    }

    #[test]
    fn names_may_contain_route_words() {
        let r = get("/v2/a/manifests/manifests/manifests/latest", None).unwrap();
        assert_eq!(target(&r).1, "a/manifests/manifests");
        let r = get("/v2/blobs/tags/list/tags/list", None).unwrap();
        assert_eq!(target(&r).1, "blobs/tags/list");
        assert!(matches!(r, Route::TagsList { .. }));
    }

    #[test]
    fn references_and_digests() {
        let hex = "a".repeat(64);
        let r = get(&format!("/v2/x/manifests/sha256:{hex}"), None).unwrap();
        assert!(matches!(
            r,
            Route::Manifest {
                reference: Reference::Digest(_),
                ..
            }
        ));
        let r = get(&format!("/v2/x/blobs/sha256:{hex}"), None).unwrap();
        assert!(matches!(r, Route::Blob { .. }));
        assert_eq!(
            get("/v2/x/blobs/latest", None).unwrap_err().code(),
            Code::DigestInvalid
        );
        assert_eq!(
            get("/v2/x/blobs/sha256:xyz", None).unwrap_err().code(),
            Code::DigestInvalid
        );
        for bad in ["-bad", ".INVALID_MANIFEST_NAME", &"a".repeat(129)] {
            let e = get(&format!("/v2/x/manifests/{bad}"), None).unwrap_err();
            assert_eq!(
                (e.code(), e.status().as_u16()),
                (Code::ManifestUnknown, 404)
            );
        }
        for bad in ["sha256:zz", "md5:abc", "sha256:"] {
            let e = get(&format!("/v2/x/manifests/{bad}"), None).unwrap_err();
            assert_eq!((e.code(), e.status().as_u16()), (Code::DigestInvalid, 400));
        }
        assert_eq!(
            get("/v2/X/manifests/latest", None).unwrap_err().code(),
            Code::NameInvalid
        );
        assert_eq!(
            get("/v2/a%2fb/manifests/latest", None).unwrap_err().code(),
            Code::NameInvalid
        );
    }

    #[test]
    fn tag_list_parameters() {
        let r = get("/v2/x/tags/list", Some("n=10&last=v1")).unwrap();
        assert!(matches!(
            r,
            Route::TagsList {
                n: Some(10),
                last: Some(_),
                ..
            }
        ));
        assert_eq!(
            get("/v2/x/tags/list", Some("n=-1")).unwrap_err().code(),
            Code::PaginationNumberInvalid
        );
        assert_eq!(
            get("/v2/x/tags/list", Some("n=99999")).unwrap_err().code(),
            Code::PaginationNumberInvalid
        );
        assert_eq!(
            get("/v2/x/tags/list", Some("last=..")).unwrap_err().code(),
            Code::TagInvalid
        );
    }

    #[test]
    fn peer_paths() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let get = |p: &str| parse_peer(&Method::GET, p);
        assert_eq!(get("/_berth/peer/v1/healthz").unwrap(), PeerRoute::Health);
        let PeerRoute::Blob {
            upstream,
            repo,
            digest,
        } = get(&format!(
            "/_berth/peer/v1/blobs/%5B%3A%3A1%5D%3A5000/a/b/c/{d}"
        ))
        .unwrap()
        else {
            panic!("not a blob route")
        };
        assert_eq!(upstream, "[::1]:5000");
        assert_eq!(repo.as_str(), "a/b/c");
        assert_eq!(digest.to_string(), d);
        let code = |p: &str| get(p).unwrap_err().code();
        for p in [
            "/_berth/peer/v1/nothing",
            "/_berth/peer/v1/blobs/",
            "/_berth/peer/v1/blobs/docker.io",
            &format!("/_berth/peer/v1/blobs/docker.io/{d}"),
            &format!("/_berth/peer/v1/blobs//library/app/{d}"),
            &format!("/_berth/peer/v1/blobs/%FF/library/app/{d}"),
        ] {
            assert_eq!(code(p), Code::NameUnknown, "{p}");
        }
        assert_eq!(
            code("/_berth/peer/v1/blobs/docker.io/library/app/sha256:00"),
            Code::DigestInvalid
        );
        assert_eq!(
            code(&format!("/_berth/peer/v1/blobs/docker.io/library/../x/{d}")),
            Code::NameInvalid
        );
        assert_eq!(
            parse_peer(&Method::DELETE, "/_berth/peer/v1/healthz")
                .unwrap_err()
                .code(),
            Code::Unsupported
        );
    }

    /// The fleet's forwarded calls (`fleet::owner`): a swarm call names the blob's digest and its
    /// body's, is a POST; a piece call is a GET of one digest.
    #[test]
    fn forwarded_fleet_paths() {
        use crate::fleet::owner::{FORWARD_PIECES_PATH, FORWARD_SWARM_PATH, swarm_path};
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let path = swarm_path(&d, b"{}", Some(5));
        let (path, query) = path.split_once('?').unwrap();
        assert_eq!(query, "size=5");
        assert_eq!(
            parse_peer(&Method::POST, path).unwrap(),
            PeerRoute::FleetSwarm {
                digest: d.clone(),
                body: Digest::of(b"{}")
            }
        );
        let pieces = format!("{FORWARD_PIECES_PATH}{d}");
        assert_eq!(
            parse_peer(&Method::GET, &pieces).unwrap(),
            PeerRoute::FleetPieces(d.clone())
        );
        let code = |m: Method, p: &str| parse_peer(&m, p).unwrap_err().code();
        assert_eq!(code(Method::GET, path), Code::Unsupported);
        assert_eq!(code(Method::POST, &pieces), Code::Unsupported);
        for p in [
            format!("{FORWARD_SWARM_PATH}{d}"),
            format!("{FORWARD_SWARM_PATH}{d}/sha256:00"),
            format!("{FORWARD_SWARM_PATH}{d}/{d}/x"),
        ] {
            assert_eq!(code(Method::POST, &p), Code::NameUnknown, "{p}");
        }
        assert_eq!(
            code(Method::GET, &format!("{FORWARD_PIECES_PATH}sha256:00")),
            Code::DigestInvalid
        );
    }

    #[test]
    fn writes_are_unsupported() {
        for m in [Method::PUT, Method::POST, Method::PATCH, Method::DELETE] {
            let e = parse(&m, "/v2/x/blobs/uploads/", None, &hosts()).unwrap_err();
            assert_eq!((e.code(), e.status().as_u16()), (Code::Unsupported, 405));
        }
    }

    #[test]
    fn unknown_paths() {
        for p in [
            "/",
            "/v1/x",
            "/v2x",
            "/v2/x",
            "/v2/x/blobs/uploads/abc/def",
            "/v2//manifests/a",
        ] {
            let e = get(p, None).unwrap_err();
            assert_eq!(
                e.status().as_u16(),
                if p == "/v2//manifests/a" { 400 } else { 404 },
                "{p}: {e}"
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A repository name component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, without dots when it
        /// comes first on the default upstream (a dotted first component names a registry).
        fn component(dots: bool) -> impl Strategy<Value = String> {
            let sep = if dots { "(\\.|_|__|-+)" } else { "(_|__|-+)" };
            proptest::string::string_regex(&format!("[a-z0-9]{{1,6}}({sep}[a-z0-9]{{1,6}}){{0,2}}"))
                .unwrap()
        }

        fn name(first_dots: bool) -> impl Strategy<Value = String> {
            (
                component(first_dots),
                prop::collection::vec(component(true), 0..4),
            )
                .prop_map(|(first, rest)| {
                    std::iter::once(first)
                        .chain(rest)
                        .collect::<Vec<_>>()
                        .join("/")
                })
        }

        fn reference() -> impl Strategy<Value = String> {
            prop_oneof![
                proptest::string::string_regex("[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}").unwrap(),
                proptest::string::string_regex("sha256:[0-9a-f]{64}").unwrap(),
            ]
        }

        /// How a client names the registry: none, `?ns=`, or a path prefix (by name or alias).
        #[derive(Debug, Clone)]
        enum Naming {
            Default,
            Ns(&'static str),
            Prefix(&'static str),
        }

        fn naming() -> impl Strategy<Value = Naming> {
            prop_oneof![
                Just(Naming::Default),
                prop::sample::select(vec!["docker.io", "quay.io", "127.0.0.1:5001"])
                    .prop_map(Naming::Ns),
                prop::sample::select(vec!["registry-1.docker.io", "quay.io", "127.0.0.1:5001"])
                    .prop_map(Naming::Prefix),
            ]
        }

        /// The path and query a client would send for `route`: the inverse of [`parse`].
        fn format(route: &Route) -> (String, Option<String>) {
            let Some(t) = route.target() else {
                return ("/v2/".to_owned(), None);
            };
            let (prefix, mut query) = match &t.via {
                Via::Default => (String::new(), Vec::new()),
                Via::Namespace(ns) => (String::new(), vec![format!("ns={ns}")]),
                Via::Prefix(p) => (format!("{p}/"), Vec::new()),
            };
            let tail = match route {
                Route::Manifest { reference, .. } => format!("manifests/{reference}"),
                Route::Blob { digest, .. } => format!("blobs/{digest}"),
                Route::TagsList { n, last, .. } => {
                    query.extend(n.map(|n| format!("n={n}")));
                    query.extend(last.as_ref().map(|l| format!("last={l}")));
                    "tags/list".to_owned()
                }
                Route::Referrers {
                    subject,
                    artifact_type,
                    ..
                } => {
                    query.extend(artifact_type.as_ref().map(|t| {
                        url::form_urlencoded::Serializer::new(String::new())
                            .append_pair("artifactType", t)
                            .finish()
                    }));
                    format!("referrers/{subject}")
                }
                Route::Base => unreachable!(),
            };
            let path = format!("/v2/{prefix}{}/{tail}", t.name);
            (path, (!query.is_empty()).then(|| query.join("&")))
        }

        fn via_of(n: &Naming) -> (usize, Via) {
            let upstream = |h: &str| hosts().lookup(h).unwrap();
            match n {
                Naming::Default => (0, Via::Default),
                Naming::Ns(h) => (upstream(h), Via::Namespace((*h).to_owned())),
                Naming::Prefix(h) => (upstream(h), Via::Prefix((*h).to_owned())),
            }
        }

        proptest! {
            #[test]
            fn manifests_and_blobs_parse_to_what_was_named_and_format_back(
                naming in naming(),
                first_dots in any::<bool>(),
                reference in reference(),
                raw_name in name(true),
                plain_name in name(false),
                blob in any::<bool>(),
            ) {
                let name = if first_dots && !matches!(naming, Naming::Default) { raw_name } else { plain_name };
                let (prefix, query) = match &naming {
                    Naming::Default => (String::new(), None),
                    Naming::Ns(h) => (String::new(), Some(format!("ns={h}"))),
                    Naming::Prefix(h) => (format!("{h}/"), None),
                };
                let reference = if blob { format!("sha256:{}", "0".repeat(64)) } else { reference };
                let kind = if blob { "blobs" } else { "manifests" };
                let path = format!("/v2/{prefix}{name}/{kind}/{reference}");
                let route = parse(&Method::GET, &path, query.as_deref(), &hosts()).unwrap();

                let (upstream, via) = via_of(&naming);
                let t = route.target().unwrap();
                prop_assert_eq!(t.upstream, upstream);
                prop_assert_eq!(&t.via, &via);
                let want_name = if upstream == 0 && name.split('/').count() == 1 {
                    format!("library/{name}")
                } else {
                    name.clone()
                };
                prop_assert_eq!(t.name.as_str(), want_name.as_str());
                match &route {
                    Route::Manifest { reference: r, .. } => prop_assert_eq!(r.to_string(), reference),
                    Route::Blob { digest, .. } => prop_assert_eq!(digest.to_string(), reference),
                    other => prop_assert!(false, "{:?}", other),
                }
                let (path, query) = format(&route);
                prop_assert_eq!(parse(&Method::HEAD, &path, query.as_deref(), &hosts()).unwrap(), route);
            }

            #[test]
            fn referrers_round_trip(
                naming in naming(),
                name in name(false),
                hex in "[0-9a-f]{64}",
                artifact_type in proptest::option::of("[a-z]{1,8}/[a-z0-9][a-z0-9.+-]{0,20}"),
            ) {
                let (upstream, via) = via_of(&naming);
                let mut name: RepoName = name.parse().unwrap();
                if upstream == 0 {
                    name = name.with_library_prefix();
                }
                let route = Route::Referrers {
                    target: Target { upstream, name, via },
                    subject: format!("sha256:{hex}").parse().unwrap(),
                    artifact_type,
                };
                let (path, query) = format(&route);
                prop_assert_eq!(parse(&Method::GET, &path, query.as_deref(), &hosts()).unwrap(), route);
            }

            #[test]
            fn tag_lists_round_trip(
                naming in naming(),
                name in name(false),
                n in proptest::option::of(0..=MAX_TAGS_PAGE),
                last in proptest::option::of(proptest::string::string_regex("[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}").unwrap()),
            ) {
                let (upstream, via) = via_of(&naming);
                let mut name: RepoName = name.parse().unwrap();
                if upstream == 0 {
                    name = name.with_library_prefix();
                }
                let route = Route::TagsList {
                    target: Target { upstream, name, via },
                    n,
                    last: last.map(|l| l.parse().unwrap()),
                };
                let (path, query) = format(&route);
                prop_assert_eq!(parse(&Method::GET, &path, query.as_deref(), &hosts()).unwrap(), route);
            }

            #[test]
            fn any_path_is_a_route_or_a_client_error(path in "/v2/[ -~]{0,80}", query in proptest::option::of("[ -~]{0,40}")) {
                match parse(&Method::GET, &path, query.as_deref(), &hosts()) {
                    Ok(route) => {
                        let (p, q) = format(&route);
                        prop_assert_eq!(parse(&Method::GET, &p, q.as_deref(), &hosts()).unwrap(), route);
                    }
                    Err(e) => prop_assert!(e.status().is_client_error(), "{}", e),
                }
            }
        }
    }

    #[test]
    fn no_default_upstream() {
        let cfg = crate::config::Config::parse(
            "[[upstream]]\nname = \"quay.io\"\nurl = \"https://quay.io\"\n",
            "t",
        )
        .unwrap();
        let e = parse(
            &Method::GET,
            "/v2/a/manifests/b",
            None,
            &Hosts::new(&cfg.upstreams),
        )
        .unwrap_err();
        assert_eq!(e.code(), Code::NameUnknown);
    }
}
