//! A tiny blocking HTTP/1.1 client: enough to probe readiness and to read what the registry serves
//! directly, without pulling an HTTP client crate into the dev-dependencies.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub struct Response {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Every manifest media type the seeded images use, for `Accept`.
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// `GET http://<addr><path>` with `Connection: close`, read to the end.
pub fn get(addr: &str, path: &str, accept: Option<&str>) -> io::Result<Response> {
    request("GET", addr, path, accept)
}

/// `<method> http://<addr><path>` with `Connection: close`, read to the end (a HEAD answer ends
/// with its headers: the server closes the connection).
pub fn request(method: &str, addr: &str, path: &str, accept: Option<&str>) -> io::Result<Response> {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    send(method, addr, path, &headers, None)
}

/// `<method> http://<addr><path>` with `headers`, and `body` if given (with its
/// `Content-Length`), `Connection: close`, read to the end: enough to push to a registry.
pub fn send(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    if let Some(b) = body {
        head += &format!("Content-Length: {}\r\n", b.len());
    }
    head += "Connection: close\r\n\r\n";
    s.write_all(head.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse(&raw).ok_or_else(|| io::Error::other(format!("bad HTTP response from {addr}{path}")))
}

fn parse(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Polls `GET <path>` until it answers `want` (connection refused counts as "not yet"), for at
/// most `limit`. Returns an error describing the last attempt.
pub fn wait_for(addr: &str, path: &str, want: u16, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    let mut last;
    loop {
        match get(addr, path, None) {
            Ok(r) if r.status == want => return Ok(()),
            Ok(r) => last = format!("status {}", r.status),
            Err(e) => last = e.to_string(),
        }
        if started.elapsed() > limit {
            return Err(format!(
                "http://{addr}{path} not answering {want} after {limit:?}: {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
