//! Self-signed certificate pairs written to files, as a listener's `tls_cert`/`tls_key` name them.
//!
//! Needs only rcgen and std, so the unit tests of `src/tls.rs` include this file by path too: one
//! way to make a test pair for the crate's unit and integration tests.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;

/// A pair on disk, and its certificate for a client's roots.
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

/// A new self-signed pair for `names` (DNS names or IP addresses), written into `dir` as
/// `<stem>.crt` and `<stem>.key`.
pub fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> CertPair {
    let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    CertPair {
        cert,
        key,
        der: ck.cert.der().clone(),
    }
}
