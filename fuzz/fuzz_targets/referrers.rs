//! Referrers lists from upstreams (the referrers API's answer, or the tag schema's index): berth
//! re-encodes what it parses, so parsing must never panic, and what it passes on must parse back
//! to itself with only valid digests and media types.
#![no_main]

use berth::oci::Digest;
use berth::oci::referrers::{encode, is_media_type, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(list) = parse(data) else {
        return;
    };
    for d in &list {
        assert!(d.digest.parse::<Digest>().is_ok(), "{d:?}");
        assert!(is_media_type(&d.media_type), "{d:?}");
        assert!(d.artifact_type.as_deref().is_none_or(is_media_type), "{d:?}");
    }
    let out = encode(&list);
    assert_eq!(parse(&out).as_ref(), Some(&list));
});
