//! What a keyless signature carries, from a registry anyone may push to: a certificate (read for
//! its SAN, issuer, EKU and key, and for its SCTs, whose precertificate is rebuilt from it), a
//! Rekor entry (cosign's annotation or a bundle's tlog entry), and a trusted root's JSON. Reading
//! any of them must give a reason, never a panic.
#![no_main]

use std::path::Path;

use berth::config::{KeyAlgorithm, Validity, parse_trusted_root};
use berth::policy::keyless::cert::{Leaf, pem_certificates};
use berth::policy::keyless::rekor::Entry;
use berth::policy::keyless::root::Log;
use berth::policy::keyless::sct;
use berth::policy::keys::Key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Leaf::parse(data);
    let _ = pem_certificates(data);
    // A CT log whose key verifies nothing: the SCT list is read and the TBS rebuilt all the same.
    let log = Log {
        id: data.get(..32).map(<[u8]>::to_vec).unwrap_or_default(),
        key: Key::from_bits("ct", KeyAlgorithm::EcdsaP256, vec![4; 65]),
        valid: Validity::default(),
    };
    let _ = sct::check(data, b"issuer", std::slice::from_ref(&log));
    let _ = parse_trusted_root(Path::new("fuzz.json"), data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(e) = Entry::from_cosign(text) {
            let _ = e.signed_bytes();
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            let _ = Entry::from_bundle(&v);
        }
    }
});
