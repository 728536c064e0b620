//! A test Sigstore, offline, shared by the integration tests (tests/it/keyless.rs) and the
//! end-to-end ones (tests/e2e/keyless.rs): a Fulcio-like CA and leaves built with rcgen over keys
//! openssl made, a Rekor-like log key whose signed entry timestamps openssl computes over the
//! canonical JSON written out here, the trusted root naming them, and signatures in each form
//! (cosign's annotations, DSSE and message-signature bundles). It depends on berth's
//! library (digests) and on the `openssl` command only, not on either suite's harness.
#![allow(dead_code)] // each test crate uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

pub const GITHUB: &str = "https://token.actions.githubusercontent.com";
pub const WORKFLOW: &str =
    "https://github.com/myorg/app/.github/workflows/release.yml@refs/heads/main";
/// 2026-01-01T12:00:00Z: inside the leaves' validity (that day).
pub const NOON: i64 = 1_767_268_800;

fn digest_of(bytes: &[u8]) -> String {
    berth::oci::Digest::of(bytes).to_string()
}

/// Runs openssl with `args`, then `last`; it must succeed.
pub fn openssl(args: &[&str], last: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .arg(last)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "{out:?}");
}

/// openssl's ECDSA-SHA256 signature (DER) of `data` with `key`.
pub fn sign(key: &Path, data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("payload");
    std::fs::write(&input, data).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&input)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// A P-256 key made by openssl (PKCS#8 PEM): its file and its text.
pub fn key(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(format!("{name}.pem"));
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ],
        &file,
    );
    let text = std::fs::read_to_string(&file).unwrap();
    (file, text)
}

/// The DER SubjectPublicKeyInfo of a key file, as openssl writes it.
fn spki(key: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(key)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

pub fn ca(dir: &Path, name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let (_, text) = key(dir, name);
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2030, 1, 1);
    CertifiedIssuer::self_signed(params, KeyPair::from_pem(&text).unwrap()).unwrap()
}

/// A DER UTF8String, as Fulcio writes its issuer extension (1.3.6.1.4.1.57264.1.8).
fn utf8(s: &str) -> Vec<u8> {
    let mut v = vec![0x0c, s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// A signer: its key file and its certificate (PEM).
pub struct Signer {
    pub key: PathBuf,
    pub cert: String,
    pub der: Vec<u8>,
}

/// The test's Sigstore: a Fulcio-like CA, a Rekor-like log key, and the trusted root naming them.
pub struct Sigstore {
    pub dir: tempfile::TempDir,
    pub fulcio: CertifiedIssuer<'static, KeyPair>,
    pub rekor: PathBuf,
    pub rekor_id: String,
    /// The trusted root (JSON) naming the CA and the log.
    pub root: PathBuf,
}

impl Sigstore {
    pub fn new() -> Sigstore {
        let dir = tempfile::tempdir().unwrap();
        let fulcio = ca(dir.path(), "fulcio-test");
        let (rekor, _) = key(dir.path(), "rekor");
        let rekor_spki = spki(&rekor);
        let rekor_id = digest_of(&rekor_spki)
            .trim_start_matches("sha256:")
            .to_owned();
        let log = |spki: &[u8], id: &str| {
            format!(
                r#"{{"baseUrl":"https://rekor.test","hashAlgorithm":"SHA2_256","publicKey":{{"rawBytes":"{}","keyDetails":"PKIX_ECDSA_P256_SHA_256","validFor":{{"start":"2025-01-01T00:00:00Z"}}}},"logId":{{"keyId":"{}"}}}}"#,
                STANDARD.encode(spki),
                STANDARD.encode(hex::decode(id).unwrap())
            )
        };
        let root = dir.path().join("trusted_root.json");
        std::fs::write(
            &root,
            format!(
                r#"{{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","tlogs":[{}],"certificateAuthorities":[{{"subject":{{"organization":"test","commonName":"fulcio-test"}},"uri":"https://fulcio.test","certChain":{{"certificates":[{{"rawBytes":"{}"}}]}},"validFor":{{"start":"2025-01-01T00:00:00Z"}}}}],"ctlogs":[],"timestampAuthorities":[]}}"#,
                log(&rekor_spki, &rekor_id),
                STANDARD.encode(fulcio.der())
            ),
        )
        .unwrap();
        Sigstore {
            dir,
            fulcio,
            rekor,
            rekor_id,
            root,
        }
    }

    /// A leaf for `subject` vouched for by `issuer`, issued by `by`, valid on 2026-01-01.
    pub fn leaf(
        &self,
        by: &CertifiedIssuer<'static, KeyPair>,
        subject: &str,
        issuer: &str,
    ) -> Signer {
        let (file, text) = key(self.dir.path(), &format!("leaf-{}", rand_name()));
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(subject.try_into().unwrap())];
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 57264, 1, 8],
            utf8(issuer),
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 1, 2);
        let key = KeyPair::from_pem(&text).unwrap();
        let cert = params.signed_by(&key, by).unwrap();
        Signer {
            key: file,
            cert: cert.pem(),
            der: cert.der().to_vec(),
        }
    }

    /// cosign's Rekor bundle annotation: a hashedrekord entry for `sig` by `signer` over
    /// `payload`, integrated at `time`, its SET signed with the log key `log` (openssl).
    pub fn entry(
        &self,
        log: &Path,
        signer: &Signer,
        payload: &str,
        sig: &[u8],
        time: i64,
    ) -> String {
        let (body, set) = self.hashedrekord(log, signer, payload, sig, time);
        format!(
            r#"{{"SignedEntryTimestamp":"{set}","Payload":{{"body":"{body}","integratedTime":{time},"logIndex":7,"logID":"{}"}}}}"#,
            self.rekor_id
        )
    }

    /// A hashedrekord entry's body (base64) for `sig` by `signer` over `payload`, integrated at
    /// `time` (log index 7), and its SET (base64) signed with the log key `log` (openssl).
    fn hashedrekord(
        &self,
        log: &Path,
        signer: &Signer,
        payload: &str,
        sig: &[u8],
        time: i64,
    ) -> (String, String) {
        let body = format!(
            r#"{{"apiVersion":"0.0.1","kind":"hashedrekord","spec":{{"data":{{"hash":{{"algorithm":"sha256","value":"{}"}}}},"signature":{{"content":"{}","publicKey":{{"content":"{}"}}}}}}}}"#,
            digest_of(payload.as_bytes()).trim_start_matches("sha256:"),
            STANDARD.encode(sig),
            STANDARD.encode(&signer.cert)
        );
        let body = STANDARD.encode(body);
        let canonical = format!(
            r#"{{"body":"{body}","integratedTime":{time},"logID":"{}","logIndex":7}}"#,
            self.rekor_id
        );
        (body, STANDARD.encode(sign(log, canonical.as_bytes())))
    }

    /// A keyless Sigstore bundle (v0.3) whose message signature by `signer` (openssl) is over
    /// `payload` (a simple-signing payload: the referrer carries it beside the bundle), with a
    /// `hashedrekord` Rekor entry integrated at noon.
    pub fn message_bundle(&self, signer: &Signer, payload: &str) -> String {
        let sig = sign(&signer.key, payload.as_bytes());
        let (body, set) = self.hashedrekord(&self.rekor, signer, payload, &sig, NOON);
        let digest = hex::decode(digest_of(payload.as_bytes()).trim_start_matches("sha256:"));
        serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": STANDARD.encode(&signer.der)},
                "tlogEntries": [{
                    "logIndex": "7",
                    "logId": {"keyId": STANDARD.encode(hex::decode(&self.rekor_id).unwrap())},
                    "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
                    "integratedTime": NOON.to_string(),
                    "inclusionPromise": {"signedEntryTimestamp": set},
                    "canonicalizedBody": body,
                }],
            },
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": STANDARD.encode(digest.unwrap())},
                "signature": STANDARD.encode(&sig),
            },
        })
        .to_string()
    }

    /// A keyless Sigstore bundle (v0.3, cosign 3's form): a DSSE envelope over an in-toto
    /// statement about `about`, signed by `signer` (openssl, over DSSE's pre-authentication
    /// encoding), with a `dsse` Rekor entry (Rekor's stored form) integrated at noon.
    pub fn dsse_bundle(&self, signer: &Signer, about: &str) -> String {
        const IN_TOTO: &str = "application/vnd.in-toto+json";
        let statement = format!(
            r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"name":"registry.test/team/app","digest":{{"sha256":"{}"}}}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{{}}}}"#,
            about.trim_start_matches("sha256:")
        );
        let pae = format!(
            "DSSEv1 {} {IN_TOTO} {} {statement}",
            IN_TOTO.len(),
            statement.len()
        );
        let sig = sign(&signer.key, pae.as_bytes());
        let body = serde_json::json!({
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {"algorithm": "sha256", "value": "0".repeat(64)},
                "payloadHash": {"algorithm": "sha256", "value": digest_of(statement.as_bytes()).trim_start_matches("sha256:")},
                "signatures": [{"signature": STANDARD.encode(&sig), "verifier": STANDARD.encode(&signer.cert)}],
            },
        });
        let body = STANDARD.encode(body.to_string());
        let canonical = format!(
            r#"{{"body":"{body}","integratedTime":{NOON},"logID":"{}","logIndex":9}}"#,
            self.rekor_id
        );
        serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": STANDARD.encode(&signer.der)},
                "tlogEntries": [{
                    "logIndex": "9",
                    "logId": {"keyId": STANDARD.encode(hex::decode(&self.rekor_id).unwrap())},
                    "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                    "integratedTime": NOON.to_string(),
                    "inclusionPromise": {"signedEntryTimestamp": STANDARD.encode(sign(&self.rekor, canonical.as_bytes()))},
                    "canonicalizedBody": body,
                }],
            },
            "dsseEnvelope": {
                "payload": STANDARD.encode(&statement),
                "payloadType": IN_TOTO,
                "signatures": [{"sig": STANDARD.encode(&sig), "keyid": ""}],
            },
        })
        .to_string()
    }
}

/// A fresh name for a key file.
fn rand_name() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}
