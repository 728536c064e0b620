//! Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`, what cosign 3 attaches to an
//! image as an OCI 1.1 referrer), read and checked against a policy's keys: a DSSE envelope over an
//! in-toto statement whose subject is the image's digest. The signature is over DSSE's
//! pre-authentication encoding of the payload type and payload, not over the payload alone.
//!
//! A bundle signed with a key names it only by a hint, which is not trusted: every configured key
//! is tried. A keyless bundle (a certificate in the verification material, and `tlogEntries`
//! with an inclusion promise) is checked by the sibling `keyless`, its Rekor entry a `dsse` one
//! about this envelope. Message-signature bundles (a signature over some artifact's digest) carry
//! no claim about an image and are reported as such.
//!
//! Rule of dependency: uses `oci` and its siblings `keys` and `keyless`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

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

/// Whether `bundle` holds a signature of a statement about `digest`, by one of `keys` or (a
/// certificate in its verification material) keyless under `keyless`: who signed, or why not.
pub fn verify(
    bundle: &[u8],
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
    if v.get("messageSignature").is_some() {
        return Err(
            "the bundle is a message signature, which makes no claim about an image digest".into(),
        );
    }
    let envelope = v
        .get("dsseEnvelope")
        .ok_or_else(|| "the bundle has no DSSE envelope".to_owned())?;
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
    let message = pae(payload_type, &payload);
    let sigs: Vec<Vec<u8>> = envelope
        .get("signatures")
        .and_then(|s| s.as_array())
        .ok_or_else(|| "its envelope has no signatures".to_owned())?
        .iter()
        .take(super::cosign::MAX_SIGNATURES)
        .filter_map(|s| {
            s.get("sig")
                .and_then(|x| x.as_str())
                .and_then(|x| STANDARD.decode(x).ok())
        })
        .collect();
    if let (Some((leaf, chain)), Some(keyless)) = (certificate, keyless) {
        let entries: Vec<Option<Result<Entry, String>>> = match v
            .pointer("/verificationMaterial/tlogEntries")
            .and_then(|t| t.as_array())
        {
            Some(list) if !list.is_empty() => list
                .iter()
                .take(super::cosign::MAX_SIGNATURES)
                .map(|e| Some(Entry::from_bundle(e)))
                .collect(),
            _ => vec![None],
        };
        let mut why = "its envelope has no signature".to_owned();
        for sig in &sigs {
            for entry in &entries {
                let signed = Signed {
                    certificate: &leaf,
                    chain: &chain,
                    message: &message,
                    payload: &payload,
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
    for sig in &sigs {
        if let Some(k) = keys.iter().find(|k| k.verifies(&message, sig)) {
            return Ok(k.file.display().to_string());
        }
    }
    Err("its envelope's signature does not verify with the configured keys".into())
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
mod tests {
    use ring::rand::SystemRandom;

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
            verify(good.as_bytes(), &d, &keys, None).unwrap(),
            "test-p256.pub"
        );

        let e = verify(good.as_bytes(), &Digest::of(b"other"), &keys, None).unwrap_err();
        assert!(e.contains("not this digest"), "{e}");
        // Signed over the payload alone (not the PAE), by another key, or a changed statement.
        let raw = bundle(&st, &sign(&signer, st.as_bytes()), IN_TOTO);
        assert!(
            verify(raw.as_bytes(), &d, &keys, None)
                .unwrap_err()
                .contains("does not verify")
        );
        let foreign = bundle(&st, &sign(&other, &pae(IN_TOTO, st.as_bytes())), IN_TOTO);
        assert!(
            verify(foreign.as_bytes(), &d, &keys, None)
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
            verify(tampered.as_bytes(), &d, &keys, None)
                .unwrap_err()
                .contains("does not verify")
        );
        let typed = bundle(
            &st,
            &sign(&signer, &pae("text/plain", st.as_bytes())),
            "text/plain",
        );
        assert!(
            verify(typed.as_bytes(), &d, &keys, None)
                .unwrap_err()
                .contains("not an in-toto statement")
        );

        for (bad, why) in [
            ("nope".to_owned(), "not JSON"),
            (r#"{"messageSignature":{}}"#.to_owned(), "message signature"),
            (
                r#"{"verificationMaterial":{"certificate":{"rawBytes":"MAA="}},"dsseEnvelope":{}}"#
                    .to_owned(),
                "keyless (a certificate), and this policy has no trusted_root",
            ),
            ("{}".to_owned(), "no DSSE envelope"),
        ] {
            let e = verify(bad.as_bytes(), &d, &keys, None).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
