//! `[server] idle_timeout` over real sockets: an HTTP/2 connection (prior knowledge, hyper's
//! client) that goes quiet is sent GOAWAY and closed; one with a blob still streaming is not cut
//! however long the transfer takes; an HTTP/1 keep-alive connection that goes quiet is closed
//! too; `"0s"` turns it off. Timeouts are 300 ms; waits are bounded by deadlines.
//!
//! "Not before the timeout" is measured from an instant the client takes before it sends the last
//! request: the server's quiet time starts only once it has answered that request, so the close
//! comes at least one timeout after it whatever the load. (An instant taken after the answer
//! arrived is later than the server's start by however long the answer took to be read, and a
//! close can then look early.) A paused tokio clock is no help here: the connections are real
//! sockets, and a paused runtime jumps its clock whenever it waits on one. Which timer closed a
//! connection is read from berth's own log line for it ([`berth_log`]), written before the close.

use crate::support;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::FakeRegistry;
use support::instance::{Berth, gated_blob, same, start_toml};

const IDLE: Duration = Duration::from_millis(300);
/// Longest a close may take beyond the timeout on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(10);

/// What berth logs, at DEBUG, from the current thread on: a `#[tokio::test]` runtime runs every
/// task (berth's connections too) on this thread, under this default, until the guard drops.
fn berth_log() -> (Log, tracing::subscriber::DefaultGuard) {
    let log = Log::default();
    let to = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || to.clone())
        .finish();
    (log, tracing::subscriber::set_default(subscriber))
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    /// Whether a line says `what` about the connection from `peer`.
    fn says(&self, what: &str, peer: SocketAddr) -> bool {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        let peer = format!("peer={peer}");
        text.lines().any(|l| l.contains(what) && l.contains(&peer))
    }
}

impl io::Write for Log {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// berth's line when its idle timer asks a connection to close.
const IDLE_CLOSE: &str = "closing an idle connection";

async fn start(fake: &FakeRegistry, idle: &str) -> Berth {
    // A long header timeout, so that only the idle timeout can close a quiet HTTP/1 connection.
    start_with_header_timeout(fake, idle, "60s").await
}

async fn start_with_header_timeout(fake: &FakeRegistry, idle: &str, header: &str) -> Berth {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        idle_timeout = "{idle}"
        header_read_timeout = "{header}"
        [metrics]
        listen = "127.0.0.1:0"
        [storage]
        path = "{}"
        [[upstream]]
        name = "registry.test"
        url = "{}"
        default = true
        library_prefix = true
        "#,
        dir.path().display(),
        fake.url()
    );
    start_toml(&cfg, dir).await
}

/// An HTTP/2 connection with prior knowledge; the task resolves when the connection ends
/// (`Ok` when the server closed it gracefully) and says when. Last: the client's end's address
/// (the `peer` of berth's lines about it).
async fn h2(
    addr: SocketAddr,
) -> (
    http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<(Result<(), String>, Instant)>,
    SocketAddr,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let me = tcp.local_addr().unwrap();
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    let ended = tokio::spawn(async move {
        let r = conn.await.map_err(|e| e.to_string());
        (r, Instant::now())
    });
    (sender, ended, me)
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://berth{path}"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn a_quiet_http2_connection_gets_goaway_and_is_closed() {
    let fake = FakeRegistry::start().await;
    let b = start(&fake, "300ms").await;
    let (log, _logging) = berth_log();
    let (mut sender, ended, me) = h2(b.addr).await;
    let asked = Instant::now();
    let resp = sender.send_request(get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();

    let (result, at) = tokio::time::timeout(DEADLINE, ended)
        .await
        .expect("a quiet HTTP/2 connection stayed open")
        .unwrap();
    // GOAWAY, then a clean close: hyper's client ends without an error.
    assert_eq!(result, Ok(()));
    assert!(
        at - asked >= IDLE,
        "closed {:?} after the last request was sent",
        at - asked
    );
    assert!(
        log.says(IDLE_CLOSE, me),
        "closed, but not by the idle timer"
    );
    assert!(sender.send_request(get("/v2/")).await.is_err());

    // On the wire, with a client that sends nothing and answers no PING (so hyper's graceful
    // close never completes on its own): a GOAWAY frame (type 7) with NO_ERROR, then the end of
    // the connection one more idle timeout later.
    let mut raw = TcpStream::connect(b.addr).await.unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut frames = Vec::new();
    tokio::time::timeout(DEADLINE, raw.read_to_end(&mut frames))
        .await
        .expect("a quiet HTTP/2 connection stayed open")
        .unwrap();
    let mut goaway = None;
    let mut at = 0;
    while at + 9 <= frames.len() {
        let len = u32::from_be_bytes([0, frames[at], frames[at + 1], frames[at + 2]]) as usize;
        if frames[at + 3] == 7 {
            let p = &frames[at + 9..at + 9 + len];
            goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        at += 9 + len;
    }
    assert_eq!(goaway, Some(0), "no GOAWAY(NO_ERROR) in {frames:?}");
}

#[tokio::test]
async fn a_transfer_longer_than_the_timeout_is_not_cut() {
    let fake = FakeRegistry::start().await;
    let b = start(&fake, "300ms").await;
    let size = 256 * 1024;
    let (layer, digest, release) = gated_blob(&fake, size, 77, 1);
    let (mut sender, ended, _) = h2(b.addr).await;
    let resp = sender
        .send_request(get(&format!("/v2/app/blobs/{digest}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::new();

    // The upstream sends a little, then nothing for several idle timeouts: the blob is still in
    // flight, so the connection stays (a bounded look for an end that must not come).
    release.send_replace(1000);
    while got.len() < 1000 {
        let frame = body.frame().await.unwrap().unwrap();
        got.extend_from_slice(&frame.into_data().unwrap());
    }
    tokio::time::sleep(IDLE * 4).await;
    assert!(
        !ended.is_finished(),
        "the connection was closed mid-transfer"
    );
    // Nor was it told to wind down (a GOAWAY lets running streams finish but takes no new one):
    // another request on it is answered.
    let resp = sender.send_request(get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();

    release.send_replace(size);
    while let Some(frame) = body.frame().await {
        got.extend_from_slice(&frame.unwrap().into_data().unwrap_or_default());
    }
    same(&Bytes::from(got), &layer);
    // Once the transfer is over, the quiet time starts and the connection goes.
    let (result, _) = tokio::time::timeout(DEADLINE, ended)
        .await
        .expect("the connection stayed open after its transfer")
        .unwrap();
    assert_eq!(result, Ok(()));
}

async fn keep_alive_get(s: &mut TcpStream) -> String {
    support::wire::keep_alive_get(s, "berth").await
}

#[tokio::test]
async fn a_quiet_http1_keep_alive_connection_is_closed() {
    let fake = FakeRegistry::start().await;
    let b = start(&fake, "300ms").await;
    let (log, _logging) = berth_log();
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    // Two requests on one connection: it is kept alive between them.
    assert!(keep_alive_get(&mut s).await.starts_with("HTTP/1.1 200"));
    let asked = Instant::now();
    assert!(keep_alive_get(&mut s).await.starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("a quiet keep-alive connection stayed open (header_read_timeout is 60s)")
        .unwrap();
    assert_eq!(n, 0, "{rest:?}");
    let after = asked.elapsed();
    assert!(
        after >= IDLE,
        "closed {after:?} after the last request was sent"
    );
    let me = s.local_addr().unwrap();
    assert!(
        log.says(IDLE_CLOSE, me),
        "closed, but not by the idle timer"
    );
}

/// What the idle timeout's docs rely on: hyper (1.12) runs `header_read_timeout` from the end
/// of each response, so a quiet HTTP/1 keep-alive connection is closed by it even with the idle
/// timeout off. Fails if a hyper upgrade changes that.
#[tokio::test]
async fn hyper_closes_a_quiet_http1_connection_at_the_header_timeout() {
    let fake = FakeRegistry::start().await;
    let b = start_with_header_timeout(&fake, "0s", "300ms").await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let asked = Instant::now();
    assert!(keep_alive_get(&mut s).await.starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("hyper kept a quiet keep-alive connection past header_read_timeout")
        .unwrap();
    let after = asked.elapsed();
    assert!(after >= IDLE, "closed {after:?} after the request was sent");
}

#[tokio::test]
async fn zero_turns_it_off() {
    let fake = FakeRegistry::start().await;
    let b = start(&fake, "0s").await;
    let (mut sender, ended, _) = h2(b.addr).await;
    let resp = sender.send_request(get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Several times what closes it when on (a bounded look for an end that must not come).
    tokio::time::sleep(IDLE * 4).await;
    assert!(
        !ended.is_finished(),
        "closed although idle_timeout = \"0s\""
    );
    let resp = sender.send_request(get("/v2/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
