//! A public key of a policy (or of a keyless certificate, or of a transparency log), and the one
//! question asked of it: does this signature over these
//! bytes verify? Verification is `ring`'s (the crypto rustls already uses here: no second stack,
//! no OpenSSL), with the schemes cosign signs with: ECDSA P-256 with SHA-256 and P-384 with
//! SHA-384 (ASN.1 DER signatures), Ed25519, and RSA with SHA-256 (PKCS#1 v1.5, or PSS).
//!
//! Rule of dependency: uses `config` (the parsed key) only.

use std::path::PathBuf;

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};

use crate::config::{KeyAlgorithm, PublicKeyConfig};

/// A public key, as configured.
#[derive(Debug, Clone)]
pub struct Key {
    /// The file it was read from: named in denials and logs.
    pub file: PathBuf,
    algorithm: KeyAlgorithm,
    bits: Vec<u8>,
}

impl Key {
    pub fn new(cfg: &PublicKeyConfig) -> Key {
        Key {
            file: cfg.file.clone(),
            algorithm: cfg.algorithm,
            bits: cfg.bits.clone(),
        }
    }

    /// A key that no file holds (a log's key, a certificate's key), named `name`.
    pub fn from_bits(name: &str, algorithm: KeyAlgorithm, bits: Vec<u8>) -> Key {
        Key {
            file: PathBuf::from(name),
            algorithm,
            bits,
        }
    }

    /// Whether `signature` is this key's over `message`.
    pub fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        let schemes: &[&'static dyn VerificationAlgorithm] = match self.algorithm {
            KeyAlgorithm::EcdsaP256 => &[&signature::ECDSA_P256_SHA256_ASN1],
            KeyAlgorithm::EcdsaP384 => &[&signature::ECDSA_P384_SHA384_ASN1],
            KeyAlgorithm::Ed25519 => &[&signature::ED25519],
            KeyAlgorithm::Rsa => &[
                &signature::RSA_PKCS1_2048_8192_SHA256,
                &signature::RSA_PSS_2048_8192_SHA256,
            ],
        };
        schemes.iter().any(|s| {
            UnparsedPublicKey::new(*s, &self.bits)
                .verify(message, sig)
                .is_ok()
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    use super::*;

    /// A fresh P-256 key pair: the signer, and the public key as the config gives it.
    pub(crate) fn p256() -> (EcdsaKeyPair, PublicKeyConfig) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let cfg = PublicKeyConfig {
            file: "test-p256.pub".into(),
            algorithm: KeyAlgorithm::EcdsaP256,
            bits: pair.public_key().as_ref().to_vec(),
        };
        (pair, cfg)
    }

    #[test]
    fn signatures_verify_under_their_key_only() {
        let rng = SystemRandom::new();
        let (pair, cfg) = p256();
        let key = Key::new(&cfg);
        let sig = pair.sign(&rng, b"payload").unwrap();
        assert!(key.verifies(b"payload", sig.as_ref()));
        assert!(!key.verifies(b"payload!", sig.as_ref()));
        let (_, other) = p256();
        assert!(!Key::new(&other).verifies(b"payload", sig.as_ref()));
        assert!(!key.verifies(b"payload", b"garbage"));

        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = Key::new(&PublicKeyConfig {
            file: "ed.pub".into(),
            algorithm: KeyAlgorithm::Ed25519,
            bits: ed.public_key().as_ref().to_vec(),
        });
        assert!(key.verifies(b"m", ed.sign(b"m").as_ref()));
        assert!(!key.verifies(b"n", ed.sign(b"m").as_ref()));
    }
}
