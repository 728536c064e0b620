//! Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`, what cosign 3 attaches to an
//! image as an OCI 1.1 referrer), read and checked against a policy's keys. Two contents count:
//!
//! - a DSSE envelope over an in-toto statement whose subject is the image's digest (cosign 3's
//!   default). The signature is over DSSE's pre-authentication encoding of the payload type and
//!   payload, not over the payload alone.
//! - a message signature over a simple-signing payload (cosign's tag-scheme payload, in bundle
//!   form). A message signature carries only the SHA-256 of what it signs, not the bytes, and no
//!   spec says where an image's payload lives. berth's choice: the referrer manifest that carries
//!   the bundle also carries the payload, as a layer of cosign's simple-signing type
//!   (`application/vnd.dev.cosign.simplesigning.v1+json`); the mirror reads that layer (verified
//!   by digest, cached like the bundle) and hands it in. Then the bundle's `messageDigest` must be
//!   SHA2_256 of exactly those bytes, the payload's `critical.image.docker-manifest-digest` must be
//!   the image's digest, and the signature must verify over the payload, as in the tag scheme.
//!   Trade-offs: a layer keeps the payload alive in the registry (no garbage collection of an
//!   unreferenced blob) and travels with the referrer when tools copy referrers, where a blob
//!   found only by the digest would not; the payload is trusted for nothing until the signature
//!   over it verifies. Not accepted: a message signature with no payload beside it (berth never
//!   rebuilds a payload: the signed bytes are the ones cosign wrote, not a re-serialisation), or
//!   whose digest is not SHA-256.
//!
//! A bundle signed with a key names it only by a hint, which is not trusted: every configured key
//! is tried. A keyless bundle (a certificate in the verification material, and `tlogEntries`
//! with an inclusion promise) is checked by the sibling `keyless`, its Rekor entry a `dsse` one
//! about this envelope, or a `hashedrekord` one about this payload and signature.
//!
//! Rule of dependency: uses `oci` and its siblings `cosign` (the payload's claim), `keys` and
//! `keyless`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest as _;

use super::cosign;
use super::keyless::rekor::Entry;
use super::keyless::{Keyless, Signed};
use super::keys::Key;
use crate::oci::Digest;

/// The artifact type (and layer media type) of a Sigstore bundle.
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Largest bundle read.
pub const MAX_BUNDLE: usize = 1024 * 1024;
/// The DSSE payload type of an in-toto statement.
const IN_TOTO: &str = "application/vnd.in-toto+json";

/// DSSE's pre-authentication encoding: what the signature is over.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// What a bundle's signatures are over, its claim about the image checked.
struct Content {
    /// The bytes signed: DSSE's pre-authentication encoding, or the payload itself.
    message: Vec<u8>,
    /// The payload a log entry hashes (a `dsse` entry the statement, a `hashedrekord` the
    /// signed bytes).
    payload: Vec<u8>,
    signatures: Vec<Vec<u8>>,
    /// The signature, as a denial names it.
    what: &'static str,
}

/// Whether `bundle` holds a signature of a statement about `digest` (DSSE), or of a
/// simple-signing payload claiming it (a message signature over `payload`, the payload the
/// referrer carries beside the bundle: `None` if it carries none, `Err` if it could not be read),
/// by one of `keys` or (a certificate in its verification material) keyless under `keyless`: who
/// signed, or why not.
pub fn verify(
    bundle: &[u8],
    payload: Option<Result<&[u8], &str>>,
    digest: &Digest,
    keys: &[Key],
    keyless: Option<&Keyless>,
) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bundle).map_err(|_| "the bundle is not JSON".to_owned())?;
    let certificate = certificates(&v)?;
    if certificate.is_some() && keyless.is_none() {
        return Err(
            "the bundle is keyless (a certificate), and this policy has no trusted_root".into(),
        );
    }
    let content = match v.get("messageSignature") {
        Some(m) => message_signature(m, payload, digest)?,
        None => dsse(&v, digest)?,
    };
    if let (Some((leaf, chain)), Some(keyless)) = (certificate, keyless) {
        let entries: Vec<Option<Result<Entry, String>>> = match v
            .pointer("/verificationMaterial/tlogEntries")
            .and_then(|t| t.as_array())
        {
            Some(list) if !list.is_empty() => list
                .iter()
                .take(cosign::MAX_SIGNATURES)
                .map(|e| Some(Entry::from_bundle(e)))
                .collect(),
            _ => vec![None],
        };
        let mut why = format!("{} is missing", content.what);
        for sig in &content.signatures {
            for entry in &entries {
                let signed = Signed {
                    certificate: &leaf,
                    chain: &chain,
                    message: &content.message,
                    payload: &content.payload,
                    signature: sig,
                    entry: entry.clone(),
                };
                match keyless.verify(&signed) {
                    Ok(who) => return Ok(who),
                    Err(e) => why = e,
                }
            }
        }
        return Err(why);
    }
    if keys.is_empty() {
        return Err("it is signed with a key, and this policy has no keys".into());
    }
    for sig in &content.signatures {
        if let Some(k) = keys.iter().find(|k| k.verifies(&content.message, sig)) {
            return Ok(k.file.display().to_string());
        }
    }
    Err(format!(
        "{} does not verify with the configured keys",
        content.what
    ))
}

/// A DSSE envelope's content: an in-toto statement about `digest`, and its signatures.
fn dsse(v: &serde_json::Value, digest: &Digest) -> Result<Content, String> {
    let envelope = v
        .get("dsseEnvelope")
        .ok_or_else(|| "the bundle has no DSSE envelope nor message signature".to_owned())?;
    let field = |k: &str| envelope.get(k).and_then(|x| x.as_str());
    let payload_type = field("payloadType").unwrap_or("");
    if payload_type != IN_TOTO {
        return Err(format!(
            "its envelope carries {payload_type:?}, not an in-toto statement"
        ));
    }
    let payload = field("payload")
        .and_then(|p| STANDARD.decode(p).ok())
        .ok_or_else(|| "its envelope's payload is not base64".to_owned())?;
    statement_names(&payload, digest)?;
    let signatures = envelope
        .get("signatures")
        .and_then(|s| s.as_array())
        .ok_or_else(|| "its envelope has no signatures".to_owned())?
        .iter()
        .take(cosign::MAX_SIGNATURES)
        .filter_map(|s| {
            s.get("sig")
                .and_then(|x| x.as_str())
                .and_then(|x| STANDARD.decode(x).ok())
        })
        .collect();
    Ok(Content {
        message: pae(payload_type, &payload),
        payload,
        signatures,
        what: "its envelope's signature",
    })
}

/// A message signature's content: the simple-signing `payload` beside the bundle, whose SHA-256
/// is the signature's `messageDigest` and which claims `digest`, and the signature.
fn message_signature(
    m: &serde_json::Value,
    payload: Option<Result<&[u8], &str>>,
    digest: &Digest,
) -> Result<Content, String> {
    let algorithm = m
        .pointer("/messageDigest/algorithm")
        .and_then(|a| a.as_str())
        .unwrap_or("");
    if algorithm != "SHA2_256" {
        return Err(format!(
            "its message signature's digest is {algorithm:?}, not SHA2_256"
        ));
    }
    let signed = m
        .pointer("/messageDigest/digest")
        .and_then(|d| d.as_str())
        .and_then(|d| STANDARD.decode(d).ok())
        .filter(|d| d.len() == 32)
        .ok_or_else(|| "its message signature's digest is not 32 bytes of base64".to_owned())?;
    let payload = match payload {
        Some(Ok(p)) => p,
        Some(Err(e)) => return Err(format!("the payload beside it: {e}")),
        None => {
            return Err(format!(
                "it is a message signature, and its referrer carries no simple-signing payload ({}) for it to be over",
                cosign::SIMPLE_SIGNING
            ));
        }
    };
    let actual = sha2::Sha256::digest(payload);
    if actual.as_slice() != signed.as_slice() {
        return Err(format!(
            "its message signature is over sha256:{}, not the simple-signing payload beside it (sha256:{})",
            hex::encode(&signed),
            hex::encode(actual)
        ));
    }
    cosign::payload_claims(payload, digest)?;
    let signature = m
        .get("signature")
        .and_then(|s| s.as_str())
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or_else(|| "its message signature is not base64".to_owned())?;
    Ok(Content {
        message: payload.to_vec(),
        payload: payload.to_vec(),
        signatures: vec![signature],
        what: "its message signature",
    })
}

/// A leaf certificate and the rest of its chain (DER).
type Chain = (Vec<u8>, Vec<Vec<u8>>);

/// A keyless bundle's leaf certificate and the rest of its chain: v0.3's `certificate`, or the
/// older `x509CertificateChain`. `None` for a bundle signed with a key.
fn certificates(v: &serde_json::Value) -> Result<Option<Chain>, String> {
    let raw = |c: &serde_json::Value| {
        c.get("rawBytes")
            .and_then(|r| r.as_str())
            .and_then(|r| STANDARD.decode(r).ok())
            .ok_or_else(|| "its certificate's rawBytes are not base64".to_owned())
    };
    if let Some(c) = v.pointer("/verificationMaterial/certificate") {
        return Ok(Some((raw(c)?, Vec::new())));
    }
    let Some(list) = v.pointer("/verificationMaterial/x509CertificateChain/certificates") else {
        return Ok(None);
    };
    let mut all = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .take(8)
        .map(raw)
        .collect::<Result<Vec<_>, _>>()?;
    if all.is_empty() {
        return Err("its certificate chain is empty".into());
    }
    let leaf = all.remove(0);
    Ok(Some((leaf, all)))
}

/// Whether an in-toto statement's subjects include `digest` (sha256).
fn statement_names(payload: &[u8], digest: &Digest) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|_| "its statement is not JSON".to_owned())?;
    let subjects = v
        .get("subject")
        .and_then(|s| s.as_array())
        .ok_or_else(|| "its statement has no subject".to_owned())?;
    let named: Vec<&str> = subjects
        .iter()
        .filter_map(|s| s.pointer("/digest/sha256")?.as_str())
        .collect();
    if named.contains(&digest.hex()) {
        return Ok(());
    }
    match named.first() {
        Some(other) => Err(format!(
            "its statement is about sha256:{}, not this digest",
            other.chars().take(64).collect::<String>()
        )),
        None => Err("its statement names no sha256 subject".into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ring::rand::SystemRandom;
    use sha2::Digest as _;

    use super::*;
    use crate::policy::keys::tests::p256;

    fn statement(hex: &str) -> String {
        format!(
            r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"name":"registry.test/team/app","digest":{{"sha256":"{hex}"}}}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{{}}}}"#
        )
    }

    fn bundle(statement: &str, sig: &[u8], payload_type: &str) -> String {
        format!(
            r#"{{"mediaType":"{BUNDLE_V03}","verificationMaterial":{{"publicKey":{{"hint":"whatever"}},"tlogEntries":[]}},"dsseEnvelope":{{"payload":"{}","payloadType":"{payload_type}","signatures":[{{"sig":"{}","keyid":""}}]}}}}"#,
            STANDARD.encode(statement),
            STANDARD.encode(sig)
        )
    }

    #[test]
    fn pae_is_dssev1() {
        assert_eq!(pae("t", b"abc"), b"DSSEv1 1 t 3 abc");
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }

    #[test]
    fn a_dsse_bundle_verifies_for_its_subject_under_a_key_only() {
        let rng = SystemRandom::new();
        let (signer, cfg) = p256();
        let (other, _) = p256();
        let keys = [Key::new(&cfg)];
        let d = Digest::of(b"image");
        let st = statement(d.hex());
        let sign = |s: &ring::signature::EcdsaKeyPair, m: &[u8]| {
            s.sign(&rng, m).unwrap().as_ref().to_vec()
        };
        let good = bundle(&st, &sign(&signer, &pae(IN_TOTO, st.as_bytes())), IN_TOTO);
        assert_eq!(
            verify(good.as_bytes(), None, &d, &keys, None).unwrap(),
            "test-p256.pub"
        );

        let e = verify(good.as_bytes(), None, &Digest::of(b"other"), &keys, None).unwrap_err();
        assert!(e.contains("not this digest"), "{e}");
        // Signed over the payload alone (not the PAE), by another key, or a changed statement.
        let raw = bundle(&st, &sign(&signer, st.as_bytes()), IN_TOTO);
        assert!(
            verify(raw.as_bytes(), None, &d, &keys, None)
                .unwrap_err()
                .contains("does not verify")
        );
        let foreign = bundle(&st, &sign(&other, &pae(IN_TOTO, st.as_bytes())), IN_TOTO);
        assert!(
            verify(foreign.as_bytes(), None, &d, &keys, None)
                .unwrap_err()
                .contains("does not verify")
        );
        let changed = st.replace("team/app", "team/evil");
        let tampered = bundle(
            &changed,
            &sign(&signer, &pae(IN_TOTO, st.as_bytes())),
            IN_TOTO,
        );
        assert!(
            verify(tampered.as_bytes(), None, &d, &keys, None)
                .unwrap_err()
                .contains("does not verify")
        );
        let typed = bundle(
            &st,
            &sign(&signer, &pae("text/plain", st.as_bytes())),
            "text/plain",
        );
        assert!(
            verify(typed.as_bytes(), None, &d, &keys, None)
                .unwrap_err()
                .contains("not an in-toto statement")
        );

        for (bad, why) in [
            ("nope".to_owned(), "not JSON"),
            (
                r#"{"messageSignature":{}}"#.to_owned(),
                "its message signature's digest is \"\", not SHA2_256",
            ),
            (
                r#"{"verificationMaterial":{"certificate":{"rawBytes":"MAA="}},"dsseEnvelope":{}}"#
                    .to_owned(),
                "keyless (a certificate), and this policy has no trusted_root",
            ),
            ("{}".to_owned(), "no DSSE envelope"),
        ] {
            let e = verify(bad.as_bytes(), None, &d, &keys, None).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// cosign's simple-signing payload claiming `digest`.
    pub(crate) fn simple_signing(digest: &Digest) -> String {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"registry.test/team/app"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
    }

    /// A message-signature bundle: `sig` over a message whose SHA-256 is `signed`'s.
    pub(crate) fn message_bundle(signed: &[u8], sig: &[u8]) -> String {
        format!(
            r#"{{"mediaType":"{BUNDLE_V03}","verificationMaterial":{{"publicKey":{{"hint":"whatever"}},"tlogEntries":[]}},"messageSignature":{{"messageDigest":{{"algorithm":"SHA2_256","digest":"{}"}},"signature":"{}"}}}}"#,
            STANDARD.encode(sha2::Sha256::digest(signed)),
            STANDARD.encode(sig)
        )
    }

    #[test]
    fn a_message_signature_verifies_over_the_payload_beside_it_claiming_the_digest() {
        let rng = SystemRandom::new();
        let (signer, cfg) = p256();
        let (other, _) = p256();
        let keys = [Key::new(&cfg)];
        let d = Digest::of(b"image");
        let sign = |s: &ring::signature::EcdsaKeyPair, m: &[u8]| {
            s.sign(&rng, m).unwrap().as_ref().to_vec()
        };
        let payload = simple_signing(&d);
        let p = payload.as_bytes();
        let good = message_bundle(p, &sign(&signer, p));
        let check = |bundle: &str, beside: Option<Result<&[u8], &str>>| {
            verify(bundle.as_bytes(), beside, &d, &keys, None)
        };
        assert_eq!(check(&good, Some(Ok(p))).unwrap(), "test-p256.pub");

        // The digest is of other bytes than the payload beside it (the signature over the
        // payload is good: only the digest check refuses it).
        let elsewhere = message_bundle(b"other bytes", &sign(&signer, p));
        let e = check(&elsewhere, Some(Ok(p))).unwrap_err();
        assert!(
            e.contains(&format!(
                "its message signature is over sha256:{}, not the simple-signing payload beside it (sha256:{})",
                Digest::of(b"other bytes").hex(),
                d_of(p)
            )),
            "{e}"
        );
        // The payload names another image, honestly signed.
        let other_image = Digest::of(b"other image");
        let theirs = simple_signing(&other_image);
        let t = theirs.as_bytes();
        let e = check(&message_bundle(t, &sign(&signer, t)), Some(Ok(t))).unwrap_err();
        assert_eq!(e, format!("it signs {other_image}, not this digest"));
        // Signed by another key; a signature over other bytes (the digest says this payload).
        let foreign = message_bundle(p, &sign(&other, p));
        let e = check(&foreign, Some(Ok(p))).unwrap_err();
        assert_eq!(
            e,
            "its message signature does not verify with the configured keys"
        );
        let wrong = message_bundle(p, &sign(&signer, b"something else"));
        assert!(
            check(&wrong, Some(Ok(p)))
                .unwrap_err()
                .contains("does not verify")
        );
        // No payload beside it; one that could not be read; a digest that is not SHA-256.
        let e = check(&good, None).unwrap_err();
        assert!(
            e.contains("its referrer carries no simple-signing payload"),
            "{e}"
        );
        let e = check(&good, Some(Err("its blob sha256:x could not be read"))).unwrap_err();
        assert_eq!(
            e,
            "the payload beside it: its blob sha256:x could not be read"
        );
        let sha512 = good.replace("SHA2_256", "SHA2_512");
        let e = check(&sha512, Some(Ok(p))).unwrap_err();
        assert!(e.contains("\"SHA2_512\", not SHA2_256"), "{e}");
        let short = good.replace(&STANDARD.encode(sha2::Sha256::digest(p)), "AAAA");
        let e = check(&short, Some(Ok(p))).unwrap_err();
        assert!(e.contains("not 32 bytes of base64"), "{e}");
        // A policy with no keys.
        let e = verify(good.as_bytes(), Some(Ok(p)), &d, &[], None).unwrap_err();
        assert!(
            e.contains("signed with a key, and this policy has no keys"),
            "{e}"
        );
    }

    fn d_of(bytes: &[u8]) -> String {
        hex::encode(sha2::Sha256::digest(bytes))
    }
}
