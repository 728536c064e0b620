//! Design question: is parsing a request into a typed `Route` (habit 1: parse, then dispatch) cheap
//! enough to do on every request, including the cached-manifest hot path, or would it show up next
//! to the I/O? It answers "yes, it is noise" when one parse costs well under a microsecond, i.e. far
//! below the ~20 µs a cached manifest answer takes end to end.
//!
//! Measures `berth::http::route::parse` on the four shapes clients send: a plain default-upstream
//! path (Docker `registry-mirrors`), containerd's `?ns=`, podman's `/v2/<host>/` prefix, and a blob by
//! digest. Throughput is one element = one parse.

use std::hint::black_box;
use std::time::Duration;

use berth::config::Config;
use berth::http::route::{Hosts, parse};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::Method;

const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

fn hosts() -> Hosts {
    let cfg = Config::parse(
        r#"
        [[upstream]]
        name = "docker.io"
        url = "https://registry-1.docker.io"
        default = true
        aliases = ["registry-1.docker.io", "index.docker.io"]
        [[upstream]]
        name = "quay.io"
        url = "https://quay.io"
        [[upstream]]
        name = "ghcr.io"
        url = "https://ghcr.io"
        "#,
        "bench",
    )
    .expect("bench config parses");
    Hosts::new(&cfg.upstreams)
}

fn bench(c: &mut Criterion) {
    let hosts = hosts();
    let blob_path = format!("/v2/library/nginx/blobs/{DIGEST}");
    let digest_manifest = format!("/v2/library/nginx/manifests/{DIGEST}");
    let cases: [(&str, &str, Option<&str>); 5] = [
        ("plain_tag", "/v2/library/nginx/manifests/latest", None),
        (
            "ns_tag",
            "/v2/prometheus/node-exporter/manifests/v1.8.2",
            Some("ns=quay.io"),
        ),
        (
            "prefix_tag",
            "/v2/ghcr.io/org/team/app/manifests/1.2.3",
            None,
        ),
        ("manifest_digest", &digest_manifest, None),
        ("blob_digest", &blob_path, None),
    ];
    let mut g = c.benchmark_group("route_parse");
    g.throughput(Throughput::Elements(1));
    for (name, path, query) in cases {
        // Fail loudly if a case stops parsing: a bench of the error path would be meaningless.
        parse(&Method::GET, path, query, &hosts).expect(name);
        g.bench_function(name, |b| {
            b.iter(|| {
                parse(
                    black_box(&Method::GET),
                    black_box(path),
                    black_box(query),
                    &hosts,
                )
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
