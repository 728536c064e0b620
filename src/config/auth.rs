//! `[auth]`: client login (the htpasswd file, the anonymous upstreams, the check concurrency) and
//! its checks against the upstreams' `users` lists.
//!
//! Rule of dependency: uses `config::upstreams` (the names `[auth]` refers to). The htpasswd file
//! itself is parsed by `access` when the server starts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::upstreams::UpstreamConfig;

/// Client login: with it, every request needs a user from `htpasswd`, except pulls through the
/// `anonymous_upstreams`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// htpasswd file with bcrypt entries (`htpasswd -B`); re-read when it changes.
    pub htpasswd: PathBuf,
    /// Upstreams (name or alias) anyone may pull through without logging in.
    #[serde(default)]
    pub anonymous_upstreams: Vec<String>,
    /// Most bcrypt checks running at once (each takes a core for its duration). Unset: half the
    /// cores, at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_concurrency: Option<usize>,
}

/// `[auth]` and the upstreams' `users`: names that exist, lists that can be met. On error,
/// the key and the reason. (The htpasswd file itself is parsed when the server starts.)
pub(super) fn validate(
    auth: Option<&AuthConfig>,
    upstreams: &[UpstreamConfig],
) -> Result<(), (String, String)> {
    let Some(auth) = auth else {
        return match upstreams.iter().position(|u| u.users.is_some()) {
            Some(i) => Err((
                format!("upstream[{i}].users"),
                "users needs client login: add [auth] with an htpasswd file".into(),
            )),
            None => Ok(()),
        };
    };
    if auth.check_concurrency.is_some_and(|n| n == 0 || n > 1024) {
        return Err((
            "auth.check_concurrency".into(),
            "must be between 1 and 1024 (leave it out for half the cores)".into(),
        ));
    }
    if let Err(e) = std::fs::metadata(&auth.htpasswd) {
        return Err((
            "auth.htpasswd".into(),
            format!("cannot read {}: {e}", auth.htpasswd.display()),
        ));
    }
    let mut anonymous = vec![false; upstreams.len()];
    for name in &auth.anonymous_upstreams {
        let name = name.to_ascii_lowercase();
        match upstreams.iter().position(|u| u.hosts().any(|h| h == name)) {
            Some(i) => anonymous[i] = true,
            None => {
                return Err((
                    "auth.anonymous_upstreams".into(),
                    format!("{name:?} is not the name or alias of an [[upstream]]"),
                ));
            }
        }
    }
    for (i, u) in upstreams.iter().enumerate() {
        match &u.users {
            Some(_) if anonymous[i] => {
                return Err((
                    format!("upstream[{i}].users"),
                    format!(
                        "{} is in auth.anonymous_upstreams: anyone may pull through it, \
                         so a users list would mean nothing",
                        u.name
                    ),
                ));
            }
            Some(list) if list.iter().any(|n| n.is_empty() || n.contains(':')) => {
                return Err((
                    format!("upstream[{i}].users"),
                    "a user name is empty or holds ':'".into(),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn auth_is_checked_against_the_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, "").unwrap();
        let ups = "[[upstream]]\nname = \"docker.io\"\nurl = \"https://d.io\"\naliases = [\"hub.test\"]\n\
                   [[upstream]]\nname = \"b.io\"\nurl = \"https://b.io\"\n";
        let auth = |extra: &str| {
            format!(
                "[auth]\nhtpasswd = {:?}\n{extra}\n{ups}",
                file.display().to_string()
            )
        };
        let ok = Config::parse(
            &(auth("anonymous_upstreams = [\"HUB.test\"]") + "users = [\"ci\"]\n"),
            "f.toml",
        )
        .unwrap();
        let a = ok.auth.as_ref().unwrap();
        assert_eq!(a.anonymous_upstreams, ["HUB.test"]);
        assert_eq!(
            ok.upstreams[1].users.as_deref(),
            Some(&["ci".to_owned()][..])
        );
        let cases = [
            (ups.to_owned() + "users = [\"ci\"]\n", "upstream[1].users"),
            (
                auth("anonymous_upstreams = [\"nope.io\"]"),
                "auth.anonymous_upstreams",
            ),
            (
                auth("anonymous_upstreams = [\"b.io\"]") + "users = [\"ci\"]\n",
                "upstream[1].users",
            ),
            (auth("") + "users = [\"a:b\"]\n", "upstream[1].users"),
            (
                format!("[auth]\nhtpasswd = \"/surely/not/here\"\n{ups}"),
                "auth.htpasswd",
            ),
            (auth("nope = 1"), "unknown field"),
            (auth("check_concurrency = 0"), "auth.check_concurrency"),
        ];
        for (text, key) in cases {
            let e = Config::parse(&text, "f.toml").unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }
}
