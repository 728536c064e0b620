//! The registry client against the fake registry, over real sockets on 127.0.0.1.

use crate::support;

use std::time::Duration;

use berth::config::{Config, Secret, UpstreamConfig};
use berth::error::{Error, Origin};
use berth::http::error::{Answered, Code};
use berth::oci::media;
use berth::upstream::{NotFoundKind, Upstream, UpstreamMetrics, UpstreamRequest, UpstreamResponse};
use http::{Method, StatusCode, Version};
use support::ports::Dead;
use support::{FakeRegistry, Fault, Host, TokenAuth, TokenField};

const MANIFEST: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

fn config(url: &str, extra: &str) -> UpstreamConfig {
    let text = format!("[[upstream]]\nname = \"fake\"\nurl = \"{url}\"\n{extra}");
    Config::parse(&text, "test").unwrap().upstreams.remove(0)
}

fn with_credentials(mut cfg: UpstreamConfig) -> UpstreamConfig {
    cfg.username = Some("alice".into());
    cfg.password = Some(Secret::new("s3cret"));
    cfg
}

fn upstream(cfg: &UpstreamConfig) -> (Upstream, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = UpstreamMetrics::register(&registry).unwrap();
    (Upstream::new(cfg, metrics).unwrap(), registry)
}

fn request(method: Method, path: &str) -> UpstreamRequest {
    let repo = path
        .strip_prefix("/v2/")
        .and_then(|p| {
            ["/manifests/", "/blobs/", "/tags/"]
                .iter()
                .find_map(|s| p.rsplit_once(s))
        })
        .map(|(name, _)| name.parse().unwrap());
    let mut req = UpstreamRequest::new(method, path, repo);
    // As the mirror asks for manifests (the fake negotiates like the Distribution registry).
    if path.contains("/manifests/") {
        req.headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static(media::UPSTREAM_ACCEPT),
        );
    }
    req
}

async fn get(u: &Upstream, path: &str) -> UpstreamResponse {
    u.send(request(Method::GET, path)).await.unwrap()
}

async fn get_bytes(u: &Upstream, path: &str) -> (StatusCode, bytes::Bytes) {
    let r = get(u, path).await;
    (r.status, r.bytes(1 << 20).await.unwrap())
}

/// The body until it fails: (bytes read, the error).
async fn read_until_error(r: UpstreamResponse) -> (usize, Error) {
    let mut body = r.body;
    let mut n = 0;
    loop {
        match body.next_chunk().await {
            Ok(Some(c)) => n += c.len(),
            Ok(None) => panic!("body ended without an error after {n} bytes"),
            Err(e) => return (n, e),
        }
    }
}

fn counter(registry: &prometheus::Registry, family: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == family)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

fn gauge(registry: &prometheus::Registry, family: &str) -> Option<f64> {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == family)
        .and_then(|f| f.get_metric().first().map(|m| m.get_gauge().get_value()))
}

fn retries(registry: &prometheus::Registry, reason: &str) -> f64 {
    counter(
        registry,
        "berth_upstream_retries_total",
        &[("upstream", "fake"), ("reason", reason)],
    )
}

/// Fast retries: the waits are real, so tests keep them to a millisecond.
const FAST: &str = "retry_backoff = \"1ms\"\n";

#[tokio::test]
async fn anonymous_token_flow() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth::default());
    let digest = fake.put_tagged("library/nginx", "latest", media::OCI_MANIFEST, MANIFEST);
    let (u, registry) = upstream(&config(&fake.url(), ""));

    let r = get(&u, "/v2/library/nginx/manifests/latest").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["docker-content-digest"], digest.as_str());
    assert_eq!(r.bytes(4 << 20).await.unwrap(), MANIFEST);

    let tokens = fake.token_requests();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].header("authorization"), None);
    assert_eq!(tokens[0].param("service").as_deref(), Some("fake-registry"));
    assert_eq!(
        tokens[0].param("scope").as_deref(),
        Some("repository:library/nginx:pull")
    );
    let hits = fake.requests_to("/v2/library/nginx/manifests/latest");
    assert_eq!(hits.len(), 2, "one 401, one retry");
    assert_eq!(hits[0].header("authorization"), None);
    assert_eq!(hits[1].header("authorization"), Some("Bearer fake-token-1"));
    assert!(hits[1].header("user-agent").unwrap().starts_with("berth/"));

    assert_eq!(
        counter(
            &registry,
            "berth_upstream_requests_total",
            &[("status", "401")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &registry,
            "berth_upstream_requests_total",
            &[("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &registry,
            "berth_upstream_token_requests_total",
            &[("upstream", "fake"), ("outcome", "issued")]
        ),
        1.0
    );
}

#[tokio::test]
async fn token_is_cached_and_attached_up_front() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth::default());
    fake.put_tagged("a/b", "1", media::OCI_MANIFEST, MANIFEST);
    fake.put_tagged("c", "1", media::OCI_MANIFEST, MANIFEST);
    let (u, _) = upstream(&config(&fake.url(), ""));

    assert_eq!(get_bytes(&u, "/v2/a/b/manifests/1").await.0, StatusCode::OK);
    assert_eq!(get_bytes(&u, "/v2/a/b/manifests/1").await.0, StatusCode::OK);
    assert_eq!(
        fake.token_requests().len(),
        1,
        "second request used the cached token"
    );
    assert_eq!(fake.hits(Method::GET, "/v2/a/b/manifests/1"), 3);

    // A new repository needs a new scope: fetched before the request, so no 401 round trip.
    assert_eq!(get_bytes(&u, "/v2/c/manifests/1").await.0, StatusCode::OK);
    assert_eq!(fake.token_requests().len(), 2);
    assert_eq!(fake.hits(Method::GET, "/v2/c/manifests/1"), 1);
}

#[tokio::test]
async fn concurrent_misses_fetch_one_token() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth::default());
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    let (u, _) = upstream(&config(&fake.url(), ""));
    let u = std::sync::Arc::new(u);
    let pulls: Vec<_> = (0..8)
        .map(|_| {
            let u = u.clone();
            tokio::spawn(async move { get_bytes(&u, "/v2/x/manifests/1").await.0 })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(fake.token_requests().len(), 1);
}

#[tokio::test]
async fn access_token_field_and_default_lifetime() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth {
        field: TokenField::AccessToken,
        expires_in: None,
        ..TokenAuth::default()
    });
    fake.put_tagged("x", "1", media::DOCKER_MANIFEST, MANIFEST);
    let (u, _) = upstream(&config(&fake.url(), ""));
    let r = get(&u, "/v2/x/manifests/1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], media::DOCKER_MANIFEST);
}

#[tokio::test]
async fn stale_token_is_refreshed_once() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth::default());
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    let (u, _) = upstream(&config(&fake.url(), ""));
    assert_eq!(get_bytes(&u, "/v2/x/manifests/1").await.0, StatusCode::OK);

    fake.revoke_tokens();
    assert_eq!(get_bytes(&u, "/v2/x/manifests/1").await.0, StatusCode::OK);
    assert_eq!(fake.token_requests().len(), 2);
    let hits = fake.requests_to("/v2/x/manifests/1");
    let auth: Vec<_> = hits.iter().map(|r| r.header("authorization")).collect();
    assert_eq!(
        auth,
        [
            None,
            Some("Bearer fake-token-1"),
            Some("Bearer fake-token-1"),
            Some("Bearer fake-token-2")
        ]
    );
}

#[tokio::test]
async fn a_fresh_token_that_is_refused_is_not_retried() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth::default());
    fake.put_tagged("a", "1", media::OCI_MANIFEST, MANIFEST);
    let (u, _) = upstream(&config(&fake.url(), ""));
    // The token asked for ("repository:b:pull") never opens repository a.
    let req = UpstreamRequest::new(Method::GET, "/v2/a/manifests/1", Some("b".parse().unwrap()));
    let r = u.send(req).await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(fake.hits(Method::GET, "/v2/a/manifests/1"), 2);
    assert_eq!(fake.token_requests().len(), 1);
    let e = r
        .error_for_status(NotFoundKind::Manifest)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.status(), e.origin),
        (Code::Denied, StatusCode::FORBIDDEN, Origin::Upstream)
    );
}

#[tokio::test]
async fn credentials_go_to_the_upstream_origin_realm() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth {
        credentials: Some(("alice".into(), "s3cret".into())),
        anonymous: false,
        ..TokenAuth::default()
    });
    fake.put_tagged("private/app", "1", media::OCI_MANIFEST, MANIFEST);
    let (u, _) = upstream(&with_credentials(config(&fake.url(), "")));
    assert_eq!(
        get_bytes(&u, "/v2/private/app/manifests/1").await.0,
        StatusCode::OK
    );
    let tokens = fake.token_requests();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].host, Host::Main);
    assert_eq!(
        tokens[0].header("authorization"),
        Some("Basic YWxpY2U6czNjcmV0")
    );
    // The registry itself only ever sees the token.
    for r in fake.requests_to("/v2/private/app/manifests/1") {
        assert!(
            r.header("authorization")
                .is_none_or(|a| a.starts_with("Bearer "))
        );
    }
}

#[tokio::test]
async fn credentials_go_to_a_listed_foreign_realm() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth {
        credentials: Some(("alice".into(), "s3cret".into())),
        anonymous: false,
        realm: Host::Other,
        ..TokenAuth::default()
    });
    fake.put_tagged("private/app", "1", media::OCI_MANIFEST, MANIFEST);
    let extra = format!("auth_realms = [\"{}\"]\n", fake.realm(Host::Other));
    let (u, _) = upstream(&with_credentials(config(&fake.url(), &extra)));
    assert_eq!(
        get_bytes(&u, "/v2/private/app/manifests/1").await.0,
        StatusCode::OK
    );
    let tokens = fake.token_requests();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].host, Host::Other);
    assert_eq!(
        tokens[0].header("authorization"),
        Some("Basic YWxpY2U6czNjcmV0")
    );
}

#[tokio::test]
async fn an_unlisted_foreign_realm_gets_no_credentials() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth {
        credentials: Some(("alice".into(), "s3cret".into())),
        anonymous: true,
        realm: Host::Other,
        ..TokenAuth::default()
    });
    fake.put_tagged("library/busybox", "1", media::OCI_MANIFEST, MANIFEST);
    let (u, _) = upstream(&with_credentials(config(&fake.url(), "")));
    assert_eq!(
        get_bytes(&u, "/v2/library/busybox/manifests/1").await.0,
        StatusCode::OK
    );
    let tokens = fake.token_requests();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].host, Host::Other);
    assert_eq!(
        tokens[0].header("authorization"),
        None,
        "anonymous token request"
    );

    // When the realm wants credentials it cannot get, the client sees DENIED.
    fake.require_token_auth(TokenAuth {
        credentials: Some(("alice".into(), "s3cret".into())),
        anonymous: false,
        realm: Host::Other,
        ..TokenAuth::default()
    });
    fake.revoke_tokens();
    let r = get(&u, "/v2/library/busybox/manifests/1").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let e = r
        .error_for_status(NotFoundKind::Manifest)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Denied);
    assert!(
        fake.requests().iter().all(|r| r
            .header("authorization")
            .is_none_or(|a| !a.starts_with("Basic "))),
        "no request anywhere carried the password"
    );
}

#[tokio::test]
async fn basic_auth_challenge() {
    let fake = FakeRegistry::start().await;
    fake.require_basic_auth("alice", "s3cret");
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);

    let (anon, _) = upstream(&config(&fake.url(), ""));
    let r = get(&anon, "/v2/x/manifests/1").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        fake.hits(Method::GET, "/v2/x/manifests/1"),
        1,
        "nothing to retry with"
    );

    fake.reset_counts();
    let (u, _) = upstream(&with_credentials(config(&fake.url(), "")));
    assert_eq!(get_bytes(&u, "/v2/x/manifests/1").await.0, StatusCode::OK);
    assert_eq!(get_bytes(&u, "/v2/x/manifests/1").await.0, StatusCode::OK);
    let auth: Vec<_> = fake
        .requests_to("/v2/x/manifests/1")
        .iter()
        .map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    let basic = Some("Basic YWxpY2U6czNjcmV0".to_owned());
    assert_eq!(
        auth,
        [None, basic.clone(), basic],
        "Basic sent up front after the first challenge"
    );
}

#[tokio::test]
async fn redirect_to_another_host_drops_authorization() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth::default());
    let blob = vec![7u8; 100_000];
    let digest = fake.put_blob("x", blob.clone());
    let path = format!("/v2/x/blobs/{digest}");
    fake.fault(&path, Fault::RedirectToOther);
    let (u, registry) = upstream(&config(&fake.url(), ""));

    let (status, body) = get_bytes(&u, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, blob);
    let asked = fake.requests_to(&path);
    assert_eq!(
        asked.last().unwrap().header("authorization"),
        Some("Bearer fake-token-1")
    );
    let cdn = fake.requests_to(&format!("/cdn/{digest}"));
    assert_eq!(cdn.len(), 1);
    assert_eq!(cdn[0].host, Host::Other);
    assert_eq!(cdn[0].header("authorization"), None);
    assert_eq!(cdn[0].header("accept-encoding"), Some("identity"));
    assert_eq!(asked[0].header("accept-encoding"), Some("identity"));
    assert_eq!(
        counter(
            &registry,
            "berth_upstream_requests_total",
            &[("status", "307")]
        ),
        1.0
    );
}

#[tokio::test]
async fn relative_redirect_on_the_same_origin_keeps_authorization() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth::default());
    let digest = fake.put_blob("x", &b"hello"[..]);
    let path = format!("/v2/x/blobs/{digest}");
    fake.fault(
        &path,
        Fault::Redirect(StatusCode::FOUND, format!("/cdn/{digest}")),
    );
    let (u, _) = upstream(&config(&fake.url(), ""));
    assert_eq!(get_bytes(&u, &path).await.1, &b"hello"[..]);
    let cdn = fake.requests_to(&format!("/cdn/{digest}"));
    assert_eq!(cdn[0].host, Host::Main);
    assert_eq!(cdn[0].header("authorization"), Some("Bearer fake-token-1"));
}

#[tokio::test]
async fn too_many_redirects_fail() {
    let fake = FakeRegistry::start().await;
    let digest = fake.put_blob("x", &b"hello"[..]);
    let path = format!("/v2/x/blobs/{digest}");
    fake.fault(&path, Fault::Redirect(StatusCode::FOUND, path.clone()));
    let (u, _) = upstream(&config(&fake.url(), "max_redirects = 2\n"));
    let e = u.send(request(Method::GET, &path)).await.unwrap_err();
    assert_eq!(
        (e.origin, e.status()),
        (Origin::Upstream, StatusCode::BAD_GATEWAY)
    );
    assert_eq!(fake.hits(Method::GET, &path), 3);
}

#[tokio::test]
async fn tls_with_ca_file_speaks_http2() {
    let fake = FakeRegistry::start_tls().await;
    fake.require_token_auth(TokenAuth::default());
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    let ca = fake.ca_file().unwrap().display().to_string();
    let (u, _) = upstream(&config(&fake.url(), &format!("ca_file = \"{ca}\"\n")));
    assert_eq!(get_bytes(&u, "/v2/x/manifests/1").await.1, MANIFEST);
    assert!(fake.requests().iter().all(|r| r.version == Version::HTTP_2));

    // Without the CA the certificate is not trusted.
    let (untrusting, registry) = upstream(&config(&fake.url(), ""));
    let e = untrusting
        .send(request(Method::GET, "/v2/x/manifests/1"))
        .await
        .unwrap_err();
    assert_eq!(e.origin, Origin::Upstream);
    assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The same certificate would come back: not retried.
    assert_eq!(retries(&registry, "connect"), 0.0);
}

#[tokio::test]
async fn https_to_http_redirect_is_refused() {
    let fake = FakeRegistry::start_tls().await;
    let digest = fake.put_blob("x", &b"hello"[..]);
    let path = format!("/v2/x/blobs/{digest}");
    let plain = fake.other_url().replace("https://", "http://");
    fake.fault(
        &path,
        Fault::Redirect(StatusCode::FOUND, format!("{plain}/cdn/{digest}")),
    );
    let ca = fake.ca_file().unwrap().display().to_string();
    let (u, _) = upstream(&config(&fake.url(), &format!("ca_file = \"{ca}\"\n")));
    let e = u.send(request(Method::GET, &path)).await.unwrap_err();
    assert_eq!(
        (e.origin, e.status()),
        (Origin::Upstream, StatusCode::BAD_GATEWAY)
    );
    assert!(e.to_string().contains("https"), "{e}");
    assert!(fake.requests_to(&format!("/cdn/{digest}")).is_empty());
}

#[tokio::test]
async fn stalled_body_times_out() {
    let fake = FakeRegistry::start().await;
    let digest = fake.put_blob("x", vec![1u8; 10_000]);
    let path = format!("/v2/x/blobs/{digest}");
    fake.fault(&path, Fault::StallAfter(1000));
    let (u, _) = upstream(&config(&fake.url(), "stall_timeout = \"200ms\"\n"));
    let r = get(&u, &path).await;
    assert_eq!(r.status, StatusCode::OK);
    let (n, e) = read_until_error(r).await;
    assert_eq!(n, 1000);
    assert_eq!((e.origin, e.code()), (Origin::Upstream, Code::Unavailable));
    assert!(e.to_string().contains("stalled"), "{e}");
}

#[tokio::test]
async fn missing_response_headers_time_out() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    fake.fault("/v2/x/manifests/1", Fault::NoResponse);
    let (u, registry) = upstream(&config(&fake.url(), "response_timeout = \"200ms\"\n"));
    let e = u
        .send(request(Method::GET, "/v2/x/manifests/1"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.origin, e.status()),
        (Origin::Upstream, StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(
        counter(
            &registry,
            "berth_upstream_requests_total",
            &[("status", "timeout")]
        ),
        1.0
    );
}

#[tokio::test]
async fn connection_closed_mid_body_fails() {
    let fake = FakeRegistry::start().await;
    let digest = fake.put_blob("x", vec![1u8; 10_000]);
    let path = format!("/v2/x/blobs/{digest}");
    fake.fault(&path, Fault::CloseAfter(4000));
    let (u, _) = upstream(&config(&fake.url(), ""));
    let (n, e) = read_until_error(get(&u, &path).await).await;
    assert_eq!(n, 4000);
    assert_eq!(e.origin, Origin::Upstream);
    assert!(e.to_string().contains("broke off"), "{e}");
}

#[tokio::test]
async fn refused_connection_is_unavailable() {
    let dead = Dead::new();
    let (u, _) = upstream(&config(&format!("http://{}", dead.addr()), ""));
    let e = u.send(request(Method::GET, "/v2/")).await.unwrap_err();
    assert_eq!(
        (e.origin, e.status()),
        (Origin::Upstream, StatusCode::SERVICE_UNAVAILABLE)
    );
}

#[tokio::test]
async fn rate_limit_maps_to_toomanyrequests_with_retry_after() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    fake.fault_times(
        "/v2/x/manifests/1",
        Fault::Status(StatusCode::TOO_MANY_REQUESTS, Some("7".into())),
        1,
    );
    let (u, _) = upstream(&config(&fake.url(), ""));
    let r = get(&u, "/v2/x/manifests/1").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let e = r
        .error_for_status(NotFoundKind::Manifest)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.status()),
        (Code::TooManyRequests, StatusCode::TOO_MANY_REQUESTS)
    );
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));

    // The fault fired once; the next request is served.
    let r = get(&u, "/v2/x/manifests/1").await;
    assert!(r.error_for_status(NotFoundKind::Manifest).await.is_ok());
}

#[tokio::test]
async fn statuses_map_to_oci_errors() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    let digest = fake.put_blob("x", &b"b"[..]);
    fake.fault(
        "/v2/x/manifests/broken",
        Fault::Status(StatusCode::BAD_GATEWAY, None),
    );
    fake.fault(
        "/v2/x/manifests/teapot",
        Fault::Status(StatusCode::IM_A_TEAPOT, None),
    );
    let blob_path = format!("/v2/x/blobs/{digest}");
    fake.fault(&blob_path, Fault::Status(StatusCode::NOT_FOUND, None));
    let (u, _) = upstream(&config(&fake.url(), FAST));

    let cases = [
        (
            "/v2/x/manifests/nope",
            NotFoundKind::Manifest,
            Code::ManifestUnknown,
            404,
        ),
        // The upstream's own code wins over the hint...
        (
            "/v2/nobody/manifests/1",
            NotFoundKind::Manifest,
            Code::NameUnknown,
            404,
        ),
        // ...and the hint decides when the body has none.
        (
            blob_path.as_str(),
            NotFoundKind::Blob,
            Code::BlobUnknown,
            404,
        ),
        (
            "/v2/x/manifests/broken",
            NotFoundKind::Manifest,
            Code::Unavailable,
            503,
        ),
        (
            "/v2/x/manifests/teapot",
            NotFoundKind::Manifest,
            Code::Unknown,
            502,
        ),
    ];
    for (path, kind, code, status) in cases {
        let e = get(&u, path)
            .await
            .error_for_status(kind)
            .await
            .unwrap_err();
        assert_eq!((e.code(), e.status().as_u16()), (code, status), "{path}");
    }
    let r = u
        .send(request(Method::HEAD, "/v2/x/manifests/1"))
        .await
        .unwrap();
    assert_eq!(
        r.headers["content-length"],
        MANIFEST.len().to_string().as_str()
    );
    assert!(r.bytes(10).await.unwrap().is_empty(), "HEAD has no body");
}

#[tokio::test]
async fn manifest_over_the_limit_is_refused() {
    let fake = FakeRegistry::start().await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(5000));
    fake.put_tagged("x", "big", media::OCI_MANIFEST, big.clone());
    let (u, _) = upstream(&config(&fake.url(), ""));
    let e = get(&u, "/v2/x/manifests/big")
        .await
        .bytes(4096)
        .await
        .unwrap_err();
    assert_eq!(
        (e.origin, e.status()),
        (Origin::Upstream, StatusCode::BAD_GATEWAY)
    );
    let ok = get(&u, "/v2/x/manifests/big")
        .await
        .bytes(big.len())
        .await
        .unwrap();
    assert_eq!(ok.len(), big.len());
}

#[tokio::test]
async fn range_and_tag_list_pass_through() {
    let fake = FakeRegistry::start().await;
    for t in ["a", "b", "c"] {
        fake.put_tagged("x", t, media::OCI_MANIFEST, MANIFEST);
    }
    let digest = fake.put_blob("x", &b"0123456789"[..]);
    let (u, _) = upstream(&config(&fake.url(), ""));

    let mut req = request(Method::GET, &format!("/v2/x/blobs/{digest}"));
    req.headers
        .insert(http::header::RANGE, "bytes=2-4".parse().unwrap());
    let r = u.send(req).await.unwrap();
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes(100).await.unwrap(), &b"234"[..]);

    let r = get(&u, "/v2/x/tags/list?n=2").await;
    assert!(r.headers["link"].to_str().unwrap().contains("last=b"));
    let v: serde_json::Value = serde_json::from_slice(&r.bytes(1000).await.unwrap()).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
}

#[tokio::test]
async fn only_v2_paths_are_sent() {
    let fake = FakeRegistry::start().await;
    let (u, _) = upstream(&config(&fake.url(), ""));
    for bad in ["/v1/x", "http://evil.example/v2/", "/v2/../admin"] {
        let e = u.send(request(Method::GET, bad)).await.unwrap_err();
        assert_eq!(e.origin, Origin::Internal, "{bad}");
    }
    let e = u.send(request(Method::DELETE, "/v2/")).await.unwrap_err();
    assert_eq!(e.origin, Origin::Internal);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn wrong_bytes_are_passed_on_unverified() {
    // The client does not check digests (the mirror does); the fake's fault keeps length and headers.
    let fake = FakeRegistry::start().await;
    let digest = fake.put_blob("x", &b"abc"[..]);
    let path = format!("/v2/x/blobs/{digest}");
    fake.fault(&path, Fault::WrongBytes);
    let (u, _) = upstream(&config(&fake.url(), ""));
    let r = get(&u, &path).await;
    assert_eq!(r.headers["docker-content-digest"], digest.as_str());
    let body = r.bytes(100).await.unwrap();
    assert_eq!(body.len(), 3);
    assert_ne!(body, &b"abc"[..]);
}

// Retries.

#[tokio::test]
async fn a_503_once_is_retried() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    fake.fault_times(
        "/v2/x/manifests/1",
        Fault::Status(StatusCode::SERVICE_UNAVAILABLE, None),
        1,
    );
    let (u, registry) = upstream(&config(&fake.url(), FAST));
    assert_eq!(
        get_bytes(&u, "/v2/x/manifests/1").await,
        (StatusCode::OK, MANIFEST.into())
    );
    assert_eq!(fake.hits(Method::GET, "/v2/x/manifests/1"), 2);
    assert_eq!(retries(&registry, "status_5xx"), 1.0);
    assert_eq!(
        counter(
            &registry,
            "berth_upstream_requests_total",
            &[("status", "503")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_retry_reuses_the_token_and_restarts_the_chain() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth::default());
    let digest = fake.put_blob("x", &b"hello"[..]);
    let path = format!("/v2/x/blobs/{digest}");
    let cdn = format!("/cdn/{digest}");
    fake.fault(&path, Fault::RedirectToOther);
    fake.fault_times(&cdn, Fault::Status(StatusCode::BAD_GATEWAY, None), 1);
    let (u, registry) = upstream(&config(&fake.url(), FAST));
    assert_eq!(get_bytes(&u, &path).await.1, &b"hello"[..]);
    // 401, then the redirect to a failing CDN, then the whole chain again with the cached token.
    let auth: Vec<_> = fake
        .requests_to(&path)
        .iter()
        .map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    let bearer = Some("Bearer fake-token-1".to_owned());
    assert_eq!(auth, [None, bearer.clone(), bearer]);
    assert_eq!(fake.requests_to(&cdn).len(), 2);
    assert_eq!(fake.token_requests().len(), 1);
    assert_eq!(retries(&registry, "status_5xx"), 1.0);
}

#[tokio::test]
async fn persistent_5xx_fails_after_retries_plus_one_attempts() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    fake.fault(
        "/v2/x/manifests/1",
        Fault::Status(StatusCode::BAD_GATEWAY, None),
    );
    let (u, registry) = upstream(&config(&fake.url(), &format!("retries = 3\n{FAST}")));
    let r = get(&u, "/v2/x/manifests/1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(fake.hits(Method::GET, "/v2/x/manifests/1"), 4);
    assert_eq!(retries(&registry, "status_5xx"), 3.0);
    let e = r
        .error_for_status(NotFoundKind::Manifest)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.status()),
        (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE)
    );
}

#[tokio::test]
async fn refused_connections_are_retried_a_bounded_number_of_times() {
    let dead = Dead::new();
    let (u, registry) = upstream(&config(&format!("http://{}", dead.addr()), FAST));
    let e = u.send(request(Method::GET, "/v2/")).await.unwrap_err();
    assert_eq!(
        (e.origin, e.code(), e.status()),
        (
            Origin::Upstream,
            Code::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE
        )
    );
    assert!(e.to_string().contains("after 3 attempts"), "{e}");
    assert_eq!(
        counter(
            &registry,
            "berth_upstream_requests_total",
            &[("status", "error")]
        ),
        3.0
    );
    assert_eq!(retries(&registry, "connect"), 2.0);
}

#[tokio::test]
async fn connections_closed_before_a_response_are_retried() {
    // Accepts and drops every connection: the request gets no response at all.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(tcp);
        }
    });
    let (u, registry) = upstream(&config(&format!("http://{addr}"), FAST));
    let e = u.send(request(Method::GET, "/v2/")).await.unwrap_err();
    server.abort();
    assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(retries(&registry, "connect"), 2.0);
}

#[tokio::test]
async fn a_short_retry_after_is_waited_out() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    fake.fault_times(
        "/v2/x/manifests/1",
        Fault::Status(StatusCode::TOO_MANY_REQUESTS, Some("0".into())),
        1,
    );
    fake.fault_times(
        "/v2/x/manifests/1",
        Fault::Status(StatusCode::SERVICE_UNAVAILABLE, Some("0".into())),
        1,
    );
    let (u, registry) = upstream(&config(&fake.url(), ""));
    assert_eq!(get_bytes(&u, "/v2/x/manifests/1").await.0, StatusCode::OK);
    assert_eq!(fake.hits(Method::GET, "/v2/x/manifests/1"), 3);
    assert_eq!(retries(&registry, "retry_after"), 2.0);
    assert_eq!(retries(&registry, "status_5xx"), 0.0);
}

#[tokio::test]
async fn a_long_retry_after_goes_back_to_the_client() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    let (u, registry) = upstream(&config(&fake.url(), FAST));
    for (status, code) in [
        (StatusCode::TOO_MANY_REQUESTS, Code::TooManyRequests),
        (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable),
    ] {
        fake.reset_counts();
        fake.fault_times(
            "/v2/x/manifests/1",
            Fault::Status(status, Some("3600".into())),
            1,
        );
        let r = get(&u, "/v2/x/manifests/1").await;
        assert_eq!(r.status, status);
        assert_eq!(r.headers["retry-after"], "3600");
        assert_eq!(fake.hits(Method::GET, "/v2/x/manifests/1"), 1, "{status}");
        let e = r
            .error_for_status(NotFoundKind::Manifest)
            .await
            .unwrap_err();
        assert_eq!(e.code(), code);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3600)));
    }
    // A 429 that does not say when is not retried either.
    fake.reset_counts();
    fake.fault_times(
        "/v2/x/manifests/1",
        Fault::Status(StatusCode::TOO_MANY_REQUESTS, None),
        1,
    );
    assert_eq!(
        get(&u, "/v2/x/manifests/1").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(fake.hits(Method::GET, "/v2/x/manifests/1"), 1);
    assert_eq!(counter(&registry, "berth_upstream_retries_total", &[]), 0.0);
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    fake.fault(
        "/v2/x/manifests/gone",
        Fault::Status(StatusCode::NOT_FOUND, None),
    );
    let (u, registry) = upstream(&config(&fake.url(), FAST));
    for path in ["/v2/x/manifests/gone", "/v2/x/manifests/never"] {
        assert_eq!(get(&u, path).await.status, StatusCode::NOT_FOUND);
        assert_eq!(fake.hits(Method::GET, path), 1, "{path}");
    }
    assert_eq!(counter(&registry, "berth_upstream_retries_total", &[]), 0.0);
}

#[tokio::test]
async fn zero_retries_sends_once() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    fake.fault(
        "/v2/x/manifests/1",
        Fault::Status(StatusCode::SERVICE_UNAVAILABLE, Some("0".into())),
    );
    let (u, registry) = upstream(&config(&fake.url(), "retries = 0\n"));
    assert_eq!(
        get(&u, "/v2/x/manifests/1").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(fake.hits(Method::GET, "/v2/x/manifests/1"), 1);

    let dead = Dead::new();
    let (refused, refused_registry) =
        upstream(&config(&format!("http://{}", dead.addr()), "retries = 0\n"));
    let e = refused
        .send(request(Method::GET, "/v2/"))
        .await
        .unwrap_err();
    assert!(!e.to_string().contains("attempts"), "{e}");
    assert_eq!(
        counter(
            &refused_registry,
            "berth_upstream_requests_total",
            &[("status", "error")]
        ),
        1.0
    );
    for r in [&registry, &refused_registry] {
        assert_eq!(counter(r, "berth_upstream_retries_total", &[]), 0.0);
    }
}

#[tokio::test]
async fn rate_limit_headers_set_the_gauges() {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    let (u, registry) = upstream(&config(&fake.url(), ""));
    assert_eq!(get_bytes(&u, "/v2/x/manifests/1").await.0, StatusCode::OK);
    assert_eq!(
        gauge(&registry, "berth_upstream_ratelimit_limit"),
        None,
        "no header, no series"
    );

    fake.response_headers(&[
        ("ratelimit-limit", "100;w=21600"),
        ("ratelimit-remaining", "76;w=21600"),
    ]);
    let r = u
        .send(request(Method::HEAD, "/v2/x/manifests/1"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        gauge(&registry, "berth_upstream_ratelimit_limit"),
        Some(100.0)
    );
    assert_eq!(
        gauge(&registry, "berth_upstream_ratelimit_remaining"),
        Some(76.0)
    );

    // The rate-limited answer carries them too.
    fake.response_headers(&[
        ("ratelimit-limit", "100;w=21600"),
        ("ratelimit-remaining", "0;w=21600"),
    ]);
    fake.fault_times(
        "/v2/x/manifests/1",
        Fault::Status(StatusCode::TOO_MANY_REQUESTS, Some("3600".into())),
        1,
    );
    assert_eq!(
        get(&u, "/v2/x/manifests/1").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        gauge(&registry, "berth_upstream_ratelimit_remaining"),
        Some(0.0)
    );
    let labels = registry
        .gather()
        .iter()
        .find(|f| f.name() == "berth_upstream_ratelimit_remaining")
        .map(|f| f.get_metric()[0].get_label()[0].value().to_owned());
    assert_eq!(labels.as_deref(), Some("fake"));
}

/// A redirect into the private network (loopback here: the only addresses tests may use) is
/// refused when `allow_private_redirects = false`, before any connection; unset, a local upstream
/// may redirect to a local object store. What this shows is the URL check (`Guard::check_url`):
/// `localhost` and literal addresses are refused by it before anything is resolved. The guarded
/// resolver's own refusal (a DNS name that resolves to a private address, as a redirect target
/// or a token realm) is shown by `tests/it/dns.rs`, with a DNS server of its own in a network
/// namespace (`cargo test --test it dns:: -- --ignored`, run by tests/run.sh).
#[tokio::test]
async fn redirects_into_the_private_network_are_refused_unless_allowed() {
    let fake = FakeRegistry::start().await;
    let digest = fake.put_blob("x", &b"hello"[..]);
    let path = format!("/v2/x/blobs/{digest}");
    let other_port = fake.other_url().rsplit(':').next().unwrap().to_owned();
    let cdn = format!("/cdn/{digest}");
    for target in [
        format!("http://localhost:{other_port}{cdn}"),
        format!("http://127.0.0.2:{other_port}{cdn}"),
        format!("http://[::1]:{other_port}{cdn}"),
    ] {
        fake.clear_faults();
        fake.fault(
            &path,
            Fault::Redirect(StatusCode::TEMPORARY_REDIRECT, target.clone()),
        );
        let (strict, _) = upstream(&config(&fake.url(), "allow_private_redirects = false\n"));
        let e = strict.send(request(Method::GET, &path)).await.unwrap_err();
        assert_eq!(
            (e.origin, e.status()),
            (Origin::Upstream, StatusCode::BAD_GATEWAY),
            "{target}"
        );
        assert!(e.to_string().contains("allow_private_redirects"), "{e}");
        assert!(fake.requests_to(&cdn).is_empty(), "{target}");
    }
    // Unset: the upstream is on loopback itself, so its redirect to "localhost" is followed.
    fake.clear_faults();
    fake.fault(
        &path,
        Fault::Redirect(
            StatusCode::TEMPORARY_REDIRECT,
            format!("http://localhost:{other_port}{cdn}"),
        ),
    );
    let (local, _) = upstream(&config(&fake.url(), ""));
    assert_eq!(get_bytes(&local, &path).await.1, &b"hello"[..]);
    assert_eq!(fake.requests_to(&cdn).len(), 1);
}

/// A realm that is not http(s) is never asked for a token, even with a host: the upstream's 401
/// reaches the caller as it is.
#[tokio::test]
async fn a_token_realm_that_is_not_http_is_not_followed() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth {
        realm: Host::Other,
        ..TokenAuth::default()
    });
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    fake.set_url(Host::Other, &fake.other_url().replace("http://", "ftp://"));
    let (u, registry) = upstream(&config(&fake.url(), ""));
    let r = get(&u, "/v2/x/manifests/1").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(fake.token_requests().is_empty());
    assert_eq!(fake.connections(Host::Other), 0);
    let asked = registry
        .gather()
        .iter()
        .any(|f| f.name() == "berth_upstream_token_requests_total");
    assert!(!asked, "no token request was even tried");
}

/// A challenge whose realm is on a private address of another host is not followed when
/// `allow_private_redirects = false`: no token request leaves, and the 401 reaches the caller.
#[tokio::test]
async fn a_token_realm_in_the_private_network_is_refused_unless_allowed() {
    let fake = FakeRegistry::start().await;
    fake.require_token_auth(TokenAuth {
        realm: Host::Other,
        ..TokenAuth::default()
    });
    fake.put_tagged("x", "1", media::OCI_MANIFEST, MANIFEST);
    // The realm is the other listener's 127.0.0.1:<port>; a host the operator did not configure
    // only when named differently, so the strict upstream is configured by another loopback name.
    let url = fake.url().replace("127.0.0.1", "localhost");
    let (strict, _) = upstream(&config(&url, "allow_private_redirects = false\n"));
    let r = get(&strict, "/v2/x/manifests/1").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(fake.token_requests().is_empty());
    // Configured as a realm, it is trusted.
    let realm = fake.realm(Host::Other);
    let (listed, _) = upstream(&config(
        &url,
        &format!("allow_private_redirects = false\nauth_realms = [\"{realm}\"]\n"),
    ));
    assert_eq!(
        get_bytes(&listed, "/v2/x/manifests/1").await.0,
        StatusCode::OK
    );
    assert_eq!(fake.token_requests().len(), 1);
}
