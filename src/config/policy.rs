//! `[[policy]]`: which images must be signed, by which keys, and what happens when they are not;
//! the public keys read and parsed at load time (so a bad key fails the load, naming it), the
//! defaults and the checks.
//!
//! A key file is PEM `PUBLIC KEY` (a SubjectPublicKeyInfo, what `cosign generate-key-pair` and
//! `openssl pkey -pubout` write): ECDSA P-256 or P-384, Ed25519, or RSA (2048 bits and more).
//! Keyless verification takes a Sigstore trusted root (`trusted_root`, read and checked at load by
//! the sibling `trusted_root`) and the identities a certificate may name (`identities`: an issuer
//! and a subject, each exact or a regular expression compiled at load). A policy has keys, keyless
//! identities, or both; a signature that verifies either way suffices.
//!
//! Rule of dependency: uses its siblings `keys` and `trusted_root` (and `regex` for identities).

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::keys::{PublicKeyConfig, parse_public_key};
use super::trusted_root::{self, TrustedRoot};

/// One `[[policy]]` table. The first whose scope matches a request applies.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Named in denials, logs and metrics.
    pub name: String,
    /// The `[[upstream]]` names it covers; `"*"` for all.
    pub upstreams: Vec<String>,
    /// Globs on the repository name (as the upstream knows it, `library/` included): `*` matches
    /// any run of characters, `/` included. Absent: every repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repositories: Option<Vec<String>>,
    /// `enforce` (the default): deny what does not verify; `warn`: serve it, log and count.
    #[serde(default)]
    pub mode: PolicyMode,
    /// Public key files (PEM); a signature that verifies under any one suffices.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
    /// Keyless: a Sigstore trusted root (Fulcio CAs, Rekor and CT log keys), pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_root: Option<PathBuf>,
    /// Keyless: the identities a certificate may name; any one suffices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<IdentityConfig>,
    /// The keys, read and parsed from `keys` at load time, in that order.
    #[serde(skip)]
    pub public_keys: Vec<PublicKeyConfig>,
    /// The trusted root, read and checked from `trusted_root` at load time.
    #[serde(skip)]
    pub root: Option<TrustedRoot>,
}

/// A keyless identity: who issued the signer's token (the certificate's issuer extension), and
/// whom it names (the certificate's SAN: an email or a URI). Each is given exactly (`issuer`,
/// `subject`) or as a regular expression (`issuer_regex`, `subject_regex`), which matches
/// anywhere unless anchored (`^...$`), as cosign's `--certificate-identity-regexp` does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_regex: Option<String>,
}

/// One side of an identity, ready to match.
#[derive(Debug, Clone)]
pub enum Matcher {
    Exact(String),
    Regex(regex::Regex),
}

impl Matcher {
    pub fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(e) => e == s,
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Exact(e) => write!(f, "{e:?}"),
            Matcher::Regex(r) => write!(f, "/{}/", r.as_str()),
        }
    }
}

impl IdentityConfig {
    /// The issuer's matcher; on error, the key (`issuer...`) and the reason.
    pub fn issuer(&self) -> Result<Matcher, (&'static str, String)> {
        matcher(
            ("issuer", &self.issuer),
            ("issuer_regex", &self.issuer_regex),
        )
    }

    /// The subject's matcher; on error, the key (`subject...`) and the reason.
    pub fn subject(&self) -> Result<Matcher, (&'static str, String)> {
        matcher(
            ("subject", &self.subject),
            ("subject_regex", &self.subject_regex),
        )
    }
}

fn matcher(
    (exact_key, exact): (&'static str, &Option<String>),
    (regex_key, pattern): (&'static str, &Option<String>),
) -> Result<Matcher, (&'static str, String)> {
    match (exact, pattern) {
        (Some(e), None) if !e.is_empty() => Ok(Matcher::Exact(e.clone())),
        (Some(_), None) => Err((exact_key, "must not be empty".into())),
        (None, Some(p)) => regex::RegexBuilder::new(p)
            .size_limit(1 << 20)
            .build()
            .map(Matcher::Regex)
            .map_err(|e| (regex_key, format!("{p:?} is no regular expression: {e}"))),
        (Some(_), Some(_)) => Err((
            exact_key,
            format!("give {exact_key} or {regex_key}, not both"),
        )),
        (None, None) => Err((
            exact_key,
            format!("give {exact_key} (exact) or {regex_key}"),
        )),
    }
}

/// What a policy does with what does not verify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    #[default]
    Enforce,
    Warn,
}

/// Checks every `[[policy]]` against the upstreams (by name) and reads their keys. On error, the
/// key (`policy[i].keys[j]`) and the reason.
pub fn validate(
    policies: &mut [PolicyConfig],
    upstreams: &[String],
) -> Result<(), (String, String)> {
    let mut names = HashSet::new();
    for (i, p) in policies.iter_mut().enumerate() {
        let key = |k: &str| format!("policy[{i}].{k}");
        if p.name.trim().is_empty() {
            return Err((key("name"), "must not be empty".into()));
        }
        if !names.insert(p.name.clone()) {
            return Err((key("name"), format!("{:?} names two policies", p.name)));
        }
        if p.upstreams.is_empty() {
            return Err((
                key("upstreams"),
                "name at least one [[upstream]] (or \"*\" for all)".into(),
            ));
        }
        for u in &p.upstreams {
            if u != "*" && !upstreams.iter().any(|n| n.eq_ignore_ascii_case(u)) {
                return Err((
                    key("upstreams"),
                    format!(
                        "{u:?} is no [[upstream]] name (configured: {})",
                        upstreams.join(", ")
                    ),
                ));
            }
        }
        if let Some(globs) = &p.repositories {
            if globs.is_empty() {
                return Err((
                    key("repositories"),
                    "an empty list covers nothing: leave the key out to cover every repository"
                        .into(),
                ));
            }
            if let Some(g) = globs
                .iter()
                .find(|g| g.is_empty() || g.contains(char::is_whitespace))
            {
                return Err((key("repositories"), format!("{g:?} is no repository glob")));
            }
        }
        match (&p.trusted_root, p.identities.is_empty()) {
            (Some(_), true) => {
                return Err((
                    key("identities"),
                    "a trusted_root needs at least one identity ({ issuer = ..., subject_regex = ... })"
                        .into(),
                ));
            }
            (None, false) => {
                return Err((
                    key("trusted_root"),
                    "identities need a trusted_root (the Fulcio CAs and Rekor keys to check them with)"
                        .into(),
                ));
            }
            (None, true) if p.keys.is_empty() => {
                return Err((
                    key("keys"),
                    "name at least one public key file (or a trusted_root and identities)".into(),
                ));
            }
            _ => {}
        }
        for (j, id) in p.identities.iter().enumerate() {
            for side in [id.issuer(), id.subject()] {
                side.map_err(|(k, why)| (key(&format!("identities[{j}].{k}")), why))?;
            }
        }
        p.root = match &p.trusted_root {
            Some(file) => Some(trusted_root::load(file).map_err(|e| (key("trusted_root"), e))?),
            None => None,
        };
        p.public_keys.clear();
        for (j, file) in p.keys.iter().enumerate() {
            let at = key(&format!("keys[{j}]"));
            let pem = std::fs::read(file)
                .map_err(|e| (at.clone(), format!("cannot read {}: {e}", file.display())))?;
            let (algorithm, bits) = parse_public_key(&pem)
                .map_err(|reason| (at.clone(), format!("{}: {reason}", file.display())))?;
            p.public_keys.push(PublicKeyConfig {
                file: file.clone(),
                algorithm,
                bits,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> PolicyConfig {
        toml::from_str(&format!("name = \"ci\"\nupstreams = [\"*\"]\n{toml_text}")).unwrap()
    }

    fn check(p: PolicyConfig) -> Result<PolicyConfig, (String, String)> {
        let mut list = [p];
        validate(&mut list, &["docker.io".to_owned()])?;
        let [p] = list;
        Ok(p)
    }

    #[test]
    fn keyless_policies_are_read_or_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&ca.signing_key);
        let root = dir.path().join("root.json");
        std::fs::write(
            &root,
            super::trusted_root::tests::root_json(&[ca.cert.der()], &spki, None),
        )
        .unwrap();
        let root = format!("trusted_root = {:?}\n", root.display().to_string());
        let ok = check(policy(&format!(
            "{root}identities = [{{ issuer = \"https://token.actions.githubusercontent.com\", subject_regex = \"^https://github.com/myorg/\" }}]"
        )))
        .unwrap();
        let read = ok.root.as_ref().unwrap();
        assert_eq!(read.certificate_authorities.len(), 1);
        assert_eq!(read.tlogs.len(), 1);
        assert!(
            ok.identities[0]
                .subject()
                .unwrap()
                .matches("https://github.com/myorg/app/x")
        );
        assert!(
            !ok.identities[0]
                .subject()
                .unwrap()
                .matches("https://github.com/other/app")
        );
        assert!(
            ok.identities[0]
                .issuer()
                .unwrap()
                .matches("https://token.actions.githubusercontent.com")
        );

        for (text, key, why) in [
            ("", "policy[0].keys", "or a trusted_root and identities"),
            (
                &*root,
                "policy[0].identities",
                "needs at least one identity",
            ),
            (
                "identities = [{ issuer = \"i\", subject = \"s\" }]",
                "policy[0].trusted_root",
                "identities need a trusted_root",
            ),
            (
                &format!("{root}identities = [{{ subject = \"s\" }}]"),
                "policy[0].identities[0].issuer",
                "give issuer (exact) or issuer_regex",
            ),
            (
                &format!(
                    "{root}identities = [{{ issuer = \"i\", issuer_regex = \"i\", subject = \"s\" }}]"
                ),
                "policy[0].identities[0].issuer",
                "not both",
            ),
            (
                &format!("{root}identities = [{{ issuer = \"i\", subject_regex = \"(\" }}]"),
                "policy[0].identities[0].subject_regex",
                "\"(\" is no regular expression",
            ),
            (
                &format!("{root}identities = [{{ issuer = \"\", subject = \"s\" }}]"),
                "policy[0].identities[0].issuer",
                "must not be empty",
            ),
            (
                "trusted_root = \"/surely/not/root.json\"\nidentities = [{ issuer = \"i\", subject = \"s\" }]",
                "policy[0].trusted_root",
                "cannot read /surely/not/root.json",
            ),
        ] {
            let (k, e) = check(policy(text)).unwrap_err();
            assert_eq!(k, key, "{text}: {e}");
            assert!(e.contains(why), "{text}: {e}");
        }
        // A root that is no trusted root names its file.
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{}").unwrap();
        let (k, e) = check(policy(&format!(
            "trusted_root = {:?}\nidentities = [{{ issuer = \"i\", subject = \"s\" }}]",
            bad.display().to_string()
        )))
        .unwrap_err();
        assert_eq!(k, "policy[0].trusted_root");
        assert!(
            e.contains("bad.json: it names no certificateAuthorities"),
            "{e}"
        );
        // Unknown keys in an identity are refused by the parser.
        assert!(
            toml::from_str::<PolicyConfig>(
                "name = \"x\"\nupstreams = [\"*\"]\nidentities = [{ isuser = \"i\" }]"
            )
            .is_err()
        );
    }
}
