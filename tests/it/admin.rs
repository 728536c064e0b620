//! `berth cache ls|rm|stats` and the admin API: images pulled through berth from the fake
//! registry, listed, measured and removed through the API (token checks, 404s, what stays, what is
//! fetched again) and through the command, directly on a stopped cache and via a running berth.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};

use berth::admin::{Listing, Removal, Stats};
use berth::config::Config;
use berth::oci::media;
use support::instance::{Berth, Got, WAIT, berth, eventually, until_metric};
use support::{FakeRegistry, random_bytes};

pub(crate) const TOKEN: &str = "s3cret-admin-token-0123456789abcdef";

/// An image in the fake: an OCI manifest, its config and layers, and its total size.
struct Image {
    tag: String,
    manifest: String,
    config: String,
    layers: Vec<String>,
    bytes: u64,
}

fn put_image(fake: &FakeRegistry, repo: &str, tag: &str, layers: &[Bytes]) -> Image {
    let config = Bytes::from(format!(r#"{{"architecture":"amd64","tag":"{tag}"}}"#));
    let config_digest = fake.put_blob(repo, config.clone());
    let layer_digests: Vec<String> = layers
        .iter()
        .map(|l| fake.put_blob(repo, l.clone()))
        .collect();
    let descs: Vec<String> = layers
        .iter()
        .zip(&layer_digests)
        .map(|(l, d)| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{}}}"#,
                l.len()
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        media::OCI_MANIFEST,
        config.len(),
        descs.join(",")
    );
    let digest = fake.put_tagged(repo, tag, media::OCI_MANIFEST, manifest.clone());
    Image {
        tag: tag.into(),
        manifest: digest,
        config: config_digest,
        layers: layer_digests,
        bytes: (manifest.len() + config.len() + layers.iter().map(Bytes::len).sum::<usize>())
            as u64,
    }
}

/// Pulls an image of `library/app` the way a client does: manifest by tag, then every blob.
async fn pull(b: &Berth, img: &Image) {
    let m = b.get(&format!("/v2/app/manifests/{}", img.tag)).await;
    assert_eq!(m.status, 200, "manifest {}", img.tag);
    for blob in std::iter::once(&img.config).chain(&img.layers) {
        let got = b.get(&format!("/v2/app/blobs/{blob}")).await;
        assert_eq!(got.status, 200, "blob {blob}");
        got.bytes();
    }
    b.settled().await;
}

/// Two images of `library/app` sharing their first layer: tags 1 and 2.
fn two_images(fake: &FakeRegistry) -> (Image, Image, String) {
    let shared = random_bytes(300_000, 1);
    let one = put_image(
        fake,
        "library/app",
        "1",
        &[shared.clone(), random_bytes(100_000, 2)],
    );
    let two = put_image(fake, "library/app", "2", &[shared, random_bytes(50_000, 3)]);
    let shared = one.layers[0].clone();
    (one, two, shared)
}

/// `[admin]` with the token in a file inside `dir`, as extra config after the upstream.
pub(crate) fn admin_toml(dir: &Path, token: &str) -> String {
    let file = dir.join("admin-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    format!(
        "\n[admin]\nenabled = true\ntoken_file = \"{}\"\n",
        file.display()
    )
}

async fn admin_berth(fake: &FakeRegistry) -> (Berth, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let b = berth(fake, &admin_toml(secrets.path(), TOKEN)).await;
    (b, secrets)
}

/// [`two_images`], both pulled through an [`admin_berth`].
async fn two_images_pulled(
    fake: &FakeRegistry,
) -> ((Berth, tempfile::TempDir), Image, Image, String) {
    let (one, two, shared) = two_images(fake);
    let admin = admin_berth(fake).await;
    pull(&admin.0, &one).await;
    pull(&admin.0, &two).await;
    (admin, one, two, shared)
}

/// A request to the metrics listener.
async fn admin(b: &Berth, method: Method, path: &str, auth: Option<&str>) -> Got {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", b.metrics));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = b
        .client
        .request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string()),
    }
}

fn bearer() -> Option<&'static str> {
    Some("Bearer s3cret-admin-token-0123456789abcdef")
}

fn json<T: serde::de::DeserializeOwned>(got: &Got) -> T {
    assert_eq!(
        got.status,
        200,
        "{:?}",
        String::from_utf8_lossy(got.bytes())
    );
    serde_json::from_slice(got.bytes()).unwrap()
}

fn blob_count(b: &Berth) -> usize {
    std::fs::read_dir(b.dir.path().join("blobs/sha256"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn without_the_right_token_the_api_answers_401_and_removes_nothing() {
    let fake = FakeRegistry::start().await;
    let (one, _two, _) = two_images(&fake);
    let (b, _secrets) = admin_berth(&fake).await;
    pull(&b, &one).await;
    let files = blob_count(&b);

    let (longer, shorter) = (
        format!("Bearer {TOKEN}-and-more"),
        format!("Bearer {}", &TOKEN[1..]),
    );
    for auth in [
        None,
        Some("Bearer wrong"),
        Some(longer.as_str()),
        Some(shorter.as_str()),
        Some("Bearer "),
        Some("Basic czNjcmV0LWFkbWluLXRva2Vu"),
        Some(TOKEN),
    ] {
        for (method, path) in [
            (Method::DELETE, "/admin/cache/library/app:1"),
            (
                Method::DELETE,
                format!("/admin/cache/{}", one.layers[0]).as_str(),
            ),
            (Method::GET, "/admin/cache"),
            (Method::GET, "/admin/stats"),
            (Method::GET, "/admin/nothing-here"),
        ] {
            let got = admin(&b, method.clone(), path, auth).await;
            assert_eq!(
                got.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            assert_eq!(got.code(), "UNAUTHORIZED");
            assert_eq!(
                got.header("www-authenticate"),
                Some("Bearer realm=\"berth-admin\"")
            );
        }
    }
    assert_eq!(blob_count(&b), files, "nothing removed");
    assert!(b.blob_file(&one.layers[1]).is_file());
    // The tag still answers from the cache.
    fake.reset_counts();
    assert_eq!(b.get("/v2/app/manifests/1").await.status, 200);
    assert!(fake.requests().is_empty());
    // Metrics and health stay open.
    assert_eq!(admin(&b, Method::GET, "/metrics", None).await.status, 200);
    assert_eq!(admin(&b, Method::GET, "/healthz", None).await.status, 200);
    // The right token, any case of the scheme, works.
    let got = admin(
        &b,
        Method::GET,
        "/admin/stats",
        Some(&format!("bearer {TOKEN}")),
    )
    .await;
    assert_eq!(json::<Stats>(&got).tags, 1);
}

#[tokio::test]
async fn admin_is_off_by_default_and_answers_404() {
    let fake = FakeRegistry::start().await;
    let b = berth(&fake, "").await;
    for path in ["/admin/stats", "/admin/cache", "/admin/cache/library/app:1"] {
        let got = admin(&b, Method::GET, path, bearer()).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(admin(&b, Method::GET, "/metrics", None).await.status, 200);
}

#[tokio::test]
async fn ls_and_stats_show_two_images_sharing_a_layer() {
    let fake = FakeRegistry::start().await;
    let ((b, _secrets), one, two, shared) = two_images_pulled(&fake).await;

    let ls: Listing = json(&admin(&b, Method::GET, "/admin/cache", bearer()).await);
    assert_eq!(ls.images.len(), 2);
    for (row, img) in ls.images.iter().zip([&one, &two]) {
        assert_eq!(
            (row.upstream.as_str(), row.repo.as_str(), row.tag.as_str()),
            ("registry.test", "library/app", img.tag.as_str())
        );
        assert_eq!(row.digest, img.manifest);
        assert_eq!(row.media_type, media::OCI_MANIFEST);
        assert_eq!(row.bytes, img.bytes, "tag {}", img.tag);
        assert_eq!((row.cached, row.not_cached), (4, 0));
        assert!(row.last_pulled.is_some());
    }
    assert_eq!((ls.untagged_manifests, ls.orphan_blobs), (0, 0));

    // Filtered, with and without the upstream and the library/ prefix.
    for q in [
        "repo=app",
        "repo=library/app:2",
        "repo=registry.test/app:2",
        "repo=app:2&upstream=registry.test",
    ] {
        let ls: Listing =
            json(&admin(&b, Method::GET, &format!("/admin/cache?{q}"), bearer()).await);
        let tags: Vec<_> = ls.images.iter().map(|i| i.tag.as_str()).collect();
        let want: &[&str] = if q == "repo=app" { &["1", "2"] } else { &["2"] };
        assert_eq!(tags, want, "{q}");
    }
    let ls: Listing = json(&admin(&b, Method::GET, "/admin/cache?repo=other", bearer()).await);
    assert!(ls.images.is_empty());

    let stats: Stats = json(&admin(&b, Method::GET, "/admin/stats", bearer()).await);
    // Two manifests, two configs, the shared layer and one own layer each.
    assert_eq!((stats.blobs, stats.manifests, stats.tags), (7, 2, 2));
    let shared_len = std::fs::metadata(b.blob_file(&shared)).unwrap().len();
    assert_eq!(stats.bytes, one.bytes + two.bytes - shared_len);
    assert_eq!(
        (stats.tmp_files, stats.tmp_bytes, stats.quarantined),
        (0, 0, 0)
    );
    assert!(stats.oldest_access.is_some() && stats.oldest_access <= stats.newest_access);
    assert_eq!(stats.max_size, None);
    assert_eq!(stats.root, b.dir.path().display().to_string());
}

#[tokio::test]
async fn rm_of_a_tag_keeps_the_shared_layer_and_the_other_image_serves_from_cache() {
    let fake = FakeRegistry::start().await;
    let ((b, _secrets), one, two, shared) = two_images_pulled(&fake).await;

    let got = admin(
        &b,
        Method::DELETE,
        "/admin/cache/registry.test/library/app:1",
        bearer(),
    )
    .await;
    let removal: Removal = json(&got);
    assert_eq!(removal.tags, ["registry.test/library/app:1"]);
    let mut removed: Vec<_> = removal
        .removed
        .iter()
        .map(|r| (r.kind.as_str(), r.digest.as_str()))
        .collect();
    removed.sort();
    let mut want = vec![
        ("blob", one.config.as_str()),
        ("blob", one.layers[1].as_str()),
        ("manifest", one.manifest.as_str()),
    ];
    want.sort();
    assert_eq!(removed, want);
    let shared_len = std::fs::metadata(b.blob_file(&shared)).unwrap().len();
    assert_eq!(removal.bytes, one.bytes - shared_len);
    assert!(b.blob_file(&shared).is_file());
    assert!(!b.blob_file(&one.layers[1]).exists() && !b.blob_file(&one.manifest).exists());
    // The gauge is what is left on disk.
    until_metric(&b, "berth_cache_bytes ", two.bytes).await;

    // The other image is whole and never reaches upstream.
    fake.reset_counts();
    pull(&b, &two).await;
    assert!(
        fake.requests().is_empty(),
        "{:?}",
        fake.requests().iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    let ls: Listing = json(&admin(&b, Method::GET, "/admin/cache", bearer()).await);
    assert_eq!(ls.images.len(), 1);
    assert_eq!((ls.images[0].tag.as_str(), ls.images[0].cached), ("2", 4));
}

#[tokio::test]
async fn rm_then_pull_fetches_again_what_was_removed_and_only_that() {
    let fake = FakeRegistry::start().await;
    let ((b, _secrets), one, _two, shared) = two_images_pulled(&fake).await;
    // Unqualified, percent-escaped: still the same tag.
    let got = admin(&b, Method::DELETE, "/admin/cache/app%3A1", bearer()).await;
    assert_eq!(json::<Removal>(&got).removed.len(), 3);

    fake.reset_counts();
    pull(&b, &one).await;
    // Memory and disk agree: the tag was forgotten in memory too, so it is asked for again.
    assert_eq!(fake.hits(Method::GET, "/v2/library/app/manifests/1"), 1);
    for blob in [&one.config, &one.layers[1]] {
        assert_eq!(
            fake.hits(Method::GET, &format!("/v2/library/app/blobs/{blob}")),
            1
        );
    }
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/library/app/blobs/{shared}")),
        0
    );
    let ls: Listing = json(&admin(&b, Method::GET, "/admin/cache", bearer()).await);
    assert_eq!(ls.images.len(), 2);
}

#[tokio::test]
async fn rm_of_a_repository_or_a_digest() {
    let fake = FakeRegistry::start().await;
    let ((b, _secrets), _one, two, shared) = two_images_pulled(&fake).await;

    // One blob by digest: only it goes; the next pull fetches only it.
    let got = admin(
        &b,
        Method::DELETE,
        &format!("/admin/cache/{shared}"),
        bearer(),
    )
    .await;
    let removal: Removal = json(&got);
    assert!(removal.tags.is_empty());
    assert_eq!(removal.removed.len(), 1);
    assert_eq!(
        (
            removal.removed[0].kind.as_str(),
            removal.removed[0].digest.as_str()
        ),
        ("blob", shared.as_str())
    );
    assert_eq!(blob_count(&b), 6);
    fake.reset_counts();
    pull(&b, &two).await;
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(
        fake.hits(Method::GET, &format!("/v2/library/app/blobs/{shared}")),
        1
    );

    // A repository: every tag, every file.
    let got = admin(
        &b,
        Method::DELETE,
        "/admin/cache/library/app?upstream=registry.test",
        bearer(),
    )
    .await;
    let removal: Removal = json(&got);
    assert_eq!(removal.tags.len(), 2);
    assert_eq!(removal.removed.len(), 7);
    assert_eq!(blob_count(&b), 0);
    let stats: Stats = json(&admin(&b, Method::GET, "/admin/stats", bearer()).await);
    assert_eq!(
        (stats.blobs, stats.bytes, stats.manifests, stats.tags),
        (0, 0, 0, 0)
    );
    assert_eq!((stats.oldest_access, stats.newest_access), (None, None));
}

#[tokio::test]
async fn rm_of_what_is_not_cached_is_404_and_a_bad_reference_400() {
    let fake = FakeRegistry::start().await;
    let (one, _two, _) = two_images(&fake);
    let (b, _secrets) = admin_berth(&fake).await;
    pull(&b, &one).await;
    let files = blob_count(&b);
    let absent = format!("sha256:{}", "0".repeat(64));
    for (path, status, code) in [
        (
            "/admin/cache/library/app:9".to_owned(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/admin/cache/library/other".to_owned(), 404, "NAME_UNKNOWN"),
        (format!("/admin/cache/{absent}"), 404, "BLOB_UNKNOWN"),
        (
            "/admin/cache/app:1?upstream=elsewhere.io".to_owned(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/admin/cache/Bad/Name".to_owned(), 400, "NAME_INVALID"),
        ("/admin/cache/app:-x".to_owned(), 400, "TAG_INVALID"),
        ("/admin/cache/sha256:zz".to_owned(), 400, "DIGEST_INVALID"),
    ] {
        let got = admin(&b, Method::DELETE, &path, bearer()).await;
        assert_eq!(
            (got.status.as_u16(), got.code().as_str()),
            (status, code),
            "{path}"
        );
    }
    let got = admin(&b, Method::POST, "/admin/cache/app:1", bearer()).await;
    assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(blob_count(&b), files);
}

#[tokio::test]
async fn an_index_counts_its_children_and_goes_with_them() {
    let fake = FakeRegistry::start().await;
    let (amd, arm, shared) = two_images(&fake);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{}","size":1}},{{"mediaType":"{}","digest":"{}","size":1}}]}}"#,
        media::OCI_INDEX,
        media::OCI_MANIFEST,
        amd.manifest,
        media::OCI_MANIFEST,
        arm.manifest
    );
    let index_digest = fake.put_tagged("library/app", "multi", media::OCI_INDEX, index.clone());
    let (b, _secrets) = admin_berth(&fake).await;
    // Pulled for one platform: the index, then one child by digest and its blobs.
    assert_eq!(b.get("/v2/app/manifests/multi").await.status, 200);
    let child = Image {
        tag: amd.manifest.clone(),
        ..amd
    };
    pull(&b, &child).await;

    let ls: Listing = json(&admin(&b, Method::GET, "/admin/cache", bearer()).await);
    assert_eq!(ls.images.len(), 1);
    let row = &ls.images[0];
    assert_eq!(
        (row.tag.as_str(), row.digest.as_str()),
        ("multi", index_digest.as_str())
    );
    assert_eq!(row.bytes, index.len() as u64 + child.bytes);
    // The index, the child, its config and two layers; the other platform's manifest is not cached.
    assert_eq!((row.cached, row.not_cached), (5, 1));
    assert_eq!(ls.untagged_manifests, 0);

    let removal: Removal =
        json(&admin(&b, Method::DELETE, "/admin/cache/app:multi", bearer()).await);
    assert_eq!(removal.removed.len(), 5);
    assert_eq!(
        removal
            .removed
            .iter()
            .filter(|r| r.kind == "manifest")
            .count(),
        2
    );
    assert!(!b.blob_file(&shared).exists());
    assert_eq!(blob_count(&b), 0);
}

#[tokio::test]
async fn a_manifest_two_tags_share_stays_until_the_last_tag_goes() {
    let fake = FakeRegistry::start().await;
    let (one, _two, _) = two_images(&fake);
    fake.tag("library/app", "latest", &one.manifest);
    let (b, _secrets) = admin_berth(&fake).await;
    pull(&b, &one).await;
    assert_eq!(b.get("/v2/app/manifests/latest").await.status, 200);
    let files = blob_count(&b);

    let removal: Removal =
        json(&admin(&b, Method::DELETE, "/admin/cache/app:latest", bearer()).await);
    assert_eq!(removal.tags, ["registry.test/library/app:latest"]);
    assert!(removal.removed.is_empty());
    assert_eq!(blob_count(&b), files);
    // The last tag takes the manifest and its blobs with it.
    let removal: Removal = json(&admin(&b, Method::DELETE, "/admin/cache/app:1", bearer()).await);
    assert_eq!(removal.removed.len(), 4);
}

// ---- the command ----

fn berth_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

fn run(args: &[&str], config: &Path) -> Output {
    berth_cmd()
        .arg("cache")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("BERTH_CONFIG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A config for the command: the cache at `storage`, the fake as upstream, `extra` at the end.
fn cli_config(dir: &Path, storage: &Path, fake: &FakeRegistry, extra: &str) -> PathBuf {
    let path = dir.join("cli.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\npath = \"{}\"\n[[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n{extra}",
            storage.display(),
            fake.url()
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn the_command_works_directly_on_a_stopped_cache() {
    let fake = FakeRegistry::start().await;
    let (one, two, shared) = two_images(&fake);
    let b = berth(&fake, "").await;
    pull(&b, &one).await;
    pull(&b, &two).await;
    let data = b.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = cli_config(dir.path(), data.path(), &fake, "");
    // A fill's temp file of some other process: the command must leave tmp/ alone.
    let tmp = data
        .path()
        .join("tmp")
        .join(format!("{}.1.0.part", "c".repeat(64)));
    std::fs::write(&tmp, b"half").unwrap();

    let out = run(&["ls"], &cfg);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("directly"),
        "{}",
        text(&out.stderr)
    );
    let table = text(&out.stdout);
    assert!(table.starts_with("UPSTREAM"), "{table}");
    assert!(
        table.contains("registry.test") && table.contains("library/app"),
        "{table}"
    );
    assert!(table.contains(&one.manifest[..19]), "{table}");

    let out = run(&["ls", "--json", "--repo", "app:2"], &cfg);
    let ls: Listing = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ls.images.len(), 1);
    assert_eq!(
        (ls.images[0].tag.as_str(), ls.images[0].bytes),
        ("2", two.bytes)
    );

    let out = run(&["stats", "--json"], &cfg);
    let stats: Stats = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (stats.blobs, stats.manifests, stats.tags, stats.tmp_files),
        (7, 2, 2, 1)
    );

    let out = run(&["rm", "registry.test/library/app:1"], &cfg);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("removed 1 tags, 1 manifests, 2 blobs"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        data.path()
            .join("blobs/sha256")
            .join(&shared[7..])
            .is_file()
    );
    assert!(tmp.is_file(), "tmp/ left alone");

    // Nothing matches any more: exit 1. A bad reference or config: exit 2.
    let out = run(&["rm", "app:1"], &cfg);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = run(&["rm", "Bad:Ref:"], &cfg);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let missing = cli_config(dir.path(), &dir.path().join("nothing-here"), &fake, "");
    let out = run(&["stats"], &missing);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no cache at"),
        "{}",
        text(&out.stderr)
    );

    // berth starts on the pruned cache and fetches only what went.
    let b = support::instance::start_on(&fake, "", data).await;
    fake.reset_counts();
    pull(&b, &two).await;
    assert_eq!(
        fake.requests().len(),
        1,
        "only the revalidation of the tag read from disk"
    );
}

#[tokio::test]
async fn the_command_goes_through_the_api_of_a_running_berth() {
    let fake = FakeRegistry::start().await;
    let (one, two, _) = two_images(&fake);
    let (b, secrets) = admin_berth(&fake).await;
    pull(&b, &one).await;
    pull(&b, &two).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[metrics]\nlisten = \"{}\"\n{}",
        b.metrics,
        admin_toml(secrets.path(), TOKEN)
    );
    let cfg = cli_config(dir.path(), b.dir.path(), &fake, &extra);
    let cli = |args: &'static [&'static str], cfg: PathBuf| {
        tokio::task::spawn_blocking(move || run(args, &cfg))
    };

    let out = cli(&["ls", "--json"], cfg.clone()).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("via the admin API at http://{}", b.metrics)));
    let ls: Listing = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ls.images.len(), 2);

    let out = cli(&["rm", "--json", "app:1"], cfg.clone()).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let removal: Removal = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(removal.removed.len(), 3);
    // The running berth forgot the tag in memory too: the next pull asks upstream.
    fake.reset_counts();
    assert_eq!(b.get("/v2/app/manifests/1").await.status, 200);
    assert_eq!(fake.hits(Method::GET, "/v2/library/app/manifests/1"), 1);

    let out = cli(&["rm", "app:9"], cfg.clone()).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("manifest unknown"),
        "{}",
        text(&out.stderr)
    );

    // --direct overrides the API; --url picks another address.
    let out = cli(&["stats", "--direct", "--json"], cfg.clone())
        .await
        .unwrap();
    assert!(
        text(&out.stderr).contains("directly"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Stats>(&out.stdout).unwrap().tags,
        2
    );
    let url: &'static str = Box::leak(format!("http://{}", b.metrics).into_boxed_str());
    let args: &'static [&'static str] = Box::leak(Box::new(["stats", "--url", url]));
    let out = cli(args, cfg.clone()).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("tags:           2"),
        "{}",
        text(&out.stdout)
    );

    // A wrong token in the command's config: 401, exit 2, nothing removed.
    let wrong = tempfile::tempdir().unwrap();
    let extra = format!(
        "[metrics]\nlisten = \"{}\"\n{}",
        b.metrics,
        admin_toml(wrong.path(), "not-the-token-but-long-enough-to-load")
    );
    let bad_cfg = cli_config(wrong.path(), b.dir.path(), &fake, &extra);
    let files = blob_count(&b);
    let out = cli(&["rm", "app:2"], bad_cfg).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    assert_eq!(blob_count(&b), files);

    // The API is not there (admin off in the running berth): exit 2, and says why.
    let plain = berth(&fake, "").await;
    let extra = format!(
        "[metrics]\nlisten = \"{}\"\n{}",
        plain.metrics,
        admin_toml(secrets.path(), TOKEN)
    );
    let off_cfg = cli_config(dir.path(), plain.dir.path(), &fake, &extra);
    let out = cli(&["stats"], off_cfg).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("does not serve the admin API"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn url_without_a_token_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n",
    )
    .unwrap();
    let out = run(&["stats", "--url", "http://127.0.0.1:1"], &cfg);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("admin token"),
        "{}",
        text(&out.stderr)
    );
    // A token but nothing listening there: exit 2, saying so.
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n[admin]\nenabled = true\ntoken_file = \"{}\"\n",
            token.display()
        ),
    )
    .unwrap();
    let dead = support::ports::Dead::new();
    let url = format!("http://{}", dead.addr());
    let out = run(&["stats", "--url", &url], &cfg);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is berth running"),
        "{}",
        text(&out.stderr)
    );
    // A --ca-file that holds no certificate: exit 2, naming the option.
    let out = run(
        &[
            "stats",
            "--url",
            "https://127.0.0.1:1",
            "--ca-file",
            "/dev/null",
        ],
        &cfg,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--ca-file: /dev/null holds no usable PEM certificate"),
        "{}",
        text(&out.stderr)
    );
    let out = berth_cmd().args(["cache", "--help"]).output().unwrap();
    for word in [
        "ls",
        "rm",
        "stats",
        "--direct",
        "--url",
        "--ca-file",
        "--json",
    ] {
        assert!(
            text(&out.stdout).contains(word),
            "{word}: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn admin_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, format!("{TOKEN}\n")).unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, format!("{}\n", &TOKEN[..31])).unwrap();
    let base = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
    let cases = [
        ("[admin]\nenabled = true\n".to_owned(), "admin.token_file"),
        (
            format!(
                "[admin]\nenabled = true\ntoken_file = \"{}\"\ntoken_env = \"PATH\"\n",
                good.display()
            ),
            "admin.token_file",
        ),
        (
            "[admin]\nenabled = true\ntoken_file = \"/surely/not/here\"\n".to_owned(),
            "admin.token_file",
        ),
        (
            format!(
                "[admin]\nenabled = true\ntoken_file = \"{}\"\n",
                empty.display()
            ),
            "the token is empty",
        ),
        (
            format!(
                "[admin]\nenabled = true\ntoken_file = \"{}\"\n",
                short.display()
            ),
            "admin.token_file: the token has 31 bytes; at least 32",
        ),
        (
            "[admin]\nenabled = true\ntoken_env = \"BERTH_TEST_SURELY_UNSET\"\n".to_owned(),
            "admin.token_env",
        ),
        (
            format!(
                "[metrics]\nenabled = false\n[admin]\nenabled = true\ntoken_file = \"{}\"\n",
                good.display()
            ),
            "admin.enabled",
        ),
        (
            "[admin]\nenabled = true\ntoken = \"inline\"\n".to_owned(),
            "token",
        ),
    ];
    for (text, key) in cases {
        let e = Config::parse(&format!("{base}{text}"), "f.toml").unwrap_err();
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
    // Off: the token is not read (a missing file is fine); on: read, and never shown.
    let off = Config::parse(
        &format!("{base}[admin]\ntoken_file = \"/surely/not/here\"\n"),
        "f",
    )
    .unwrap();
    assert!(!off.admin.enabled && off.admin.token.is_none());
    let on = Config::parse(
        &format!(
            "{base}[admin]\nenabled = true\ntoken_file = \"{}\"\n",
            good.display()
        ),
        "f",
    )
    .unwrap();
    assert_eq!(on.admin.token.as_ref().unwrap().expose(), TOKEN);
    assert!(!format!("{on:?}").contains(TOKEN) && !on.to_toml().contains(TOKEN));
    assert!(on.to_toml().contains("<redacted>"));
}

#[tokio::test]
async fn tags_of_nested_repositories_are_listed_and_forgotten() {
    use berth::manifests::{Manifests, TagEntry, TagKey};
    use berth::store::Store;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let ms = Manifests::new(store, dir.path(), 1 << 20, vec!["up.io".into()]).unwrap();
    let d = berth::oci::Digest::of(b"m");
    for (repo, tag) in [("a", "1"), ("a/b", "2"), ("a/b/c", "3")] {
        let key = TagKey {
            upstream: 0,
            repo: repo.parse().unwrap(),
            tag: tag.parse().unwrap(),
        };
        let entry = TagEntry {
            digest: d.clone(),
            media_type: "m/t".into(),
            checked: None,
        };
        ms.set_tag(key, entry).await;
    }
    // A file that is no tag answer is skipped.
    std::fs::write(dir.path().join("tags/up.io/a/_tags/.9.tmp"), "junk").unwrap();
    let mut listed: Vec<_> = ms
        .list_tags()
        .await
        .unwrap()
        .into_iter()
        .map(|t| {
            format!(
                "{}/{}:{} {} {}",
                t.upstream, t.repo, t.tag, t.digest, t.media_type
            )
        })
        .collect();
    listed.sort();
    let mut want: Vec<_> = ["a", "a/b", "a/b/c"]
        .iter()
        .zip(["1", "2", "3"])
        .map(|(r, t)| format!("up.io/{r}:{t} {d} m/t"))
        .collect();
    want.sort();
    assert_eq!(listed, want);
    let (repo, tag) = ("a/b".parse().unwrap(), "2".parse().unwrap());
    assert!(ms.forget_tag_named("up.io", &repo, &tag).await.unwrap());
    assert!(!ms.forget_tag_named("up.io", &repo, &tag).await.unwrap());
    let key = TagKey {
        upstream: 0,
        repo,
        tag,
    };
    assert!(ms.tag(&key).await.is_none(), "gone from memory too");
    assert_eq!(ms.list_tags().await.unwrap().len(), 2);
}

// ---- the admin socket and the metrics listener over TLS ----

/// One request over a Unix socket (HTTP/1): status and body.
async fn over_socket(path: &Path, uri: &str, auth: Option<&str>) -> (StatusCode, Bytes) {
    let stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(uri).header("host", "localhost");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// Waits (bounded by [`WAIT`]) until `path` is gone.
async fn until_gone(path: &Path) {
    let gone = eventually(|| async move { !path.exists() }).await;
    assert!(gone, "{} is still there after {WAIT:?}", path.display());
}

#[tokio::test]
async fn the_admin_api_on_a_unix_socket_only() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    let fake = FakeRegistry::start().await;
    let (one, _, _) = two_images(&fake);
    let secrets = tempfile::tempdir().unwrap();
    let sock = secrets.path().join("admin.sock");
    // A stale socket from a killed run: the file stays, nobody answers on it.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(
        std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let admin_cfg = format!(
        "{}socket = \"{}\"\n",
        admin_toml(secrets.path(), TOKEN),
        sock.display()
    );
    let b = berth(&fake, &admin_cfg).await;
    pull(&b, &one).await;

    // Replaced, owner-only.
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // On the socket: the token is required...
    for auth in [None, Some("Bearer not-the-token-0123456789abcdef0123")] {
        let (status, _) = over_socket(&sock, "/admin/stats", auth).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    // ...and with it the API answers.
    let (status, body) = over_socket(&sock, "/admin/stats", bearer()).await;
    assert_eq!(status, StatusCode::OK);
    let stats: Stats = serde_json::from_slice(&body).unwrap();
    assert_eq!(stats.tags, 1);
    // Only the admin API is served there.
    let (status, _) = over_socket(&sock, "/metrics", bearer()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The metrics listener answers /admin like a berth without it, whatever the token.
    for path in ["/admin/stats", "/admin/cache"] {
        let got = admin(&b, Method::GET, path, bearer()).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(
        admin(&b, Method::GET, "/metrics", None).await.status,
        StatusCode::OK
    );

    // `berth cache` goes through the socket when the config names it.
    let dir = tempfile::tempdir().unwrap();
    let cfg = cli_config(dir.path(), b.dir.path(), &fake, &admin_cfg);
    let out = tokio::task::spawn_blocking(move || run(&["stats", "--json"], &cfg))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("via the admin API at unix:{}", sock.display())),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Stats>(&out.stdout).unwrap().tags,
        1
    );

    // A second berth on the same socket is refused while the first answers on it.
    let storage = tempfile::tempdir().unwrap();
    let cfg = Config::parse(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n[[upstream]]\nname = \"r.test\"\nurl = \"{}\"\n{admin_cfg}",
            storage.path().display(),
            fake.url()
        ),
        "second",
    )
    .unwrap();
    let e = berth::server::Server::bind(&cfg).await.err().unwrap();
    assert!(
        e.to_string().contains("[admin] socket") && e.to_string().contains("in use"),
        "{e}"
    );

    // Stopping removes it.
    drop(b);
    until_gone(&sock).await;

    // A file that is not a socket is not replaced.
    std::fs::write(&sock, "keep me").unwrap();
    let e = berth::server::Server::bind(&cfg).await.err().unwrap();
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "keep me");
}

/// A self-signed pair for `localhost` and 127.0.0.1, written into `dir` as `<name>.crt/.key`.
fn cert_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let p = support::certs::self_signed(dir, name, &["localhost", "127.0.0.1"]);
    (p.cert, p.key)
}

/// GET over https trusting `ca`: the status and body, or the error with its causes.
async fn https_get(url: &str, ca: &Path) -> Result<(StatusCode, String), String> {
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(berth::upstream::connect::https_connector(Some(ca)).unwrap());
    let resp = client
        .get(url.parse().unwrap())
        .await
        .map_err(|e| berth::error::chain(&e))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn the_metrics_listener_over_tls() {
    let fake = FakeRegistry::start().await;
    let (one, _, _) = two_images(&fake);
    let secrets = tempfile::tempdir().unwrap();
    let (cert, key) = cert_pair(secrets.path(), "metrics");
    let storage = tempfile::tempdir().unwrap();
    let tls = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let text_cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{tls}[storage]\npath = \"{}\"\n[[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\nlibrary_prefix = true\n{}",
        storage.path().display(),
        fake.url(),
        admin_toml(secrets.path(), TOKEN)
    );
    let cfg = Config::parse(&text_cfg, "tls").unwrap();
    let server = berth::server::Server::bind(&cfg).await.unwrap();
    assert!(server.metrics_is_tls());
    let (addr, metrics) = (server.local_addr(), server.metrics_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    // /healthz and /metrics over https, once the index is rebuilt.
    let base = format!("https://127.0.0.1:{}", metrics.port());
    let (healthz, cert_ref) = (&format!("{base}/healthz"), &cert);
    let ready = eventually(|| async move {
        let (status, _) = https_get(healthz, cert_ref).await.unwrap();
        status == StatusCode::OK
    })
    .await;
    assert!(ready, "not ready within {WAIT:?}");
    let (status, body) = https_get(&format!("{base}/metrics"), &cert).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("berth_tls_reloads_total"), "{body}");
    // Plain HTTP to it gets no answer.
    let plain = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let e = plain
        .get(format!("http://{metrics}/metrics").parse().unwrap())
        .await;
    assert!(
        e.is_err(),
        "plain HTTP was answered: {:?}",
        e.map(|r| r.status())
    );

    // Something cached, for the command to see.
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let m = c
        .get(
            format!("http://{addr}/v2/app/manifests/{}", one.tag)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    m.into_body().collect().await.unwrap();

    // The command: --url https with --ca-file; by default from the config (its tls_cert trusted);
    // --url https without a way to trust the certificate fails and says why.
    let dir = tempfile::tempdir().unwrap();
    let cli_cfg = dir.path().join("cli.toml");
    std::fs::write(
        &cli_cfg,
        text_cfg.replace(
            "127.0.0.1:0\"\ntls_cert",
            &format!("127.0.0.1:{}\"\ntls_cert", metrics.port()),
        ),
    )
    .unwrap();
    let url = base.clone();
    let ca = cert.display().to_string();
    let cases: Vec<(Vec<String>, bool, String)> = vec![
        (
            vec![
                "stats".into(),
                "--json".into(),
                "--url".into(),
                url.clone(),
                "--ca-file".into(),
                ca.clone(),
            ],
            true,
            format!("via the admin API at {url}"),
        ),
        (
            vec!["stats".into(), "--json".into()],
            true,
            format!("via the admin API at {url}"),
        ),
        (
            vec!["stats".into(), "--url".into(), url.clone()],
            false,
            "certificate".into(),
        ),
    ];
    for (args, ok, needle) in cases {
        let cfg = cli_cfg.clone();
        let a = args.clone();
        let out = tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            run(&a, &cfg)
        })
        .await
        .unwrap();
        assert_eq!(out.status.success(), ok, "{args:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(&needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
        if ok {
            let stats: Stats = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(stats.manifests, 1, "{args:?}");
        } else {
            assert_eq!(out.status.code(), Some(2));
        }
    }

    // `berth health` (container HEALTHCHECKs) probes it over https, trusting --ca-file.
    let health = format!("{base}/healthz");
    let out = tokio::task::spawn_blocking({
        let (health, ca) = (health.clone(), ca.clone());
        move || {
            berth_cmd()
                .args(["health", "--url", &health, "--ca-file", &ca])
                .env_remove("BERTH_HEALTH_URL")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = tokio::task::spawn_blocking(move || {
        berth_cmd()
            .args(["health", "--url", &health])
            .env_remove("BERTH_HEALTH_URL")
            .env_remove("BERTH_HEALTH_CA_FILE")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("certificate"),
        "{}",
        text(&out.stderr)
    );

    // A new pair in place of the files is served to new connections (the files are watched).
    let (c2, k2) = cert_pair(secrets.path(), "next");
    std::fs::copy(&c2, &cert).unwrap();
    std::fs::copy(&k2, &key).unwrap();
    let mut taken = false;
    // The files are polled every 2 s: a generous, bounded wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if https_get(&format!("{base}/healthz"), &c2).await.is_ok() {
            taken = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(taken, "the new certificate was never served");
    let _ = stop.send(());
}

#[test]
fn check_config_warns_of_the_token_on_a_plain_non_loopback_listener() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let base = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
    let check = |metrics: &str| {
        std::fs::write(
            &cfg,
            format!("{metrics}{base}{}", admin_toml(dir.path(), TOKEN)),
        )
        .unwrap();
        let out = berth_cmd()
            .args(["check-config", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let warned = check("[metrics]\nlisten = \"0.0.0.0:9090\"\n");
    assert!(
        warned.contains("warning: the admin API is served on 0.0.0.0:9090 over plain HTTP"),
        "{warned}"
    );
    assert!(!check("").contains("warning"));
}

// Artifacts (OCI 1.1): listed with their artifactType and subject.

const SIG: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SBOM: &str = "application/spdx+json";
const HELM: &str = "application/vnd.cncf.helm.config.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// An artifact manifest in `repo`: `artifact_type` (or none), a config of `config_type` (the
/// empty config's bytes), one layer, `subject` if given. Its digest, blobs and size.
fn put_artifact(
    fake: &FakeRegistry,
    repo: &str,
    artifact_type: Option<&str>,
    config_type: &str,
    subject: Option<&str>,
    payload: &'static [u8],
) -> (String, Vec<String>, usize) {
    let config = fake.put_blob(repo, Bytes::from_static(b"{}"));
    let layer = fake.put_blob(repo, Bytes::from_static(payload));
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": config, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": payload.len()}],
    });
    if let Some(t) = artifact_type {
        m["artifactType"] = t.into();
    }
    if let Some(s) = subject {
        m["subject"] =
            serde_json::json!({"mediaType": media::OCI_MANIFEST, "digest": s, "size": 1});
    }
    let body = m.to_string();
    let digest = fake.put_manifest(repo, media::OCI_MANIFEST, body.clone());
    (digest, vec![config, layer], body.len())
}

/// Pulls a manifest by `reference` from `/v2/<repo>` through berth, and its blobs.
async fn pull_artifact(b: &Berth, repo: &str, reference: &str, blobs: &[String]) {
    let got = b
        .request(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("accept", media::OCI_MANIFEST)],
        )
        .await;
    assert_eq!(got.status, 200, "{repo}:{reference}");
    for d in blobs {
        assert_eq!(b.get(&format!("/v2/{repo}/blobs/{d}")).await.status, 200);
    }
    b.settled().await;
}

#[tokio::test]
async fn artifacts_are_listed_with_their_type_and_subject_directly_and_through_the_api() {
    let fake = FakeRegistry::start().await;
    let (one, _two, _) = two_images(&fake);
    // Tagged: an SBOM of app:1 (as `oras push app:sbom` leaves it) and a Helm chart, whose type
    // is its config's. Untagged, pulled by digest as a verifier does: a signature of app:1, a
    // signature of the SBOM, and a signature of an image in another repository.
    let (sbom, sbom_blobs, _) = put_artifact(
        &fake,
        "library/app",
        Some(SBOM),
        EMPTY,
        Some(&one.manifest),
        b"sbom",
    );
    fake.tag("library/app", "sbom", &sbom);
    let (chart, chart_blobs, _) = put_artifact(&fake, "library/chart", None, HELM, None, b"chart");
    fake.tag("library/chart", "1", &chart);
    let (sig, sig_blobs, sig_len) = put_artifact(
        &fake,
        "library/app",
        Some(SIG),
        EMPTY,
        Some(&one.manifest),
        b"sig",
    );
    let (sbom_sig, sbom_sig_blobs, _) = put_artifact(
        &fake,
        "library/app",
        Some(SIG),
        EMPTY,
        Some(&sbom),
        b"sbom sig",
    );
    let other = put_image(&fake, "library/other", "1", &[random_bytes(1_000, 9)]);
    let (other_sig, other_sig_blobs, _) = put_artifact(
        &fake,
        "library/other",
        Some(SIG),
        EMPTY,
        Some(&other.manifest),
        b"other sig",
    );
    let (b, secrets) = admin_berth(&fake).await;
    pull(&b, &one).await;
    pull_artifact(&b, "app", "sbom", &sbom_blobs).await;
    pull_artifact(&b, "chart", "1", &chart_blobs).await;
    pull_artifact(&b, "app", &sig, &sig_blobs).await;
    pull_artifact(&b, "app", &sbom_sig, &sbom_sig_blobs).await;
    pull_artifact(&b, "other", "1", &[]).await;
    pull_artifact(&b, "other", &other_sig, &other_sig_blobs).await;
    // The upstream lacks the referrers API: berth keeps app:1's list as the referrers tag
    // schema's index, a tag whose closure reaches the signature, which is listed all the same.
    let fallback = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [{"mediaType": media::OCI_MANIFEST, "digest": sig, "size": sig_len, "artifactType": SIG}],
    });
    let schema_tag = one.manifest.replace(':', "-");
    fake.put_tagged(
        "library/app",
        &schema_tag,
        media::OCI_INDEX,
        fallback.to_string(),
    );
    let got = b.get(&format!("/v2/app/referrers/{}", one.manifest)).await;
    assert_eq!(got.status, 200);
    assert!(String::from_utf8_lossy(got.bytes()).contains(&sig));
    b.settled().await;

    // The API's JSON: the tagged artifacts carry their type and subject; images none.
    let ls: Listing = json(&admin(&b, Method::GET, "/admin/cache", bearer()).await);
    let row = |tag: &str| ls.images.iter().find(|i| i.tag == tag).unwrap().clone();
    assert_eq!((row("1").artifact_type, row("1").subject), (None, None));
    assert_eq!(
        (row("sbom").artifact_type, row("sbom").subject),
        (Some(SBOM.to_owned()), Some(one.manifest.clone()))
    );
    let chart_row = ls
        .images
        .iter()
        .find(|i| i.repo == "library/chart")
        .unwrap();
    assert_eq!(
        (
            chart_row.artifact_type.as_deref(),
            chart_row.subject.as_deref()
        ),
        (Some(HELM), None)
    );
    // The untagged ones, by subject: each with its type, subject and files.
    let untagged: Vec<(&str, &str, Option<&str>, u64)> = ls
        .artifacts
        .iter()
        .map(|a| {
            (
                a.digest.as_str(),
                a.artifact_type.as_str(),
                a.subject.as_deref(),
                a.cached,
            )
        })
        .collect();
    let mut want = vec![
        (sig.as_str(), SIG, Some(one.manifest.as_str()), 3),
        (sbom_sig.as_str(), SIG, Some(sbom.as_str()), 3),
        (other_sig.as_str(), SIG, Some(other.manifest.as_str()), 3),
    ];
    want.sort_by_key(|w| w.2);
    assert_eq!(untagged, want);
    assert!(
        ls.artifacts
            .iter()
            .all(|a| a.bytes > 0 && a.last_pulled.is_some())
    );
    assert!(ls.images.iter().any(|i| i.tag == schema_tag));
    // The signature is reached by the schema's tag: two manifests no tag reaches.
    assert_eq!(ls.untagged_manifests, 2);
    // With a filter: those about the images listed (the SBOM's signature through the SBOM).
    let ls: Listing = json(&admin(&b, Method::GET, "/admin/cache?repo=app:1", bearer()).await);
    let digests: Vec<&str> = ls.artifacts.iter().map(|a| a.digest.as_str()).collect();
    assert_eq!(digests.len(), 2, "{digests:?}");
    assert!(digests.contains(&sig.as_str()) && digests.contains(&sbom_sig.as_str()));
    let ls: Listing = json(&admin(&b, Method::GET, "/admin/cache?repo=other", bearer()).await);
    let digests: Vec<&str> = ls.artifacts.iter().map(|a| a.digest.as_str()).collect();
    assert_eq!(digests, vec![other_sig.as_str()]);

    // The command through the API, then directly: the same in text and JSON.
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[metrics]\nlisten = \"{}\"\n{}",
        b.metrics,
        admin_toml(secrets.path(), TOKEN)
    );
    let cfg = cli_config(dir.path(), b.dir.path(), &fake, &extra);
    for direct in [false, true] {
        let cfg = cfg.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut args = vec!["ls"];
            if direct {
                args.push("--direct");
            }
            (
                run(&args, &cfg),
                run(&[args, vec!["--json"]].concat(), &cfg),
            )
        })
        .await
        .unwrap();
        let (table, json_out) = out;
        assert!(table.status.success(), "{}", text(&table.stderr));
        let how = if direct {
            "directly"
        } else {
            "via the admin API"
        };
        assert!(text(&table.stderr).contains(how), "{}", text(&table.stderr));
        let table = text(&table.stdout);
        let header = table.lines().next().unwrap();
        assert!(
            header.contains("  ARTIFACT TYPE  ") && header.ends_with("  SUBJECT"),
            "{table}"
        );
        let sbom_line = table.lines().find(|l| l.contains(" sbom ")).unwrap();
        assert!(
            sbom_line.contains(SBOM) && sbom_line.contains(&one.manifest[..19]),
            "{table}"
        );
        let chart_line = table.lines().find(|l| l.contains("library/chart")).unwrap();
        assert!(chart_line.contains(HELM), "{table}");
        assert!(table.contains("\nuntagged artifacts:\n"), "{table}");
        let sig_line = table.lines().find(|l| l.starts_with(&sig[..19])).unwrap();
        assert!(
            sig_line.contains(SIG) && sig_line.contains(&one.manifest[..19]),
            "{table}"
        );
        let ls: Listing = serde_json::from_slice(&json_out.stdout).unwrap();
        assert_eq!(ls.artifacts.len(), 3, "{direct}");
        assert_eq!(
            ls.images
                .iter()
                .filter_map(|i| i.artifact_type.as_deref())
                .collect::<Vec<_>>(),
            vec![SBOM, HELM]
        );
    }
}
