//! `[[policy]]`: which images must be signed, by which keys, and what happens when they are not;
//! the public keys read and parsed at load time (so a bad key fails the load, naming it), the
//! defaults and the checks.
//!
//! A key file is PEM `PUBLIC KEY` (a SubjectPublicKeyInfo, what `cosign generate-key-pair` and
//! `openssl pkey -pubout` write): ECDSA P-256 or P-384, Ed25519, or RSA (2048 bits and more).
//! Keyless verification (`trusted_root`, `identities`) is recognised and refused with a clear
//! message until this berth verifies certificates and log entries.
//!
//! Rule of dependency: uses `config::value` only (and `x509-parser` for the key format).

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// Keyless: a Sigstore trusted root (not supported yet; refused at load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_root: Option<PathBuf>,
    /// Keyless: the identities a certificate must name (not supported yet; refused at load).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<toml::Table>,
    /// The keys, read and parsed from `keys` at load time, in that order.
    #[serde(skip)]
    pub public_keys: Vec<PublicKeyConfig>,
}

/// What a policy does with what does not verify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    #[default]
    Enforce,
    Warn,
}

/// A public key as read from its file: its algorithm and its key bits (the SubjectPublicKeyInfo's
/// bit string: an EC point, 32 Ed25519 bytes, or an RSA key in PKCS#1).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKeyConfig {
    pub file: PathBuf,
    pub algorithm: KeyAlgorithm,
    pub bits: Vec<u8>,
}

impl std::fmt::Debug for PublicKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} key {}", self.algorithm, self.file.display())
    }
}

/// The key types cosign and notation sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa,
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

/// Parses a PEM `PUBLIC KEY`. The reason, if it is none berth can use.
pub fn parse_public_key(pem: &[u8]) -> Result<(KeyAlgorithm, Vec<u8>), String> {
    use x509_parser::prelude::FromDer;
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM file ({e})"))?;
    if pem.label != "PUBLIC KEY" {
        return Err(format!(
            "a PEM {:?}, not a \"PUBLIC KEY\" (export the public half: cosign public-key, or openssl pkey -pubout)",
            pem.label
        ));
    }
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&pem.contents)
        .map_err(|e| format!("not a SubjectPublicKeyInfo ({e})"))?;
    let alg = spki.algorithm.algorithm.to_id_string();
    let param = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let algorithm = match (alg.as_str(), param.as_deref()) {
        (OID_EC_PUBLIC_KEY, Some(OID_P256)) => KeyAlgorithm::EcdsaP256,
        (OID_EC_PUBLIC_KEY, Some(OID_P384)) => KeyAlgorithm::EcdsaP384,
        (OID_EC_PUBLIC_KEY, other) => {
            return Err(format!(
                "an ECDSA key on curve {}, not P-256 or P-384",
                other.unwrap_or("?")
            ));
        }
        (OID_ED25519, _) => KeyAlgorithm::Ed25519,
        (OID_RSA, _) => KeyAlgorithm::Rsa,
        (other, _) => {
            return Err(format!(
                "a key of algorithm {other}, not ECDSA P-256/P-384, Ed25519 or RSA"
            ));
        }
    };
    let bits = spki.subject_public_key.data.to_vec();
    let short = match algorithm {
        KeyAlgorithm::EcdsaP256 => bits.len() != 65,
        KeyAlgorithm::EcdsaP384 => bits.len() != 97,
        KeyAlgorithm::Ed25519 => bits.len() != 32,
        // A 2048-bit modulus alone is 256 bytes.
        KeyAlgorithm::Rsa => bits.len() < 256,
    };
    if short {
        return Err(format!(
            "a {algorithm:?} key of {} bytes: malformed (or RSA under 2048 bits)",
            bits.len()
        ));
    }
    Ok((algorithm, bits))
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
        if p.trusted_root.is_some() || !p.identities.is_empty() {
            let k = if p.trusted_root.is_some() {
                "trusted_root"
            } else {
                "identities"
            };
            return Err((
                key(k),
                "keyless verification (trusted_root, identities) is not supported by this berth yet: use keys".into(),
            ));
        }
        if p.keys.is_empty() {
            return Err((key("keys"), "name at least one public key file".into()));
        }
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

    /// Public keys generated with openssl for these tests (their private halves thrown away).
    const P256_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9kM5yMu+nFR+bhF14+iJ79CVr0Pm
tYr9viFBvOF2sQqjj0NjrwgNfXNJuxJ19bcDdBHfzlpGm376MtfAT2IFfg==
-----END PUBLIC KEY-----
";
    const ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA26YE4keHWH7K/EZGrgS2JPU6SYS638HDv0hcdB+UZr4=
-----END PUBLIC KEY-----
";
    const P521_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQARDnTmjwAr20Brl8UX9nkBIPe3EFq
NPDivq4IeSXgzt73lkiLjEHkHlozLcvz99feum8w7Cf8X7S3XLMitG2QA8IAuAKq
+hfI0xbWwtYxzZUH9jRckEu6vPIF7exz9f2rvYQvRWskDrnAsqlRkmYhqGsn+hyb
rndFz/KVxcUvjlhDPkQ=
-----END PUBLIC KEY-----
";
    const RSA1024_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC68tU/Y9gvSUawe8jhBjaniwEt
gvda/2mf/ohVCTqZgtDaUqP5J+vevZJcE5UcAhLeNM7WXSMOJ0jUG7DLAlaBSeQd
v4IrPU7AZxilYPRIfocv7nHQAp5XY/5OmYc3JR94WABpecmCf5R8aU5nOXGhkZBB
tLVnR2Z0YjyBGNroWwIDAQAB
-----END PUBLIC KEY-----
";

    #[test]
    fn public_keys_are_parsed_or_refused_with_a_reason() {
        let (alg, bits) = parse_public_key(P256_PEM.as_bytes()).unwrap();
        assert_eq!((alg, bits.len(), bits[0]), (KeyAlgorithm::EcdsaP256, 65, 4));
        assert_eq!(
            parse_public_key(ED25519_PEM.as_bytes()).unwrap().0,
            KeyAlgorithm::Ed25519
        );
        for (bad, why) in [
            ("nothing", "not a PEM"),
            (
                "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
                "not a \"PUBLIC KEY\"",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n",
                "not a SubjectPublicKeyInfo",
            ),
            (P521_PEM, "not P-256 or P-384"),
            (RSA1024_PEM, "under 2048 bits"),
        ] {
            let e = parse_public_key(bad.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
