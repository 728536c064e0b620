//! A Rekor transparency-log entry as a signature carries it, offline: its body, when the log
//! integrated it, and the log's signed entry timestamp (SET), a promise of inclusion signed with
//! the log's key over the canonical JSON of `{body, integratedTime, logID, logIndex}` (keys
//! sorted, no spaces; `body` the base64 of the entry, `logID` hex). Two forms are read: cosign's
//! `dev.sigstore.cosign/bundle` annotation (`{"SignedEntryTimestamp", "Payload": {...}}`) and a
//! Sigstore bundle's `tlogEntries[]` (`inclusionPromise.signedEntryTimestamp`,
//! `canonicalizedBody`).
//!
//! The SET proves the log saw the body at that time; the body must then be about this very
//! signature, or any valid entry could be replayed beside another signature. A `hashedrekord`
//! entry must record the SHA-256 of the signed bytes, the signature and the certificate; a `dsse`
//! entry the SHA-256 of the envelope's payload and, among its signatures, this one with this
//! certificate. Inclusion proofs and checkpoints are not checked (the SET suffices offline).
//!
//! Rule of dependency: uses its grandparent's `keys`, and the sibling `cert` (PEM).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest as _;

use super::cert::Leaf;
use crate::policy::keys::Key;

/// A log entry, as carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The base64 of the entry body, exactly as the SET signs it.
    pub body: String,
    pub integrated_time: i64,
    pub log_index: i64,
    pub log_id: Vec<u8>,
    pub set: Vec<u8>,
}

/// An integer that protobuf's JSON may give as a string.
fn int(v: Option<&serde_json::Value>) -> Option<i64> {
    match v? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn b64(v: Option<&serde_json::Value>) -> Option<Vec<u8>> {
    let s = v?.as_str()?;
    STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
        .ok()
}

impl Entry {
    /// From cosign's `dev.sigstore.cosign/bundle` annotation.
    pub fn from_cosign(json: &str) -> Result<Entry, String> {
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|_| "its Rekor bundle annotation is not JSON".to_owned())?;
        let bad = |what: &str| format!("its Rekor bundle annotation has no usable {what}");
        let p = v.get("Payload").ok_or_else(|| bad("Payload"))?;
        Ok(Entry {
            body: p
                .get("body")
                .and_then(|b| b.as_str())
                .ok_or_else(|| bad("Payload.body"))?
                .to_owned(),
            integrated_time: int(p.get("integratedTime")).ok_or_else(|| bad("integratedTime"))?,
            log_index: int(p.get("logIndex")).ok_or_else(|| bad("logIndex"))?,
            log_id: p
                .get("logID")
                .and_then(|x| x.as_str())
                .and_then(|x| hex::decode(x).ok())
                .ok_or_else(|| bad("logID"))?,
            set: b64(v.get("SignedEntryTimestamp")).ok_or_else(|| bad("SignedEntryTimestamp"))?,
        })
    }

    /// From a Sigstore bundle's `verificationMaterial.tlogEntries[]` item.
    pub fn from_bundle(v: &serde_json::Value) -> Result<Entry, String> {
        let bad = |what: &str| format!("its tlog entry has no usable {what}");
        let set = b64(v.pointer("/inclusionPromise/signedEntryTimestamp")).ok_or_else(|| {
            "its tlog entry has no inclusion promise (signed entry timestamp), which berth needs offline"
                .to_owned()
        })?;
        Ok(Entry {
            body: STANDARD
                .encode(b64(v.get("canonicalizedBody")).ok_or_else(|| bad("canonicalizedBody"))?),
            integrated_time: int(v.get("integratedTime")).ok_or_else(|| bad("integratedTime"))?,
            log_index: int(v.get("logIndex")).ok_or_else(|| bad("logIndex"))?,
            log_id: b64(v.pointer("/logId/keyId")).ok_or_else(|| bad("logId.keyId"))?,
            set,
        })
    }

    /// What the SET is a signature over.
    pub fn signed_bytes(&self) -> Vec<u8> {
        // Field order is the canonical (sorted) order; serde_json writes no spaces.
        #[derive(serde::Serialize)]
        struct Canonical<'a> {
            body: &'a str,
            #[serde(rename = "integratedTime")]
            integrated_time: i64,
            #[serde(rename = "logID")]
            log_id: String,
            #[serde(rename = "logIndex")]
            log_index: i64,
        }
        serde_json::to_vec(&Canonical {
            body: &self.body,
            integrated_time: self.integrated_time,
            log_id: hex::encode(&self.log_id),
            log_index: self.log_index,
        })
        .expect("plain fields serialize")
    }

    /// Whether the SET verifies under the log's `key`.
    pub fn promised_by(&self, key: &Key) -> bool {
        key.verifies(&self.signed_bytes(), &self.set)
    }

    /// Whether the entry is about this signature: `signature` by `leaf` over `message` (whose
    /// DSSE payload, for an envelope, is `payload`). Why not, if it is not.
    pub fn is_about(
        &self,
        leaf: &Leaf,
        message: &[u8],
        payload: &[u8],
        signature: &[u8],
    ) -> Result<(), String> {
        let body = STANDARD
            .decode(&self.body)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .ok_or_else(|| "its Rekor entry's body is not base64 JSON".to_owned())?;
        let kind = body.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let spec = body.get("spec").unwrap_or(&serde_json::Value::Null);
        let s = |p: &str| spec.pointer(p).and_then(|x| x.as_str());
        match kind {
            "hashedrekord" => {
                sha256_is(
                    s("/data/hash/algorithm"),
                    s("/data/hash/value"),
                    message,
                    "the signed payload",
                )?;
                if b64(spec.pointer("/signature/content")).as_deref() != Some(signature) {
                    return Err("its Rekor entry records another signature".into());
                }
                if !names(leaf, spec.pointer("/signature/publicKey/content")) {
                    return Err("its Rekor entry records another certificate".into());
                }
                Ok(())
            }
            "dsse" => {
                sha256_is(
                    s("/payloadHash/algorithm"),
                    s("/payloadHash/value"),
                    payload,
                    "the envelope's payload",
                )?;
                let sigs = spec
                    .get("signatures")
                    .and_then(|x| x.as_array())
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let ours = sigs.iter().any(|x| {
                    b64(x.get("signature")).as_deref() == Some(signature)
                        && names(leaf, x.get("verifier"))
                });
                if !ours {
                    return Err("its Rekor entry records another signature or certificate".into());
                }
                Ok(())
            }
            other => Err(format!(
                "its Rekor entry is of kind {other:?}, not hashedrekord or dsse"
            )),
        }
    }
}

/// Whether a recorded SHA-256 (`algorithm`, hex `value`) is that of `bytes`.
fn sha256_is(
    algorithm: Option<&str>,
    value: Option<&str>,
    bytes: &[u8],
    what: &str,
) -> Result<(), String> {
    if !algorithm.is_some_and(|a| a.eq_ignore_ascii_case("sha256")) {
        return Err(format!(
            "its Rekor entry records no sha256 of {what} ({algorithm:?})"
        ));
    }
    let want = hex::encode(sha2::Sha256::digest(bytes));
    match value {
        Some(v) if v.eq_ignore_ascii_case(&want) => Ok(()),
        Some(v) => Err(format!(
            "its Rekor entry is about another artifact (sha256:{}, not {what})",
            v.chars().take(64).collect::<String>()
        )),
        None => Err(format!("its Rekor entry records no hash of {what}")),
    }
}

/// Whether a recorded verifier (base64 of a PEM certificate or public key) is `leaf`.
fn names(leaf: &Leaf, recorded: Option<&serde_json::Value>) -> bool {
    let Some(pem) = b64(recorded) else {
        return false;
    };
    x509_parser::pem::Pem::iter_from_buffer(&pem)
        .next()
        .and_then(Result::ok)
        .is_some_and(|p| match p.label.as_str() {
            "CERTIFICATE" => p.contents == leaf.der,
            "PUBLIC KEY" => p.contents == leaf.spki,
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::keyless::tests::{LeafSpec, World, pem};

    /// A recorded verifier as Rekor keeps it: base64 of a PEM block under `label`.
    fn recorded(label: &str, der: &[u8]) -> serde_json::Value {
        let block = pem(der).replace("CERTIFICATE", label);
        serde_json::Value::String(STANDARD.encode(block))
    }

    #[test]
    fn a_recorded_certificate_or_public_key_names_only_its_own_leaf() {
        let world = World::new();
        let (der, _) = World::leaf(&world.ca, LeafSpec::default());
        let leaf = Leaf::parse(&der).unwrap();
        let (other_der, _) = World::leaf(&world.ca, LeafSpec::default());
        let other = Leaf::parse(&other_der).unwrap();
        let names_it = |label: &str, der: &[u8]| names(&leaf, Some(&recorded(label, der)));

        assert!(names_it("CERTIFICATE", &leaf.der));
        assert!(names_it("PUBLIC KEY", &leaf.spki));
        assert!(!names_it("CERTIFICATE", &other.der));
        assert!(!names_it("PUBLIC KEY", &other.spki));
        // The right bytes under the other label, or under a label neither names, are not it.
        assert!(!names_it("CERTIFICATE", &leaf.spki));
        assert!(!names_it("PUBLIC KEY", &leaf.der));
        assert!(!names_it("EC PUBLIC KEY", &leaf.spki));
        assert!(!names(&leaf, None));
        assert!(!names(&leaf, Some(&serde_json::Value::String("%%".into()))));
    }
}
