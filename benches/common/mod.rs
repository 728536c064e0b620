//! Test data shared by the benches.

use berth::oci::Digest;
use bytes::Bytes;

/// `size` cheap, non-repeating bytes (xorshift from `seed`), so nothing downstream can cheat on
/// zeros; with their digest.
pub fn blob(size: usize, seed: u64) -> (Bytes, Digest) {
    let mut x = seed;
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(size);
    let data = Bytes::from(v);
    let d = Digest::of(&data);
    (data, d)
}

/// `data` cut into `chunk`-sized slices (no copies), as hyper hands a body to the fill.
pub fn chunks(data: &Bytes, chunk: usize) -> Vec<Bytes> {
    (0..data.len())
        .step_by(chunk)
        .map(|o| data.slice(o..(o + chunk).min(data.len())))
        .collect()
}
