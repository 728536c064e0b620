//! The pinned trust root, ready to verify with: each Fulcio CA as a webpki trust anchor (its
//! chain's last certificate) with its intermediates and the time range it issued in, and each
//! transparency log's key by its log ID. Two questions: does a leaf certificate chain to one of
//! these CAs at a given time, and which log key signs entries of a
//! given log ID.
//!
//! The intermediates a signature carries itself (cosign's `chain` annotation) are offered to the
//! path builder as untrusted candidates, as a TLS peer's are: a path must still end at a pinned
//! root, inside that CA's time range. The CT log keys are kept for the sibling `sct`.
//!
//! Rule of dependency: uses `config` (the parsed root) and its grandparent's `keys`.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use crate::config::{TrustedRoot, Validity};
use crate::policy::keys::Key;

/// Code signing (1.3.6.1.5.5.7.3.3), the DER of the OID's value: the EKU Fulcio issues.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// A trusted root, ready.
#[derive(Debug)]
pub struct Root {
    cas: Vec<Ca>,
    logs: Vec<Log>,
    /// The CT logs, whose SCTs a certificate must carry when there are any.
    pub ctlogs: Vec<Log>,
}

#[derive(Debug)]
struct Ca {
    anchor: TrustAnchor<'static>,
    intermediates: Vec<CertificateDer<'static>>,
    valid: Validity,
}

/// A transparency log's key.
#[derive(Debug)]
pub struct Log {
    pub id: Vec<u8>,
    pub key: Key,
    pub valid: Validity,
}

impl Root {
    pub fn new(root: &TrustedRoot) -> Root {
        // Checked at load; a CA that would not parse here is left out (fewer anchors, never more).
        let cas = root
            .certificate_authorities
            .iter()
            .filter_map(|ca| {
                let (last, rest) = ca.chain.split_last()?;
                let anchor =
                    webpki::anchor_from_trusted_cert(&CertificateDer::from(last.as_slice()))
                        .ok()?
                        .to_owned();
                Some(Ca {
                    anchor,
                    intermediates: rest
                        .iter()
                        .map(|c| CertificateDer::from(c.clone()))
                        .collect(),
                    valid: ca.valid,
                })
            })
            .collect();
        let logs = |list: &[crate::config::LogKey], what: &str| {
            list.iter()
                .enumerate()
                .map(|(i, l)| Log {
                    id: l.key_id.clone(),
                    key: Key::from_bits(&format!("{what}[{i}]"), l.algorithm, l.bits.clone()),
                    valid: l.valid,
                })
                .collect()
        };
        Root {
            cas,
            logs: logs(&root.tlogs, "tlogs"),
            ctlogs: logs(&root.ctlogs, "ctlogs"),
        }
    }

    /// The log whose ID is `id`.
    pub fn log(&self, id: &[u8]) -> Option<&Log> {
        self.logs.iter().find(|l| l.id == id)
    }

    /// Whether `leaf` (DER) chains to a CA of the root that was issuing at `time` (Unix seconds),
    /// every certificate of the path valid then, any EKUs they list including code signing (the
    /// leaf's own EKU is checked in `cert`, required there). `extra`: intermediates
    /// the signature carried (untrusted). The issuer's public key (DER SubjectPublicKeyInfo, for
    /// the SCTs), or why not.
    pub fn chains(&self, leaf: &[u8], extra: &[Vec<u8>], time: i64) -> Result<Vec<u8>, String> {
        let leaf_der = CertificateDer::from(leaf);
        let end = webpki::EndEntityCert::try_from(&leaf_der)
            .map_err(|e| format!("its certificate cannot be read as X.509 ({e:?})"))?;
        let at = UnixTime::since_unix_epoch(Duration::from_secs(time.max(0) as u64));
        let mut last = None;
        for ca in self.cas.iter().filter(|ca| ca.valid.contains(time)) {
            let mut intermediates = ca.intermediates.clone();
            intermediates.extend(extra.iter().map(|c| CertificateDer::from(c.as_slice())));
            match end.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&ca.anchor),
                &intermediates,
                at,
                // The leaf's own EKU is checked by the caller; here, a CA that lists EKUs must
                // list code signing (webpki asks every certificate of the path the same).
                webpki::KeyUsage::required_if_present(CODE_SIGNING),
                None,
                None,
            ) {
                Ok(path) => return Ok(path.issuer_spki().as_ref().to_vec()),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => format!(
                "its certificate does not chain to a Fulcio CA of the trusted root at {} ({e:?})",
                super::time(time)
            ),
            None => format!(
                "none of the trusted root's {} Fulcio CAs was issuing at {}",
                self.cas.len(),
                super::time(time)
            ),
        })
    }
}
