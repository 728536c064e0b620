//! A keyless signer's certificate, read: when it is valid, whom it names (its SAN: an email or a
//! URI, as Fulcio writes it), who vouched for that name (Fulcio's OIDC issuer extension), whether
//! it is for code signing (its EKU), and its public key. And PEM, as cosign's annotations carry certificates.
//!
//! The issuer is read from 1.3.6.1.4.1.57264.1.8 (a DER UTF8String, what Fulcio writes since
//! 2022), else from the older 1.3.6.1.4.1.57264.1.1 (the raw string).
//!
//! Rule of dependency: uses `config` (the key parser) and its grandparent's `keys`.

use x509_parser::extensions::GeneralName;

use crate::config::parse_spki;
use crate::policy::keys::Key;

const OID_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
const OID_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";

/// A leaf certificate, read.
#[derive(Debug)]
pub struct Leaf {
    pub der: Vec<u8>,
    /// Its SubjectPublicKeyInfo (DER), as a log entry may name it instead of the certificate.
    pub spki: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    /// Its SAN's emails and URIs.
    pub subjects: Vec<String>,
    /// The OIDC issuer Fulcio recorded.
    pub issuer: Option<String>,
    /// Whether its extended key usage includes code signing (1.3.6.1.5.5.7.3.3).
    pub code_signing: bool,
    pub key: Key,
}

impl Leaf {
    pub fn parse(der: &[u8]) -> Result<Leaf, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("its certificate is not X.509 ({e})"))?;
        let subjects = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::RFC822Name(s) | GeneralName::URI(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let ext = |oid: &str| {
            cert.extensions()
                .iter()
                .find(|e| e.oid.to_id_string() == oid)
                .map(|e| e.value)
        };
        let issuer = match (ext(OID_ISSUER_V2), ext(OID_ISSUER_V1)) {
            (Some(v), _) => Some(utf8_string(v).ok_or_else(|| {
                "its certificate's issuer extension (1.3.6.1.4.1.57264.1.8) is not a UTF8String"
                    .to_owned()
            })?),
            (None, Some(v)) => Some(
                String::from_utf8(v.to_vec())
                    .map_err(|_| "its certificate's issuer extension is not UTF-8".to_owned())?,
            ),
            (None, None) => None,
        };
        let code_signing =
            matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.code_signing);
        let spki = cert.public_key().raw.to_vec();
        let (algorithm, bits) =
            parse_spki(&spki).map_err(|e| format!("its certificate's key is unusable: {e}"))?;
        Ok(Leaf {
            der: der.to_vec(),
            spki,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            subjects,
            issuer,
            code_signing,
            key: Key::from_bits("certificate", algorithm, bits),
        })
    }

    /// The SAN a person would recognise (the first email or URI).
    pub fn subject(&self) -> &str {
        self.subjects.first().map_or("(no email or URI)", |s| s)
    }
}

/// The content of a DER UTF8String (tag 12, short or long length).
fn utf8_string(der: &[u8]) -> Option<String> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x0c {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() == len)
        .then(|| String::from_utf8(rest.to_vec()).ok())
        .flatten()
}

/// The DER of every `CERTIFICATE` in a PEM text, in order; why not, if one is unreadable or
/// there is none.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for p in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let p = p.map_err(|e| format!("not PEM ({e})"))?;
        if p.label == "CERTIFICATE" {
            out.push(p.contents);
        }
    }
    if out.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_strings_short_and_long() {
        assert_eq!(utf8_string(b"\x0c\x03abc").as_deref(), Some("abc"));
        let long = "x".repeat(200);
        let mut der = vec![0x0c, 0x81, 200];
        der.extend_from_slice(long.as_bytes());
        assert_eq!(utf8_string(&der), Some(long));
        assert_eq!(utf8_string(b"\x13\x03abc"), None);
        assert_eq!(utf8_string(b"\x0c\x04abc"), None);
        assert_eq!(utf8_string(b""), None);
    }

    /// Long lengths of one to four bytes, in order; none of zero bytes (the indefinite form,
    /// which DER forbids) or more than four; none that runs past the input.
    #[test]
    fn utf8_string_lengths_are_der() {
        let s = "y".repeat(256);
        let mut two = vec![0x0c, 0x82, 0x01, 0x00];
        two.extend_from_slice(s.as_bytes());
        assert_eq!(utf8_string(&two).as_deref(), Some(s.as_str()));
        assert_eq!(
            utf8_string(b"\x0c\x84\x00\x00\x00\x03abc").as_deref(),
            Some("abc")
        );
        assert_eq!(utf8_string(b"\x0c\x81\x00").as_deref(), Some(""));
        let mut indefinite = vec![0x0c, 0x80];
        assert_eq!(utf8_string(&indefinite), None);
        indefinite.extend_from_slice(&[b'z'; 128]);
        assert_eq!(utf8_string(&indefinite), None);
        assert_eq!(utf8_string(b"\x0c\x85\x00\x00\x00\x00\x03abc"), None);
        assert_eq!(utf8_string(b"\x0c\x82\x00"), None);
    }

    #[test]
    fn pem_certificates_in_order_or_why_not() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        let both = format!("{}{}", a.cert.pem(), b.cert.pem());
        assert_eq!(
            pem_certificates(both.as_bytes()).unwrap(),
            vec![a.cert.der().to_vec(), b.cert.der().to_vec()]
        );
        assert!(
            pem_certificates(b"")
                .unwrap_err()
                .contains("no PEM certificate")
        );
        let key = a.signing_key.serialize_pem();
        assert!(
            pem_certificates(key.as_bytes())
                .unwrap_err()
                .contains("no PEM certificate")
        );
    }
}
