//! The client `warm` talks to berth with: where berth answers (`--server` or the config's listen
//! address), the probe of `/v2/`, a manifest's bytes, a referrers list (OCI 1.1) and a blob read
//! to its end, each checked where it is cheap (sizes against the descriptor,
//! `Docker-Content-Digest`, a manifest's digest), and berth's OCI error body as one line.
//!
//! It asks what a pulling client asks: over the network, with the same connector berth uses for
//! its upstreams (web PKI plus `--ca-file`, a connect timeout) and Basic credentials for a berth
//! with `[auth]`; or in process, to the admin API's own berth ([`Berth::local`]).
//!
//! Rule of dependency: uses `reference` (the paths to ask for), `transport` (how a request goes)
//! and `failure` from `warm`; from the crate only `upstream::connect` (the connector), `access`
//! (the Basic header), `config` (the server's own address, `Secret`), `oci` (digests, media
//! types, the referrers list's parser) and `error` (`chain`). It knows nothing of manifests'
//! contents or of the display.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

use super::failure::Failure;
use super::reference::ImageRef;
use super::transport::{IDLE_TIMEOUT, Local, ReplyBody, Transport};
use crate::config::{Secret, ServerConfig};
use crate::oci::referrers::{self, Descriptor};
use crate::oci::{Digest, Reference, media};
use crate::upstream::connect::{DirectClient, TimeoutConnector};

/// Every manifest and index media type berth serves, and the artifact manifest of the OCI 1.1
/// release candidates (a referrer may still be one): warm takes whatever the image is.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.artifact.manifest.v1+json, application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v1+json";

/// Manifests larger than this are refused (registries cap them at 4 MiB).
pub const MAX_MANIFEST: usize = 4 << 20;

/// A referrers list larger than this is refused (berth lists at most 10,000 referrers, a few
/// hundred bytes each).
const MAX_REFERRERS_LIST: usize = 16 << 20;

/// How long connecting to berth (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a berth configured with `cfg` answers on this host: its listen address, with an
/// unspecified address (`0.0.0.0`, `::`) replaced by loopback, `https` when it has TLS.
pub fn server_url(cfg: &ServerConfig) -> Url {
    let scheme = if cfg.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let ip = match cfg.listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, cfg.listen.port());
    Url::parse(&format!("{scheme}://{addr}/")).expect("a socket address makes a valid URL")
}

/// A `--server` value: `http(s)://host[:port]`, or `host:port` meaning `http://`. berth serves
/// the API at the root, so a path is refused rather than silently dropped.
pub fn parse_server(s: &str) -> Result<Url, String> {
    let full = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let url = Url::parse(&full).map_err(|e| format!("--server {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("--server {s:?}: the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("--server {s:?}: no host"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || !url.username().is_empty() {
        return Err(format!(
            "--server {s:?}: give only scheme, host and port (berth serves /v2/ at the root)"
        ));
    }
    Ok(url)
}

/// A running berth, as `warm` talks to it.
pub struct Berth {
    transport: Transport,
}

impl Berth {
    /// Builds the client for `server`; fails only on a bad `ca_file` or credentials HTTP cannot
    /// carry.
    pub fn new(
        server: &Url,
        ca_file: Option<&Path>,
        credentials: Option<&(String, Secret)>,
    ) -> Result<Berth, String> {
        let transport = Transport::Net {
            client: Box::new(build_client(ca_file)?),
            base: server.origin().ascii_serialization(),
            authorization: match credentials {
                Some((user, password)) => {
                    let mut v = HeaderValue::from_str(&crate::access::basic_header(user, password))
                        .map_err(|_| {
                            "the user name or password holds a character HTTP headers cannot carry"
                                .to_owned()
                        })?;
                    v.set_sensitive(true);
                    Some(v)
                }
                None => None,
            },
        };
        Ok(Berth { transport })
    }

    /// The registry service of this process (see [`Local`]).
    pub fn local(local: Arc<dyn Local>) -> Berth {
        Berth {
            transport: Transport::Local(local),
        }
    }

    /// Is berth there? One clear line instead of the same connection error for every image.
    pub async fn probe(&self) -> Result<(), Failure> {
        let resp = self
            .get("/v2/", None)
            .await
            .map_err(|e| e.context(format!("cannot reach berth at {}", self.transport.name())))?;
        let name = self.transport.name();
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(Failure::new(match self.transport.logs_in() {
                false => format!(
                    "{name} asks for a login: give --user (password from --password-stdin or \
                     BERTH_PASSWORD)"
                ),
                true => format!("{name} refused the login: wrong user or password"),
            }));
        }
        if resp.status() != StatusCode::OK {
            return Err(Failure::new(format!(
                "{name}/v2/ answered {}: is this berth?",
                resp.status()
            )));
        }
        Ok(())
    }

    async fn get(&self, path: &str, accept: Option<&str>) -> Result<Response<ReplyBody>, Failure> {
        self.transport.get(path, accept).await
    }

    /// One manifest's bytes and `Content-Type`, checked against the digest asked for and berth's
    /// `Docker-Content-Digest`.
    pub async fn fetch_manifest(
        &self,
        r: &ImageRef,
        reference: &Reference,
    ) -> Result<(Vec<u8>, Option<String>), Failure> {
        let resp = self.get(&r.manifest_path(reference), Some(ACCEPT)).await?;
        let resp = self.ok(resp, r).await?;
        let header_digest = header_str(&resp, "docker-content-digest").map(str::to_owned);
        let content_type = header_str(&resp, header::CONTENT_TYPE.as_str()).map(str::to_owned);
        let bytes = read_all(resp.into_body(), MAX_MANIFEST).await?;
        let digest = Digest::of(&bytes);
        if let Reference::Digest(want) = reference
            && *want != digest
        {
            return Err(Failure::new(format!(
                "the body's digest is {digest}, not the one asked for"
            )));
        }
        check_digest_header(header_digest.as_deref(), &digest)?;
        Ok((bytes, content_type))
    }

    /// The referrers (OCI 1.1) of `subject` in `r`'s repository, as berth lists them, unfiltered.
    /// Asking through berth is what caches the list for offline use. A 404 means a berth without
    /// the route (it answers an empty list for a subject without referrers): said so, once per
    /// image, rather than as a missing manifest.
    pub async fn list_referrers(
        &self,
        r: &ImageRef,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>, Failure> {
        let path = r.referrers_path(subject);
        let resp = self.get(&path, Some(media::OCI_INDEX)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            let said = error_body(resp).await;
            return Err(Failure::new(format!(
                "{} has no referrers API: {} for {path}; a berth from before OCI 1.1 referrers? \
                 upgrade it, or warm without --referrers",
                self.transport.name(),
                describe_error(StatusCode::NOT_FOUND, &said, None)
            )));
        }
        let resp = self.ok(resp, r).await?;
        let bytes = read_all(resp.into_body(), MAX_REFERRERS_LIST).await?;
        referrers::parse(&bytes).ok_or_else(|| Failure::new("the referrers list is no image index"))
    }

    /// Reads a blob to its end, telling `on_bytes` of each chunk; the bytes received. `size` is
    /// the descriptor's, where the manifest gave one.
    pub async fn fetch_blob(
        &self,
        r: &ImageRef,
        digest: &Digest,
        size: Option<u64>,
        on_bytes: impl Fn(u64),
    ) -> Result<u64, Failure> {
        let resp = self.get(&r.blob_path(digest), None).await?;
        let resp = self.ok(resp, r).await?;
        check_digest_header(header_str(&resp, "docker-content-digest"), digest)?;
        let announced =
            header_str(&resp, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
        check_size(size, announced, None)?;
        let mut body = resp.into_body();
        let mut got = 0u64;
        while let Some(chunk) = next_chunk(&mut body)
            .await
            .map_err(|e| e.context(format!("transfer broken after {got} bytes")))?
        {
            got += chunk.len() as u64;
            on_bytes(chunk.len() as u64);
        }
        check_size(size, announced, Some(got))?;
        Ok(got)
    }

    /// A 200, or a failure that says what berth said.
    async fn ok(
        &self,
        resp: Response<ReplyBody>,
        r: &ImageRef,
    ) -> Result<Response<ReplyBody>, Failure> {
        let status = resp.status();
        if status == StatusCode::OK {
            return Ok(resp);
        }
        let body = error_body(resp).await;
        Err(Failure::new(describe_error(
            status,
            &body,
            r.registry.as_deref(),
        )))
    }
}

/// An error answer's body: a few hundred bytes of JSON, so no more than 64 KiB is read; empty
/// when it cannot be read.
async fn error_body(resp: Response<ReplyBody>) -> Bytes {
    let limited = http_body_util::Limited::new(resp.into_body(), 64 * 1024);
    tokio::time::timeout(IDLE_TIMEOUT, limited.collect())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}

/// A small body (a manifest, a referrers list) read whole; longer than `max` is a failure.
async fn read_all(mut body: ReplyBody, max: usize) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    while let Some(chunk) = next_chunk(&mut body).await? {
        if bytes.len() + chunk.len() > max {
            return Err(Failure::new(format!("larger than {max} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn header_str<'a>(resp: &'a Response<ReplyBody>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The next data chunk, `None` at the end; a body error or a long silence is a failure.
async fn next_chunk(body: &mut ReplyBody) -> Result<Option<Bytes>, Failure> {
    loop {
        match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(Failure::new(format!(
                    "no data for {}s",
                    IDLE_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// A `Docker-Content-Digest`, where berth sent one, must name the content expected.
fn check_digest_header(header: Option<&str>, want: &Digest) -> Result<(), Failure> {
    match header {
        Some(h) if h.trim() != want.to_string() => Err(Failure::new(format!(
            "Docker-Content-Digest is {h}, expected {want}"
        ))),
        _ => Ok(()),
    }
}

/// Compares a blob's descriptor size, the announced `Content-Length` and (at the end) the bytes
/// received; any two that are known must agree.
fn check_size(
    descriptor: Option<u64>,
    announced: Option<u64>,
    got: Option<u64>,
) -> Result<(), Failure> {
    if let (Some(d), Some(a)) = (descriptor, announced)
        && d != a
    {
        return Err(Failure::new(format!(
            "the manifest says {d} bytes, berth announced {a}"
        )));
    }
    if let Some(g) = got
        && let Some(want) = descriptor.or(announced)
        && g != want
    {
        return Err(Failure::new(format!("received {g} bytes, expected {want}")));
    }
    Ok(())
}

/// berth's OCI error body as one line, with a hint where the cause is usually the setup (`registry`:
/// the one the image names, if any).
fn describe_error(status: StatusCode, body: &[u8], registry: Option<&str>) -> String {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let first = v.as_ref().and_then(|v| v.get("errors")?.get(0));
    let code = first
        .and_then(|e| e.get("code")?.as_str())
        .unwrap_or("")
        .to_owned();
    let text = first
        .and_then(|e| {
            e.get("detail")
                .and_then(|d| d.as_str())
                .or_else(|| e.get("message")?.as_str())
        })
        .unwrap_or("")
        .to_owned();
    let mut line = match (code.is_empty(), text.is_empty()) {
        (true, _) => format!("berth answered {status}"),
        (false, true) => format!("{code} (HTTP {})", status.as_u16()),
        (false, false) => format!("{code}: {text} (HTTP {})", status.as_u16()),
    };
    if code == "NAME_UNKNOWN"
        && let Some(reg) = registry
    {
        line.push_str(&format!(
            "; is {reg:?} configured as an [[upstream]] name or alias in berth?"
        ));
    }
    line
}

fn build_client(ca_file: Option<&Path>) -> Result<DirectClient, String> {
    let https = crate::upstream::connect::https_connector(ca_file).map_err(|e| {
        if ca_file.is_some() {
            format!("--ca-file: {e}")
        } else {
            e
        }
    })?;
    // A dead or unreachable server is reported in seconds, not after the OS's connect timeout.
    Ok(Client::builder(TokioExecutor::new()).build(TimeoutConnector::new(https, CONNECT_TIMEOUT)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warm::reference::tests::{hex, r};

    #[test]
    fn server_address_from_config() {
        let mut s = ServerConfig::default();
        assert_eq!(server_url(&s).as_str(), "http://127.0.0.1:5000/");
        s.listen = "0.0.0.0:5001".parse().unwrap();
        assert_eq!(server_url(&s).as_str(), "http://127.0.0.1:5001/");
        s.listen = "[::]:5002".parse().unwrap();
        assert_eq!(server_url(&s).as_str(), "http://[::1]:5002/");
        s.listen = "10.1.2.3:443".parse().unwrap();
        s.tls_cert = Some("/x".into());
        assert_eq!(server_url(&s).as_str(), "https://10.1.2.3/");
    }

    #[test]
    fn server_flag() {
        assert_eq!(
            parse_server("127.0.0.1:5000").unwrap().as_str(),
            "http://127.0.0.1:5000/"
        );
        assert_eq!(
            parse_server("https://mirror.internal")
                .unwrap()
                .origin()
                .ascii_serialization(),
            "https://mirror.internal"
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://x/v2/",
            "http://x?a=1",
            "http://u:p@x",
            "::",
        ] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_must_agree() {
        assert!(check_size(Some(5), Some(5), Some(5)).is_ok());
        assert!(check_size(None, None, Some(5)).is_ok());
        assert!(check_size(None, Some(5), Some(5)).is_ok());
        assert!(
            check_size(Some(5), Some(6), None)
                .unwrap_err()
                .0
                .contains("berth announced 6")
        );
        assert!(
            check_size(Some(5), None, Some(4))
                .unwrap_err()
                .0
                .contains("received 4 bytes, expected 5")
        );
        assert!(check_size(None, Some(5), Some(6)).is_err());
    }

    #[test]
    fn digest_headers_must_agree() {
        let d: Digest = format!("sha256:{}", hex('d')).parse().unwrap();
        assert!(check_digest_header(None, &d).is_ok());
        assert!(check_digest_header(Some(&d.to_string()), &d).is_ok());
        let other = format!("sha256:{}", hex('e'));
        let e = check_digest_header(Some(&other), &d).unwrap_err();
        assert_eq!(
            e.0,
            format!("Docker-Content-Digest is {other}, expected {d}")
        );
    }

    #[test]
    fn berth_errors_read_as_one_line() {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry","detail":"registry \"ghcr.io\" is not mirrored here"}]}"#;
        let line = describe_error(
            StatusCode::NOT_FOUND,
            body,
            r("ghcr.io/a/b").registry.as_deref(),
        );
        assert!(
            line.starts_with("NAME_UNKNOWN: registry \"ghcr.io\" is not mirrored here (HTTP 404)"),
            "{line}"
        );
        assert!(line.contains("[[upstream]]"), "{line}");
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":null}]}"#;
        assert_eq!(
            describe_error(StatusCode::NOT_FOUND, body, None),
            "MANIFEST_UNKNOWN: manifest unknown (HTTP 404)"
        );
        assert_eq!(
            describe_error(StatusCode::BAD_GATEWAY, b"<html>", None),
            "berth answered 502 Bad Gateway"
        );
    }
}
