//! The OCI vocabulary: repository names, tags, digests, references and media types; the
//! referrers list (`referrers`), re-encoded from what an upstream sends.
//!
//! Every value is parsed at the edge with the grammar of the OCI distribution spec and carried as a
//! newtype afterwards, so no handler ever sees a raw client string. Rule of dependency: a leaf (uses
//! only `error`).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::Error;

pub mod referrers;

/// Longest repository name the spec lets a registry accept (it says 255 with the host; we keep it).
pub const MAX_NAME_LEN: usize = 255;

/// A repository name: `<component>(/<component>)*`, each `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How many `/`-separated components the name has.
    pub fn components(&self) -> usize {
        self.0.split('/').count()
    }

    /// Docker Hub keeps its official images under `library/`: `nginx` is `library/nginx`.
    pub fn with_library_prefix(&self) -> RepoName {
        if self.components() == 1 {
            RepoName(format!("library/{}", self.0))
        } else {
            self.clone()
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One path component of a repository name.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    // Separators: `.`, `_`, `__`, or a run of `-`, always between alphanumerics.
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        // A separator must be followed by an alphanumeric (end was checked above).
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Err(Error::name_invalid(format!(
                "repository name must be 1 to {MAX_NAME_LEN} characters"
            )));
        }
        if !s.split('/').all(valid_component) {
            return Err(Error::name_invalid(format!(
                "{:?} is not a valid repository name (lowercase letters, digits and separators . _ __ -, components joined by /)",
                truncate(s)
            )));
        }
        Ok(RepoName(s.to_owned()))
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Tag {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
        let rest_ok = b
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || b.len() > 128 {
            return Err(Error::tag_invalid(format!(
                "{:?} is not a valid tag",
                truncate(s)
            )));
        }
        Ok(Tag(s.to_owned()))
    }
}

/// A content digest. Only `sha256` is accepted: it is what every registry uses, and what the store
/// lays out on disk (`blobs/sha256/<hex>`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// 64 lowercase hex characters.
    hex: String,
}

impl Digest {
    pub const ALGORITHM: &'static str = "sha256";

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::digest(bytes).as_slice())
    }

    /// Wraps the output of a finished SHA-256.
    pub fn from_sha256(raw: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(raw),
        }
    }

    /// Builds a digest from 64 hex characters (as found in a store file name).
    pub fn from_hex(hex: &str) -> Option<Digest> {
        (hex.len() == 64
            && hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
        .then(|| Digest {
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(Error::digest_invalid(format!(
                "{:?} is not a digest (algorithm:hex)",
                truncate(s)
            )));
        };
        if algo != Self::ALGORITHM {
            // The spec's grammar admits other algorithms; berth only serves sha256 content.
            let grammar_ok = !algo.is_empty()
                && algo
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+._-".contains(&c));
            let detail = if grammar_ok {
                format!("digest algorithm {algo:?} is not supported (only sha256)")
            } else {
                format!("{:?} is not a digest", truncate(s))
            };
            return Err(Error::digest_invalid(detail));
        }
        Digest::from_hex(hex).ok_or_else(|| {
            Error::digest_invalid(format!(
                "{:?} is not a sha256 digest (64 lowercase hex characters)",
                truncate(s)
            ))
        })
    }
}

/// What a manifest request names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s.contains(':') {
            s.parse().map(Reference::Digest)
        } else {
            s.parse().map(Reference::Tag)
        }
    }
}

/// The digests a manifest names, by where it names them: `config`, `layers`, an index's
/// `manifests`, an artifact's `blobs`. Entries without a sha256 digest, and JSON that does not
/// parse, name nothing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Named {
    pub config: Option<Digest>,
    pub layers: Vec<Digest>,
    pub manifests: Vec<Digest>,
    pub blobs: Vec<Digest>,
}

impl Named {
    pub fn of(bytes: &[u8]) -> Named {
        #[derive(serde::Deserialize)]
        struct Descriptor {
            digest: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Names {
            config: Option<Descriptor>,
            #[serde(default)]
            layers: Vec<Descriptor>,
            #[serde(default)]
            manifests: Vec<Descriptor>,
            #[serde(default)]
            blobs: Vec<Descriptor>,
        }
        let Ok(n) = serde_json::from_slice::<Names>(bytes) else {
            return Named::default();
        };
        let digest = |d: Descriptor| d.digest?.parse().ok();
        let digests = |v: Vec<Descriptor>| v.into_iter().filter_map(digest).collect();
        Named {
            config: n.config.and_then(digest),
            layers: digests(n.layers),
            manifests: digests(n.manifests),
            blobs: digests(n.blobs),
        }
    }
}

/// Media types berth serves as manifests.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Old signed schema 1 manifests; still passed through for ancient images.
    pub const DOCKER_MANIFEST_V1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";

    /// The one `Accept` header berth sends upstream for a manifest, whatever its client sent:
    /// every format berth caches, so the upstream answers with the manifest as it is stored and
    /// its true digest. (Asked with no `Accept`, `*/*` or only some of these, the Distribution
    /// registry converts a Docker schema 2 manifest into a signed schema 1 manifest whose bytes
    /// change on every request.) Schema 1 comes last and at a low `q`: an ancient image that
    /// exists only in that form is still answered, never preferred. The artifact manifest of the
    /// OCI 1.1 release candidates, which some registries still store for signatures and SBOMs,
    /// is named too: berth caches any manifest type, and a registry that negotiates strictly
    /// would answer 404 for one not named.
    pub const UPSTREAM_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.artifact.manifest.v1+json, application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.1";

    /// The `Accept` header of a request for a schema 1 manifest, passed through for a client that
    /// reads nothing newer (see `mirror`).
    pub const SCHEMA1_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v1+json";

    /// Docker schema 1, signed or not: deprecated, never cached (see `mirror`).
    pub fn is_schema1(media_type: &str) -> bool {
        media_type == DOCKER_MANIFEST_V1_SIGNED || media_type == DOCKER_MANIFEST_V1
    }
}

/// Docker's signed schema 1 manifests ("pretty JWS"): the manifest JSON with a `signatures`
/// array spliced in before its closing brace. Its digest is not the hash of the bytes served but
/// of the *payload*, the JSON without the signatures, which each signature's protected header
/// describes: the first `formatLength` bytes, then `formatTail` (base64url). A registry that
/// converts schema 2 to schema 1 on the fly signs with a fresh key each time, so the bytes differ
/// on every request while the payload, and so the digest, stay the same.
pub mod schema1 {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::Digest;

    /// The payload's digest, or `None` if `bytes` are not a signed schema 1 manifest whose every
    /// signature describes the same payload.
    pub fn payload_digest(bytes: &[u8]) -> Option<Digest> {
        #[derive(serde::Deserialize)]
        struct Signed {
            #[serde(rename = "schemaVersion")]
            schema_version: u32,
            signatures: Vec<Signature>,
        }
        #[derive(serde::Deserialize)]
        struct Signature {
            protected: String,
        }
        #[derive(serde::Deserialize)]
        struct Protected {
            #[serde(rename = "formatLength")]
            format_length: usize,
            #[serde(rename = "formatTail")]
            format_tail: String,
        }
        let signed: Signed = serde_json::from_slice(bytes).ok()?;
        if signed.schema_version != 1 || signed.signatures.is_empty() {
            return None;
        }
        let mut payload: Option<Vec<u8>> = None;
        for sig in &signed.signatures {
            let header = decode(&sig.protected)?;
            let p: Protected = serde_json::from_slice(&header).ok()?;
            let head = bytes.get(..p.format_length)?;
            let mut this = Vec::with_capacity(p.format_length + p.format_tail.len());
            this.extend_from_slice(head);
            this.extend_from_slice(&decode(&p.format_tail)?);
            match &payload {
                Some(first) if *first != this => return None,
                Some(_) => {}
                None => payload = Some(this),
            }
        }
        // The payload must itself be a manifest: a header that points `formatLength` at some
        // other prefix of the bytes describes no payload berth could check.
        let payload = payload?;
        serde_json::from_slice::<serde_json::Value>(&payload).ok()?;
        Some(Digest::of(&payload))
    }

    /// base64url, with or without padding (libtrust writes none).
    fn decode(s: &str) -> Option<Vec<u8>> {
        URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
    }
}

/// Does an `Accept` header value (all the client's `Accept` headers joined with `,`) admit
/// `media_type`? A missing or empty header, `*/*` and `application/*` admit everything; a
/// `q=0` parameter refuses.
pub fn accepts(accept: Option<&str>, media_type: &str) -> bool {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return true;
    };
    admits(accept, media_type, true)
}

/// Does an `Accept` header value name `media_type` itself (not through a wildcard), without
/// refusing it with `q=0`?
pub fn names(accept: Option<&str>, media_type: &str) -> bool {
    accept.is_some_and(|a| admits(a, media_type, false))
}

fn admits(accept: &str, media_type: &str, wildcards: bool) -> bool {
    let (mt_type, _) = media_type.split_once('/').unwrap_or((media_type, ""));
    accept.split(',').any(|item| {
        let mut parts = item.split(';');
        let range = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
        });
        if refused {
            return false;
        }
        range.eq_ignore_ascii_case(media_type)
            || wildcards
                && (range == "*/*"
                    || range
                        .strip_suffix("/*")
                        .is_some_and(|t| t.eq_ignore_ascii_case(mt_type)))
    })
}

/// Keeps client strings short in error details and logs.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::error::{Kind, Malformed};

    #[test]
    fn names() {
        for ok in [
            "nginx",
            "library/nginx",
            "a/b/c",
            "a.b",
            "a_b",
            "a__b",
            "a---b",
            "0",
            "coreos/flannel",
            "foo-bar/baz.qux_1",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "", "Nginx", "a//b", "/a", "a/", "a..b", "a___b", "-a", "a-", "a_", ".a", "a/.b",
            "a:b", "a b", "ä", "a/../b",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
        assert!("a".repeat(256).parse::<RepoName>().is_err());
        assert!("a".repeat(255).parse::<RepoName>().is_ok());
    }

    #[test]
    fn library_prefix() {
        let n: RepoName = "nginx".parse().unwrap();
        assert_eq!(n.with_library_prefix().as_str(), "library/nginx");
        let n: RepoName = "bitnami/nginx".parse().unwrap();
        assert_eq!(n.with_library_prefix().as_str(), "bitnami/nginx");
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.0", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".a", "-a", "a/b", "a:b", &"a".repeat(129), "a b"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digests() {
        let hex = "a".repeat(64);
        let d: Digest = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(d.hex(), hex);
        assert_eq!(d.to_string(), format!("sha256:{hex}"));
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha512:{}", "a".repeat(128)),
            "sha256".to_owned(),
            format!("sha256:{}/", "a".repeat(64)),
            format!("sha256:{}", "g".repeat(64)),
        ] {
            let err = bad.parse::<Digest>().unwrap_err();
            assert_eq!(err.kind, Kind::Invalid(Malformed::Digest), "{bad}");
        }
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn references() {
        assert!(matches!(
            "latest".parse::<Reference>(),
            Ok(Reference::Tag(_))
        ));
        assert!(matches!(
            format!("sha256:{}", "0".repeat(64)).parse::<Reference>(),
            Ok(Reference::Digest(_))
        ));
        assert_eq!(
            "sha256:zz".parse::<Reference>().unwrap_err().kind,
            Kind::Invalid(Malformed::Digest)
        );
        assert_eq!(
            "-x".parse::<Reference>().unwrap_err().kind,
            Kind::Invalid(Malformed::Tag)
        );
    }

    /// Signs `payload` (a JSON object) the way libtrust lays it out: the payload up to its last
    /// `\n}`, the signatures, then the tail. `nonce` stands in for the signature bytes.
    pub(crate) fn sign_schema1(payload: &str, nonce: &str) -> Vec<u8> {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let cut = payload.rfind("\n}").expect("payload ends in \\n}");
        let protected = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"formatLength":{cut},"formatTail":"{}","time":"2026-11-30T00:00:00Z"}}"#,
            URL_SAFE_NO_PAD.encode(&payload[cut..])
        ));
        format!(
            r#"{},
   "signatures": [{{"header": {{"alg": "ES256"}}, "signature": "{nonce}", "protected": "{protected}"}}]{}"#,
            &payload[..cut],
            &payload[cut..]
        )
        .into_bytes()
    }

    #[test]
    fn schema1_digest_is_the_payload_digest() {
        let payload =
            "{\n   \"schemaVersion\": 1,\n   \"name\": \"library/app\",\n   \"tag\": \"1\"\n}";
        let a = sign_schema1(payload, "c2lnbmF0dXJlLWE");
        let b = sign_schema1(payload, "c2lnbmF0dXJlLWI");
        assert_ne!(a, b);
        let want = Digest::of(payload.as_bytes());
        assert_eq!(schema1::payload_digest(&a), Some(want.clone()));
        assert_eq!(schema1::payload_digest(&b), Some(want.clone()));
        assert_ne!(Digest::of(&a), want);

        // Changing the payload changes the digest: the bytes are checked, not trusted.
        let tampered = String::from_utf8(a.clone())
            .unwrap()
            .replace("\"1\"", "\"2\"");
        let got = schema1::payload_digest(tampered.as_bytes()).unwrap();
        assert_ne!(got, want);
    }

    #[test]
    fn schema1_refuses_what_is_not_a_signed_manifest() {
        let payload = "{\n   \"schemaVersion\": 1,\n   \"name\": \"a\"\n}";
        let signed = String::from_utf8(sign_schema1(payload, "eA")).unwrap();
        // Not schema 1, no signatures, garbage.
        for bad in [
            payload.to_owned(),
            r#"{"schemaVersion":2,"signatures":[]}"#.to_owned(),
            r#"{"schemaVersion":1,"signatures":[]}"#.to_owned(),
            signed.replace("\"schemaVersion\": 1", "\"schemaVersion\": 2"),
            "not json".to_owned(),
        ] {
            assert_eq!(schema1::payload_digest(bad.as_bytes()), None, "{bad}");
        }
        // A protected header that is not base64, or a length past the end.
        let v: serde_json::Value = serde_json::from_str(&signed).unwrap();
        let protected = v["signatures"][0]["protected"].as_str().unwrap().to_owned();
        assert_eq!(
            schema1::payload_digest(signed.replace(&protected, "!!!").as_bytes()),
            None
        );
        use base64::Engine as _;
        let long = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"formatLength":999999,"formatTail":"fQ"}"#);
        assert_eq!(
            schema1::payload_digest(signed.replace(&protected, &long).as_bytes()),
            None
        );
        // Two signatures that describe different payloads.
        let other = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"formatLength":1,"formatTail":"fQ"}"#);
        let two = signed.replace(
            "}]",
            &format!(r#"}}, {{"signature": "eQ", "protected": "{other}"}}]"#),
        );
        assert_eq!(schema1::payload_digest(two.as_bytes()), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn accepts_never_panics(accept in proptest::option::of(".{0,120}"), media in ".{0,60}") {
                let _ = accepts(accept.as_deref(), &media);
            }

            #[test]
            fn a_listed_media_type_is_accepted_unless_refused(
                others in prop::collection::vec("[a-z]{1,8}/[a-z.+]{1,20}", 0..4),
                media in "[a-z]{1,8}/[a-z.+]{1,20}",
                q in proptest::option::of(0u8..=10),
            ) {
                let mut items = others.clone();
                items.push(match q {
                    Some(q) => format!("{media}; q={}", f32::from(q) / 10.0),
                    None => media.clone(),
                });
                let header = items.join(", ");
                let refused_here = q == Some(0);
                if !refused_here {
                    prop_assert!(accepts(Some(&header), &media), "{}", header);
                }
                if !others.contains(&media) && refused_here {
                    prop_assert!(!accepts(Some(&header), &media), "{}", header);
                }
            }
        }
    }

    #[test]
    fn accept_negotiation() {
        use media::*;
        assert!(accepts(None, OCI_INDEX));
        assert!(accepts(Some(""), OCI_INDEX));
        assert!(accepts(Some("*/*"), OCI_INDEX));
        assert!(accepts(Some("application/*"), OCI_INDEX));
        assert!(!accepts(Some(DOCKER_MANIFEST), OCI_INDEX));
        assert!(accepts(
            Some(&format!("{DOCKER_MANIFEST}, {OCI_INDEX}")),
            OCI_INDEX
        ));
        assert!(accepts(
            Some(&format!("{DOCKER_MANIFEST}; q=0.5,{OCI_INDEX};q=0.9")),
            OCI_INDEX
        ));
        assert!(!accepts(Some(&format!("{OCI_INDEX};q=0")), OCI_INDEX));
        assert!(!accepts(Some("text/*"), OCI_INDEX));
        // Naming a type takes the type itself.
        assert!(super::names(
            Some(&format!("{DOCKER_MANIFEST}, {OCI_INDEX}")),
            OCI_INDEX
        ));
        for no in [None, Some(""), Some("*/*"), Some("application/*")] {
            assert!(!super::names(no, OCI_INDEX), "{no:?}");
        }
        assert!(!super::names(Some(&format!("{OCI_INDEX};q=0")), OCI_INDEX));
    }
}
