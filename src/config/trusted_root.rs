//! A Sigstore trusted root (`trusted_root` of a `[[policy]]`), read and checked at load: the
//! Fulcio certificate authorities (each a chain of DER certificates, intermediates first and the
//! root last, with the time range it issued in), and the keys of the transparency logs (Rekor,
//! `tlogs`) and of the certificate transparency logs (`ctlogs`), each with its log ID. The format
//! is Sigstore's `TrustedRoot` message in protobuf's JSON form (what `cosign trusted-root create`
//! and the public-good TUF repository's `trusted_root.json` hold); fields berth does not use
//! (`timestampAuthorities`, `mediaType`, URLs) are ignored.
//!
//! Each certificate must parse (and be usable as a trust anchor for the last of a chain), each
//! key must be one berth verifies with (a DER SubjectPublicKeyInfo, or a bare PKCS#1 RSA key where
//! `keyDetails` says `PKCS1_RSA_...`, as Sigstore's staging root has for an old CT log): a bad
//! root fails the load, naming the entry.
//!
//! Rule of dependency: uses its sibling `keys` (the public-key parser) only.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::keys::{KeyAlgorithm, parse_spki};

/// A trusted root as read from its file.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedRoot {
    pub file: PathBuf,
    /// SHA-256 of the file: part of a policy's revision (a new root decides every verdict again).
    pub digest: [u8; 32],
    pub certificate_authorities: Vec<CertificateAuthority>,
    pub tlogs: Vec<LogKey>,
    pub ctlogs: Vec<LogKey>,
}

impl std::fmt::Debug for TrustedRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "trusted root {} ({} CAs, {} logs, {} CT logs)",
            self.file.display(),
            self.certificate_authorities.len(),
            self.tlogs.len(),
            self.ctlogs.len()
        )
    }
}

/// A Fulcio CA: its chain (DER, intermediates first, the root last) and when it issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateAuthority {
    pub chain: Vec<Vec<u8>>,
    pub valid: Validity,
}

/// A log's public key, and the ID its entries name it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogKey {
    /// `logId.keyId` (for Rekor, the SHA-256 of the key's DER SubjectPublicKeyInfo).
    pub key_id: Vec<u8>,
    pub algorithm: KeyAlgorithm,
    /// The SubjectPublicKeyInfo's bit string (as `PublicKeyConfig::bits`).
    pub bits: Vec<u8>,
    pub valid: Validity,
}

/// A time range in Unix seconds; an open end is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Validity {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

impl Validity {
    pub fn contains(&self, t: i64) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t <= e)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RootJson {
    #[serde(default)]
    certificate_authorities: Vec<CaJson>,
    #[serde(default)]
    tlogs: Vec<LogJson>,
    #[serde(default)]
    ctlogs: Vec<LogJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CaJson {
    cert_chain: ChainJson,
    #[serde(default)]
    valid_for: Option<RangeJson>,
}

#[derive(Deserialize)]
struct ChainJson {
    certificates: Vec<RawJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawJson {
    raw_bytes: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogJson {
    public_key: KeyJson,
    log_id: LogIdJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyJson {
    raw_bytes: String,
    #[serde(default)]
    key_details: String,
    #[serde(default)]
    valid_for: Option<RangeJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogIdJson {
    key_id: String,
}

#[derive(Deserialize)]
struct RangeJson {
    start: Option<String>,
    end: Option<String>,
}

/// Reads and checks the trusted root at `file`. The reason (naming the entry) if it is unusable.
pub fn load(file: &Path) -> Result<TrustedRoot, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    parse(file, &bytes).map_err(|e| format!("{}: {e}", file.display()))
}

/// Parses a trusted root's JSON.
pub fn parse(file: &Path, bytes: &[u8]) -> Result<TrustedRoot, String> {
    use sha2::Digest as _;
    let json: RootJson =
        serde_json::from_slice(bytes).map_err(|e| format!("not a Sigstore trusted root ({e})"))?;
    let mut cas = Vec::new();
    for (i, ca) in json.certificate_authorities.iter().enumerate() {
        let at = |e: String| format!("certificateAuthorities[{i}]: {e}");
        if ca.cert_chain.certificates.is_empty() {
            return Err(at("its certChain holds no certificate".into()));
        }
        let mut chain = Vec::new();
        for (j, c) in ca.cert_chain.certificates.iter().enumerate() {
            let der =
                decode(&c.raw_bytes).map_err(|e| at(format!("certificates[{j}].rawBytes: {e}")))?;
            x509_parser::parse_x509_certificate(&der).map_err(|e| {
                at(format!(
                    "certificates[{j}]: not a DER X.509 certificate ({e})"
                ))
            })?;
            chain.push(der);
        }
        let root = rustls_pki_types::CertificateDer::from(chain[chain.len() - 1].as_slice());
        webpki::anchor_from_trusted_cert(&root).map_err(|e| {
            at(format!(
                "its last certificate cannot be a trust anchor ({e:?})"
            ))
        })?;
        let valid = range(ca.valid_for.as_ref()).map_err(|e| at(format!("validFor: {e}")))?;
        cas.push(CertificateAuthority { chain, valid });
    }
    if cas.is_empty() {
        return Err(
            "it names no certificateAuthorities (the Fulcio CAs certificates chain to)".into(),
        );
    }
    let tlogs = logs("tlogs", &json.tlogs)?;
    if tlogs.is_empty() {
        return Err("it names no tlogs (the Rekor keys a log entry is checked with)".into());
    }
    Ok(TrustedRoot {
        file: file.to_owned(),
        digest: sha2::Sha256::digest(bytes).into(),
        certificate_authorities: cas,
        tlogs,
        ctlogs: logs("ctlogs", &json.ctlogs)?,
    })
}

fn logs(what: &str, list: &[LogJson]) -> Result<Vec<LogKey>, String> {
    list.iter()
        .enumerate()
        .map(|(i, l)| {
            let at = |e: String| format!("{what}[{i}].{e}");
            let der = decode(&l.public_key.raw_bytes)
                .map_err(|e| at(format!("publicKey.rawBytes: {e}")))?;
            let (algorithm, bits) = if l.public_key.key_details.starts_with("PKCS1_RSA") {
                // A bare RSAPublicKey (PKCS#1), as some roots give an old CT log's key: the very
                // bits ring verifies with.
                if der.len() < 256 {
                    return Err(at(format!(
                        "publicKey.rawBytes: a PKCS#1 RSA key of {} bytes: malformed or under 2048 bits",
                        der.len()
                    )));
                }
                (KeyAlgorithm::Rsa, der)
            } else {
                parse_spki(&der).map_err(|e| at(format!("publicKey.rawBytes: {e}")))?
            };
            let key_id = decode(&l.log_id.key_id).map_err(|e| at(format!("logId.keyId: {e}")))?;
            let valid = range(l.public_key.valid_for.as_ref())
                .map_err(|e| at(format!("publicKey.validFor: {e}")))?;
            Ok(LogKey {
                key_id,
                algorithm,
                bits,
                valid,
            })
        })
        .collect()
}

/// Protobuf's JSON `bytes`: standard base64 (URL-safe accepted too).
fn decode(s: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    STANDARD
        .decode(s.trim())
        .or_else(|_| URL_SAFE.decode(s.trim()))
        .map_err(|_| "not base64".to_owned())
}

fn range(r: Option<&RangeJson>) -> Result<Validity, String> {
    let Some(r) = r else {
        return Ok(Validity::default());
    };
    let time = |s: &Option<String>| -> Result<Option<i64>, String> {
        s.as_deref()
            .map(|s| {
                s.parse::<jiff::Timestamp>()
                    .map(|t| t.as_second())
                    .map_err(|e| format!("{s:?} is no RFC 3339 time ({e})"))
            })
            .transpose()
    };
    Ok(Validity {
        start: time(&r.start)?,
        end: time(&r.end)?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    /// A trusted root's JSON: one CA (`chain`, DER), one Rekor key (DER SPKI), a CT log key if
    /// any.
    pub(crate) fn root_json(chain: &[&[u8]], rekor: &[u8], ct: Option<&[u8]>) -> String {
        use sha2::Digest as _;
        let certs: Vec<String> = chain
            .iter()
            .map(|c| format!(r#"{{"rawBytes":"{}"}}"#, STANDARD.encode(c)))
            .collect();
        let log = |spki: &[u8]| {
            format!(
                r#"{{"baseUrl":"https://log.test","hashAlgorithm":"SHA2_256","publicKey":{{"rawBytes":"{}","keyDetails":"PKIX_ECDSA_P256_SHA_256","validFor":{{"start":"2020-01-01T00:00:00Z"}}}},"logId":{{"keyId":"{}"}}}}"#,
                STANDARD.encode(spki),
                STANDARD.encode(sha2::Sha256::digest(spki))
            )
        };
        format!(
            r#"{{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","tlogs":[{}],"certificateAuthorities":[{{"subject":{{"organization":"test"}},"uri":"https://fulcio.test","certChain":{{"certificates":[{}]}},"validFor":{{"start":"2020-01-01T00:00:00Z"}}}}],"ctlogs":[{}],"timestampAuthorities":[]}}"#,
            log(rekor),
            certs.join(","),
            ct.map(log).unwrap_or_default()
        )
    }

    #[test]
    fn a_root_is_read_or_refused_naming_the_entry() {
        let ca = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&ca).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&ca);
        let good = root_json(&[cert.der()], &spki, Some(&spki));
        let root = parse(Path::new("root.json"), good.as_bytes()).unwrap();
        assert_eq!(
            root.certificate_authorities[0].chain,
            vec![cert.der().to_vec()]
        );
        assert_eq!(root.tlogs[0].algorithm, KeyAlgorithm::EcdsaP256);
        assert_eq!(root.tlogs[0].key_id.len(), 32);
        assert_eq!(root.tlogs[0].valid.start, Some(1_577_836_800));
        assert!(root.tlogs[0].valid.contains(i64::MAX));
        assert!(!root.tlogs[0].valid.contains(0));
        assert_eq!(root.ctlogs.len(), 1);

        for (bad, why) in [
            ("nope".to_owned(), "not a Sigstore trusted root"),
            (
                good.replace(&STANDARD.encode(cert.der()), "%%"),
                "certificateAuthorities[0]: certificates[0].rawBytes: not base64",
            ),
            (
                good.replace(&STANDARD.encode(cert.der()), "AAAA"),
                "certificateAuthorities[0]: certificates[0]: not a DER X.509",
            ),
            (
                good.replacen(&STANDARD.encode(&spki), "AAAA", 1),
                "tlogs[0].publicKey.rawBytes: not a SubjectPublicKeyInfo",
            ),
            (
                good.replacen("2020-01-01T00:00:00Z", "yesterday", 1),
                "tlogs[0].publicKey.validFor: \"yesterday\" is no RFC 3339 time",
            ),
            (
                good.replace(r#""tlogs":[{"#, r#""tlogs":[],"x":[{"#),
                "names no tlogs",
            ),
            (
                r#"{"certificateAuthorities":[],"tlogs":[]}"#.to_owned(),
                "names no certificateAuthorities",
            ),
        ] {
            let e = parse(Path::new("root.json"), bad.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        // A bare PKCS#1 RSA key (2048 bits, made with openssl for this test) where keyDetails
        // says so; refused as an SPKI otherwise, and when short.
        const RSA_PKCS1: &str = "MIIBCgKCAQEAsdypQom8OOh9rcC3Op8ZGXJI4lWZTXKVuf/Fee5aanZAgKCLH3fa8vrb5/4fOAO1toZP3Fq1EXyyLeAjzG35KqP61W/dwfT1EIP/TmQo8IkSs1NrynGa3NFeFygcGkxOdC9bp4v/T18gM54C1N+ULHQVAn+htDWTn2cb3h1roLhc9hP8lFVIRQaALNXHz2ykJGIQTb0rNOsOgXE3C8TxVHTkIUyw3EjWL51yKhoxxSmxh5LsX9Qm+vGft+6uNZ/WdDqzG1hf5TNY5HGNt7UFtNkIko//muC8cNd6eFkPQMhtZdkG37BSeBQ4CjgiPcmx4AwxaBiPpfkAbruvqqHbjQIDAQAB";
        let spki_b64 = STANDARD.encode(&spki);
        let ct_at = good.rfind(&spki_b64).unwrap();
        let mut rsa = good.clone();
        rsa.replace_range(ct_at..ct_at + spki_b64.len(), RSA_PKCS1);
        let rsa_typed = rsa
            .replacen(
                "PKIX_ECDSA_P256_SHA_256",
                "PKCS1_RSA_PKCS1V5",
                // The CT log's is the second keyDetails of the file.
                2,
            )
            .replacen("PKCS1_RSA_PKCS1V5", "PKIX_ECDSA_P256_SHA_256", 1);
        let root = parse(Path::new("root.json"), rsa_typed.as_bytes()).unwrap();
        assert_eq!(root.ctlogs[0].algorithm, KeyAlgorithm::Rsa);
        let e = parse(Path::new("root.json"), rsa.as_bytes()).unwrap_err();
        assert!(
            e.contains("ctlogs[0].publicKey.rawBytes: not a SubjectPublicKeyInfo"),
            "{e}"
        );
        let short = rsa_typed.replace(RSA_PKCS1, "MAAA");
        let e = parse(Path::new("root.json"), short.as_bytes()).unwrap_err();
        assert!(
            e.contains("ctlogs[0].publicKey.rawBytes: a PKCS#1 RSA key of 3 bytes"),
            "{e}"
        );

        let e = load(Path::new("/surely/not/root.json")).unwrap_err();
        assert!(e.contains("cannot read /surely/not/root.json"), "{e}");
    }
}
