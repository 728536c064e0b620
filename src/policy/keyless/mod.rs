//! Keyless signatures (Sigstore's Fulcio and Rekor), verified offline against a pinned trusted
//! root: a signature by a short-lived certificate counts when, in this order,
//!
//! 1. it carries a Rekor entry (a certificate lives minutes: only the log's time shows it signed
//!    while valid), whose log ID names a log of the root, whose signed entry timestamp (SET)
//!    verifies under that log's key, integrated while that key was valid;
//! 2. the entry's integrated time falls inside the certificate's validity;
//! 3. the certificate chains to a Fulcio CA of the root (issuing then), at that time (`root`, on
//!    webpki), and is for code signing (its EKU);
//! 4. its SAN and its OIDC issuer extension match one configured identity (`cert`);
//! 5. when the root names CT logs, one of its embedded SCTs verifies under one of their keys
//!    (`sct`: over the precertificate, rebuilt);
//! 6. the signature verifies under the certificate's key;
//! 7. the entry's body is about this very signature, certificate and payload (`rekor`), so a
//!    valid entry cannot be replayed beside another signature.
//!
//! Each refusal says which check failed, for the 403's detail. Not checked: SCTs delivered beside
//! a certificate rather than embedded (Fulcio embeds them), Rekor inclusion proofs and
//! checkpoints (the SET is the offline proof), RFC 3161 timestamps (`timestampAuthorities`), and
//! certificate revocation (Fulcio issues none).
//!
//! Rule of dependency: uses `config` (the root, the identities) and its parent's `keys`, with its
//! rooms `root`, `cert`, `rekor` and `sct`. Pure: no clock (the log's time is the time), no I/O.

use crate::config::{IdentityConfig, Matcher, TrustedRoot};

pub mod cert;
pub mod rekor;
pub mod root;
pub mod sct;

use cert::Leaf;
use rekor::Entry;

/// A policy's keyless side: the root and the identities.
#[derive(Debug)]
pub struct Keyless {
    root: root::Root,
    identities: Vec<(Matcher, Matcher)>,
}

/// A keyless signature as found.
pub struct Signed<'a> {
    /// The leaf certificate (DER).
    pub certificate: &'a [u8],
    /// Intermediates it came with (DER, untrusted).
    pub chain: &'a [Vec<u8>],
    /// What the signature is over (a payload, or DSSE's pre-authentication encoding).
    pub message: &'a [u8],
    /// The payload the log entry hashes: the DSSE envelope's payload, or `message` itself.
    pub payload: &'a [u8],
    pub signature: &'a [u8],
    pub entry: Option<Result<Entry, String>>,
}

/// A Unix time as a person reads it.
pub(crate) fn time(t: i64) -> String {
    jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |t| t.to_string())
}

impl Keyless {
    pub fn new(root: &TrustedRoot, identities: &[IdentityConfig]) -> Keyless {
        Keyless {
            root: root::Root::new(root),
            // Checked at load; one that would not compile here is left out (matches less).
            identities: identities
                .iter()
                .filter_map(|i| Some((i.issuer().ok()?, i.subject().ok()?)))
                .collect(),
        }
    }

    pub fn identities(&self) -> usize {
        self.identities.len()
    }

    /// Whether `s` verifies (see the module's checks): the signer, as a person reads it, or why
    /// not.
    pub fn verify(&self, s: &Signed<'_>) -> Result<String, String> {
        let leaf = Leaf::parse(s.certificate)?;
        let validity = || {
            format!(
                "valid from {} to {}",
                time(leaf.not_before),
                time(leaf.not_after)
            )
        };
        let entry = match &s.entry {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Err(e.clone()),
            None => {
                return Err(format!(
                    "it carries no Rekor entry, so nothing shows it was signed while its certificate was valid ({})",
                    validity()
                ));
            }
        };
        let log = self.root.log(&entry.log_id).ok_or_else(|| {
            format!(
                "its Rekor entry is from log {}, which is not in the trusted root",
                hex::encode(&entry.log_id)
            )
        })?;
        if !entry.promised_by(&log.key) {
            return Err(
                "its Rekor entry's signed entry timestamp does not verify under the log's key"
                    .into(),
            );
        }
        let t = entry.integrated_time;
        if !log.valid.contains(t) {
            return Err(format!(
                "its Rekor entry was integrated at {}, outside the log key's validity",
                time(t)
            ));
        }
        if t < leaf.not_before || t > leaf.not_after {
            return Err(format!(
                "its Rekor entry was integrated at {}, outside its certificate's validity ({})",
                time(t),
                validity()
            ));
        }
        let issuer_spki = self.root.chains(&leaf.der, s.chain, t)?;
        if !leaf.code_signing {
            return Err(
                "its certificate is not for code signing (no extended key usage 1.3.6.1.5.5.7.3.3)"
                    .into(),
            );
        }
        let issuer = leaf.issuer.as_deref().unwrap_or("");
        let matched = self
            .identities
            .iter()
            .any(|(iss, sub)| iss.matches(issuer) && leaf.subjects.iter().any(|s| sub.matches(s)));
        if !matched {
            let wanted: Vec<String> = self
                .identities
                .iter()
                .map(|(i, s)| format!("{s} from {i}"))
                .collect();
            return Err(format!(
                "its certificate names {:?} from issuer {:?}, which matches no configured identity ({})",
                leaf.subject(),
                leaf.issuer.as_deref().unwrap_or("(none)"),
                wanted.join(", ")
            ));
        }
        sct::check(&leaf.der, &issuer_spki, &self.root.ctlogs)?;
        if !leaf.key.verifies(s.message, s.signature) {
            return Err("its signature does not verify under its certificate's key".into());
        }
        entry.is_about(&leaf, s.message, s.payload, s.signature)?;
        Ok(format!(
            "a certificate for {} from {issuer}",
            leaf.subject()
        ))
    }

    /// A keyless signature in cosign's tag scheme: a layer's certificate, chain and bundle
    /// annotations, its payload and its signature.
    pub fn verify_cosign(
        &self,
        annotations: &crate::policy::cosign::KeylessAnnotations,
        payload: &[u8],
        signature: &[u8],
    ) -> Result<String, String> {
        let leaf = cert::pem_certificates(annotations.certificate.as_bytes())
            .map_err(|e| format!("its certificate annotation {e}"))?;
        // The chain only offers intermediates (untrusted): an empty one is no chain.
        let chain = match annotations.chain.as_deref().map(str::trim) {
            Some(c) if !c.is_empty() => cert::pem_certificates(c.as_bytes())
                .map_err(|e| format!("its chain annotation {e}"))?,
            _ => Vec::new(),
        };
        self.verify(&Signed {
            certificate: &leaf[0],
            chain: &chain,
            message: payload,
            payload,
            signature,
            entry: annotations.bundle.as_deref().map(Entry::from_cosign),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
