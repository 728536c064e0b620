//! Each check of a keyless signature, failing alone: a Fulcio-like CA and leaf made with rcgen, a
//! Rekor-like log key (ring) signing the SET over canonical JSON written out by hand here.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use sha2::Digest as _;

use super::*;
use crate::config::{IdentityConfig, trusted_root_for_tests as root_json};
use crate::policy::cosign::KeylessAnnotations;

pub(crate) const ISSUER: &str = "https://token.actions.githubusercontent.com";
pub(crate) const SUBJECT: &str =
    "https://github.com/myorg/app/.github/workflows/release.yml@refs/heads/main";
/// 2026-01-01T00:00:00Z: the leaf is valid for that day.
pub(crate) const DAY: i64 = 1_767_225_600;

/// A CA (self-signed, as Fulcio's root), its trusted root, and the log's key.
pub(crate) struct World {
    pub ca: CertifiedIssuer<'static, KeyPair>,
    pub log: EcdsaKeyPair,
    pub log_spki: Vec<u8>,
    pub root: TrustedRoot,
}

/// How a leaf is made.
pub(crate) struct LeafSpec {
    pub san: SanType,
    /// (OID, extension content): the issuer extension.
    pub issuer: Option<(Vec<u64>, Vec<u8>)>,
    pub code_signing: bool,
    pub days: (u8, u8),
}

impl Default for LeafSpec {
    fn default() -> Self {
        LeafSpec {
            san: SanType::URI(SUBJECT.try_into().unwrap()),
            issuer: Some((vec![1, 3, 6, 1, 4, 1, 57264, 1, 8], der_utf8(ISSUER))),
            code_signing: true,
            days: (1, 2),
        }
    }
}

pub(crate) fn der_utf8(s: &str) -> Vec<u8> {
    assert!(s.len() < 128);
    let mut v = vec![0x0c, s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

pub(crate) fn p256() -> (KeyPair, EcdsaKeyPair) {
    let key = KeyPair::generate().unwrap();
    let ring = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &key.serialize_der(),
        &SystemRandom::new(),
    )
    .unwrap();
    (key, ring)
}

pub(crate) fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fulcio-test");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2030, 1, 1);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

impl World {
    pub(crate) fn new() -> World {
        let ca = ca();
        let (log_key, log) = p256();
        let log_spki = rcgen::PublicKeyData::subject_public_key_info(&log_key);
        let json = root_json(&[ca.der()], &log_spki, None);
        let root =
            crate::config::parse_trusted_root(Path::new("root.json"), json.as_bytes()).unwrap();
        World {
            ca,
            log,
            log_spki,
            root,
        }
    }

    pub(crate) fn keyless(&self, subject: &str) -> Keyless {
        Keyless::new(
            &self.root,
            &[IdentityConfig {
                issuer: Some(ISSUER.into()),
                subject_regex: Some(subject.into()),
                ..Default::default()
            }],
        )
    }

    /// A leaf issued by `by`, and its signer.
    pub(crate) fn leaf(
        by: &CertifiedIssuer<'static, KeyPair>,
        spec: LeafSpec,
    ) -> (Vec<u8>, EcdsaKeyPair) {
        World::leaf_then(by, spec, |_, _| None)
    }

    /// A leaf as [`World::leaf`], with the extension `extra` makes from the leaf's TBS without it
    /// (an SCT list over the precertificate), if any.
    pub(crate) fn leaf_then(
        by: &CertifiedIssuer<'static, KeyPair>,
        spec: LeafSpec,
        extra: impl Fn(&[u8], &KeyPair) -> Option<CustomExtension>,
    ) -> (Vec<u8>, EcdsaKeyPair) {
        let (key, ring) = p256();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        // Fulcio's leaves name nobody in their subject: the SAN is the identity.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![spec.san];
        if let Some((oid, content)) = spec.issuer {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(&oid, content));
        }
        if spec.code_signing {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2026, 1, spec.days.0);
        params.not_after = rcgen::date_time_ymd(2026, 1, spec.days.1);
        let pre = params.signed_by(&key, by).unwrap().der().to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&pre).unwrap();
        match extra(cert.tbs_certificate.as_ref(), by.key()) {
            Some(ext) => {
                params.custom_extensions.push(ext);
                (params.signed_by(&key, by).unwrap().der().to_vec(), ring)
            }
            None => (pre, ring),
        }
    }

    /// A hashedrekord entry for `signature` by `leaf` over `message`, integrated at `time`, its
    /// SET signed by `log`.
    pub(crate) fn entry(
        log: &EcdsaKeyPair,
        log_spki: &[u8],
        leaf: &[u8],
        message: &[u8],
        signature: &[u8],
        time: i64,
    ) -> Entry {
        let body = format!(
            r#"{{"apiVersion":"0.0.1","kind":"hashedrekord","spec":{{"data":{{"hash":{{"algorithm":"sha256","value":"{}"}}}},"signature":{{"content":"{}","publicKey":{{"content":"{}"}}}}}}}}"#,
            hex::encode(sha2::Sha256::digest(message)),
            STANDARD.encode(signature),
            STANDARD.encode(pem(leaf))
        );
        signed_entry(log, log_spki, STANDARD.encode(body), time)
    }

    pub(crate) fn sign(signer: &EcdsaKeyPair, message: &[u8]) -> Vec<u8> {
        signer
            .sign(&SystemRandom::new(), message)
            .unwrap()
            .as_ref()
            .to_vec()
    }
}

pub(crate) fn signed_entry(log: &EcdsaKeyPair, log_spki: &[u8], body: String, time: i64) -> Entry {
    let log_id = sha2::Sha256::digest(log_spki).to_vec();
    // Rekor's canonical form, written out: sorted keys, no spaces.
    let canonical = format!(
        r#"{{"body":"{body}","integratedTime":{time},"logID":"{}","logIndex":42}}"#,
        hex::encode(&log_id)
    );
    Entry {
        body,
        integrated_time: time,
        log_index: 42,
        log_id,
        set: World::sign(log, canonical.as_bytes()),
    }
}

pub(crate) fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// A payload, a leaf and its signature over it, and a good entry at noon of the leaf's day.
struct Case {
    world: World,
    leaf: Vec<u8>,
    signer: EcdsaKeyPair,
    payload: Vec<u8>,
    signature: Vec<u8>,
    entry: Entry,
}

const NOON: i64 = DAY + 12 * 3600;

fn case(spec: LeafSpec) -> Case {
    let world = World::new();
    let (leaf, signer) = World::leaf(&world.ca, spec);
    let payload = b"{\"critical\":{}}".to_vec();
    let signature = World::sign(&signer, &payload);
    let entry = World::entry(
        &world.log,
        &world.log_spki,
        &leaf,
        &payload,
        &signature,
        NOON,
    );
    Case {
        world,
        leaf,
        signer,
        payload,
        signature,
        entry,
    }
}

impl Case {
    fn verify_with(
        &self,
        keyless: &Keyless,
        entry: Option<Result<Entry, String>>,
    ) -> Result<String, String> {
        keyless.verify(&Signed {
            certificate: &self.leaf,
            chain: &[],
            message: &self.payload,
            payload: &self.payload,
            signature: &self.signature,
            entry,
        })
    }

    fn verify(&self, entry: Entry) -> Result<String, String> {
        self.verify_with(
            &self.world.keyless("^https://github.com/myorg/"),
            Some(Ok(entry)),
        )
    }
}

fn fails(r: Result<String, String>, why: &str) {
    let e = r.unwrap_err();
    assert!(e.contains(why), "wanted {why:?}: {e}");
}

#[test]
fn a_good_keyless_signature_verifies_in_the_tag_scheme() {
    let c = case(LeafSpec::default());
    assert_eq!(
        c.verify(c.entry.clone()).unwrap(),
        format!("a certificate for {SUBJECT} from {ISSUER}")
    );
    // The same, as cosign's annotations carry it.
    let bundle = format!(
        r#"{{"SignedEntryTimestamp":"{}","Payload":{{"body":"{}","integratedTime":{},"logIndex":42,"logID":"{}"}}}}"#,
        STANDARD.encode(&c.entry.set),
        c.entry.body,
        c.entry.integrated_time,
        hex::encode(&c.entry.log_id)
    );
    let annotations = KeylessAnnotations {
        certificate: pem(&c.leaf),
        chain: Some(pem(c.world.ca.der())),
        bundle: Some(bundle.clone()),
    };
    let keyless = c.world.keyless("^https://github.com/myorg/");
    assert!(
        keyless
            .verify_cosign(&annotations, &c.payload, &c.signature)
            .is_ok()
    );
    // An empty chain is none (the root's CA suffices); a chain that is not PEM is refused.
    let unchained = KeylessAnnotations {
        chain: Some(" ".into()),
        ..annotations.clone()
    };
    assert!(
        keyless
            .verify_cosign(&unchained, &c.payload, &c.signature)
            .is_ok()
    );
    fails(
        keyless.verify_cosign(
            &KeylessAnnotations {
                chain: Some("junk".into()),
                ..annotations.clone()
            },
            &c.payload,
            &c.signature,
        ),
        "its chain annotation holds no PEM certificate",
    );
    assert_eq!(Entry::from_cosign(&bundle).unwrap(), c.entry);
    fails(
        keyless.verify_cosign(
            &KeylessAnnotations {
                certificate: "nope".into(),
                ..annotations.clone()
            },
            &c.payload,
            &c.signature,
        ),
        "its certificate annotation holds no PEM certificate",
    );
    fails(
        keyless.verify_cosign(
            &KeylessAnnotations {
                bundle: Some("{}".into()),
                ..annotations
            },
            &c.payload,
            &c.signature,
        ),
        "its Rekor bundle annotation has no usable Payload",
    );
}

#[test]
fn without_a_log_entry_nothing_shows_when_it_signed() {
    let c = case(LeafSpec::default());
    let keyless = c.world.keyless("^https://github.com/myorg/");
    fails(c.verify_with(&keyless, None), "carries no Rekor entry");
    fails(
        c.verify_with(
            &keyless,
            Some(Err("its tlog entry has no inclusion promise".into())),
        ),
        "no inclusion promise",
    );
}

#[test]
fn the_entry_must_come_from_a_log_of_the_root_and_its_set_verify_under_that_key() {
    let c = case(LeafSpec::default());
    let (_, other) = p256();
    // Signed by another key, claiming the root's log.
    let forged = signed_entry(&other, &c.world.log_spki, c.entry.body.clone(), NOON);
    fails(c.verify(forged), "signed entry timestamp does not verify");
    // Another log altogether.
    let mut elsewhere = c.entry.clone();
    elsewhere.log_id = vec![7; 32];
    fails(c.verify(elsewhere), "which is not in the trusted root");
    // Any field the SET covers, changed.
    let mut later = c.entry.clone();
    later.integrated_time += 1;
    fails(c.verify(later), "signed entry timestamp does not verify");
    let mut moved = c.entry.clone();
    moved.log_index += 1;
    fails(c.verify(moved), "signed entry timestamp does not verify");
}

#[test]
fn the_entry_must_fall_inside_the_log_keys_and_the_certificates_validity() {
    let mut c = case(LeafSpec::default());
    let next_day = signed_entry(
        &c.world.log,
        &c.world.log_spki,
        c.entry.body.clone(),
        DAY + 2 * 86_400,
    );
    fails(c.verify(next_day), "outside its certificate's validity");
    let before = signed_entry(
        &c.world.log,
        &c.world.log_spki,
        c.entry.body.clone(),
        DAY - 60,
    );
    fails(c.verify(before), "outside its certificate's validity");
    c.world.root.tlogs[0].valid.start = Some(NOON + 1);
    fails(c.verify(c.entry.clone()), "outside the log key's validity");
}

#[test]
fn the_certificate_must_chain_to_a_ca_of_the_root_issuing_then_for_code_signing() {
    let c = case(LeafSpec::default());
    let mut world = World::new();
    let stranger = ca();
    let (leaf, signer) = World::leaf(&stranger, LeafSpec::default());
    let (payload, signature) = (c.payload.clone(), World::sign(&signer, &c.payload));
    let entry = World::entry(
        &world.log,
        &world.log_spki,
        &leaf,
        &payload,
        &signature,
        NOON,
    );
    let keyless = world.keyless("myorg");
    let verify = |chain: &[Vec<u8>]| {
        keyless.verify(&Signed {
            certificate: &leaf,
            chain,
            message: &payload,
            payload: &payload,
            signature: &signature,
            entry: Some(Ok(entry.clone())),
        })
    };
    fails(verify(&[]), "does not chain to a Fulcio CA");
    // Its own CA, offered as an intermediate, is no anchor.
    fails(
        verify(&[stranger.der().to_vec()]),
        "does not chain to a Fulcio CA",
    );

    // A CA that was not issuing at that time.
    world.root.certificate_authorities[0].valid.end = Some(NOON - 1);
    let (leaf2, signer2) = World::leaf(&world.ca, LeafSpec::default());
    let sig2 = World::sign(&signer2, &payload);
    let entry2 = World::entry(&world.log, &world.log_spki, &leaf2, &payload, &sig2, NOON);
    let keyless = world.keyless("myorg");
    fails(
        keyless.verify(&Signed {
            certificate: &leaf2,
            chain: &[],
            message: &payload,
            payload: &payload,
            signature: &sig2,
            entry: Some(Ok(entry2)),
        }),
        "none of the trusted root's 1 Fulcio CAs was issuing",
    );

    // Not for code signing.
    let c = case(LeafSpec {
        code_signing: false,
        ..LeafSpec::default()
    });
    fails(
        c.verify(c.entry.clone()),
        "its certificate is not for code signing",
    );
}

#[test]
fn an_intermediate_of_the_root_completes_the_path() {
    let world = World::new();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fulcio-intermediate-test");
    let inter =
        CertifiedIssuer::signed_by(params, KeyPair::generate().unwrap(), &world.ca).unwrap();
    let (leaf, signer) = World::leaf(&inter, LeafSpec::default());
    let payload = b"p".to_vec();
    let signature = World::sign(&signer, &payload);
    let entry = World::entry(
        &world.log,
        &world.log_spki,
        &leaf,
        &payload,
        &signature,
        NOON,
    );
    let signed = |chain: &[Vec<u8>]| {
        world.keyless("myorg").verify(&Signed {
            certificate: &leaf,
            chain,
            message: &payload,
            payload: &payload,
            signature: &signature,
            entry: Some(Ok(entry.clone())),
        })
    };
    fails(signed(&[]), "does not chain");
    signed(&[inter.der().to_vec()]).unwrap();
    // Or the root lists it, intermediates first.
    let json = root_json(&[inter.der(), world.ca.der()], &world.log_spki, None);
    let root = crate::config::parse_trusted_root(Path::new("r"), json.as_bytes()).unwrap();
    let keyless = Keyless::new(
        &root,
        &[IdentityConfig {
            issuer: Some(ISSUER.into()),
            subject: Some(SUBJECT.into()),
            ..Default::default()
        }],
    );
    assert!(
        keyless
            .verify(&Signed {
                certificate: &leaf,
                chain: &[],
                message: &payload,
                payload: &payload,
                signature: &signature,
                entry: Some(Ok(entry.clone())),
            })
            .is_ok()
    );
}

#[test]
fn the_san_and_the_issuer_must_match_an_identity() {
    let c = case(LeafSpec::default());
    let with = |issuer: IdentityConfig| {
        c.verify_with(
            &Keyless::new(&c.world.root, &[issuer]),
            Some(Ok(c.entry.clone())),
        )
    };
    let id = |iss: &str, sub: &str| IdentityConfig {
        issuer: Some(iss.into()),
        subject_regex: Some(sub.into()),
        ..Default::default()
    };
    assert!(with(id(ISSUER, "^https://github.com/myorg/")).is_ok());
    fails(
        with(id(ISSUER, "^https://github.com/otherorg/")),
        &format!(
            "its certificate names {SUBJECT:?} from issuer {ISSUER:?}, which matches no configured identity"
        ),
    );
    fails(
        with(id("https://accounts.google.com", "myorg")),
        "matches no configured identity",
    );
    // Exact subject; issuer by regex.
    assert!(
        with(IdentityConfig {
            issuer_regex: Some("githubusercontent".into()),
            subject: Some(SUBJECT.into()),
            ..Default::default()
        })
        .is_ok()
    );
    fails(
        with(IdentityConfig {
            issuer: Some(ISSUER.into()),
            subject: Some("https://github.com/myorg/app".into()),
            ..Default::default()
        }),
        "matches no configured identity",
    );

    // An email SAN and the older raw issuer extension.
    let c = case(LeafSpec {
        san: SanType::Rfc822Name("dev@myorg.test".try_into().unwrap()),
        issuer: Some((
            vec![1, 3, 6, 1, 4, 1, 57264, 1, 1],
            b"https://accounts.google.com".to_vec(),
        )),
        ..LeafSpec::default()
    });
    let email = Keyless::new(
        &c.world.root,
        &[IdentityConfig {
            issuer: Some("https://accounts.google.com".into()),
            subject: Some("dev@myorg.test".into()),
            ..Default::default()
        }],
    );
    assert_eq!(
        c.verify_with(&email, Some(Ok(c.entry.clone()))).unwrap(),
        "a certificate for dev@myorg.test from https://accounts.google.com"
    );
    // No issuer extension: matches no identity.
    let c = case(LeafSpec {
        issuer: None,
        ..LeafSpec::default()
    });
    fails(c.verify(c.entry.clone()), "from issuer \"(none)\"");
    // A v2 issuer extension that is no UTF8String.
    let c = case(LeafSpec {
        issuer: Some((
            vec![1, 3, 6, 1, 4, 1, 57264, 1, 8],
            ISSUER.as_bytes().to_vec(),
        )),
        ..LeafSpec::default()
    });
    fails(c.verify(c.entry.clone()), "is not a UTF8String");
}

#[test]
fn the_signature_must_verify_under_the_certificates_key() {
    let c = case(LeafSpec::default());
    let (_, other) = p256();
    let forged = World::sign(&other, &c.payload);
    // The log entry recorded the forged signature: only the key check stands in the way.
    let entry = World::entry(
        &c.world.log,
        &c.world.log_spki,
        &c.leaf,
        &c.payload,
        &forged,
        NOON,
    );
    let r = c.world.keyless("myorg").verify(&Signed {
        certificate: &c.leaf,
        chain: &[],
        message: &c.payload,
        payload: &c.payload,
        signature: &forged,
        entry: Some(Ok(entry)),
    });
    fails(
        r,
        "its signature does not verify under its certificate's key",
    );
    let _ = &c.signer;
}

#[test]
fn the_entry_must_be_about_this_signature() {
    let c = case(LeafSpec::default());
    let w = &c.world;
    // A valid entry about another payload (signed by the same certificate), replayed.
    let other_payload = b"another".to_vec();
    let other_sig = World::sign(&c.signer, &other_payload);
    let replayed = World::entry(
        &w.log,
        &w.log_spki,
        &c.leaf,
        &other_payload,
        &other_sig,
        NOON,
    );
    fails(
        c.verify(replayed),
        "its Rekor entry is about another artifact",
    );
    // About this payload, but another signature of it.
    let second = World::sign(&c.signer, &c.payload);
    let other = World::entry(&w.log, &w.log_spki, &c.leaf, &c.payload, &second, NOON);
    fails(c.verify(other), "its Rekor entry records another signature");
    // Another certificate.
    let (leaf2, _) = World::leaf(&w.ca, LeafSpec::default());
    let theirs = World::entry(&w.log, &w.log_spki, &leaf2, &c.payload, &c.signature, NOON);
    fails(
        c.verify(theirs),
        "its Rekor entry records another certificate",
    );
    // A kind berth does not read; a body that is not JSON.
    let odd = signed_entry(
        &w.log,
        &w.log_spki,
        STANDARD.encode(r#"{"kind":"rekord","spec":{}}"#),
        NOON,
    );
    fails(
        c.verify(odd),
        "of kind \"rekord\", not hashedrekord or dsse",
    );
    let junk = signed_entry(&w.log, &w.log_spki, STANDARD.encode("junk"), NOON);
    fails(c.verify(junk), "not base64 JSON");
}

/// A keyless Sigstore bundle (v0.3): DSSE over an in-toto statement, a `dsse` Rekor entry.
pub(crate) fn dsse_bundle(
    world: &World,
    subject_hex: &str,
    tamper: impl Fn(&mut String),
) -> String {
    use crate::policy::bundle::{BUNDLE_V03, pae};
    const IN_TOTO: &str = "application/vnd.in-toto+json";
    let (leaf, signer) = World::leaf(&world.ca, LeafSpec::default());
    let statement = format!(
        r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"name":"r","digest":{{"sha256":"{subject_hex}"}}}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{{}}}}"#
    );
    let sig = World::sign(&signer, &pae(IN_TOTO, statement.as_bytes()));
    let mut body = format!(
        r#"{{"apiVersion":"0.0.1","kind":"dsse","spec":{{"envelopeHash":{{"algorithm":"sha256","value":"00"}},"payloadHash":{{"algorithm":"sha256","value":"{}"}},"signatures":[{{"signature":"{}","verifier":"{}"}}]}}}}"#,
        hex::encode(sha2::Sha256::digest(statement.as_bytes())),
        STANDARD.encode(&sig),
        STANDARD.encode(pem(&leaf))
    );
    tamper(&mut body);
    let e = signed_entry(&world.log, &world.log_spki, STANDARD.encode(&body), NOON);
    format!(
        r#"{{"mediaType":"{BUNDLE_V03}","verificationMaterial":{{"certificate":{{"rawBytes":"{}"}},"tlogEntries":[{{"logIndex":"42","logId":{{"keyId":"{}"}},"kindVersion":{{"kind":"dsse","version":"0.0.1"}},"integratedTime":"{NOON}","inclusionPromise":{{"signedEntryTimestamp":"{}"}},"canonicalizedBody":"{}"}}]}},"dsseEnvelope":{{"payload":"{}","payloadType":"{IN_TOTO}","signatures":[{{"sig":"{}","keyid":""}}]}}}}"#,
        STANDARD.encode(&leaf),
        STANDARD.encode(&e.log_id),
        STANDARD.encode(&e.set),
        e.body,
        STANDARD.encode(&statement),
        STANDARD.encode(&sig)
    )
}

#[test]
fn a_keyless_dsse_bundle_verifies_with_a_dsse_entry_about_its_envelope() {
    use crate::oci::Digest;
    use crate::policy::bundle::verify;
    let world = World::new();
    let keyless = world.keyless("^https://github.com/myorg/");
    let d = Digest::of(b"image");
    let good = dsse_bundle(&world, d.hex(), |_| {});
    assert_eq!(
        verify(good.as_bytes(), None, &d, &[], Some(&keyless)).unwrap(),
        format!("a certificate for {SUBJECT} from {ISSUER}")
    );
    fails(
        verify(
            good.as_bytes(),
            None,
            &Digest::of(b"other"),
            &[],
            Some(&keyless),
        ),
        "not this digest",
    );
    // The entry hashes another payload; records another signature.
    let about_other = dsse_bundle(&world, d.hex(), |b| {
        let at = b.find("payloadHash").unwrap();
        let v = b[at..].find("\"value\":\"").unwrap() + at + 9;
        b.replace_range(v..v + 4, "0000");
    });
    fails(
        verify(about_other.as_bytes(), None, &d, &[], Some(&keyless)),
        "its Rekor entry is about another artifact",
    );
    let other_sig = dsse_bundle(&world, d.hex(), |b| {
        let at = b.find("\"signature\":\"").unwrap() + 13;
        b.replace_range(at..at + 4, "AAAA");
    });
    fails(
        verify(other_sig.as_bytes(), None, &d, &[], Some(&keyless)),
        "records another signature or certificate",
    );
    // No inclusion promise; no entry at all.
    let promiseless = good.replace("inclusionPromise", "inclusionProof");
    fails(
        verify(promiseless.as_bytes(), None, &d, &[], Some(&keyless)),
        "no inclusion promise",
    );
    let entryless = {
        let v: serde_json::Value = serde_json::from_str(&good).unwrap();
        let mut v = v;
        v["verificationMaterial"]["tlogEntries"] = serde_json::json!([]);
        v.to_string()
    };
    fails(
        verify(entryless.as_bytes(), None, &d, &[], Some(&keyless)),
        "carries no Rekor entry",
    );
    // A bundle signed with a key, under a keyless-only policy.
    let keyed = serde_json::json!({
        "verificationMaterial": {"publicKey": {"hint": "k"}},
        "dsseEnvelope": {"payload": "", "payloadType": "application/vnd.in-toto+json", "signatures": []}
    });
    let keyed_statement = keyed.to_string().replace(
        r#""payload":"""#,
        &format!(
            r#""payload":"{}""#,
            STANDARD.encode(format!(
                r#"{{"subject":[{{"digest":{{"sha256":"{}"}}}}]}}"#,
                d.hex()
            ))
        ),
    );
    fails(
        verify(keyed_statement.as_bytes(), None, &d, &[], Some(&keyless)),
        "signed with a key, and this policy has no keys",
    );
}

/// A keyless message-signature bundle (v0.3): `sig` by `leaf` over `payload`, with a
/// `hashedrekord` entry about `logged` (the payload, or other bytes) at noon.
fn message_bundle(world: &World, leaf: &[u8], payload: &[u8], sig: &[u8], logged: &[u8]) -> String {
    use crate::policy::bundle::BUNDLE_V03;
    let e = World::entry(&world.log, &world.log_spki, leaf, logged, sig, NOON);
    format!(
        r#"{{"mediaType":"{BUNDLE_V03}","verificationMaterial":{{"certificate":{{"rawBytes":"{}"}},"tlogEntries":[{{"logIndex":"42","logId":{{"keyId":"{}"}},"kindVersion":{{"kind":"hashedrekord","version":"0.0.1"}},"integratedTime":"{NOON}","inclusionPromise":{{"signedEntryTimestamp":"{}"}},"canonicalizedBody":"{}"}}]}},"messageSignature":{{"messageDigest":{{"algorithm":"SHA2_256","digest":"{}"}},"signature":"{}"}}}}"#,
        STANDARD.encode(leaf),
        STANDARD.encode(&e.log_id),
        STANDARD.encode(&e.set),
        e.body,
        STANDARD.encode(sha2::Sha256::digest(payload)),
        STANDARD.encode(sig)
    )
}

#[test]
fn a_keyless_message_signature_verifies_with_a_hashedrekord_entry_about_its_payload() {
    use crate::oci::Digest;
    use crate::policy::bundle::tests::simple_signing;
    use crate::policy::bundle::verify;
    let world = World::new();
    let keyless = world.keyless("^https://github.com/myorg/");
    let d = Digest::of(b"image");
    let payload = simple_signing(&d);
    let p = payload.as_bytes();
    let (leaf, signer) = World::leaf(&world.ca, LeafSpec::default());
    let sig = World::sign(&signer, p);
    let check = |bundle: &str| verify(bundle.as_bytes(), Some(Ok(p)), &d, &[], Some(&keyless));
    assert_eq!(
        check(&message_bundle(&world, &leaf, p, &sig, p)).unwrap(),
        format!("a certificate for {SUBJECT} from {ISSUER}")
    );
    // The entry is about other bytes; the signature is over other bytes; another identity.
    fails(
        check(&message_bundle(&world, &leaf, p, &sig, b"other")),
        "its Rekor entry is about another artifact",
    );
    let other_sig = World::sign(&signer, b"other");
    fails(
        check(&message_bundle(&world, &leaf, p, &other_sig, p)),
        "its signature does not verify under its certificate's key",
    );
    fails(
        verify(
            message_bundle(&world, &leaf, p, &sig, p).as_bytes(),
            Some(Ok(p)),
            &d,
            &[],
            Some(&world.keyless("^https://github.com/otherorg/")),
        ),
        "which matches no configured identity",
    );
    // Under a key-only policy.
    let (_, cfg) = crate::policy::keys::tests::p256();
    fails(
        verify(
            message_bundle(&world, &leaf, p, &sig, p).as_bytes(),
            Some(Ok(p)),
            &d,
            &[crate::policy::keys::Key::new(&cfg)],
            None,
        ),
        "keyless (a certificate), and this policy has no trusted_root",
    );
}

/// The certificate's validity includes its bounds: an entry integrated at its first or its last
/// second verifies, one a second later does not; a refusal names the time as a person reads it.
#[test]
fn the_certificates_validity_includes_its_bounds_and_a_refusal_says_when() {
    let c = case(LeafSpec::default());
    let at = |t: i64| signed_entry(&c.world.log, &c.world.log_spki, c.entry.body.clone(), t);
    // days (1, 2): from 2026-01-01T00:00:00Z (DAY) to 2026-01-02T00:00:00Z.
    for t in [DAY, DAY + 86_400] {
        c.verify(at(t)).unwrap();
    }
    fails(
        c.verify(at(DAY + 86_401)),
        "integrated at 2026-01-02T00:00:01Z, outside its certificate's validity",
    );
}

/// Every configured identity is one the trusted root may vouch for (the count a denial names).
#[test]
fn each_identity_counts() {
    let world = World::new();
    let id = |subject: &str| IdentityConfig {
        issuer: Some(ISSUER.into()),
        subject_regex: Some(subject.into()),
        ..Default::default()
    };
    assert_eq!(world.keyless("^https://a/").identities(), 1);
    let two = Keyless::new(&world.root, &[id("^https://a/"), id("^https://b/")]);
    assert_eq!(two.identities(), 2);
}
