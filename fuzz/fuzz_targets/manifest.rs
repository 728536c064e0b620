//! What berth reads out of an upstream's manifest or index (the digests it names, for pinning) and
//! out of a client's `Accept` header: any bytes, never a panic.
#![no_main]

use berth::manifests::Manifest;
use berth::oci::{self, Digest};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let m = Manifest::new(
        Digest::of(data),
        oci::media::OCI_INDEX.to_owned(),
        Bytes::copy_from_slice(data),
    );
    for d in m.references() {
        assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d.clone()));
    }
    if let Ok(accept) = std::str::from_utf8(data) {
        for media in [oci::media::OCI_INDEX, oci::media::DOCKER_MANIFEST, "a"] {
            let _ = oci::accepts(Some(accept), media);
        }
    }
});
