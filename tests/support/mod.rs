//! A fake upstream registry for integration tests: an in-process hyper server on 127.0.0.1:0 (or
//! on addresses of a test's own network namespace, [`FakeRegistry::start_at`]).
//!
//! It serves the read side of the distribution API (`/v2/`, manifests by tag and digest, blobs with
//! single ranges, tag lists), counts every request per (method, path), and can be told to require
//! token or Basic auth and to misbehave per path ([`Fault`]). A second listener on another port is
//! "another host": a CDN that blob GETs can be redirected to, and a foreign token realm. Either
//! host may be named by a DNS name instead of its address ([`FakeRegistry::rename`]), and each
//! counts the connections it accepted.
//!
//! Manifests are negotiated as the Distribution registry (2.8) does it, so that berth meets the
//! same conversions as in the field: asked by tag without accepting the stored type, a Docker
//! schema 2 manifest is converted into a signed schema 1 manifest (its signature, so its bytes,
//! new on every request; its `Docker-Content-Digest` the digest of the payload), a manifest list
//! is replaced by its amd64 manifest, and an OCI manifest or index gets a 404.
//!
//! Use it from a test crate with `mod support;`. Nothing here sleeps: stalls wait forever and
//! tests bound them with a short configured timeout.
#![allow(dead_code)] // each test crate uses a different part

pub mod certs;
pub mod instance;
pub mod ports;
pub mod served;
pub mod sigstore;
pub mod wire;

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt as _};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Which of the two listeners a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// The registry itself.
    Main,
    /// "Another host": CDN for redirected blobs, or a foreign token realm.
    Other,
}

/// How the fake misbehaves on one path (after auth has passed).
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status, an OCI error body, and `Retry-After` if given.
    Status(StatusCode, Option<String>),
    /// Same length and headers, different bytes.
    WrongBytes,
    /// Announce the full `Content-Length`, send this many bytes, then drop the connection.
    CloseAfter(usize),
    /// Send headers and this many bytes, then nothing, forever.
    StallAfter(usize),
    /// Never send response headers.
    NoResponse,
    /// 307 to the other host's `/cdn/<digest>` (blob paths only), like a registry sending a client
    /// to its object store.
    RedirectToOther,
    /// A redirect with this `Location` (absolute or relative) and status.
    Redirect(StatusCode, String),
    /// Hold the response headers until the gate holds `true`, then answer normally.
    Hold(tokio::sync::watch::Receiver<bool>),
    /// Send headers at once, then only as many body bytes as the gate allows so far: the test
    /// decides how far a transfer has got. `usize::MAX` breaks the connection where it stands.
    Gated(tokio::sync::watch::Receiver<usize>),
    /// As [`Fault::Gated`], but with these bytes instead of the content (same headers): a wrong
    /// body whose arrival the test paces.
    GatedWith(tokio::sync::watch::Receiver<usize>, Bytes),
    /// Answer 200 with these headers and this body instead of the content.
    Answer(Vec<(String, String)>, Bytes),
    /// Answer a blob `Range` request with the whole blob and 200, as servers without range support do.
    IgnoreRange,
    /// Answer a blob `Range` request with its 206, but this `Content-Range` header instead of the
    /// true one (the bytes are the ones asked for).
    BadContentRange(String),
}

/// Which field a token response carries the token in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenField {
    Token,
    AccessToken,
}

/// Token auth, as Docker Hub does it.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// The Basic credentials the token endpoint accepts (others get 401).
    pub credentials: Option<(String, String)>,
    /// Whether a token request without credentials gets a token.
    pub anonymous: bool,
    /// `expires_in` in the token response (tokens expire then, on tokio's clock); `None` leaves the
    /// field out (clients assume 60 s).
    pub expires_in: Option<u64>,
    /// Where the challenge's realm points.
    pub realm: Host,
    pub field: TokenField,
}

impl Default for TokenAuth {
    fn default() -> Self {
        TokenAuth {
            credentials: None,
            anonymous: true,
            expires_in: Some(300),
            realm: Host::Main,
            field: TokenField::Token,
        }
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub host: Host,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub version: Version,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// A query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_deref()?.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

#[derive(Debug, Clone)]
struct Manifest {
    media_type: String,
    body: Bytes,
}

struct IssuedToken {
    scope: String,
    expires: Instant,
}

#[derive(Default)]
struct State {
    main_url: String,
    other_url: String,
    /// (repo, digest) -> manifest.
    manifests: HashMap<(String, String), Manifest>,
    /// (repo, tag) -> digest.
    tags: HashMap<(String, String), String>,
    /// (repo, digest) -> bytes.
    blobs: HashMap<(String, String), Bytes>,
    hits: HashMap<(Method, String), usize>,
    requests: Vec<Recorded>,
    token_auth: Option<TokenAuth>,
    basic_auth: Option<(String, String)>,
    tokens: HashMap<String, IssuedToken>,
    issued: u64,
    /// Path -> fault and how many more times it fires (`None`: always).
    faults: Vec<(String, Fault, Option<usize>)>,
    /// Added to every response of the main host (Docker Hub's `ratelimit-*`, say).
    response_headers: Vec<(String, String)>,
    /// The referrers API of OCI 1.1, with this many referrers a page; `None`: no such route
    /// (404, as the Distribution registry 2.8 answers).
    referrers_page: Option<usize>,
    /// Connections each host accepted.
    accepted: HashMap<Host, usize>,
}

/// The fake registry; dropping it stops accepting connections.
pub struct FakeRegistry {
    state: Arc<Mutex<State>>,
    main: SocketAddr,
    other: SocketAddr,
    scheme: &'static str,
    ca: Option<tempfile::NamedTempFile>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeRegistry {
    /// Plain HTTP/1.1 on both listeners.
    pub async fn start() -> FakeRegistry {
        Self::start_with(None, LOOPBACK, LOOPBACK).await
    }

    /// Plain HTTP/1.1, the registry listening on `main` and the other host on `other` (port 0
    /// each): for a test in a network namespace of its own, where it may add addresses.
    pub async fn start_at(main: IpAddr, other: IpAddr) -> FakeRegistry {
        Self::start_with(None, main, other).await
    }

    /// HTTPS (HTTP/2 and HTTP/1.1 by ALPN) on both listeners, with a certificate for 127.0.0.1
    /// signed by a CA made for this run; point the upstream's `ca_file` at [`Self::ca_file`].
    pub async fn start_tls() -> FakeRegistry {
        let (acceptor, ca_pem) = test_tls();
        let mut f = Self::start_with(Some(acceptor), LOOPBACK, LOOPBACK).await;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, ca_pem.as_bytes()).unwrap();
        f.ca = Some(file);
        f
    }

    async fn start_with(
        tls: Option<tokio_rustls::TlsAcceptor>,
        main: IpAddr,
        other: IpAddr,
    ) -> FakeRegistry {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let main = TcpListener::bind((main, 0)).await.unwrap();
        let other = TcpListener::bind((other, 0)).await.unwrap();
        let (main_addr, other_addr) = (main.local_addr().unwrap(), other.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            main_url: format!("{scheme}://{main_addr}"),
            other_url: format!("{scheme}://{other_addr}"),
            ..State::default()
        }));
        let tasks = vec![
            tokio::spawn(serve(main, tls.clone(), state.clone(), Host::Main)),
            tokio::spawn(serve(other, tls, state.clone(), Host::Other)),
        ];
        FakeRegistry {
            state,
            main: main_addr,
            other: other_addr,
            scheme,
            ca: None,
            tasks,
        }
    }

    /// `http://127.0.0.1:<port>` (or https): the upstream `url`.
    pub fn url(&self) -> String {
        self.with(|s| s.main_url.clone())
    }

    /// The other host's base URL.
    pub fn other_url(&self) -> String {
        self.with(|s| s.other_url.clone())
    }

    /// From now on, names `host` by `name` (and its port) in every URL the fake hands out: its
    /// base URL, its realm, the `Location` of [`Fault::RedirectToOther`].
    pub fn rename(&self, host: Host, name: &str) {
        let port = match host {
            Host::Main => self.main.port(),
            Host::Other => self.other.port(),
        };
        self.set_url(host, &format!("{}://{name}:{port}", self.scheme));
    }

    /// From now on, hands out `url` as `host`'s base URL (any scheme: a realm berth must refuse).
    pub fn set_url(&self, host: Host, url: &str) {
        let url = url.to_owned();
        self.with(|s| match host {
            Host::Main => s.main_url = url,
            Host::Other => s.other_url = url,
        });
    }

    /// How many connections `host` has accepted so far.
    pub fn connections(&self, host: Host) -> usize {
        self.with(|s| s.accepted.get(&host).copied().unwrap_or(0))
    }

    pub fn addr(&self) -> SocketAddr {
        self.main
    }

    /// The token endpoint on the main host or the other host.
    pub fn realm(&self, host: Host) -> String {
        match host {
            Host::Main => format!("{}/token", self.url()),
            Host::Other => format!("{}/token", self.other_url()),
        }
    }

    /// The CA certificate (PEM) for a TLS fake.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca.as_ref().map(|f| f.path())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    // Content.

    /// Answers the referrers API of OCI 1.1, `page` referrers a page (without, the route is a
    /// 404, as on the Distribution registry 2.8).
    pub fn serve_referrers(&self, page: usize) {
        self.with(|s| s.referrers_page = Some(page));
    }

    /// Stores a manifest (reachable by digest); returns its digest.
    pub fn put_manifest(&self, repo: &str, media_type: &str, body: impl Into<Bytes>) -> String {
        let body = body.into();
        let digest = digest_of(&body);
        let m = Manifest {
            media_type: media_type.to_owned(),
            body,
        };
        self.with(|s| s.manifests.insert((repo.into(), digest.clone()), m));
        digest
    }

    /// Stores `body` under a digest of the test's choosing (which a registry that lies, or one that
    /// stores signed schema 1 manifests under their payload's digest, would announce).
    pub fn put_manifest_as(
        &self,
        repo: &str,
        digest: &str,
        media_type: &str,
        body: impl Into<Bytes>,
    ) {
        let m = Manifest {
            media_type: media_type.to_owned(),
            body: body.into(),
        };
        self.with(|s| s.manifests.insert((repo.into(), digest.into()), m));
    }

    /// Points `tag` at a stored manifest.
    pub fn tag(&self, repo: &str, tag: &str, digest: &str) {
        self.with(|s| s.tags.insert((repo.into(), tag.into()), digest.into()));
    }

    /// Stores a manifest and tags it; returns its digest.
    pub fn put_tagged(
        &self,
        repo: &str,
        tag: &str,
        media_type: &str,
        body: impl Into<Bytes>,
    ) -> String {
        let digest = self.put_manifest(repo, media_type, body);
        self.tag(repo, tag, &digest);
        digest
    }

    pub fn untag(&self, repo: &str, tag: &str) {
        self.with(|s| s.tags.remove(&(repo.into(), tag.into())));
    }

    /// Stores a blob; returns its digest.
    pub fn put_blob(&self, repo: &str, body: impl Into<Bytes>) -> String {
        let body = body.into();
        let digest = digest_of(&body);
        self.with(|s| s.blobs.insert((repo.into(), digest.clone()), body));
        digest
    }

    // Observation.

    /// Requests for (method, path) on either host, whatever the answer.
    pub fn hits(&self, method: Method, path: &str) -> usize {
        self.with(|s| s.hits.get(&(method, path.to_owned())).copied().unwrap_or(0))
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }

    /// Requests to a path (either host).
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.path == path)
                .cloned()
                .collect()
        })
    }

    /// Requests to the token endpoint (either host).
    pub fn token_requests(&self) -> Vec<Recorded> {
        self.requests_to("/token")
    }

    pub fn reset_counts(&self) {
        self.with(|s| {
            s.hits.clear();
            s.requests.clear();
        });
    }

    // Auth.

    pub fn require_token_auth(&self, auth: TokenAuth) {
        self.with(|s| s.token_auth = Some(auth));
    }

    pub fn require_basic_auth(&self, user: &str, password: &str) {
        self.with(|s| s.basic_auth = Some((user.into(), password.into())));
    }

    /// Every token issued so far stops working (a 401 mid-pull).
    pub fn revoke_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }

    // Faults.

    /// `fault` on every request to `path`.
    pub fn fault(&self, path: &str, fault: Fault) {
        self.with(|s| s.faults.push((path.into(), fault, None)));
    }

    /// `fault` on the next `times` requests to `path`.
    pub fn fault_times(&self, path: &str, fault: Fault, times: usize) {
        self.with(|s| s.faults.push((path.into(), fault, Some(times))));
    }

    pub fn clear_faults(&self) {
        self.with(|s| s.faults.clear());
    }

    /// Headers added to every later response of the main host, faults and errors included, the
    /// way Docker Hub sends `ratelimit-limit` / `ratelimit-remaining`. Replaces earlier ones.
    pub fn response_headers(&self, headers: &[(&str, &str)]) {
        let headers = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.with(|s| s.response_headers = headers);
    }
}

/// `sha256:<hex>` of `bytes`.
/// `n` deterministic pseudo-random bytes (xorshift from `seed`): layers that compress badly and
/// differ per seed.
pub fn random_bytes(n: usize, seed: u64) -> Bytes {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<_>>()
        .into()
}

pub fn digest_of(bytes: &[u8]) -> String {
    berth::oci::Digest::of(bytes).to_string()
}

/// A CA and a leaf for 127.0.0.1/localhost signed by it; the acceptor offers h2 and http/1.1.
fn test_tls() -> (tokio_rustls::TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), ca.pem())
}

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<Mutex<State>>,
    host: Host,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        *state.lock().unwrap().accepted.entry(host).or_default() += 1;
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), host, req));
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
                None => {
                    let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                }
            }
        });
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

fn respond(status: StatusCode, headers: &[(&str, String)], body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    for (k, v) in headers {
        r.headers_mut().append(
            header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    r
}

fn oci_error(status: StatusCode, code: &str, extra: &[(&str, String)]) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": code, "message": code.to_lowercase().replace('_', " ")}]});
    let mut headers = vec![("content-type", "application/json".to_owned())];
    headers.extend(extra.iter().cloned());
    respond(status, &headers, full(body.to_string()))
}

async fn handle(
    state: Arc<Mutex<State>>,
    host: Host,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let rec = Recorded {
        host,
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().map(str::to_owned),
        headers: req.headers().clone(),
        version: req.version(),
    };
    let head = rec.method == Method::HEAD;
    let (reply, extra) = {
        let mut s = state.lock().unwrap();
        *s.hits
            .entry((rec.method.clone(), rec.path.clone()))
            .or_default() += 1;
        s.requests.push(rec.clone());
        let extra = match host {
            Host::Main => s.response_headers.clone(),
            Host::Other => Vec::new(),
        };
        (route(&mut s, &rec), extra)
    };
    let mut resp = match reply {
        Reply::Now(r) => r,
        Reply::Never => std::future::pending().await,
        Reply::Held(r, mut gate) => {
            let _ = gate.wait_for(|open| *open).await;
            r
        }
    };
    if head {
        *resp.body_mut() = full(Bytes::new());
    }
    for (k, v) in extra {
        resp.headers_mut().insert(
            header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(&v).unwrap(),
        );
    }
    Ok(resp)
}

enum Reply {
    Now(Response<Body>),
    Never,
    Held(Response<Body>, tokio::sync::watch::Receiver<bool>),
}

fn route(s: &mut State, rec: &Recorded) -> Reply {
    if rec.path == "/token" {
        return Reply::Now(token_endpoint(s, rec));
    }
    let repo = repo_of(&rec.path);
    if rec.path.starts_with("/v2/")
        && let Some(denied) = check_auth(s, rec, repo.as_deref())
    {
        return Reply::Now(denied);
    }
    let fault = take_fault(s, &rec.path);
    match &fault {
        Some(Fault::Status(status, retry_after)) => {
            let code = match status.as_u16() {
                429 => "TOOMANYREQUESTS",
                404 => "NOT_FOUND_NO_CODE",
                // What a registry without a route says (the referrers API, say).
                400 | 405 => "UNSUPPORTED",
                _ => "UNAVAILABLE",
            };
            let extra: Vec<_> = retry_after
                .iter()
                .map(|r| ("retry-after", r.clone()))
                .collect();
            return Reply::Now(oci_error(*status, code, &extra));
        }
        Some(Fault::NoResponse) => return Reply::Never,
        Some(Fault::Answer(headers, body)) => {
            let headers: Vec<(&str, String)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            return Reply::Now(respond(StatusCode::OK, &headers, full(body.clone())));
        }
        Some(Fault::Redirect(status, location)) => {
            return Reply::Now(respond(
                *status,
                &[("location", location.clone())],
                full(""),
            ));
        }
        Some(Fault::RedirectToOther) => {
            if let Some(digest) = rec.path.rsplit_once("/blobs/").map(|(_, d)| d) {
                let location = format!("{}/cdn/{digest}", s.other_url);
                return Reply::Now(respond(
                    StatusCode::TEMPORARY_REDIRECT,
                    &[("location", location)],
                    full(""),
                ));
            }
        }
        _ => {}
    }
    let resp = match &fault {
        Some(Fault::IgnoreRange) => {
            let mut plain = rec.clone();
            plain.headers.remove(header::RANGE);
            content(s, &plain, repo.as_deref())
        }
        _ => content(s, rec, repo.as_deref()),
    };
    match fault {
        Some(Fault::BadContentRange(v)) => {
            let mut resp = resp;
            if resp.status() == StatusCode::PARTIAL_CONTENT {
                resp.headers_mut()
                    .insert(header::CONTENT_RANGE, HeaderValue::from_str(&v).unwrap());
            }
            Reply::Now(resp)
        }
        Some(Fault::Hold(gate)) => Reply::Held(resp, gate),
        Some(
            f @ (Fault::WrongBytes
            | Fault::CloseAfter(_)
            | Fault::StallAfter(_)
            | Fault::Gated(_)
            | Fault::GatedWith(..)),
        ) => Reply::Now(misbehave(resp, f)),
        _ => Reply::Now(resp),
    }
}

/// `<name>` from `/v2/<name>/{manifests,blobs,tags}/...`.
fn repo_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    ["/manifests/", "/blobs/", "/tags/", "/referrers/"]
        .iter()
        .filter_map(|sep| rest.rfind(sep).map(|i| rest[..i].to_owned()))
        .max_by_key(String::len)
}

fn take_fault(s: &mut State, path: &str) -> Option<Fault> {
    let i = s
        .faults
        .iter()
        .position(|(p, _, n)| p == path && *n != Some(0))?;
    let (_, fault, n) = &mut s.faults[i];
    if let Some(n) = n {
        *n -= 1;
    }
    Some(fault.clone())
}

fn check_auth(s: &mut State, rec: &Recorded, repo: Option<&str>) -> Option<Response<Body>> {
    let auth = rec.header("authorization");
    if let Some(ta) = &s.token_auth {
        let realm = match ta.realm {
            Host::Main => format!("{}/token", s.main_url),
            Host::Other => format!("{}/token", s.other_url),
        };
        let now = Instant::now();
        let ok = auth
            .and_then(|a| a.strip_prefix("Bearer "))
            .and_then(|t| s.tokens.get(t))
            .is_some_and(|t| {
                t.expires > now
                    && repo.is_none_or(|r| {
                        t.scope.split(' ').any(|sc| {
                            sc.strip_prefix(&format!("repository:{r}:"))
                                .is_some_and(|a| a.split(',').any(|a| a == "pull"))
                        })
                    })
            });
        if ok {
            return None;
        }
        let mut challenge = format!(r#"Bearer realm="{realm}",service="fake-registry""#);
        if let Some(r) = repo {
            challenge.push_str(&format!(r#",scope="repository:{r}:pull""#));
        }
        return Some(oci_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            &[("www-authenticate", challenge)],
        ));
    }
    if let Some((user, password)) = &s.basic_auth {
        if basic_user(auth) == Some((user.clone(), password.clone())) {
            return None;
        }
        return Some(oci_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            &[(
                "www-authenticate",
                r#"Basic realm="fake-registry""#.to_owned(),
            )],
        ));
    }
    None
}

fn basic_user(auth: Option<&str>) -> Option<(String, String)> {
    let raw = auth?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    let (u, p) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn token_endpoint(s: &mut State, rec: &Recorded) -> Response<Body> {
    let Some(ta) = s.token_auth.clone() else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", &[]);
    };
    let allowed = match (rec.header("authorization"), &ta.credentials) {
        (None, _) => ta.anonymous,
        (Some(a), Some(creds)) => basic_user(Some(a)).as_ref() == Some(creds),
        (Some(_), None) => false,
    };
    if !allowed {
        return oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", &[]);
    }
    let scope = url::form_urlencoded::parse(rec.query.as_deref().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    s.issued += 1;
    let token = format!("fake-token-{}", s.issued);
    let lifetime = Duration::from_secs(ta.expires_in.unwrap_or(60));
    s.tokens.insert(
        token.clone(),
        IssuedToken {
            scope,
            expires: Instant::now() + lifetime,
        },
    );
    let mut body = serde_json::json!({});
    match ta.field {
        TokenField::Token => body["token"] = token.into(),
        TokenField::AccessToken => body["access_token"] = token.into(),
    }
    if let Some(e) = ta.expires_in {
        body["expires_in"] = e.into();
    }
    respond(
        StatusCode::OK,
        &[("content-type", "application/json".to_owned())],
        full(body.to_string()),
    )
}

fn content(s: &State, rec: &Recorded, repo: Option<&str>) -> Response<Body> {
    let path = rec.path.as_str();
    if path == "/v2/" || path == "/v2" {
        return respond(
            StatusCode::OK,
            &[
                ("content-type", "application/json".to_owned()),
                ("docker-distribution-api-version", "registry/2.0".to_owned()),
            ],
            full("{}"),
        );
    }
    if let Some(digest) = path.strip_prefix("/cdn/") {
        return match s.blobs.iter().find(|((_, d), _)| d == digest) {
            Some((_, body)) => blob_response(body, digest, rec.header("range")),
            None => oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", &[]),
        };
    }
    let Some(repo) = repo else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", &[]);
    };
    let known =
        s.manifests.keys().any(|(r, _)| r == repo) || s.blobs.keys().any(|(r, _)| r == repo);
    if !known {
        return oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", &[]);
    }
    let rest = &path["/v2/".len() + repo.len()..];
    if let Some(reference) = rest.strip_prefix("/manifests/") {
        let digest = if reference.contains(':') {
            reference.to_owned()
        } else {
            match s.tags.get(&(repo.to_owned(), reference.to_owned())) {
                Some(d) => d.clone(),
                None => return oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &[]),
            }
        };
        let by_tag = !reference.contains(':');
        return match s.manifests.get(&(repo.to_owned(), digest.clone())) {
            Some(m) => negotiate(s, rec, repo, reference, by_tag, m, digest),
            None => oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &[]),
        };
    }
    if let Some(digest) = rest.strip_prefix("/blobs/") {
        return match s.blobs.get(&(repo.to_owned(), digest.to_owned())) {
            Some(body) => blob_response(body, digest, rec.header("range")),
            None => oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", &[]),
        };
    }
    if rest == "/tags/list" {
        return tags_list(s, rec, repo);
    }
    if let (Some(subject), Some(page)) = (rest.strip_prefix("/referrers/"), s.referrers_page) {
        return referrers(s, rec, repo, subject, page);
    }
    oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", &[])
}

/// Media types, as the fake negotiates them.
const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Answers a stored manifest the way the Distribution registry 2.8 does: the types named in
/// `Accept` are all that count (no `q`, no wildcards), and only requests by tag are converted.
fn negotiate(
    s: &State,
    rec: &Recorded,
    repo: &str,
    reference: &str,
    by_tag: bool,
    m: &Manifest,
    digest: String,
) -> Response<Body> {
    let named: Vec<String> = rec
        .headers
        .get_all("accept")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim().to_owned())
        .collect();
    let supports = |t: &str| named.iter().any(|n| n == t);
    let stored = respond(
        StatusCode::OK,
        &[
            ("content-type", m.media_type.clone()),
            ("docker-content-digest", digest),
            ("content-length", m.body.len().to_string()),
        ],
        full(m.body.clone()),
    );
    if !by_tag {
        return stored;
    }
    match m.media_type.as_str() {
        OCI_MANIFEST if !supports(OCI_MANIFEST) => {
            oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &[])
        }
        OCI_INDEX if !supports(OCI_INDEX) => {
            oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &[])
        }
        DOCKER_V2 if !supports(DOCKER_V2) => to_schema1(repo, reference, &m.body),
        DOCKER_LIST if !supports(DOCKER_LIST) => {
            let child = serde_json::from_slice::<serde_json::Value>(&m.body)
                .ok()
                .and_then(|v| {
                    v["manifests"].as_array()?.iter().find_map(|d| {
                        (d["platform"]["architecture"] == "amd64")
                            .then(|| d["digest"].as_str().map(str::to_owned))?
                    })
                });
            match child.and_then(|d| Some((s.manifests.get(&(repo.to_owned(), d.clone()))?, d))) {
                Some((c, _)) if c.media_type == DOCKER_V2 && !supports(DOCKER_V2) => {
                    to_schema1(repo, reference, &c.body)
                }
                Some((c, d)) => respond(
                    StatusCode::OK,
                    &[
                        ("content-type", c.media_type.clone()),
                        ("docker-content-digest", d),
                        ("content-length", c.body.len().to_string()),
                    ],
                    full(c.body.clone()),
                ),
                None => oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &[]),
            }
        }
        _ => stored,
    }
}

/// A schema 2 manifest converted to schema 1 and signed afresh, as Distribution does for clients
/// that do not accept schema 2: the payload is the same every time, the signature never.
fn to_schema1(repo: &str, tag: &str, v2: &[u8]) -> Response<Body> {
    static SIGNATURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let layers: Vec<String> = serde_json::from_slice::<serde_json::Value>(v2)
        .ok()
        .and_then(|v| {
            Some(
                v["layers"]
                    .as_array()?
                    .iter()
                    .rev()
                    .filter_map(|l| Some(format!(r#"{{"blobSum": "{}"}}"#, l["digest"].as_str()?)))
                    .collect(),
            )
        })
        .unwrap_or_default();
    let payload = format!(
        "{{\n   \"schemaVersion\": 1,\n   \"name\": \"{repo}\",\n   \"tag\": \"{tag}\",\n   \"architecture\": \"amd64\",\n   \"fsLayers\": [{}]\n}}",
        layers.join(", ")
    );
    let n = SIGNATURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = sign_schema1(&payload, &format!("signature-{n}"));
    respond(
        StatusCode::OK,
        &[
            ("content-type", SCHEMA1_SIGNED.to_owned()),
            ("docker-content-digest", digest_of(payload.as_bytes())),
            ("content-length", body.len().to_string()),
        ],
        full(body),
    )
}

/// Signs a schema 1 payload (a JSON object ending in `\n}`) the way libtrust lays it out: the
/// payload up to that tail, the `signatures`, then the tail; the protected header says where.
pub fn sign_schema1(payload: &str, signature: &str) -> Bytes {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let cut = payload
        .rfind("\n}")
        .expect("a payload ends in a newline and a brace");
    let protected = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"formatLength":{cut},"formatTail":"{}","time":"2026-11-30T00:00:00Z"}}"#,
        URL_SAFE_NO_PAD.encode(&payload[cut..])
    ));
    let signature = URL_SAFE_NO_PAD.encode(signature);
    Bytes::from(format!(
        r#"{},
   "signatures": [{{"header": {{"alg": "ES256"}}, "signature": "{signature}", "protected": "{protected}"}}]{}"#,
        &payload[..cut],
        &payload[cut..]
    ))
}

fn blob_response(body: &Bytes, digest: &str, range: Option<&str>) -> Response<Body> {
    let mut headers = vec![
        ("content-type", "application/octet-stream".to_owned()),
        ("docker-content-digest", digest.to_owned()),
        ("accept-ranges", "bytes".to_owned()),
    ];
    let Some(range) = range else {
        headers.push(("content-length", body.len().to_string()));
        return respond(StatusCode::OK, &headers, full(body.clone()));
    };
    let len = body.len() as u64;
    let parsed = range.strip_prefix("bytes=").and_then(|r| {
        let (a, b) = r.split_once('-')?;
        let start: u64 = a.parse().ok()?;
        let end: u64 = if b.is_empty() {
            len.checked_sub(1)?
        } else {
            b.parse().ok()?
        };
        (start <= end && start < len).then_some((start, end.min(len - 1)))
    });
    match parsed {
        Some((start, end)) => {
            headers.push(("content-range", format!("bytes {start}-{end}/{len}")));
            headers.push(("content-length", (end - start + 1).to_string()));
            let part = body.slice(start as usize..=end as usize);
            respond(StatusCode::PARTIAL_CONTENT, &headers, full(part))
        }
        None => respond(
            StatusCode::RANGE_NOT_SATISFIABLE,
            &[("content-range", format!("bytes */{len}"))],
            full(""),
        ),
    }
}

fn tags_list(s: &State, rec: &Recorded, repo: &str) -> Response<Body> {
    let all: BTreeSet<&str> = s
        .tags
        .keys()
        .filter(|(r, _)| r == repo)
        .map(|(_, t)| t.as_str())
        .collect();
    let last = rec.param("last");
    let after: Vec<&str> = all
        .into_iter()
        .filter(|t| last.as_deref().is_none_or(|l| *t > l))
        .collect();
    let n = rec.param("n").and_then(|n| n.parse::<usize>().ok());
    let page: Vec<&str> = after
        .iter()
        .copied()
        .take(n.unwrap_or(usize::MAX))
        .collect();
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let (Some(n), Some(last)) = (n, page.last())
        && after.len() > page.len()
    {
        headers.push((
            "link",
            format!(r#"</v2/{repo}/tags/list?n={n}&last={last}>; rel="next""#),
        ));
    }
    let body = serde_json::json!({"name": repo, "tags": page});
    respond(StatusCode::OK, &headers, full(body.to_string()))
}

/// The referrers API: the manifests of `repo` whose `subject` is `subject`, as descriptors with
/// their `artifactType` (or config media type) and annotations, filtered by `artifactType` (and
/// saying so), `page` at a time (`?page=<k>` and a `Link` to the next).
fn referrers(s: &State, rec: &Recorded, repo: &str, subject: &str, page: usize) -> Response<Body> {
    let wanted = rec.param("artifactType");
    let mut all: Vec<(String, serde_json::Value)> = s
        .manifests
        .iter()
        .filter(|((r, _), _)| r == repo)
        .filter_map(|((_, digest), m)| {
            let v: serde_json::Value = serde_json::from_slice(&m.body).ok()?;
            (v["subject"]["digest"].as_str() == Some(subject)).then_some(())?;
            let artifact_type = v["artifactType"]
                .as_str()
                .or(v["config"]["mediaType"].as_str())
                .map(str::to_owned);
            if wanted.is_some() && artifact_type != wanted {
                return None;
            }
            let mut d = serde_json::json!({
                "mediaType": m.media_type, "digest": digest, "size": m.body.len(),
            });
            if let Some(t) = artifact_type {
                d["artifactType"] = t.into();
            }
            if let Some(a) = v.get("annotations") {
                d["annotations"] = a.clone();
            }
            Some((digest.clone(), d))
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let k: usize = rec.param("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let this: Vec<_> = all
        .iter()
        .skip(k * page)
        .take(page)
        .map(|(_, d)| d.clone())
        .collect();
    let mut headers = vec![("content-type", OCI_INDEX.to_owned())];
    if let Some(t) = &wanted {
        headers.push(("oci-filters-applied", "artifactType".to_owned()));
        if all.len() > (k + 1) * page {
            let t = url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>();
            headers.push((
                "link",
                format!(
                    r#"</v2/{repo}/referrers/{subject}?artifactType={t}&page={}>; rel="next""#,
                    k + 1
                ),
            ));
        }
    } else if all.len() > (k + 1) * page {
        headers.push((
            "link",
            format!(
                r#"</v2/{repo}/referrers/{subject}?page={}>; rel="next""#,
                k + 1
            ),
        ));
    }
    let body = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": this});
    respond(StatusCode::OK, &headers, full(body.to_string()))
}

/// Applies a body fault to a finished response (only to 2xx bodies).
fn misbehave(resp: Response<Body>, fault: Fault) -> Response<Body> {
    if !resp.status().is_success() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // Bodies built here are `Full`, so this resolves at once.
    let bytes = futures_util::FutureExt::now_or_never(body.collect())
        .expect("fake bodies are in memory")
        .expect("in-memory bodies do not fail")
        .to_bytes();
    let body = match fault {
        Fault::WrongBytes => full(bytes.iter().map(|b| !b).collect::<Vec<u8>>()),
        Fault::CloseAfter(n) => {
            let head = bytes.slice(..n.min(bytes.len()));
            // The yield lets hyper flush the head before the error drops the connection.
            let s = stream::iter([Ok(Frame::data(head))]).chain(stream::once(async {
                tokio::task::yield_now().await;
                Err(BoxError::from("fault: connection closed mid-body"))
            }));
            http_body_util::BodyExt::boxed(StreamBody::new(s))
        }
        Fault::StallAfter(n) => {
            let head = bytes.slice(..n.min(bytes.len()));
            let s = stream::iter([Ok::<_, BoxError>(Frame::data(head))]).chain(stream::pending());
            http_body_util::BodyExt::boxed(StreamBody::new(s))
        }
        Fault::Gated(gate) => gated(bytes, gate),
        Fault::GatedWith(gate, wrong) => gated(wrong, gate),
        _ => full(bytes),
    };
    Response::from_parts(parts, body)
}

/// `bytes`, sent only as far as `gate` allows so far ([`Fault::Gated`]).
fn gated(bytes: Bytes, gate: tokio::sync::watch::Receiver<usize>) -> Body {
    let s = stream::unfold(
        (bytes, 0usize, gate),
        |(bytes, sent, mut gate)| async move {
            if sent >= bytes.len() {
                return None;
            }
            let allowed = *gate
                .wait_for(|n| *n > sent)
                .await
                .expect("the test keeps the gate open");
            if allowed == usize::MAX {
                // Ends the stream after the error (sent = len).
                let err = BoxError::from("fault: connection broken by the test");
                return Some((Err(err), (bytes.clone(), bytes.len(), gate)));
            }
            let upto = allowed.min(bytes.len());
            let chunk = bytes.slice(sent..upto);
            Some((Ok::<_, BoxError>(Frame::data(chunk)), (bytes, upto, gate)))
        },
    );
    http_body_util::BodyExt::boxed(StreamBody::new(s))
}
