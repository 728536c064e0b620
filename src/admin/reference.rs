//! What `ls --repo` and `rm` name: `sha256:<hex>`, or `[upstream/]repo[:tag]`, and which tags on
//! disk or in the bucket such a name matches (a one-component name also matches `library/<name>`,
//! Docker Hub's way).
//!
//! Rule of dependency: a leaf of `admin`; uses `oci` (names, tags, digests), `manifests` (the
//! tag record it matches) and `error` (the 400 and 404 it answers with).

use crate::error::Error;
use crate::manifests::TagRecord;
use crate::oci::{Digest, RepoName, Tag};

/// What `ls --repo` or `rm` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheRef {
    /// One cached blob or manifest.
    Digest(Digest),
    /// A tag, or (no tag) every tag of a repository; in one upstream, or (`None`) in every one.
    Repo {
        upstream: Option<String>,
        repo: RepoName,
        tag: Option<Tag>,
    },
}

impl CacheRef {
    /// Parses `sha256:<hex>` or `[upstream/]repo[:tag]`. The first component is an upstream when
    /// it is one of `upstreams` (lowercase names); `upstream` (a `--upstream` flag) qualifies too,
    /// and must agree.
    pub fn parse(s: &str, upstream: Option<&str>, upstreams: &[String]) -> Result<CacheRef, Error> {
        if s.starts_with("sha256:") {
            return s.parse().map(CacheRef::Digest);
        }
        let flag = upstream.map(str::to_ascii_lowercase);
        let (named, path) = match s.split_once('/') {
            Some((first, rest)) if upstreams.contains(&first.to_ascii_lowercase()) => {
                (Some(first.to_ascii_lowercase()), rest)
            }
            _ => (None, s),
        };
        let upstream = match (named, flag) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::bad_request(format!(
                    "{s:?} names upstream {a}, --upstream says {b}"
                )));
            }
            (a, b) => a.or(b),
        };
        let (repo, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.parse::<Tag>()?)),
            _ => (path, None),
        };
        Ok(CacheRef::Repo {
            upstream,
            repo: repo.parse()?,
            tag,
        })
    }

    /// Whether a tag on disk is one this names.
    pub(super) fn matches(&self, t: &TagRecord) -> bool {
        self.matches_names(&t.upstream, &t.repo, &t.tag)
    }

    /// Whether `upstream`'s `repo:tag` is one this names.
    pub(super) fn matches_names(&self, t_upstream: &str, t_repo: &RepoName, t_tag: &Tag) -> bool {
        let CacheRef::Repo {
            upstream,
            repo,
            tag,
        } = self
        else {
            return false;
        };
        upstream.as_ref().is_none_or(|u| u == t_upstream)
            && (t_repo == repo
                || (repo.components() == 1
                    && t_repo.as_str().strip_prefix("library/") == Some(repo.as_str())))
            && tag.as_ref().is_none_or(|tag| tag == t_tag)
    }

    /// The 404 for a reference that matched nothing.
    pub(super) fn unknown(&self, shown: &str) -> Error {
        match self {
            CacheRef::Digest(_) => Error::blob_unknown(format!("{shown} is not cached")),
            CacheRef::Repo { tag: Some(_), .. } => {
                Error::manifest_unknown(format!("no cached tag matches {shown}"))
            }
            CacheRef::Repo { tag: None, .. } => {
                Error::name_unknown(format!("no cached repository matches {shown}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["docker.io".into(), "registry.test:5000".into()]
    }

    #[test]
    fn refs_parse_with_and_without_upstream() {
        let hex = "a".repeat(64);
        assert_eq!(
            CacheRef::parse(&format!("sha256:{hex}"), None, &names()).unwrap(),
            CacheRef::Digest(format!("sha256:{hex}").parse().unwrap())
        );
        let repo = |u: Option<&str>, r: &str, t: Option<&str>| CacheRef::Repo {
            upstream: u.map(str::to_owned),
            repo: r.parse().unwrap(),
            tag: t.map(|t| t.parse().unwrap()),
        };
        let cases = [
            ("library/app:1", None, repo(None, "library/app", Some("1"))),
            ("app", None, repo(None, "app", None)),
            (
                "Docker.io/library/app:1",
                None,
                repo(Some("docker.io"), "library/app", Some("1")),
            ),
            (
                "registry.test:5000/a/b",
                None,
                repo(Some("registry.test:5000"), "a/b", None),
            ),
            // Not a configured upstream: an ordinary first component.
            ("quay.io/a:v", None, repo(None, "quay.io/a", Some("v"))),
            (
                "a:v",
                Some("docker.io"),
                repo(Some("docker.io"), "a", Some("v")),
            ),
            (
                "docker.io/a",
                Some("DOCKER.IO"),
                repo(Some("docker.io"), "a", None),
            ),
        ];
        for (s, flag, want) in cases {
            assert_eq!(CacheRef::parse(s, flag, &names()).unwrap(), want, "{s}");
        }
        for bad in ["Bad/Name", "a:-x", "sha256:zz", "a@sha256:00", ""] {
            assert!(CacheRef::parse(bad, None, &names()).is_err(), "{bad}");
        }
        let e = CacheRef::parse("docker.io/a", Some("registry.test:5000"), &names()).unwrap_err();
        assert!(matches!(e.kind, crate::error::Kind::Invalid(_)), "{e}");
    }

    #[test]
    fn one_component_names_match_library() {
        let r = CacheRef::parse("app", None, &names()).unwrap();
        let rec = |repo: &str| TagRecord {
            upstream: "docker.io".into(),
            repo: repo.parse().unwrap(),
            tag: "1".parse().unwrap(),
            digest: Digest::of(b"x"),
            media_type: "m".into(),
        };
        assert!(r.matches(&rec("app")) && r.matches(&rec("library/app")));
        assert!(!r.matches(&rec("team/app")) && !r.matches(&rec("library/app2")));
    }
}
