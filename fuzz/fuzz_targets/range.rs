//! `Range` from clients and `Content-Range` from upstreams. A range that resolves is a non-empty
//! span inside the blob; one that does not is a 416 carrying the size. A parsed Content-Range runs
//! forwards and inside its size.
#![no_main]

use libfuzzer_sys::fuzz_target;

use berth::upstream::ContentRange;
use berth::mirror::ByteRange;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (size, text) = data.split_at(8);
    let total = u64::from_le_bytes(size.try_into().expect("8 bytes"));
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if let Some(r) = ByteRange::parse(text) {
        for total in [total, total % 4096, 0, 1, u64::MAX] {
            match r.resolve(total) {
                Ok((start, end)) => assert!(start < end && end <= total, "{r:?} of {total}"),
                Err(e) => {
                    assert_eq!(
                        e.kind,
                        berth::error::Kind::RangeNotSatisfiable { size: Some(total) }
                    );
                }
            }
        }
    }
    if let Some(c) = ContentRange::parse(text) {
        assert!(c.first <= c.last, "{c:?}");
        assert!(c.size.is_none_or(|s| c.last < s), "{c:?}");
    }
});
