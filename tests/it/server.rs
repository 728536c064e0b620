//! The client-facing edge over real sockets: routing errors, refused methods and proxy requests,
//! header limits, the metrics listener, and shutdown. The upstream here is a listener that must
//! never be contacted.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use berth::config::Config;
use berth::server::Server;

use crate::support::{certs, wire};

struct Running {
    addr: SocketAddr,
    metrics: SocketAddr,
    /// The only upstream; tests assert it was never dialled.
    upstream: TcpListener,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), berth::server::StartError>>,
    _dir: tempfile::TempDir,
}

async fn start(extra_server: &str) -> Running {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        {extra_server}
        [metrics]
        listen = "127.0.0.1:0"
        [storage]
        path = "{}"
        [[upstream]]
        name = "quay.io"
        url = "http://{}"
        "#,
        dir.path().display(),
        upstream.local_addr().unwrap()
    );
    let cfg = Config::parse(&cfg, "test").unwrap();
    let server = Server::bind(&cfg).await.unwrap();
    let (addr, metrics) = (server.local_addr(), server.metrics_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        metrics,
        upstream,
        stop: Some(tx),
        done,
        _dir: dir,
    }
}

impl Running {
    fn assert_upstream_untouched(&self) {
        // A connection attempt would sit in the accept queue.
        let polled = futures_util::FutureExt::now_or_never(self.upstream.accept());
        assert!(polled.is_none(), "the upstream was contacted");
    }
}

/// Sends raw request bytes and reads the whole response (the request asks to close).
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(addr: SocketAddr, method: &str, path: &str) -> String {
    raw(
        addr,
        &format!("{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n"),
    )
    .await
}

fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn body_json(resp: &str) -> serde_json::Value {
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {resp}"))
}

fn error_code(resp: &str) -> String {
    body_json(resp)["errors"][0]["code"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn base_endpoint_answers_with_api_version() {
    let b = start("").await;
    for m in ["GET", "HEAD"] {
        let r = get(b.addr, m, "/v2/").await;
        assert_eq!(status(&r), 200, "{r}");
        assert!(
            r.to_ascii_lowercase()
                .contains("docker-distribution-api-version: registry/2.0"),
            "{r}"
        );
    }
    b.assert_upstream_untouched();
}

#[tokio::test]
async fn bad_input_gets_oci_errors_and_no_upstream_traffic() {
    let b = start("").await;
    let hex = "a".repeat(64);
    let cases = [
        // No default upstream, no registry named.
        (
            "GET",
            "/v2/library/nginx/manifests/latest".to_owned(),
            404,
            "NAME_UNKNOWN",
        ),
        // A registry that is not configured, by ns and by prefix.
        (
            "GET",
            "/v2/x/manifests/latest?ns=evil.example.com".to_owned(),
            404,
            "NAME_UNKNOWN",
        ),
        (
            "GET",
            "/v2/ghcr.io/x/y/manifests/latest".to_owned(),
            404,
            "NAME_UNKNOWN",
        ),
        (
            "GET",
            "/v2/quay.io/UPPER/manifests/latest".to_owned(),
            400,
            "NAME_INVALID",
        ),
        // Neither a tag nor a digest: no such manifest (what the OCI conformance suite expects).
        (
            "GET",
            "/v2/quay.io/x/manifests/-tag".to_owned(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            "/v2/quay.io/x/manifests/.INVALID_MANIFEST_NAME".to_owned(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        // Shaped like a digest but not a valid one: the client's digest is wrong, and says so.
        (
            "GET",
            "/v2/quay.io/x/manifests/sha256:123".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/quay.io/x/blobs/sha256:123".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/quay.io/x/blobs/md5:abc".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/quay.io/x/tags/list?n=abc".to_owned(),
            400,
            "PAGINATION_NUMBER_INVALID",
        ),
        (
            "PUT",
            format!("/v2/quay.io/x/manifests/sha256:{hex}"),
            405,
            "UNSUPPORTED",
        ),
        (
            "POST",
            "/v2/quay.io/x/blobs/uploads/".to_owned(),
            405,
            "UNSUPPORTED",
        ),
        (
            "DELETE",
            format!("/v2/quay.io/x/blobs/sha256:{hex}"),
            405,
            "UNSUPPORTED",
        ),
        ("GET", "/v1/search".to_owned(), 404, "NAME_UNKNOWN"),
        ("GET", "/v2/x".to_owned(), 404, "NAME_UNKNOWN"),
    ];
    for (method, path, want_status, want_code) in cases {
        let r = get(b.addr, method, &path).await;
        assert_eq!(status(&r), want_status, "{method} {path}: {r}");
        assert_eq!(error_code(&r), want_code, "{method} {path}: {r}");
        assert!(
            r.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{r}"
        );
        let detail = &body_json(&r)["errors"][0]["detail"];
        assert!(
            detail.is_string() && !detail.as_str().unwrap().is_empty(),
            "detail in {r}"
        );
    }
    b.assert_upstream_untouched();
}

#[tokio::test]
async fn a_reference_that_is_neither_tag_nor_digest_is_an_unknown_manifest_for_head_too() {
    let b = start("").await;
    let r = get(
        b.addr,
        "HEAD",
        "/v2/quay.io/x/manifests/.INVALID_MANIFEST_NAME",
    )
    .await;
    assert_eq!(status(&r), 404, "{r}");
    b.assert_upstream_untouched();
}

#[tokio::test]
async fn head_errors_have_no_body() {
    let b = start("").await;
    let r = get(b.addr, "HEAD", "/v2/ghcr.io/x/y/manifests/latest").await;
    assert_eq!(status(&r), 404, "{r}");
    assert!(r.ends_with("\r\n\r\n"), "HEAD must not carry a body: {r:?}");
}

#[tokio::test]
async fn proxy_requests_are_refused() {
    let b = start("").await;
    let r = raw(
        b.addr,
        "GET http://quay.io/v2/ HTTP/1.1\r\nHost: quay.io\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 400, "{r}");
    let r = raw(
        b.addr,
        "CONNECT quay.io:443 HTTP/1.1\r\nHost: quay.io:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(matches!(status(&r), 400 | 405), "{r}");
    b.assert_upstream_untouched();
}

#[tokio::test]
async fn too_many_headers_get_431() {
    let b = start("max_headers = 20").await;
    let mut req = "GET /v2/ HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n".to_owned();
    for i in 0..40 {
        req.push_str(&format!("X-Filler-{i}: x\r\n"));
    }
    req.push_str("\r\n");
    let r = raw(b.addr, &req).await;
    assert_eq!(status(&r), 431, "{r}");
    // A huge single header is refused too.
    let r = raw(
        b.addr,
        &format!(
            "GET /v2/ HTTP/1.1\r\nHost: berth\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(100_000)
        ),
    )
    .await;
    assert_eq!(status(&r), 431, "{r}");
}

#[tokio::test]
async fn a_slow_header_sender_is_cut_off() {
    let b = start(r#"header_read_timeout = "300ms""#).await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: ber")
        .await
        .unwrap();
    // The server must close the connection on its own; the test only bounds how long it waits.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "connection still open long after header_read_timeout"
    );
}

#[tokio::test]
async fn metrics_and_health() {
    let b = start("").await;
    let _ = get(b.addr, "GET", "/v2/").await;
    let r = get(b.metrics, "GET", "/healthz").await;
    assert_eq!(status(&r), 200, "{r}");
    let r = get(b.metrics, "GET", "/metrics").await;
    assert_eq!(status(&r), 200);
    assert!(
        r.contains(r#"berth_http_requests_total{method="GET",route="base",status="200"} 1"#),
        "{r}"
    );
    assert!(r.contains("berth_cache_bytes 0"), "{r}");
    assert_eq!(status(&get(b.metrics, "GET", "/nope").await), 404);
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let mut b = start("").await;
    b.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), &mut b.done)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(b.addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn tls_listener_speaks_h2_and_http1() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let pair = certs::self_signed(dir.path(), "tls", &["localhost"]);
    let b = start(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        pair.cert.display(),
        pair.key.display()
    ))
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(pair.der).unwrap();
    for (alpn, want) in [
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], b"h2".to_vec()),
        (vec![b"http/1.1".to_vec()], b"http/1.1".to_vec()),
    ] {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        cfg.alpn_protocols = alpn;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = TcpStream::connect(b.addr).await.unwrap();
        let mut tls = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&want[..]));
        if want == b"http/1.1" {
            tls.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            tls.read_to_end(&mut out).await.unwrap();
            assert_eq!(status(&String::from_utf8_lossy(&out)), 200);
        }
    }
    // Plain HTTP on the TLS port gets no answer but a closed connection.
    let r = get(b.addr, "GET", "/v2/").await;
    assert_eq!(status(&r), 0, "{r}");
}

async fn keep_alive_get(s: &mut TcpStream) -> String {
    wire::keep_alive_get(s, "berth").await
}

#[tokio::test]
async fn beyond_max_connections_a_connection_waits_until_one_closes() {
    let b = start("max_connections = 2\nheader_read_timeout = \"60s\"").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(b.addr).await.unwrap();
        assert!(keep_alive_get(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // The third is accepted by the kernel, not by berth: its request gets no answer yet.
    let mut third = TcpStream::connect(b.addr).await.unwrap();
    let waiting = tokio::spawn(async move {
        let head = keep_alive_get(&mut third).await;
        (third, head)
    });
    // A bounded look for an answer that must not come while both slots are taken.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "served beyond max_connections");
    // The metrics listener is not counted: it answers meanwhile.
    assert!(
        get(b.metrics, "GET", "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    // A held connection still works (its slot is its own).
    assert!(
        keep_alive_get(&mut held[0])
            .await
            .starts_with("HTTP/1.1 200")
    );

    drop(held.remove(0));
    let (_third, head) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting connection is served once a slot frees")
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// Reads HTTP/2 frames from `s` until the first SETTINGS frame from the server; returns its
/// (identifier, value) pairs.
async fn server_settings(s: &mut TcpStream) -> Vec<(u16, u32)> {
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        // Type 4 = SETTINGS; flag 1 = ACK (of ours), which carries nothing.
        if head[3] == 4 && head[4] & 1 == 0 {
            return payload
                .chunks(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect();
        }
    }
}

#[tokio::test]
async fn http2_caps_streams_and_drops_a_peer_that_does_not_answer_pings() {
    let b = start(
        "http2_max_concurrent_streams = 7\nhttp2_keepalive_interval = \"200ms\"\nhttp2_keepalive_timeout = \"200ms\"",
    )
    .await;
    // Prior-knowledge HTTP/2 on plain TCP: the preface and an empty SETTINGS frame, then silence.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let settings = server_settings(&mut s).await;
    // SETTINGS_MAX_CONCURRENT_STREAMS is identifier 3.
    assert!(settings.contains(&(3, 7)), "{settings:?}");
    // The server pings, gets no answer, and closes: EOF (or a reset), within a bounded time.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        ended.is_ok(),
        "a peer that never answers a PING kept its connection"
    );
    // Among what came before the end: a PING (type 6).
    assert!(
        rest.windows(4).any(|w| w[3] == 6 && w[0..3] == [0, 0, 8]),
        "no PING in {rest:?}"
    );
}

/// skopeo, podman and Docker try https first against an insecure registry: a TLS ClientHello
/// on the plain listener is answered (hyper's 400, then a close) at once, so the client falls
/// back to http now, not after `header_read_timeout` (10 s) as when berth waited for the empty
/// line that ends a request head.
#[tokio::test]
async fn a_tls_client_hello_on_the_plain_listener_is_answered_at_once() {
    let fake = crate::support::FakeRegistry::start().await;
    let b = crate::support::instance::berth(&fake, "").await;
    let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    // The first bytes of a ClientHello record: handshake (0x16), record version, length, ...
    let hello = [
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x5a,
    ];
    s.write_all(&hello).await.unwrap();
    let mut answer = Vec::new();
    // Bounded far below the 10 s header timeout; the answer ends with the close.
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .expect("a ClientHello was held for the header timeout")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
}
