//! Certificate transparency: the Signed Certificate Timestamps (SCTs, RFC 6962) Fulcio embeds in
//! a certificate, each a CT log's promise that it logged the certificate, checked against the CT
//! log keys of the trusted root. When the root names CT logs, at least one SCT must verify (as
//! sigstore-go asks by default); a root without `ctlogs` asks for none.
//!
//! An embedded SCT signs the *precertificate*: the certificate's TBS with the SCT list extension
//! taken out (the list cannot sign itself), together with the SHA-256 of the issuer's public key.
//! So the TBS is rebuilt here: the extension removed and the three enclosing DER lengths (the
//! extensions, their `[3]` wrapper, the TBS) written again. A precertificate's poison extension
//! is not in the final certificate, so nothing else changes.
//!
//! Rule of dependency: uses its sibling `root` (the CT log keys) only.

use sha2::Digest as _;

use super::root::Log;

/// The SCT list extension, 1.3.6.1.4.1.11129.2.4.2, as its DER OID value.
const SCT_LIST: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0xd6, 0x79, 0x02, 0x04, 0x02];

/// Whether `leaf` (DER) carries an SCT that verifies under one of `logs`, its issuer's key being
/// `issuer_spki` (DER). Why not, if none does (and `logs` is not empty).
pub fn check(leaf: &[u8], issuer_spki: &[u8], logs: &[Log]) -> Result<(), String> {
    if logs.is_empty() {
        return Ok(());
    }
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("its certificate is not X.509 ({e})"))?;
    let list = cert
        .extensions()
        .iter()
        .find(|e| e.oid.as_bytes() == SCT_LIST)
        .map(|e| e.value)
        .ok_or("its certificate carries no SCT, and the trusted root names CT logs")?;
    let scts = parse_list(list).ok_or("its certificate's SCT list cannot be read")?;
    let tbs = precertificate_tbs(cert.tbs_certificate.as_ref())
        .ok_or("its certificate's TBS cannot be rebuilt without its SCTs")?;
    let issuer_hash = sha2::Sha256::digest(issuer_spki);
    let mut why = Vec::new();
    for (i, sct) in scts.iter().enumerate() {
        let n = i + 1;
        let Some(log) = logs.iter().find(|l| l.id == sct.log_id) else {
            why.push(format!(
                "SCT #{n} is from log {}, which is not in the trusted root",
                hex::encode(sct.log_id)
            ));
            continue;
        };
        let mut signed = vec![0, 0];
        signed.extend_from_slice(&sct.timestamp.to_be_bytes());
        signed.extend_from_slice(&[0, 1]);
        signed.extend_from_slice(&issuer_hash);
        signed.extend_from_slice(&(tbs.len() as u32).to_be_bytes()[1..]);
        signed.extend_from_slice(&tbs);
        signed.extend_from_slice(&(sct.extensions.len() as u16).to_be_bytes());
        signed.extend_from_slice(sct.extensions);
        if !log.key.verifies(&signed, sct.signature) {
            why.push(format!("SCT #{n} does not verify under its CT log's key"));
        } else if !log.valid.contains((sct.timestamp / 1000) as i64) {
            why.push(format!(
                "SCT #{n} is from outside its CT log key's validity"
            ));
        } else {
            return Ok(());
        }
    }
    Err(format!(
        "no SCT of its certificate verifies under a CT log of the trusted root ({})",
        why.join("; ")
    ))
}

/// One SCT (v1).
#[derive(Debug)]
struct Sct<'a> {
    log_id: [u8; 32],
    timestamp: u64,
    extensions: &'a [u8],
    signature: &'a [u8],
}

/// The SCTs of the extension's value: a DER OCTET STRING holding the TLS-encoded list.
fn parse_list(value: &[u8]) -> Option<Vec<Sct<'_>>> {
    let (tag, content, rest) = tlv(value)?;
    if tag != 0x04 || !rest.is_empty() {
        return None;
    }
    let (mut list, rest) = u16_prefixed(content)?;
    if !rest.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    while !list.is_empty() {
        let (sct, rest) = u16_prefixed(list)?;
        list = rest;
        let (&version, sct) = sct.split_first()?;
        // RFC 6962 3.2: only v1 (0) is defined; a later version is skipped, not an error.
        if version != 0 {
            continue;
        }
        let (head, sct) = sct.split_at_checked(40)?;
        let (log_id, timestamp) = head.split_at(32);
        let log_id: [u8; 32] = log_id.try_into().ok()?;
        let timestamp = u64::from_be_bytes(timestamp.try_into().ok()?);
        let (extensions, sct) = u16_prefixed(sct)?;
        // The hash and signature algorithms (2 bytes): the log's key decides the scheme.
        let (signature, rest) = u16_prefixed(sct.get(2..)?)?;
        if !rest.is_empty() {
            return None;
        }
        out.push(Sct {
            log_id,
            timestamp,
            extensions,
            signature,
        });
    }
    Some(out)
}

fn u16_prefixed(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
    Some((b.get(2..2 + len)?, &b[2 + len..]))
}

/// One DER TLV: its tag, its content, and what follows.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (first as usize, b)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let len = b
            .get(..n)?
            .iter()
            .fold(0usize, |a, x| (a << 8) | *x as usize);
        (len, &b[n..])
    };
    Some((tag, b.get(..len)?, &b[len..]))
}

/// A DER TLV of `tag` around `content`.
fn wrap(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// The TBS certificate `tbs` (DER) with its SCT list extension taken out.
fn precertificate_tbs(tbs: &[u8]) -> Option<Vec<u8>> {
    let (0x30, mut fields, _) = tlv(tbs)? else {
        return None;
    };
    let mut out = Vec::new();
    while !fields.is_empty() {
        let (tag, content, rest) = tlv(fields)?;
        let whole = &fields[..fields.len() - rest.len()];
        fields = rest;
        if tag != 0xa3 {
            out.extend_from_slice(whole);
            continue;
        }
        let (0x30, mut exts, _) = tlv(content)? else {
            return None;
        };
        let mut kept = Vec::new();
        while !exts.is_empty() {
            let (_, ext, rest) = tlv(exts)?;
            let whole = &exts[..exts.len() - rest.len()];
            exts = rest;
            let (_, oid, _) = tlv(ext)?;
            if oid != SCT_LIST {
                kept.extend_from_slice(whole);
            }
        }
        out.extend_from_slice(&wrap(0xa3, &wrap(0x30, &kept)));
    }
    Some(wrap(0x30, &out))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::{CustomExtension, KeyPair, PublicKeyData};
    use ring::signature::EcdsaKeyPair;

    use super::*;
    use crate::config::trusted_root_for_tests as root_json;
    use crate::policy::keyless::Signed;
    use crate::policy::keyless::tests::{LeafSpec, World, p256};

    /// An SCT list extension: one SCT per (log key, its SPKI, what it signs the TBS as).
    fn sct_list(
        scts: &[(&EcdsaKeyPair, &[u8])],
        tbs: &[u8],
        issuer: &KeyPair,
        tamper: &dyn Fn(&mut Vec<u8>),
    ) -> CustomExtension {
        let ms: u64 = 1_767_268_800_000;
        let mut list = Vec::new();
        for (key, spki) in scts {
            // RFC 6962 3.2, precert_entry, written out.
            let mut tbs = tbs.to_vec();
            tamper(&mut tbs);
            let mut signed = vec![0u8, 0];
            signed.extend_from_slice(&ms.to_be_bytes());
            signed.extend_from_slice(&[0, 1]);
            signed.extend_from_slice(&sha2::Sha256::digest(issuer.subject_public_key_info()));
            signed.extend_from_slice(&(tbs.len() as u32).to_be_bytes()[1..]);
            signed.extend_from_slice(&tbs);
            signed.extend_from_slice(&[0, 0]);
            let sig = World::sign(key, &signed);
            let mut sct = vec![0u8];
            sct.extend_from_slice(&sha2::Sha256::digest(spki));
            sct.extend_from_slice(&ms.to_be_bytes());
            sct.extend_from_slice(&[0, 0, 4, 3]);
            sct.extend_from_slice(&(sig.len() as u16).to_be_bytes());
            sct.extend_from_slice(&sig);
            list.extend_from_slice(&(sct.len() as u16).to_be_bytes());
            list.extend_from_slice(&sct);
        }
        let mut tls = (list.len() as u16).to_be_bytes().to_vec();
        tls.extend_from_slice(&list);
        CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2], wrap(0x04, &tls))
    }

    #[test]
    fn with_ct_logs_in_the_root_one_embedded_sct_must_verify() {
        let mut world = World::new();
        let (ct_key, ct) = p256();
        let ct_spki = ct_key.subject_public_key_info();
        let json = root_json(&[world.ca.der()], &world.log_spki, Some(&ct_spki));
        world.root = crate::config::parse_trusted_root(Path::new("r"), json.as_bytes()).unwrap();
        let (other_key, other) = p256();
        let other_spki = other_key.subject_public_key_info();
        let keyless = world.keyless("myorg");
        let verify = |scts: &[(&EcdsaKeyPair, &[u8])], tamper: &dyn Fn(&mut Vec<u8>)| {
            let (leaf, signer) = World::leaf_then(&world.ca, LeafSpec::default(), |tbs, issuer| {
                (!scts.is_empty()).then(|| sct_list(scts, tbs, issuer, tamper))
            });
            let payload = b"p";
            let sig = World::sign(&signer, payload);
            let entry = World::entry(
                &world.log,
                &world.log_spki,
                &leaf,
                payload,
                &sig,
                1_767_268_800,
            );
            keyless.verify(&Signed {
                certificate: &leaf,
                chain: &[],
                message: payload,
                payload,
                signature: &sig,
                entry: Some(Ok(entry)),
            })
        };
        let fails = |r: Result<String, String>, why: &str| {
            let e = r.unwrap_err();
            assert!(e.contains(why), "wanted {why:?}: {e}");
        };
        verify(&[(&ct, &ct_spki)], &|_| {}).unwrap();
        // One good SCT among others suffices.
        verify(&[(&other, &other_spki), (&ct, &ct_spki)], &|_| {}).unwrap();
        fails(
            verify(&[], &|_| {}),
            "carries no SCT, and the trusted root names CT logs",
        );
        fails(
            verify(&[(&other, &other_spki)], &|_| {}),
            "SCT #1 is from log",
        );
        // Another key claiming the root's CT log.
        fails(
            verify(&[(&other, &ct_spki)], &|_| {}),
            "SCT #1 does not verify under its CT log's key",
        );
        // Over another TBS (the precertificate not rebuilt as logged).
        fails(
            verify(&[(&ct, &ct_spki)], &|tbs| {
                let last = tbs.len() - 1;
                tbs[last] ^= 1;
            }),
            "SCT #1 does not verify under its CT log's key",
        );
        // A CT log key not valid then.
        world.root.ctlogs[0].valid.start = Some(1_767_268_801);
        let keyless_later = world.keyless("myorg");
        let (leaf, signer) = World::leaf_then(&world.ca, LeafSpec::default(), |tbs, issuer| {
            Some(sct_list(&[(&ct, &ct_spki)], tbs, issuer, &|_| {}))
        });
        let sig = World::sign(&signer, b"p");
        let entry = World::entry(
            &world.log,
            &world.log_spki,
            &leaf,
            b"p",
            &sig,
            1_767_268_800,
        );
        fails(
            keyless_later.verify(&Signed {
                certificate: &leaf,
                chain: &[],
                message: b"p",
                payload: b"p",
                signature: &sig,
                entry: Some(Ok(entry)),
            }),
            "is from outside its CT log key's validity",
        );
    }

    #[test]
    fn der_lengths_round_trip() {
        for n in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; n];
            let w = wrap(0x30, &content);
            let (tag, c, rest) = tlv(&w).unwrap();
            assert_eq!((tag, c.len(), rest.len()), (0x30, n, 0));
        }
        assert_eq!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(tlv(&[0x30, 0x02, 1]), None);
        // Four length bytes are the most read; five are refused even when they spell a small
        // length, and 0x80 (BER's indefinite length, no bytes) is not DER.
        assert_eq!(
            tlv(&[0x30, 0x84, 0, 0, 0, 1, 9]),
            Some((0x30, &[9u8][..], &[][..]))
        );
        assert_eq!(tlv(&[0x30, 0x85, 0, 0, 0, 0, 1, 9]), None);
        assert_eq!(tlv(&[0x30, 0x80]), None);
        let mut indefinite = vec![0x30, 0x80];
        indefinite.extend_from_slice(&[0; 130]);
        assert_eq!(tlv(&indefinite), None, "not 128 bytes of content");
    }

    /// A list extension (OCTET STRING around a u16-prefixed list) of these SCTs, each u16-prefixed.
    fn list_of(scts: &[Vec<u8>]) -> Vec<u8> {
        let mut list = Vec::new();
        for sct in scts {
            list.extend_from_slice(&(sct.len() as u16).to_be_bytes());
            list.extend_from_slice(sct);
        }
        let mut tls = (list.len() as u16).to_be_bytes().to_vec();
        tls.extend_from_slice(&list);
        wrap(0x04, &tls)
    }

    /// An SCT of `version`: log id, timestamp, no extensions, algorithms and a 3-byte signature.
    fn sct_of(version: u8) -> Vec<u8> {
        let mut sct = vec![version];
        sct.extend_from_slice(&[0xaa; 32]);
        sct.extend_from_slice(&7u64.to_be_bytes());
        sct.extend_from_slice(&[0, 0, 4, 3, 0, 3, 1, 2, 3]);
        sct
    }

    #[test]
    fn an_sct_of_a_later_version_is_skipped_and_a_truncated_one_spoils_the_list() {
        let list = list_of(&[sct_of(1), sct_of(0)]);
        let read = parse_list(&list).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(
            (read[0].log_id, read[0].timestamp, read[0].signature),
            ([0xaa; 32], 7, &[1u8, 2, 3][..])
        );
        // A v1 SCT cut inside its log id and timestamp, or right after them.
        for cut in [1 + 10, 1 + 39, 1 + 40] {
            let short = sct_of(0)[..cut].to_vec();
            assert!(parse_list(&list_of(&[short, sct_of(0)])).is_none(), "{cut}");
        }
        // Any length after a later version's byte is its own business.
        assert_eq!(
            parse_list(&list_of(&[vec![1, 2], sct_of(0)]))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn an_unreadable_list_is_none() {
        assert!(parse_list(&[0x04, 0x02, 0x00, 0x05]).is_none());
        assert!(parse_list(&[0x05, 0x02, 0x00, 0x00]).is_none());
        assert_eq!(parse_list(&[0x04, 0x02, 0x00, 0x00]).unwrap().len(), 0);
    }
}
