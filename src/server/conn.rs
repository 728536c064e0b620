//! A new plain-TCP connection costs almost nothing until its first request head has arrived.
//!
//! hyper gives every connection it serves an 8 KiB read buffer and an 8 KiB write buffer, and
//! its connection state, from the first poll; a header flood (thousands of connections that each
//! send half a request head and then nothing, until `header_read_timeout`) so takes about 23 KiB
//! a connection. glibc keeps most of what such a burst freed: measured with `malloc_stats()` on a
//! flooded berth, the bytes in use came back to where they started (a few KiB apart) while the
//! resident size stayed at the flood's peak, and grew with each flood as the heap fragmented
//! (`malloc_trim(0)` gave it all back). So the fix is to not take that memory in the first place.
//!
//! [`wait_for_head`] reads what the client sends into a buffer of exactly that size (a half head
//! of 40 bytes costs 40 bytes) until it holds the end of a head (an empty line) or
//! [`HAND_OVER_AT`] bytes, then the connection goes to hyper as a [`Prefixed`] stream that hands
//! those bytes back first. An HTTP/2 prior-knowledge preface ends in an empty line too. A client
//! that sends nothing more, or closes, within the timeout is dropped: nobody was waiting for an
//! answer, and hyper's own header timeout closes such a connection without one as well.
//!
//! The cost for every client: one more read and a copy of its first head (a few hundred bytes).
//! Later heads on a kept-alive connection go straight to hyper, whose buffers by then serve a
//! real request. TLS connections are not covered: rustls takes its buffers during the handshake,
//! which `header_read_timeout` also bounds.
//!
//! What such a flood still takes (about 2.5 KiB a connection: its task, socket registration and
//! permit) glibc keeps after the flood too, so when the number of open connections has fallen by
//! [`BURST`] or more from its peak, [`Bursts`] tells the server to call `malloc_trim(0)` once
//! ([`crate::trim`], which holds that `unsafe` call), off the runtime's threads. That gives the
//! freed pages back; the bytes in use never grew. It costs a walk of the heap's free chunks
//! (milliseconds for tens of MiB), at most once per [`Bursts::settle`] tick.
//!
//! Rule of dependency: a leaf of `server`; no unsafe code of its own.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes of an unfinished head after which the connection goes to hyper all the same (which
/// enforces its own, larger limit): a client that sent this much pays for what it holds.
pub const HAND_OVER_AT: usize = 8 * 1024;

/// How waiting for a head ended.
#[derive(Debug)]
pub enum Head {
    /// The end of a head (or [`HAND_OVER_AT`] bytes) arrived: these bytes, to be read first.
    Arrived(Vec<u8>),
    /// The client closed the connection first.
    Closed,
    /// Nothing completed a head within the timeout.
    TimedOut,
}

/// Reads from `stream` until what arrived holds a whole request head, for at most `limit`.
pub async fn wait_for_head(stream: &TcpStream, limit: Duration) -> io::Result<Head> {
    let read = async {
        let mut got = Vec::new();
        loop {
            stream.readable().await?;
            match read_some(stream, &mut got) {
                Ok(0) => return Ok(Head::Closed),
                Ok(_) if got.len() >= HAND_OVER_AT || head_ends(&got) || !http_like(&got) => {
                    return Ok(Head::Arrived(got));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(limit, read).await {
        Ok(r) => r,
        Err(_) => Ok(Head::TimedOut),
    }
}

/// One non-blocking read appended to `got`. The chunk lives on the stack of this call only, so a
/// waiting connection holds just the bytes it was sent.
fn read_some(stream: &TcpStream, got: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 2048];
    let room = (HAND_OVER_AT - got.len()).min(chunk.len());
    let n = stream.try_read(&mut chunk[..room])?;
    got.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Whether `bytes` hold the end of a request head: an empty line, in CRLF or bare-LF form (both
/// of which hyper accepts).
fn head_ends(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] == b'\n')
        .any(|(i, w)| w[1] == b'\n' || (w[1] == b'\r' && bytes.get(i + 2) == Some(&b'\n')))
}

/// Whether `bytes` may begin an HTTP request: after any empty lines, a letter (a method, or the
/// `PRI` of an HTTP/2 preface). Anything else (a TLS ClientHello starts with 0x16: a client trying
/// https on a plain port, as skopeo, podman and Docker do first with an insecure registry) goes
/// to hyper at once, whose `400` tells such a client to fall back to http now rather than after
/// `header_read_timeout`.
fn http_like(bytes: &[u8]) -> bool {
    match bytes.iter().find(|b| !matches!(b, b'\r' | b'\n')) {
        Some(b) => b.is_ascii_alphabetic(),
        None => true,
    }
}

/// Connections that must have closed since the peak before freed memory is handed back.
pub const BURST: usize = 1024;

/// The most connections open at once since memory was last handed back.
#[derive(Debug, Default)]
pub struct Bursts {
    peak: AtomicUsize,
}

impl Bursts {
    /// A connection was accepted; `open` are open now, counting it.
    pub fn opened(&self, open: usize) {
        self.peak.fetch_max(open, Ordering::Relaxed);
    }

    /// Whether a burst is over: at least [`BURST`] fewer connections are `open` than at the peak.
    /// If so, the peak starts again from `open`, and the caller should hand memory back
    /// ([`trim::malloc_trim`](crate::trim::malloc_trim)).
    pub fn settle(&self, open: usize) -> bool {
        let peak = self.peak.load(Ordering::Relaxed);
        let over = peak >= open + BURST;
        if over {
            self.peak.store(open, Ordering::Relaxed);
        }
        over
    }
}

/// A stream that yields `prefix` before reading from `inner`; writes go straight to `inner`
/// (vectored writes included, which the zero-copy writer depends on).
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                // Served: give the memory back now, not when the connection ends.
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, server)
    }

    #[test]
    fn a_head_ends_at_an_empty_line() {
        assert!(head_ends(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head_ends(b"GET / HTTP/1.1\nHost: x\n\n"));
        assert!(head_ends(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(head_ends(b"GET / HTTP/1.1\r\n\r\nbody"));
        assert!(!head_ends(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!head_ends(b"GET / HTTP/1.1\r\nHost: x\r\n\r"));
        assert!(!head_ends(b""));
        assert!(!head_ends(b"\n"));
    }

    #[test]
    fn what_may_begin_a_request() {
        for ok in [
            &b"G"[..],
            b"GET / HT",
            b"\r\nGET",
            b"PRI * HTTP/2.0",
            b"",
            b"\r\n",
        ] {
            assert!(http_like(ok), "{ok:?}");
        }
        for not in [
            &b"\x16\x03\x01\x02\x00\x01"[..],
            b"\r\n\x16",
            b" GET",
            b"{\"a\"",
        ] {
            assert!(!http_like(not), "{not:?}");
        }
    }

    #[tokio::test]
    async fn a_tls_hello_goes_to_hyper_at_once() {
        let (mut client, server) = pair().await;
        client
            .write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")
            .await
            .unwrap();
        let head = wait_for_head(&server, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(matches!(head, Head::Arrived(b) if b[0] == 0x16));
    }

    #[test]
    fn a_burst_is_over_when_enough_connections_closed_since_the_peak() {
        let b = Bursts::default();
        for open in 1..=BURST + 10 {
            b.opened(open);
        }
        assert!(!b.settle(BURST + 10), "at the peak");
        assert!(!b.settle(11), "one short of a burst");
        assert!(b.settle(10));
        assert!(!b.settle(10), "the peak starts again from there");
        b.opened(11);
        assert!(!b.settle(0), "a small rise is no burst");
    }

    #[tokio::test]
    async fn a_head_sent_in_pieces_arrives_whole_and_is_read_back_first() {
        let (mut client, server) = pair().await;
        let waiting = tokio::spawn(async move {
            let head = wait_for_head(&server, Duration::from_secs(30)).await;
            (head, server)
        });
        client.write_all(b"GET /v2/ HTTP/1.1\r\n").await.unwrap();
        client.flush().await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(b"Host: b\r\n\r\nrest").await.unwrap();
        let (head, server) = waiting.await.unwrap();
        let Head::Arrived(bytes) = head.unwrap() else {
            panic!("no head")
        };
        assert!(bytes.starts_with(b"GET /v2/ HTTP/1.1\r\nHost: b\r\n\r\n"));

        let mut s = Prefixed::new(bytes, server);
        client.write_all(b" and more").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET /v2/ HTTP/1.1\r\nHost: b\r\n\r\nrest and more");
    }

    #[tokio::test]
    async fn half_a_head_times_out_and_a_closed_one_is_closed() {
        let (mut client, server) = pair().await;
        client
            .write_all(b"GET /v2/ HTTP/1.1\r\nX-Half: ")
            .await
            .unwrap();
        let head = wait_for_head(&server, Duration::from_millis(200)).await;
        assert!(matches!(head, Ok(Head::TimedOut)), "{head:?}");

        let (mut client, server) = pair().await;
        client.write_all(b"GET /v2/ HTT").await.unwrap();
        drop(client);
        let head = wait_for_head(&server, Duration::from_secs(30)).await;
        assert!(matches!(head, Ok(Head::Closed)), "{head:?}");
    }

    #[tokio::test]
    async fn a_head_that_never_ends_is_handed_over_at_the_bound() {
        let (mut client, server) = pair().await;
        let endless = vec![b'a'; HAND_OVER_AT + 100];
        let writer = tokio::spawn(async move {
            client.write_all(&endless).await.unwrap();
            client
        });
        let head = wait_for_head(&server, Duration::from_secs(30)).await;
        let Ok(Head::Arrived(bytes)) = head else {
            panic!("{head:?}")
        };
        assert_eq!(bytes.len(), HAND_OVER_AT);
        drop(writer.await.unwrap());
    }
}
