//! Cached blob hits on plain TCP go out with sendfile (`berth::zerocopy`): byte for byte what was
//! cached, ranges included, for many clients at once, and counted in
//! `berth_zero_copy_bytes_total`.

use crate::support;

use bytes::Bytes;

use berth::zerocopy::MIN_SENDFILE;
use support::instance::{Berth, berth, same};
use support::{FakeRegistry, random_bytes};

async fn zero_copy_bytes(b: &Berth) -> u64 {
    let line = b.metric("berth_zero_copy_bytes_total ").await;
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A blob of three 1 MiB windows and a tail too small for sendfile, cached by one pull.
async fn cached(fake: &FakeRegistry, b: &Berth) -> (Bytes, String) {
    let layer = random_bytes((3 << 20) + 12345, 7);
    let blob = fake.put_blob("library/app", layer.clone());
    let first = b.get(&format!("/v2/app/blobs/{blob}")).await;
    same(first.bytes(), &layer);
    b.settled().await;
    (layer, blob)
}

#[tokio::test]
async fn a_cached_blob_is_sent_from_the_file() {
    let fake = FakeRegistry::start().await;
    let b = berth(&fake, "").await;
    let (layer, blob) = cached(&fake, &b).await;

    let before = zero_copy_bytes(&b).await;
    let hit = b.get(&format!("/v2/app/blobs/{blob}")).await;
    assert_eq!(hit.status, 200);
    same(hit.bytes(), &layer);
    let sent = zero_copy_bytes(&b).await - before;
    // The three whole windows (a partial sendfile may leave a remainder too small to bother);
    // never more than the body.
    assert!(
        sent >= (3 << 20) - 3 * MIN_SENDFILE as u64 && sent <= layer.len() as u64,
        "{sent} bytes sent with sendfile"
    );
}

#[tokio::test]
async fn ranges_are_sent_from_the_right_offset() {
    let fake = FakeRegistry::start().await;
    let b = berth(&fake, "").await;
    let (layer, blob) = cached(&fake, &b).await;

    // Unaligned starts, across window boundaries, to the end.
    for (start, end) in [
        (5000, 2_100_000),
        (1 << 20, (2 << 20) + 99),
        (4097, layer.len() - 1),
    ] {
        let before = zero_copy_bytes(&b).await;
        let got = b
            .request(
                http::Method::GET,
                &format!("/v2/app/blobs/{blob}"),
                &[("range", &format!("bytes={start}-{end}"))],
            )
            .await;
        assert_eq!(got.status, 206, "{start}-{end}");
        same(got.bytes(), &layer.slice(start..=end));
        assert!(zero_copy_bytes(&b).await > before, "{start}-{end}");
    }
}

#[tokio::test]
async fn concurrent_hits_each_get_their_own_bytes() {
    let fake = FakeRegistry::start().await;
    let b = berth(&fake, "").await;
    let (one, a) = cached(&fake, &b).await;
    let two = random_bytes(2 << 20, 8);
    let c = fake.put_blob("library/app", two.clone());
    same(b.get(&format!("/v2/app/blobs/{c}")).await.bytes(), &two);
    b.settled().await;

    let pulls = (0..8).map(|i| {
        let (path, want) = match i % 2 {
            0 => (format!("/v2/app/blobs/{a}"), one.clone()),
            _ => (format!("/v2/app/blobs/{c}"), two.clone()),
        };
        let b = &b;
        async move { (b.get(&path).await, want) }
    });
    for (got, want) in futures_util::future::join_all(pulls).await {
        same(got.bytes(), &want);
    }
}
