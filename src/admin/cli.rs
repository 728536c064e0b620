//! `berth cache ls|rm|stats`: through the admin API of the running berth, or on the storage
//! directory (and the `[storage.s3]` bucket, if any) directly. Also `berth warm --url`'s one
//! call, `POST /admin/warm` ([`warm`]), over the same client.
//!
//! The way is chosen once and said on stderr: `--direct` works on the directory; `--url` calls
//! that admin API (`http://` or `https://`, trusting `--ca-file` besides the public roots);
//! otherwise a config with `[admin] enabled = true` means the API on its `[admin] socket` when set
//! (HTTP/1 over the Unix socket), else on its metrics listener (`https://` when that has
//! `tls_cert`, whose certificate is then trusted as well, so a self-signed one works), with the
//! config's token; any other config means the directory. Going through the API keeps
//! a running berth's memory in step with its disk; going direct while berth runs is safe for the
//! files (fills in progress live in `tmp/`, which is left alone) but the running berth may go on
//! answering removed manifests and tags from memory until they fall out of it, and its
//! `berth_cache_bytes` does not see the removal.
//!
//! Exit codes: 0 done; 1 `rm` matched nothing; 2 config, I/O or API error.
//!
//! Rule of dependency: uses the operations ([`Cache`](super::Cache)) and their presentation
//! ([`Answer`]) from `admin`; from the crate `config`, `store` and `manifests` (to open the
//! directory and the bucket), `upstream::connect` (the TLS connector) and `error`. Only `main`
//! uses it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::de::DeserializeOwned;

pub use super::render::Answer;
use super::{Cache, Op, WarmRequest, Warmed};
use crate::config::{Config, Secret};
use crate::error::{Error, Kind};
use crate::manifests::Manifests;
use crate::store::Store;

/// Which way.
#[derive(Debug, Clone)]
pub enum Mode {
    /// On the storage directory.
    Direct,
    /// Through the admin API.
    Api { at: Endpoint, token: Secret },
}

/// Where the admin API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `http://host:port` or `https://host:port`; an https server's certificate may also be
    /// signed by (or be one of) the certificates in `ca_file`.
    Url {
        base: String,
        ca_file: Option<PathBuf>,
    },
    /// `[admin] socket`.
    Socket(PathBuf),
}

impl Mode {
    /// See the module docs.
    pub fn choose(
        cfg: &Config,
        direct: bool,
        url: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<Mode, String> {
        if direct {
            return Ok(Mode::Direct);
        }
        let Some(token) = cfg.admin.token.clone() else {
            return match url {
                Some(_) => Err(
                    "--url needs the admin token: set [admin] enabled = true and token_file or token_env in the config"
                        .into(),
                ),
                None => Ok(Mode::Direct),
            };
        };
        let at = match (url, &cfg.admin.socket) {
            (Some(url), _) => Endpoint::Url {
                base: url.trim_end_matches('/').to_owned(),
                ca_file: ca_file.map(Path::to_owned),
            },
            (None, Some(socket)) => Endpoint::Socket(socket.clone()),
            (None, None) => match &cfg.metrics.tls_cert {
                Some(cert) => Endpoint::Url {
                    base: format!("https://{}", loopback(cfg.metrics.listen)),
                    ca_file: Some(ca_file.unwrap_or(cert).to_owned()),
                },
                None => Endpoint::Url {
                    base: format!("http://{}", loopback(cfg.metrics.listen)),
                    ca_file: ca_file.map(Path::to_owned),
                },
            },
        };
        Ok(Mode::Api { at, token })
    }

    /// One line for stderr: which way, and what it means.
    pub fn describe(&self, cfg: &Config) -> String {
        match self {
            Mode::Direct => format!(
                "working on {}{} directly (if berth is running on it, use its admin API instead: it keeps answering removed manifests and tags from memory for a while)",
                cfg.storage.path.display(),
                match &cfg.storage.s3 {
                    Some(s3) => format!(" and the bucket {}", s3.bucket),
                    None => String::new(),
                }
            ),
            Mode::Api { at, .. } => format!("via the admin API at {at}"),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Url { base, .. } => f.write_str(base),
            Endpoint::Socket(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A listener on `0.0.0.0`/`::` is reached on loopback.
fn loopback(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

/// Why the command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `rm` (or `ls --repo`) named nothing cached: exit 1.
    NotFound(String),
    /// Anything else: exit 2.
    Failed(String),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::NotFound(_) => ExitCode::from(1),
            Failure::Failed(_) => ExitCode::from(2),
        }
    }

    fn from_error(e: &Error) -> Failure {
        match e.kind {
            Kind::NotFound(_) => Failure::NotFound(e.to_string()),
            _ => Failure::Failed(e.to_string()),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound(m) | Failure::Failed(m) => f.write_str(m),
        }
    }
}

/// Runs `op` the chosen way.
pub async fn run(cfg: &Config, mode: &Mode, op: &Op) -> Result<Answer, Failure> {
    match mode {
        Mode::Direct => direct(cfg, op).await,
        Mode::Api { at, token } => via_api(at, token, op).await,
    }
}

async fn direct(cfg: &Config, op: &Op) -> Result<Answer, Failure> {
    let root = &cfg.storage.path;
    if !root.join("blobs").is_dir() {
        return Err(Failure::Failed(format!(
            "no cache at {} (no blobs/ directory)",
            root.display()
        )));
    }
    let io = |e: std::io::Error| Failure::Failed(format!("{}: {e}", root.display()));
    // `attach`, not `open`: a berth may be filling into tmp/ right now.
    let store = Arc::new(Store::attach(root).map_err(io)?);
    let names = cfg
        .upstreams
        .iter()
        .map(|u| u.name.to_ascii_lowercase())
        .collect();
    // Nothing is read twice in one command: the memory cache only needs to exist.
    let manifests = Manifests::new(store.clone(), root, 1 << 20, names).map_err(io)?;
    let bucket = match &cfg.storage.s3 {
        Some(s3) => Some(
            crate::store::s3::Bucket::connect(s3, crate::store::s3::BucketMetrics::new())
                .map_err(|e| Failure::Failed(format!("bucket {}: {e}", s3.bucket)))?,
        ),
        None => None,
    };
    let bucket_max = cfg
        .storage
        .s3
        .as_ref()
        .and_then(|s| s.max_size)
        .map(|m| m.as_u64());
    let cache = Cache::new(&store, &manifests, root).with_bucket(bucket.as_ref(), bucket_max);
    let fail = |e: Error| Failure::from_error(&e);
    match op {
        Op::List { repo, upstream } => {
            let filter = match repo {
                Some(r) => Some(
                    cache
                        .parse_ref(r, upstream.as_deref())
                        .await
                        .map_err(fail)?,
                ),
                None => None,
            };
            cache
                .list(filter.as_ref())
                .await
                .map(Answer::List)
                .map_err(fail)
        }
        Op::Remove {
            reference,
            upstream,
        } => {
            let r = cache
                .parse_ref(reference, upstream.as_deref())
                .await
                .map_err(fail)?;
            cache
                .remove(&r, reference)
                .await
                .map(Answer::Remove)
                .map_err(fail)
        }
        Op::Stats => cache
            .stats(cfg.storage.max_size.map(|m| m.as_u64()))
            .await
            .map(Answer::Stats)
            .map_err(fail),
    }
}

async fn via_api(base: &Endpoint, token: &Secret, op: &Op) -> Result<Answer, Failure> {
    let query = |pairs: &[(&str, &Option<String>)]| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        match q.finish() {
            s if s.is_empty() => s,
            s => format!("?{s}"),
        }
    };
    match op {
        Op::List { repo, upstream } => {
            let path = format!(
                "/admin/cache{}",
                query(&[("repo", repo), ("upstream", upstream)])
            );
            call(base, token, Method::GET, &path)
                .await
                .map(Answer::List)
        }
        Op::Remove {
            reference,
            upstream,
        } => {
            let path = format!(
                "/admin/cache/{}{}",
                escape_path(reference),
                query(&[("upstream", upstream)])
            );
            call(base, token, Method::DELETE, &path)
                .await
                .map(Answer::Remove)
        }
        Op::Stats => call(base, token, Method::GET, "/admin/stats")
            .await
            .map(Answer::Stats),
    }
}

/// Escapes what a reference may not carry raw in a path (a reference is validated by the server).
fn escape_path(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn call<T: DeserializeOwned>(
    at: &Endpoint,
    token: &Secret,
    method: Method,
    path: &str,
) -> Result<T, Failure> {
    call_with(at, token, method, path, Bytes::new()).await
}

/// `berth warm --url`: `POST /admin/warm` with `asked`, and what the running berth warmed.
pub async fn warm(at: &Endpoint, token: &Secret, asked: &WarmRequest) -> Result<Warmed, Failure> {
    let body = Bytes::from(asked.to_json());
    call_with(at, token, Method::POST, "/admin/warm", body).await
}

async fn call_with<T: DeserializeOwned>(
    at: &Endpoint,
    token: &Secret,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<T, Failure> {
    let failed = |what: String| Failure::Failed(format!("admin API at {at}: {what}"));
    let req = Request::builder()
        .method(method)
        .header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
    let resp = match at {
        Endpoint::Url { base, ca_file } => {
            let req = req
                .uri(format!("{base}{path}"))
                .body(Full::new(body))
                .map_err(|e| failed(format!("bad URL: {e}")))?;
            let client =
                tcp_client(ca_file.as_deref()).map_err(|e| failed(format!("--ca-file: {e}")))?;
            send_tcp(&client, req).await
        }
        Endpoint::Socket(socket) => {
            // HTTP/1 wants a Host; a socket has no name, so any does.
            let req = req
                .uri(path)
                .header(header::HOST, "localhost")
                .body(Full::new(body))
                .map_err(|e| failed(format!("bad path: {e}")))?;
            send_unix(req, socket).await
        }
    }
    .map_err(|e| failed(format!("{e} (is berth running with [admin] enabled?)")))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(e.to_string()))?
        .to_bytes();
    if status.is_success() {
        return serde_json::from_slice(&body)
            .map_err(|e| failed(format!("unreadable answer: {e}")));
    }
    // An OCI error body from the admin API, or something else (an older berth, admin off there).
    let oci = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = &v["errors"][0];
            let text = match e["detail"].as_str() {
                Some(d) => format!("{}: {d}", e["message"].as_str()?),
                None => e["message"].as_str()?.to_owned(),
            };
            Some(text)
        });
    match (status, oci) {
        (StatusCode::NOT_FOUND, Some(text)) => Err(Failure::NotFound(text)),
        (StatusCode::NOT_FOUND, None) => Err(failed(
            "404: that server does not serve the admin API (is [admin] enabled in the config it runs with?)"
                .into(),
        )),
        (status, Some(text)) => Err(failed(format!("{status}: {text}"))),
        (status, None) => Err(failed(status.to_string())),
    }
}

type TcpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A client for `http://` and `https://` (the connector `berth warm` reaches berth with, too),
/// trusting the public roots and `ca_file`.
fn tcp_client(ca_file: Option<&Path>) -> Result<TcpClient, String> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(std::time::Duration::from_secs(10)));
    let connector = crate::upstream::connect::https_connector_over(ca_file, http)?;
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// One request over TCP, plain or TLS.
async fn send_tcp(client: &TcpClient, req: Request<Full<Bytes>>) -> Result<Response, String> {
    client
        .request(req)
        .await
        .map_err(|e| crate::error::chain(&e))
}

/// One request over the Unix socket at `path` (one connection, HTTP/1).
async fn send_unix(req: Request<Full<Bytes>>, path: &Path) -> Result<Response, String> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // Ends by itself once the response body is read and `sender` is gone.
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}

type Response = http::Response<Incoming>;

/// The whole command: choose the way, say it, run, print; the exit code.
pub async fn main(
    cfg: &Config,
    direct: bool,
    url: Option<&str>,
    ca_file: Option<&Path>,
    op: &Op,
    json: bool,
) -> ExitCode {
    let mode = match Mode::choose(cfg, direct, url, ca_file) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("berth: {}", mode.describe(cfg));
    match run(cfg, &mode, op).await {
        Ok(answer) => {
            print!("{}", answer.render(json));
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("berth: {f}");
            f.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_way_to_the_api_follows_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
        let cert = dir.path().join("m.crt");
        std::fs::write(&cert, "only its presence is checked at load").unwrap();
        let sock = dir.path().join("admin.sock");
        let cfg = |extra: &str| {
            Config::parse(
                &format!(
                    "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n{extra}[admin]\nenabled = true\ntoken_file = {token:?}\n"
                ),
                "f",
            )
            .unwrap()
        };
        let at = |c: &Config, url: Option<&str>, ca: Option<&Path>| match Mode::choose(
            c, false, url, ca,
        )
        .unwrap()
        {
            Mode::Api { at, .. } => at,
            Mode::Direct => panic!("direct"),
        };
        let url = |base: &str, ca: Option<&Path>| Endpoint::Url {
            base: base.into(),
            ca_file: ca.map(Path::to_owned),
        };
        let own_ca = Path::new("/etc/ca.pem");

        let plain = cfg("[metrics]\nlisten = \"0.0.0.0:9091\"\n");
        assert_eq!(at(&plain, None, None), url("http://127.0.0.1:9091", None));
        // The socket, unless --url says otherwise.
        let mut on_socket = cfg("");
        on_socket.admin.socket = Some(sock.clone());
        assert_eq!(at(&on_socket, None, None), Endpoint::Socket(sock.clone()));
        assert_eq!(
            at(&on_socket, Some("https://m:9/"), Some(own_ca)),
            url("https://m:9", Some(own_ca))
        );
        assert_eq!(
            Mode::choose(&on_socket, false, None, None)
                .unwrap()
                .describe(&on_socket),
            format!("via the admin API at unix:{}", sock.display())
        );
        // HTTPS metrics: its own certificate is trusted unless --ca-file names another.
        let tls = cfg(&format!(
            "[metrics]\nlisten = \"127.0.0.1:9092\"\ntls_cert = {cert:?}\ntls_key = {cert:?}\n"
        ));
        assert_eq!(
            at(&tls, None, None),
            url("https://127.0.0.1:9092", Some(&cert))
        );
        assert_eq!(
            at(&tls, None, Some(own_ca)),
            url("https://127.0.0.1:9092", Some(own_ca))
        );
        // --direct wins over all of it.
        assert!(matches!(
            Mode::choose(&on_socket, true, None, None).unwrap(),
            Mode::Direct
        ));
    }

    #[test]
    fn paths_are_escaped_and_listeners_reached_on_loopback() {
        assert_eq!(
            escape_path("docker.io/library/app:1"),
            "docker.io/library/app:1"
        );
        assert_eq!(escape_path("a b?#"), "a%20b%3F%23");
        assert_eq!(
            loopback("0.0.0.0:9090".parse().unwrap()),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(
            loopback("[::]:9".parse().unwrap()),
            "[::1]:9".parse().unwrap()
        );
        assert_eq!(
            loopback("10.0.0.1:9".parse().unwrap()),
            "10.0.0.1:9".parse().unwrap()
        );
    }
}
