//! berth as a service, with the real binary: systemd readiness over a real `NOTIFY_SOCKET`,
//! `/healthz`, live reload on SIGHUP, and JSON logs.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};

use support::served::{PATIENCE, serve};

/// One HTTP/1.1 request with `Connection: close`: the status and the whole response text.
async fn http(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
    (status, text)
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A config with one upstream at `url`, listeners on port 0, storage in `dir/data`.
fn config(dir: &Path, url: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"20s\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n{extra}\n[[upstream]]\nname = \"registry.test\"\nurl = \"{url}\"\ndefault = true\nlibrary_prefix = true\n",
        dir.join("data").display()
    )
}

/// Receives notify datagrams until one contains `needle`; returns all received, in order.
async fn until_notified(sock: &UnixDatagram, needle: &str, got: &mut Vec<String>) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} notification in time: {got:#?}"))
            .unwrap();
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg.contains(needle);
        got.push(msg);
        if done {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_notify_ready_after_the_listeners_answer_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    // Two cached blobs (any file named by a sha256 hex is indexed) and one stray file.
    let blobs = dir.path().join("data/blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for seed in [1u64, 2] {
        let bytes = support::random_bytes(1000, seed);
        let hex = support::digest_of(&bytes);
        std::fs::write(blobs.join(hex.trim_start_matches("sha256:")), &bytes).unwrap();
    }
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // Never contacted: nothing here pulls.
    let cfg = write_config(
        dir.path(),
        "c.toml",
        &config(dir.path(), "http://127.0.0.1:9", ""),
    );
    let mut berth = serve(
        &cfg,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut got = Vec::new();
    until_notified(&sock, "READY=1", &mut got).await;
    // READY=1 came after the listeners were bound and the index rebuilt: both answer at once.
    berth.started().await;
    let (status, _) = http(berth.registry, "/v2/").await;
    assert_eq!(status, 200);
    let (status, body) = http(berth.metrics, "/healthz?verbose=json").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"entries\":2"), "{body}");

    let all = got.join("\n");
    let starting = all.find("STATUS=starting").expect(&all);
    let rebuilding = all.find("STATUS=rebuilding index of 2 blobs").expect(&all);
    let ready = all.find("READY=1").unwrap();
    assert!(starting < rebuilding && rebuilding < ready, "{all}");
    assert!(
        all[ready..].contains("STATUS=serving (2 blobs cached)"),
        "{all}"
    );

    // The watchdog: WATCHDOG_USEC=200ms means a WATCHDOG=1 every 100ms.
    until_notified(&sock, "WATCHDOG=1", &mut got).await;

    berth.signal("-TERM");
    until_notified(&sock, "STOPPING=1", &mut got).await;
    let last = got.last().unwrap();
    assert!(last.contains("STATUS=draining 0 transfers"), "{last}");
    let exit = tokio::task::spawn_blocking(move || {
        let status = berth.child.wait().unwrap();
        (status, berth)
    })
    .await
    .unwrap()
    .0;
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abstract_notify_socket_works_and_no_socket_changes_nothing() {
    use std::os::linux::net::SocketAddrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("berth-service-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let std_sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    std_sock.set_nonblocking(true).unwrap();
    let sock = UnixDatagram::from_std(std_sock).unwrap();
    let cfg = write_config(
        dir.path(),
        "c.toml",
        &config(dir.path(), "http://127.0.0.1:9", ""),
    );
    let mut berth = serve(&cfg, &[("NOTIFY_SOCKET", &format!("@{name}"))]);
    let mut got = Vec::new();
    until_notified(&sock, "READY=1", &mut got).await;
    berth.started().await;
    drop(berth);

    // Without NOTIFY_SOCKET, berth starts and serves as before.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "c.toml",
        &config(dir.path(), "http://127.0.0.1:9", ""),
    );
    let mut berth = serve(&cfg, &[]);
    berth.started().await;
    berth.line("cache index rebuilt; serving").await;
    assert_eq!(http(berth.registry, "/v2/").await.0, 200);
    assert_eq!(http(berth.metrics, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_draining_and_the_running_transfer_completes() {
    use support::instance;
    let fake = support::FakeRegistry::start().await;
    let mut b = instance::berth(&fake, "").await;
    let (status, body) = http(b.metrics, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("ok\n"), "{body}");

    let (layer, digest, release) = instance::gated_blob(&fake, 256 * 1024, 7, 1);
    release.send(1000).unwrap();
    let mut s = b.stream(&format!("/v2/app/blobs/{digest}")).await;
    s.read_at_least(1000).await;

    b.begin_shutdown();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = http(b.metrics, "/healthz?verbose").await;
        if status == 503 {
            assert!(body.contains("status: draining"), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never draining: {body}"
        );
        tokio::task::yield_now().await;
    }
    release.send(usize::MAX - 1).unwrap();
    let got = s.finish().await.unwrap();
    instance::same(&bytes::Bytes::from(got), &layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let fake = support::FakeRegistry::start().await;
    let blob = fake.put_blob("library/app", support::random_bytes(5000, 3));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "c.toml",
        &config(
            dir.path(),
            &fake.url(),
            "[log]\nformat = \"json\"\nlevel = \"info\"",
        ),
    );
    let mut berth = serve(&cfg, &[]);
    berth.started().await;
    let (status, _) = http(berth.registry, &format!("/v2/app/blobs/{blob}")).await;
    assert_eq!(status, 200);
    let line = berth.line("\"message\":\"request\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["target"], "berth::http");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], format!("/v2/app/blobs/{blob}"));
    assert_eq!(v["route"], "blob");
    assert_eq!(v["upstream"], "registry.test");
    assert_eq!(v["repo"], "library/app");
    assert_eq!(v["reference"], blob.as_str());
    assert_eq!(v["outcome"], "miss");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 5000);
    assert!(v["complete"].is_boolean());
    assert!(v["ms"].is_u64());
    // No [auth]: nobody logged in.
    assert_eq!(v["user"], "-");
    // Event lines too: every line berth wrote is a JSON object. The fill's "blob cached" and the
    // request's line come from two tasks in either order (the client may have its last byte, and
    // the request its line, before the fill logs its commit, or after): wait only if not seen yet.
    if !berth.seen.iter().any(|l| l.contains("blob cached")) {
        berth.line("blob cached").await;
    }
    for l in &berth.seen {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v["timestamp"].is_string() && v["message"].is_string(),
            "{l}"
        );
    }
    let started = berth.seen.iter().find(|l| l.contains("listening")).unwrap();
    let v: serde_json::Value = serde_json::from_str(started).unwrap();
    assert!(
        v["registry"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
}

/// The value of the metric series `series` (exact name with labels).
async fn metric(addr: SocketAddr, series: &str) -> Option<u64> {
    let (_, text) = http(addr, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_an_upstream_refuses_a_broken_config_and_keeps_a_running_transfer() {
    use support::instance;
    let fake = support::FakeRegistry::start().await;
    let other = support::FakeRegistry::start().await;
    let other_blob = other.put_blob("team/tool", support::random_bytes(3000, 11));
    // A transfer that stays open across the reloads until the test lets it finish.
    let (layer, digest, release) = instance::gated_blob(&fake, 512 * 1024, 12, 1);

    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let first = config(dir.path(), &fake.url(), "");
    let cfg = write_config(dir.path(), "c.toml", &first);
    let mut berth = serve(&cfg, &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut got = Vec::new();
    until_notified(&sock, "READY=1", &mut got).await;
    berth.started().await;
    let pid = berth.child.id();
    let other_path = format!("/v2/other.test/team/tool/blobs/{other_blob}");
    assert_eq!(http(berth.registry, &other_path).await.0, 404);

    // The running transfer: headers and the first bytes are through.
    let mut client = TcpStream::connect(berth.registry).await.unwrap();
    client
        .write_all(
            format!(
                "GET /v2/app/blobs/{digest} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    release.send(100_000).unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while received.len() < 100_000 {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "transfer ended early");
        received.extend_from_slice(&buf[..n]);
    }

    // 1. A broken file: refused, counted, named; the old configuration keeps serving.
    std::fs::write(
        &cfg,
        first.replace("[storage]", "[storage]\nmax_sise = \"1GiB\""),
    )
    .unwrap();
    berth.signal("-HUP");
    let refused = berth.line("configuration reload refused").await;
    assert!(refused.contains("max_sise"), "{refused}");
    until_notified(&sock, "READY=1", &mut got).await;
    assert!(
        got.iter()
            .any(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC=")),
        "{got:#?}"
    );
    let failure = "berth_config_reloads_total{outcome=\"failure\"}";
    assert_eq!(metric(berth.metrics, failure).await, Some(1));
    assert_eq!(http(berth.registry, "/v2/").await.0, 200);

    // 2. A good one: the default upstream changes (a new client), another upstream appears,
    // the storage limit and the listen address change (the last needs a restart).
    let second = config(dir.path(), &fake.url(), "max_size = \"1GiB\"").replace(
        "listen = \"127.0.0.1:0\"\nshutdown",
        "listen = \"127.0.0.1:1\"\nshutdown",
    ) + &format!(
        "tag_ttl = \"5s\"\n[[upstream]]\nname = \"other.test\"\nurl = \"{}\"\n",
        other.url()
    );
    std::fs::write(&cfg, second).unwrap();
    berth.signal("-HUP");
    let restart = berth.line("need a restart").await;
    assert!(restart.contains("server.listen"), "{restart}");
    let done = berth.line("configuration reloaded").await;
    assert!(
        done.contains("added=other.test") && done.contains("changed=registry.test"),
        "{done}"
    );
    assert!(done.contains("storage_limits=true"), "{done}");
    let success = "berth_config_reloads_total{outcome=\"success\"}";
    assert_eq!(metric(berth.metrics, success).await, Some(1));
    assert_eq!(
        metric(berth.metrics, "berth_cache_max_bytes").await,
        Some(1 << 30)
    );
    let (status, body) = http(berth.registry, &other_path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        other.hits(
            http::Method::GET,
            &format!("/v2/team/tool/blobs/{other_blob}")
        ),
        1
    );
    // The same process, still on its old port.
    assert_eq!(berth.child.id(), pid);
    assert!(berth.child.try_wait().unwrap().is_none());

    // The transfer that ran across both reloads completes, byte for byte.
    release.send(usize::MAX - 1).unwrap();
    client.read_to_end(&mut received).await.unwrap();
    let text = String::from_utf8_lossy(&received[..received.len().min(1024)]).into_owned();
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    instance::same(
        &bytes::Bytes::copy_from_slice(&received[head_end..]),
        &layer,
    );

    // 3. Removing the upstream again: it is no longer routed.
    std::fs::write(&cfg, first).unwrap();
    berth.signal("-HUP");
    let done = berth.line("configuration reloaded").await;
    assert!(done.contains("removed=other.test"), "{done}");
    assert_eq!(http(berth.registry, &other_path).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_client_of_an_unchanged_upstream_and_swaps_the_set_whole() {
    let fake = support::FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), &fake.url(), "");
    let cfg = berth::config::Config::parse(&text, "t").unwrap();
    let server = berth::server::Server::bind(&cfg).await.unwrap();
    let reloader = server.reloader();
    let added = format!(
        "{text}[[upstream]]\nname = \"b.test\"\nurl = \"{}\"\n",
        fake.url()
    );
    let changes = reloader
        .apply(berth::config::Config::parse(&added, "t").unwrap())
        .unwrap();
    assert_eq!(changes.added, ["b.test"]);
    assert!(
        changes.changed.is_empty() && changes.removed.is_empty(),
        "{changes:?}"
    );
    // Nothing differs: nothing is rebuilt.
    let again = reloader
        .apply(berth::config::Config::parse(&added, "t").unwrap())
        .unwrap();
    assert_eq!(again, berth::reload::Changes::default());
    let removed = reloader
        .apply(berth::config::Config::parse(&text, "t").unwrap())
        .unwrap();
    assert_eq!(removed.removed, ["b.test"]);
    assert!(
        removed.added.is_empty() && removed.changed.is_empty(),
        "{removed:?}"
    );
    // A request routed to b.test before the reload and served after it gets 503, not another
    // upstream; registry.test is still slot 0.
    let mirror = server.mirror();
    let gone = mirror.upstream(1).unwrap_err();
    assert_eq!(
        gone.kind,
        berth::error::Kind::UpstreamUnavailable { retry_after: None }
    );
    assert!(gone.to_string().contains("b.test"), "{gone}");
    assert_eq!(mirror.upstream(0).unwrap().name(), "registry.test");
    assert_eq!(mirror.upstream_names(), ["registry.test"]);
    // Added back: the same slot again.
    reloader
        .apply(berth::config::Config::parse(&added, "t").unwrap())
        .unwrap();
    assert_eq!(mirror.upstream(1).unwrap().name(), "b.test");

    // Without a way to change the log level (main provides one), a new level refuses the reload.
    let level = added.replace("[storage]", "[log]\nlevel = \"debug\"\n[storage]");
    let e = reloader
        .apply(berth::config::Config::parse(&level, "t").unwrap())
        .unwrap_err();
    assert!(e.contains("log.level"), "{e}");
    // ... and changed nothing: b.test is still there.
    assert_eq!(mirror.upstream_names(), ["registry.test", "b.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_wins_over_a_reloaded_level_and_an_unreachable_notify_socket_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), "http://127.0.0.1:9", "");
    let cfg = write_config(dir.path(), "c.toml", &text);
    let missing = dir.path().join("no-such.sock");
    let mut berth = serve(
        &cfg,
        &[
            ("RUST_LOG", "info"),
            ("NOTIFY_SOCKET", missing.to_str().unwrap()),
        ],
    );
    let warned = berth.line("NOTIFY_SOCKET").await;
    assert!(warned.contains("not notifying"), "{warned}");
    berth.started().await;
    berth.line("cache index rebuilt; serving").await;
    std::fs::write(
        &cfg,
        text.replace("[storage]", "[log]\nlevel = \"debug\"\n[storage]"),
    )
    .unwrap();
    berth.signal("-HUP");
    let kept = berth.line("log level not changed").await;
    assert!(kept.contains("RUST_LOG is set"), "{kept}");
    berth.line("configuration reloaded").await;
    assert_eq!(http(berth.registry, "/v2/").await.0, 200);
}

/// A TLS client that trusts `roots`, connected to `addr` as `localhost`.
async fn tls_connect(
    addr: SocketAddr,
    roots: &rustls::RootCertStore,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// `GET /v2/` on a kept-alive connection: the status (the answer has an empty body).
async fn get_base(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> u16 {
    let text = support::wire::keep_alive_get(tls, "localhost").await;
    assert!(
        text.to_ascii_lowercase().contains("content-length: 0"),
        "{text}"
    );
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

fn peer_cert(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_goes_to_new_connections_while_an_open_one_continues() {
    let dir = tempfile::tempdir().unwrap();
    let one = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let two = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    // As cert-manager mounts them: tls.crt -> ..data/tls.crt, ..data -> a timestamped directory.
    let write_pair = |name: &str, ck: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("tls.crt"), ck.cert.pem()).unwrap();
        std::fs::write(d.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    };
    write_pair("v1", &one);
    std::os::unix::fs::symlink("v1", dir.path().join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), dir.path().join(f)).unwrap();
    }
    let extra = format!(
        "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        dir.path().join("tls.crt").display(),
        dir.path().join("tls.key").display()
    );
    let text = config(dir.path(), "http://127.0.0.1:9", "").replacen(
        "[server]\n",
        &format!("{}\n", extra),
        1,
    );
    let cfg = write_config(dir.path(), "c.toml", &text);
    let mut berth = serve(&cfg, &[]);
    berth.started().await;
    berth.line("cache index rebuilt; serving").await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(one.cert.der().clone()).unwrap();
    roots.add(two.cert.der().clone()).unwrap();
    let mut open = tls_connect(berth.registry, &roots).await;
    assert_eq!(get_base(&mut open).await, 200);
    assert_eq!(peer_cert(&open), one.cert.der().to_vec());

    // A broken pair first (a key that is not the certificate's): refused, the old one serves.
    write_pair("broken", &two);
    std::fs::write(
        dir.path().join("broken/tls.key"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let swap = |target: &str| {
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
    };
    swap("broken");
    let refused = berth.line("TLS certificate reload refused").await;
    assert!(
        refused.contains("the certificate or key file changed"),
        "{refused}"
    );
    let next = tls_connect(berth.registry, &roots).await;
    assert_eq!(peer_cert(&next), one.cert.der().to_vec());
    drop(next);

    // The good rotation: noticed without a signal.
    write_pair("v2", &two);
    swap("v2");
    berth.line("TLS certificate reloaded").await;
    let mut next = tls_connect(berth.registry, &roots).await;
    assert_eq!(peer_cert(&next), two.cert.der().to_vec());
    assert_eq!(get_base(&mut next).await, 200);
    // The connection opened before goes on, with the certificate it started with.
    assert_eq!(get_base(&mut open).await, 200);
    assert_eq!(peer_cert(&open), one.cert.der().to_vec());
    assert_eq!(
        metric(
            berth.metrics,
            "berth_tls_reloads_total{outcome=\"failure\"}"
        )
        .await,
        Some(1)
    );
    assert_eq!(
        metric(
            berth.metrics,
            "berth_tls_reloads_total{outcome=\"success\"}"
        )
        .await,
        Some(1)
    );

    // SIGHUP re-reads it too (same files: a success, same certificate).
    berth.signal("-HUP");
    berth.line("configuration reloaded").await;
    berth.line("TLS certificate reloaded").await;
}
