//! Node mode (`[fleet]`) over real sockets: two fake upstreams, a central berth (the parent) in
//! front of them, a node berth in front of the parent. Every route form a runtime sends reaches
//! the right upstream through the node; with the parent down the node serves what it holds (and
//! restarts on its saved list) and answers 503 for the rest; the fleet routes need the fleet's
//! proof; a parent that sends wrong bytes never gets a wrong body completed by the node; a node
//! logs in at a parent with `[auth]`; a reload asks the parent again (or keeps the saved list);
//! and a parent that is no fleet parent is named as such.
//! The wire checks (`?ns=` after `n`/`last`, on ranges and referrers, kept across a redirect back
//! to the parent and not sent to a CDN) use a fake registry as the parent, the node started on a
//! saved list.

use crate::support;

use std::path::{Path, PathBuf};

use http::{Method, StatusCode};

use berth::cluster::auth::{self, PeerKey};
use berth::config::{Config, Secret};
use berth::fleet::listing::Listing;
use berth::oci::media;
use support::instance::{Berth, listeners_and_storage, same, start_reloadable, start_toml};
use support::{FakeRegistry, Fault, random_bytes};

const SECRET: &str = "fleet-secret-0123456789abcdef-0123456789";
const INDEX_A: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
const INDEX_B: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"b":"1"}}"#;

/// The fleet secret in a file of its own directory.
pub(crate) fn secret_file(secret: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("fleet-secret");
    std::fs::write(&f, secret).unwrap();
    (dir, f)
}

/// The central berth: `registry.test` (default, alias `alias.test`, tags always revalidated) in
/// front of `a`, `other.test` in front of `b`.
pub(crate) async fn central(a: &FakeRegistry, b: &FakeRegistry, secret: &Path) -> Berth {
    let dir = tempfile::tempdir().unwrap();
    let cfg = central_toml(dir.path(), a, b, secret, "");
    start_toml(&cfg, dir).await
}

/// The central berth's config, with `tables` (e.g. `[auth]`) and `more` upstreams after.
fn central_toml(
    dir: &Path,
    a: &FakeRegistry,
    b: &FakeRegistry,
    secret: &Path,
    more: &str,
) -> String {
    format!(
        r#"{}
        [fleet]
        secret_file = {:?}
        [[upstream]]
        name = "registry.test"
        url = "{}"
        default = true
        library_prefix = true
        aliases = ["alias.test"]
        tag_ttl = "0s"
        [[upstream]]
        name = "other.test"
        url = "{}"
        {more}
        "#,
        listeners_and_storage(dir),
        secret.display().to_string(),
        a.url(),
        b.url(),
    )
}

/// A node's config: its parent, itself as the only node.
/// A node's config: `parent`, the fleet secret at `secret`, its own listeners and storage in
/// `dir`, and a node set of itself (no peer to share with).
pub(crate) fn node_toml(dir: &Path, parent: &str, secret: &Path) -> String {
    format!(
        r#"{}
        [fleet]
        parent = "{parent}"
        self = "http://127.0.0.1:1"
        peers = ["http://127.0.0.1:1"]
        secret_file = {:?}
        "#,
        listeners_and_storage(dir),
        secret.display().to_string(),
    )
}

pub(crate) async fn node_on(parent: &str, secret: &Path, dir: tempfile::TempDir) -> Berth {
    let cfg = node_toml(dir.path(), parent, secret);
    start_toml(&cfg, dir).await
}

fn url(b: &Berth) -> String {
    format!("http://{}", b.addr)
}

struct Bed {
    a: FakeRegistry,
    b: FakeRegistry,
    central: Berth,
    node: Berth,
    secret: PathBuf,
    _secret_dir: tempfile::TempDir,
}

async fn bed() -> Bed {
    let (a, b) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let (secret_dir, secret) = secret_file(SECRET);
    let central = central(&a, &b, &secret).await;
    let node = node_on(&url(&central), &secret, tempfile::tempdir().unwrap()).await;
    Bed {
        a,
        b,
        central,
        node,
        secret,
        _secret_dir: secret_dir,
    }
}

/// A runtime's request in each form (plain = the default upstream with its library rule, an
/// alias in `?ns=`, a path prefix, another upstream by `?ns=` and by prefix) is answered through
/// the node from the right upstream; a blob crosses each upstream once and lands on the node's
/// disk; a tag list keeps its `n`.
#[tokio::test]
async fn a_node_serves_every_route_form_from_its_parent() {
    let bed = bed().await;
    let da = bed
        .a
        .put_tagged("library/app", "1", media::OCI_INDEX, INDEX_A);
    let db = bed
        .b
        .put_tagged("team/tool", "2", media::OCI_INDEX, INDEX_B);
    let (la, lb) = (random_bytes(300_000, 1), random_bytes(200_000, 2));
    let (ba, bb) = (
        bed.a.put_blob("library/app", la.clone()),
        bed.b.put_blob("team/tool", lb.clone()),
    );
    let node = &bed.node;

    for path in [
        "/v2/app/manifests/1".to_owned(),
        "/v2/library/app/manifests/1?ns=alias.test".to_owned(),
        "/v2/registry.test/library/app/manifests/1".to_owned(),
        format!("/v2/app/manifests/{da}?ns=registry.test"),
    ] {
        let got = node.get(&path).await;
        assert_eq!(got.status, StatusCode::OK, "{path}");
        assert_eq!(got.bytes().as_ref(), INDEX_A.as_bytes(), "{path}");
        assert_eq!(got.header("docker-content-digest"), Some(da.as_str()));
    }
    for path in [
        "/v2/team/tool/manifests/2?ns=other.test".to_owned(),
        "/v2/other.test/team/tool/manifests/2".to_owned(),
    ] {
        let got = node.get(&path).await;
        assert_eq!(got.bytes().as_ref(), INDEX_B.as_bytes(), "{path}");
        assert_eq!(got.header("docker-content-digest"), Some(db.as_str()));
    }
    // Not the default's: a plain request for the other upstream's repository is not found.
    assert_eq!(
        node.get("/v2/team/tool/manifests/2").await.status,
        StatusCode::NOT_FOUND
    );

    for path in [
        format!("/v2/app/blobs/{ba}"),
        format!("/v2/library/app/blobs/{ba}?ns=registry.test"),
        format!("/v2/registry.test/app/blobs/{ba}"),
    ] {
        same(node.get(&path).await.bytes(), &la);
    }
    same(
        node.get(&format!("/v2/team/tool/blobs/{bb}?ns=other.test"))
            .await
            .bytes(),
        &lb,
    );
    let ranged = node
        .request(
            Method::GET,
            &format!("/v2/other.test/team/tool/blobs/{bb}"),
            &[("range", "bytes=100-199")],
        )
        .await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().as_ref(), &lb[100..200]);
    node.settled().await;
    bed.central.settled().await;
    assert_eq!(std::fs::read(node.blob_file(&ba)).unwrap(), la);
    assert_eq!(std::fs::read(node.blob_file(&bb)).unwrap(), lb);
    assert_eq!(
        bed.a
            .hits(Method::GET, &format!("/v2/library/app/blobs/{ba}")),
        1
    );
    assert_eq!(
        bed.b
            .hits(Method::GET, &format!("/v2/team/tool/blobs/{bb}")),
        1
    );

    let tags = node.get("/v2/team/tool/tags/list?ns=other.test&n=1").await;
    assert_eq!(tags.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(tags.bytes()).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["2"]));
    let asked = bed.b.requests_to("/v2/team/tool/tags/list");
    assert_eq!(asked.last().unwrap().param("n").as_deref(), Some("1"));
}

/// The parent down: the node serves what it holds (a tag whose TTL ran out, stale; blobs and
/// manifests from disk) and 503 for what it does not; restarted while the parent is still down,
/// it starts on the saved list and serves the same; with a parent that black-holes connections,
/// the same within a few `parent_timeout`s.
#[tokio::test]
async fn with_the_parent_down_a_node_serves_what_it_holds() {
    let bed = bed().await;
    let da = bed
        .a
        .put_tagged("library/app", "1", media::OCI_INDEX, INDEX_A);
    let la = random_bytes(100_000, 3);
    let ba = bed.a.put_blob("library/app", la.clone());
    let lb = random_bytes(1000, 4);
    let bb = bed.b.put_blob("team/tool", lb);
    let node = bed.node;
    assert_eq!(
        node.get("/v2/app/manifests/1").await.bytes().as_ref(),
        INDEX_A.as_bytes()
    );
    same(node.get(&format!("/v2/app/blobs/{ba}")).await.bytes(), &la);
    node.settled().await;
    assert!(node.dir.path().join("fleet/upstreams.json").exists());
    drop(bed.central);

    holds(&node, &da, &ba, &bb, &la).await;
    let dir = node.stop().await;
    let dead = support::ports::Dead::new();
    let restarted = node_on(&format!("http://{}", dead.addr()), &bed.secret, dir).await;
    holds(&restarted, &da, &ba, &bb, &la).await;

    // A parent that black-holes connections (a listener whose one backlog slot is taken: the
    // kernel drops every later SYN), `parent_timeout = "1s"`: the stale tag's revalidation and
    // the 503 each cost the node's tries of a 1 s connect, not of the default 10 s.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let hole = socket.listen(0).unwrap();
    let addr = hole.local_addr().unwrap();
    let _queued = std::net::TcpStream::connect(addr).unwrap();
    let dir = restarted.stop().await;
    let cfg = format!(
        "{}parent_timeout = \"1s\"\n",
        node_toml(dir.path(), &format!("http://{addr}"), &bed.secret)
    );
    let black_holed = start_toml(&cfg, dir).await;
    let started = std::time::Instant::now();
    holds(&black_holed, &da, &ba, &bb, &la).await;
    let took = started.elapsed();
    // Three tries of a 1 s connect for each of the two, with backoff; the default 10 s connect
    // made it 60 s and more.
    assert!(took < std::time::Duration::from_secs(25), "{took:?}");
    drop(hole);
}

/// What a node with its parent down answers: the tag (stale) and the blob it holds, 503 for a
/// blob it does not.
async fn holds(node: &Berth, da: &str, ba: &str, bb: &str, la: &bytes::Bytes) {
    let got = node.get("/v2/app/manifests/1").await;
    assert_eq!(got.status, StatusCode::OK, "a stale tag is served");
    assert_eq!(got.header("docker-content-digest"), Some(da));
    same(node.get(&format!("/v2/app/blobs/{ba}")).await.bytes(), la);
    let got = node
        .get(&format!("/v2/team/tool/blobs/{bb}?ns=other.test"))
        .await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.code(), "UNAVAILABLE");
}

/// Fleet routes need the fleet's proof: none, or a cluster proof over the same secret, gets 401
/// with the `Berth-Fleet` challenge and is counted; the parent lists its upstreams (names, no
/// addresses) to a signed request; a node does not; a node with another secret cannot start.
#[tokio::test]
async fn the_fleet_routes_need_the_fleet_proof() {
    let bed = bed().await;
    let path = berth::fleet::UPSTREAMS_PATH;
    let central = &bed.central;
    let got = central.get(path).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert_eq!(got.header("www-authenticate"), Some("Berth-Fleet"));
    let secret = Secret::new(SECRET);
    let cluster = PeerKey::new(&secret).sign("GET", path, auth::now());
    let renamed = cluster
        .to_str()
        .unwrap()
        .replacen(auth::SCHEME, berth::fleet::SCHEME, 1);
    for proof in [cluster.to_str().unwrap(), renamed.as_str()] {
        let got = central
            .request(Method::GET, path, &[("authorization", proof)])
            .await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{proof}");
    }
    assert_eq!(
        central
            .counter("berth_fleet_auth_failures_total{reason=\"missing\"}")
            .await,
        2
    );
    assert_eq!(
        central
            .counter("berth_fleet_auth_failures_total{reason=\"bad_proof\"}")
            .await,
        1
    );

    let signed_as = |method: &str, p: &str| {
        berth::fleet::key(&secret)
            .sign(method, p, auth::now())
            .to_str()
            .unwrap()
            .to_owned()
    };
    let signed = |p: &str| signed_as("GET", p);
    let proof = signed(path);
    let got = central
        .request(Method::GET, path, &[("authorization", proof.as_str())])
        .await;
    assert_eq!(got.status, StatusCode::OK);
    let listing = Listing::parse(got.bytes()).unwrap();
    let names: Vec<&str> = listing.upstreams.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["registry.test", "other.test"]);
    assert_eq!(listing.upstreams[0].aliases, ["alias.test"]);
    assert!(!String::from_utf8_lossy(got.bytes()).contains(&bed.a.url()));
    let head = central
        .request(
            Method::HEAD,
            path,
            &[("authorization", &*signed_as("HEAD", path))],
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.header("content-length"),
        Some(got.bytes().len().to_string().as_str())
    );
    assert!(head.bytes().is_empty());
    // A POST names its (empty) body's digest in the proof.
    let (post_proof, named) =
        berth::fleet::sign_body(&berth::fleet::key(&secret), "POST", path, b"", auth::now());
    let post = central
        .request(
            Method::POST,
            path,
            &[
                ("authorization", post_proof.to_str().unwrap()),
                (berth::fleet::BODY_HEADER, named.to_str().unwrap()),
            ],
        )
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    let other = "/_berth/fleet/v1/nothing";
    let other_proof = signed(other);
    let got = central
        .request(
            Method::GET,
            other,
            &[("authorization", other_proof.as_str())],
        )
        .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    let got = bed
        .node
        .request(Method::GET, path, &[("authorization", proof.as_str())])
        .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "a node lists nothing");

    let (_d, wrong) = secret_file("another-fleet-secret-0123456789abcdef");
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(&node_toml(dir.path(), &url(central), &wrong), "node").unwrap();
    let e = berth::server::Server::bind(&cfg)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("401") && e.contains("none was saved"), "{e}");
}

/// A parent (here a fake registry, the node started on a saved list) that answers a blob with
/// wrong bytes: the node's client never gets a complete body, nothing is cached, and the next
/// pull is whole. Every request carries `?ns=`, after a tag list's `n` and `last`, and again
/// after a redirect back to the parent.
#[tokio::test]
async fn a_lying_parent_never_completes_a_wrong_body() {
    let parent = FakeRegistry::start().await;
    let layer = random_bytes(500_000, 9);
    let blob = parent.put_blob("library/app", layer.clone());
    let subject = parent.put_tagged("library/app", "1", media::OCI_INDEX, INDEX_A);
    parent.serve_referrers(10);
    let (_s, secret) = secret_file(SECRET);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("fleet")).unwrap();
    std::fs::write(
        dir.path().join("fleet/upstreams.json"),
        r#"{"upstreams":[{"name":"registry.test","aliases":[],"default":true,"library_prefix":true,"tag_ttl_ms":30000}]}"#,
    )
    .unwrap();
    let node = node_on(&parent.url(), &secret, dir).await;

    let path = format!("/v2/library/app/blobs/{blob}");
    // The node's HEAD (the swarm's access check) and its GET.
    parent.fault_times(&path, Fault::WrongBytes, 2);
    let got = node.get(&format!("/v2/app/blobs/{blob}")).await;
    assert!(
        got.body.is_err(),
        "a wrong body must end in an error: {}",
        got.status
    );
    assert!(!node.blob_file(&blob).exists(), "wrong bytes cached");
    same(
        node.get(&format!("/v2/app/blobs/{blob}")).await.bytes(),
        &layer,
    );
    let asked = parent.requests_to(&path);
    assert_eq!(parent.hits(Method::GET, &path), 2, "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|r| r.param("ns").as_deref() == Some("registry.test")),
        "{asked:?}"
    );

    let second = random_bytes(50_000, 10);
    let second_digest = parent.put_blob("library/app", second.clone());
    let ranged = node
        .request(
            Method::GET,
            &format!("/v2/app/blobs/{second_digest}"),
            &[("range", "bytes=10-19")],
        )
        .await;
    assert_eq!(ranged.bytes().as_ref(), &second[10..20]);
    let asked = parent.requests_to(&format!("/v2/library/app/blobs/{second_digest}"));
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|r| r.param("ns").as_deref() == Some("registry.test")),
        "{asked:?}"
    );

    // A redirect away from the parent (a CDN) is followed as given: `ns` is the parent's.
    let third = random_bytes(40_000, 11);
    let third_digest = parent.put_blob("library/app", third.clone());
    parent.fault_times(
        &format!("/v2/library/app/blobs/{third_digest}"),
        Fault::RedirectToOther,
        1,
    );
    same(
        node.get(&format!("/v2/app/blobs/{third_digest}"))
            .await
            .bytes(),
        &third,
    );
    let cdn: Vec<_> = parent
        .requests()
        .into_iter()
        .filter(|r| r.host == support::Host::Other)
        .collect();
    assert_eq!(cdn.len(), 1, "{cdn:?}");
    assert_eq!(cdn[0].param("ns"), None, "{cdn:?}");

    let tags = "/v2/library/app/tags/list";
    let got = node.get("/v2/app/tags/list?n=5&last=0").await;
    assert_eq!(got.status, StatusCode::OK);
    let r = parent.requests_to(tags).pop().unwrap();
    assert_eq!(
        (r.param("n"), r.param("last"), r.param("ns")),
        (
            Some("5".into()),
            Some("0".into()),
            Some("registry.test".into())
        )
    );

    let got = node
        .get(&format!(
            "/v2/app/referrers/{subject}?artifactType=application/vnd.example.sbom"
        ))
        .await;
    assert_eq!(got.status, StatusCode::OK);
    let r = parent
        .requests_to(&format!("/v2/library/app/referrers/{subject}"))
        .pop()
        .unwrap();
    assert_eq!(r.param("ns").as_deref(), Some("registry.test"));

    let manifest = "/v2/library/app/manifests/1";
    parent.fault_times(
        manifest,
        Fault::Redirect(
            StatusCode::TEMPORARY_REDIRECT,
            format!("{manifest}?moved=1"),
        ),
        2,
    );
    let got = node.get("/v2/app/manifests/1").await;
    assert_eq!(got.bytes().as_ref(), INDEX_A.as_bytes());
    let redirected: Vec<_> = parent
        .requests_to(manifest)
        .into_iter()
        .filter(|r| r.param("moved").is_some())
        .collect();
    assert!(!redirected.is_empty());
    assert!(
        redirected
            .iter()
            .all(|r| r.param("ns").as_deref() == Some("registry.test")),
        "{redirected:?}"
    );
}

/// A parent with `[auth]`: a node with `[fleet] username`/`password_file` pulls through it like
/// any client with a login; a node without one gets the parent's refusal, and its upstream list
/// (asked with the fleet proof, not a login) all the same.
#[tokio::test]
async fn a_node_logs_in_at_a_parent_with_auth() {
    let (a, b) = (FakeRegistry::start().await, FakeRegistry::start().await);
    a.put_tagged("library/app", "1", media::OCI_INDEX, INDEX_A);
    let (secret_dir, secret) = secret_file(SECRET);
    let htpasswd = secret_dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("node:{}\n", bcrypt::hash("node-password", 4).unwrap()),
    )
    .unwrap();
    let password = secret_dir.path().join("password");
    std::fs::write(&password, "node-password\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth = format!("[auth]\nhtpasswd = {:?}\n", htpasswd.display().to_string());
    let central = start_toml(&central_toml(dir.path(), &a, &b, &secret, &auth), dir).await;

    let dir = tempfile::tempdir().unwrap();
    let login = format!(
        "{}username = \"node\"\npassword_file = {:?}\n",
        node_toml(dir.path(), &url(&central), &secret),
        password.display().to_string()
    );
    let node = start_toml(&login, dir).await;
    let got = node.get("/v2/app/manifests/1").await;
    assert_eq!(got.bytes().as_ref(), INDEX_A.as_bytes());

    let anonymous = node_on(&url(&central), &secret, tempfile::tempdir().unwrap()).await;
    let got = anonymous.get("/v2/app/manifests/1").await;
    assert_eq!(
        (got.status, got.code().as_str()),
        (StatusCode::FORBIDDEN, "DENIED"),
        "the parent's 401, as any upstream's"
    );
    assert!(
        central
            .counter("berth_auth_attempts_total{outcome=\"ok\"}")
            .await
            >= 1,
        "the node logged in"
    );
}

/// A reload asks the parent again: an upstream the parent added is served by the node after its
/// reload, not before; a reload with the parent down keeps the saved list (nothing removed).
#[tokio::test]
async fn a_reload_asks_the_parent_again() {
    let (a, b, c) = (
        FakeRegistry::start().await,
        FakeRegistry::start().await,
        FakeRegistry::start().await,
    );
    c.put_tagged("team/new", "1", media::OCI_INDEX, INDEX_B);
    let (_secret_dir, secret) = secret_file(SECRET);
    let central_dir = tempfile::tempdir().unwrap();
    let central_file = central_dir.path().join("central.toml");
    let text = central_toml(central_dir.path(), &a, &b, &secret, "");
    let (central, central_reloader) = start_reloadable(&text, central_dir).await;
    let node_dir = tempfile::tempdir().unwrap();
    let node_file = node_dir.path().join("node.toml");
    let node_text = node_toml(node_dir.path(), &url(&central), &secret);
    std::fs::write(&node_file, &node_text).unwrap();
    let (node, node_reloader) = start_reloadable(&node_text, node_dir).await;

    let path = "/v2/team/new/manifests/1?ns=third.test";
    assert_eq!(node.get(path).await.status, StatusCode::NOT_FOUND);
    let more = format!(
        "[[upstream]]\nname = \"third.test\"\nurl = \"{}\"\n",
        c.url()
    );
    std::fs::write(
        &central_file,
        central_toml(central.dir.path(), &a, &b, &secret, &more),
    )
    .unwrap();
    let changes = central_reloader.reload_file(&central_file).await.unwrap();
    assert_eq!(changes.added, ["third.test"]);
    assert_eq!(node.get(path).await.status, StatusCode::NOT_FOUND);
    let changes = node_reloader.reload_file(&node_file).await.unwrap();
    assert_eq!(changes.added, ["third.test"]);
    assert_eq!(node.get(path).await.bytes().as_ref(), INDEX_B.as_bytes());

    drop(central);
    let changes = node_reloader.reload_file(&node_file).await.unwrap();
    assert!(
        changes.removed.is_empty() && changes.added.is_empty(),
        "{changes:?}"
    );
    let got = node.get(path).await;
    assert_eq!(
        got.bytes().as_ref(),
        INDEX_B.as_bytes(),
        "from the node's cache"
    );
}

/// What a node is told when its parent is no fleet parent: a berth without `[fleet]`, or another
/// node, answers the list's path with 404, and the node says what that means.
#[tokio::test]
async fn a_parent_without_fleet_is_named() {
    let bed = bed().await;
    let plain = support::instance::berth(&bed.a, "").await;
    for (parent, what) in [
        (url(&plain), "a berth without [fleet]"),
        (url(&bed.node), "a node"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::parse(&node_toml(dir.path(), &parent, &bed.secret), "n").unwrap();
        let e = berth::fleet::node::fetch(cfg.fleet.as_ref().unwrap())
            .await
            .unwrap_err();
        assert!(
            e.contains("404: the parent has no [fleet] table"),
            "{what}: {e}"
        );
    }
}

/// A parent that answers the list's path wrongly (an error status, a body that is no list, one
/// past the size limit, no answer at all within the bound): the node names what it got.
#[tokio::test]
async fn a_wrong_answer_to_the_list_is_named() {
    let parent = FakeRegistry::start().await;
    let (_s, secret) = secret_file(SECRET);
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(&node_toml(dir.path(), &parent.url(), &secret), "n").unwrap();
    let fleet = cfg.fleet.as_ref().unwrap();
    let path = berth::fleet::UPSTREAMS_PATH;
    let json = || vec![("content-type".to_owned(), "application/json".to_owned())];
    for (fault, want) in [
        (
            Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None),
            "the parent answered 503",
        ),
        (
            Fault::Answer(json(), bytes::Bytes::from_static(br#"{"upstreams":"all"}"#)),
            "the upstream list: invalid type",
        ),
        (
            Fault::Answer(json(), bytes::Bytes::from(vec![b' '; 300 * 1024])),
            "the body: length limit exceeded",
        ),
    ] {
        parent.fault_times(path, fault, 1);
        let e = berth::fleet::node::fetch(fleet).await.unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
    }
    parent.fault_times(path, Fault::NoResponse, 1);
    let limit = std::time::Duration::from_millis(300);
    let e = berth::fleet::node::fetch_within(fleet, limit)
        .await
        .unwrap_err();
    // The head's bound (parent_timeout, here above the whole limit) is the whole limit.
    assert!(e.contains("no answer within 300ms"), "{e}");
    let asked = parent.requests_to(path);
    assert_eq!(asked.len(), 4);
    assert!(
        asked.iter().all(|r| r
            .header("authorization")
            .is_some_and(|a| a.starts_with("Berth-Fleet "))),
        "every ask is fleet-signed"
    );
}

/// A node whose storage cannot take the saved list (its `fleet` directory is a file) still starts
/// on the parent's answer and serves; only a later start with the parent down would miss it.
#[tokio::test]
async fn a_list_that_cannot_be_saved_does_not_stop_a_node() {
    let bed = bed().await;
    bed.a
        .put_tagged("library/app", "1", media::OCI_INDEX, INDEX_A);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fleet"), "not a directory").unwrap();
    let node = node_on(&url(&bed.central), &bed.secret, dir).await;
    let got = node.get("/v2/app/manifests/1").await;
    assert_eq!(got.bytes().as_ref(), INDEX_A.as_bytes());
    assert!(node.dir.path().join("fleet").is_file());
}
