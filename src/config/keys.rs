//! Public keys as a `[[policy]]` names them (`keys`) and as a trusted root holds them (its log
//! keys): a PEM `PUBLIC KEY` or a DER SubjectPublicKeyInfo, parsed into the algorithm and key bits
//! berth verifies with (ECDSA P-256 or P-384, Ed25519, RSA of 2048 bits and more), or refused
//! with the reason.
//!
//! Rule of dependency: uses nothing of the crate (`x509-parser` for the format).

use std::path::PathBuf;

/// A public key as read from its file: its algorithm and its key bits (the SubjectPublicKeyInfo's
/// bit string: an EC point, 32 Ed25519 bytes, or an RSA key in PKCS#1).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKeyConfig {
    pub file: PathBuf,
    pub algorithm: KeyAlgorithm,
    pub bits: Vec<u8>,
}

impl std::fmt::Debug for PublicKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} key {}", self.algorithm, self.file.display())
    }
}

/// The key types cosign and notation sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa,
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

/// Parses a PEM `PUBLIC KEY`. The reason, if it is none berth can use.
pub fn parse_public_key(pem: &[u8]) -> Result<(KeyAlgorithm, Vec<u8>), String> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM file ({e})"))?;
    if pem.label != "PUBLIC KEY" {
        return Err(format!(
            "a PEM {:?}, not a \"PUBLIC KEY\" (export the public half: cosign public-key, or openssl pkey -pubout)",
            pem.label
        ));
    }
    parse_spki(&pem.contents)
}

/// Parses a DER SubjectPublicKeyInfo (a key file's content, a log's key, a certificate's key).
pub fn parse_spki(der: &[u8]) -> Result<(KeyAlgorithm, Vec<u8>), String> {
    use x509_parser::prelude::FromDer;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
        .map_err(|e| format!("not a SubjectPublicKeyInfo ({e})"))?;
    let alg = spki.algorithm.algorithm.to_id_string();
    let param = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let algorithm = match (alg.as_str(), param.as_deref()) {
        (OID_EC_PUBLIC_KEY, Some(OID_P256)) => KeyAlgorithm::EcdsaP256,
        (OID_EC_PUBLIC_KEY, Some(OID_P384)) => KeyAlgorithm::EcdsaP384,
        (OID_EC_PUBLIC_KEY, other) => {
            return Err(format!(
                "an ECDSA key on curve {}, not P-256 or P-384",
                other.unwrap_or("?")
            ));
        }
        (OID_ED25519, _) => KeyAlgorithm::Ed25519,
        (OID_RSA, _) => KeyAlgorithm::Rsa,
        (other, _) => {
            return Err(format!(
                "a key of algorithm {other}, not ECDSA P-256/P-384, Ed25519 or RSA"
            ));
        }
    };
    let bits = spki.subject_public_key.data.to_vec();
    let short = match algorithm {
        KeyAlgorithm::EcdsaP256 => bits.len() != 65,
        KeyAlgorithm::EcdsaP384 => bits.len() != 97,
        KeyAlgorithm::Ed25519 => bits.len() != 32,
        // A 2048-bit modulus alone is 256 bytes.
        KeyAlgorithm::Rsa => bits.len() < 256,
    };
    if short {
        return Err(format!(
            "a {algorithm:?} key of {} bytes: malformed (or RSA under 2048 bits)",
            bits.len()
        ));
    }
    Ok((algorithm, bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Public keys generated with openssl for these tests (their private halves thrown away).
    const P256_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9kM5yMu+nFR+bhF14+iJ79CVr0Pm
tYr9viFBvOF2sQqjj0NjrwgNfXNJuxJ19bcDdBHfzlpGm376MtfAT2IFfg==
-----END PUBLIC KEY-----
";
    const ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA26YE4keHWH7K/EZGrgS2JPU6SYS638HDv0hcdB+UZr4=
-----END PUBLIC KEY-----
";
    const P521_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQARDnTmjwAr20Brl8UX9nkBIPe3EFq
NPDivq4IeSXgzt73lkiLjEHkHlozLcvz99feum8w7Cf8X7S3XLMitG2QA8IAuAKq
+hfI0xbWwtYxzZUH9jRckEu6vPIF7exz9f2rvYQvRWskDrnAsqlRkmYhqGsn+hyb
rndFz/KVxcUvjlhDPkQ=
-----END PUBLIC KEY-----
";
    const RSA1024_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC68tU/Y9gvSUawe8jhBjaniwEt
gvda/2mf/ohVCTqZgtDaUqP5J+vevZJcE5UcAhLeNM7WXSMOJ0jUG7DLAlaBSeQd
v4IrPU7AZxilYPRIfocv7nHQAp5XY/5OmYc3JR94WABpecmCf5R8aU5nOXGhkZBB
tLVnR2Z0YjyBGNroWwIDAQAB
-----END PUBLIC KEY-----
";

    #[test]
    fn public_keys_are_parsed_or_refused_with_a_reason() {
        let (alg, bits) = parse_public_key(P256_PEM.as_bytes()).unwrap();
        assert_eq!((alg, bits.len(), bits[0]), (KeyAlgorithm::EcdsaP256, 65, 4));
        assert_eq!(
            parse_public_key(ED25519_PEM.as_bytes()).unwrap().0,
            KeyAlgorithm::Ed25519
        );
        for (bad, why) in [
            ("nothing", "not a PEM"),
            (
                "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
                "not a \"PUBLIC KEY\"",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n",
                "not a SubjectPublicKeyInfo",
            ),
            (P521_PEM, "not P-256 or P-384"),
            (RSA1024_PEM, "under 2048 bits"),
        ] {
            let e = parse_public_key(bad.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
