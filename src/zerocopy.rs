//! Zero-copy hits: every mapping of a blob file ([`map`]) and the `sendfile(2)` sends under hyper
//! that use them, for plain-TCP connections.
//!
//! A blob hit hands hyper each window of the file as a read-only mapping made by [`map`] (called
//! by `store::read`). Written with `writev`, every byte is copied from the page cache into the
//! socket (about two thirds of the hit path's CPU). hyper cannot be asked to use `sendfile`, but
//! it hands its writer the very buffers it was given. So each live mapping is recorded here
//! ([`Mappings`]: address range -> file and offset), and the connection's writer
//! ([`SendfileStream`]) recognises a buffer that lies inside one and sends those bytes from the
//! file with `sendfile` instead of from memory. The bytes are the same by construction (a mapping
//! of final, never rewritten file bytes), so the swap cannot change what a client gets, whatever
//! protocol wrote the buffer; and a mapping that is never touched is never faulted in.
//!
//! The rules that keep it sound: a range is registered only while its mapping lives (its owner
//! unregisters on drop, before the unmap), so no other buffer can sit at a registered address;
//! buffers before the mapped one are written first, so the byte order is the order hyper asked
//! for; a `sendfile` that fails for any reason but "try again" turns the connection back to plain
//! writes of the same (mapped) bytes. TLS connections are not wrapped: rustls writes ciphertext.
//!
//! `unsafe`: this file holds one of berth's two `unsafe` blocks, the `mmap` in [`map`] (why it is
//! sound is written there); the other is `trim`'s `malloc_trim`. `sendfile` is `rustix`'s safe
//! wrapper.
//!
//! Rule of dependency: a leaf (`memmap2`, `rustix`, `bytes`, tokio, a `prometheus` counter it is
//! handed); `store` calls [`map`], `server` wraps connections in [`SendfileStream`]; it knows
//! nothing of either.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Smallest buffer worth a `sendfile` (and a lookup): below this, a copy is as cheap as the
/// syscall, and headers and manifests never pay for the lookup.
pub const MIN_SENDFILE: usize = 16 * 1024;

/// The live mappings of blob files, by start address.
#[derive(Debug, Default)]
pub struct Mappings {
    regions: Mutex<BTreeMap<usize, Region>>,
    /// Entries in `regions`: writers skip the lock while nothing is mapped.
    live: AtomicUsize,
}

#[derive(Debug)]
struct Region {
    len: usize,
    file: Arc<File>,
    /// Where in `file` the region's first byte is.
    offset: u64,
}

/// Where a buffer's bytes are in a file.
struct Found {
    file: Arc<File>,
    offset: u64,
}

impl Mappings {
    /// Records that `len` bytes at `addr` are a mapping of `file` from `offset`, until the returned
    /// guard is dropped. The caller keeps the mapping alive at least as long as the guard.
    pub fn register(
        self: &Arc<Self>,
        addr: usize,
        len: usize,
        file: Arc<File>,
        offset: u64,
    ) -> Registration {
        self.regions
            .lock()
            .unwrap()
            .insert(addr, Region { len, file, offset });
        self.live.fetch_add(1, Ordering::Relaxed);
        Registration {
            maps: self.clone(),
            addr,
        }
    }

    /// The file bytes behind `buf`, if it lies wholly inside a registered mapping.
    fn find(&self, buf: &[u8]) -> Option<Found> {
        if buf.len() < MIN_SENDFILE || self.live.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let addr = buf.as_ptr() as usize;
        let regions = self.regions.lock().unwrap();
        let (&start, r) = regions.range(..=addr).next_back()?;
        (addr + buf.len() <= start + r.len).then(|| Found {
            file: r.file.clone(),
            offset: r.offset + (addr - start) as u64,
        })
    }

    /// How many mappings are registered now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

/// Keeps a mapping registered; unregisters it on drop.
#[derive(Debug)]
pub struct Registration {
    maps: Arc<Mappings>,
    addr: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self
            .maps
            .regions
            .lock()
            .unwrap()
            .remove(&self.addr)
            .is_some()
        {
            self.maps.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Maps `len` bytes at `offset` of a blob file (verified, or the written part of a fill)
/// read-only, so that hits go from the page cache to the socket with one copy and no buffer to
/// allocate or fill.
///
/// One of berth's two `unsafe` blocks (the other, in `trim`, calls `malloc_trim`). A mapping is
/// only sound while nobody truncates or rewrites the file under it, and berth never does either:
/// blob files are only ever appended to (under a temp name, and only bytes already written are
/// mapped), then renamed or unlinked, both of which leave a mapping intact. The caller (`store`)
/// keeps that promise; this function cannot check it.
///
/// With `maps`, the mapping is registered there while it lives, so that a plain-TCP connection
/// can send it from the file (`zerocopy`) without ever touching its pages.
#[allow(unsafe_code)]
pub fn map(
    file: &Arc<File>,
    offset: u64,
    len: u64,
    maps: Option<&Arc<Mappings>>,
) -> io::Result<Bytes> {
    const PAGE: u64 = 4096;
    let start = offset - offset % PAGE;
    let span = usize::try_from(offset + len - start).map_err(io::Error::other)?;
    // SAFETY: see above: the mapped bytes never change while berth runs.
    let m = unsafe {
        memmap2::MmapOptions::new()
            .offset(start)
            .len(span)
            .map(&**file)?
    };
    let skip = (offset - start) as usize;
    let bytes = match maps {
        Some(maps) => {
            let registration = maps.register(m.as_ptr() as usize, m.len(), file.clone(), start);
            Bytes::from_owner(Mapped {
                _registration: registration,
                map: m,
            })
        }
        None => Bytes::from_owner(m),
    };
    Ok(bytes.slice(skip..))
}

/// A registered mapping. Fields drop in order: unregistered first, then unmapped.
struct Mapped {
    _registration: Registration,
    map: memmap2::Mmap,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// A plain TCP connection whose writes send registered mappings with `sendfile`.
pub struct SendfileStream {
    tcp: TcpStream,
    maps: Arc<Mappings>,
    /// Bytes sent with `sendfile` (`berth_zero_copy_bytes_total`).
    sent: IntCounter,
    /// `sendfile` failed once on this connection: plain writes from here on.
    off: bool,
}

impl SendfileStream {
    pub fn new(tcp: TcpStream, maps: Arc<Mappings>, sent: IntCounter) -> SendfileStream {
        SendfileStream {
            tcp,
            maps,
            sent,
            off: false,
        }
    }

    /// One `sendfile` of `len` bytes of `found`, waiting for the socket to take them.
    fn poll_sendfile(
        &mut self,
        cx: &mut Context<'_>,
        found: &Found,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut offset = found.offset;
            match self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.tcp, &*found.file, Some(&mut offset), len)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_bufs(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let hit = match self.off {
            true => None,
            false => bufs
                .iter()
                .enumerate()
                .find_map(|(i, b)| Some((i, self.maps.find(b)?))),
        };
        let Some((i, found)) = hit else {
            return Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        };
        if i > 0 {
            // What comes before the mapped bytes goes first; hyper calls again for the rest.
            return Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..i]);
        }
        match ready!(self.poll_sendfile(cx, &found, bufs[0].len())) {
            // 0: the file is shorter than the mapping said; let the plain write have its say.
            Ok(n) if n > 0 => {
                self.sent.inc_by(n as u64);
                Poll::Ready(Ok(n))
            }
            other => {
                tracing::debug!(result = ?other, "sendfile failed; writing from memory on this connection");
                self.off = true;
                Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..1])
            }
        }
    }
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_bufs(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_bufs(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A file holding `bytes`, opened for reading (or, with `readable = false`, for writing only:
    /// `sendfile` from it fails).
    fn file_with(bytes: &[u8], readable: bool) -> (tempfile::TempDir, Arc<File>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let f = match readable {
            true => File::open(&path).unwrap(),
            false => std::fs::OpenOptions::new().write(true).open(&path).unwrap(),
        };
        (dir, Arc::new(f))
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    /// A connected pair: our stream (wrapped) and the peer's end.
    async fn pair(maps: Arc<Mappings>, sent: IntCounter) -> (SendfileStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        (SendfileStream::new(a.unwrap(), maps, sent), b.unwrap().0)
    }

    /// Writes every byte of `bufs` in order, as hyper does: vectored writes, advancing past what
    /// each one took.
    async fn write_all_vectored(s: &mut SendfileStream, bufs: &[&[u8]]) {
        let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = s.write_vectored(rest).await.unwrap();
            assert!(n > 0);
            IoSlice::advance_slices(&mut rest, n);
        }
        s.flush().await.unwrap();
    }

    #[test]
    fn finds_only_buffers_inside_a_live_registration() {
        let maps = Arc::new(Mappings::default());
        let (_dir, file) = file_with(b"x", true);
        let mem = vec![0u8; 4 * MIN_SENDFILE];
        let addr = mem.as_ptr() as usize;
        let reg = maps.register(addr, mem.len(), file, 1000);
        assert_eq!(maps.live(), 1);
        let inside = maps.find(&mem[100..100 + MIN_SENDFILE]).expect("inside");
        assert_eq!(inside.offset, 1100);
        assert!(maps.find(&mem[..]).is_some(), "the whole region");
        assert!(
            maps.find(&mem[..MIN_SENDFILE - 1]).is_none(),
            "too small to bother"
        );
        let beyond = vec![0u8; 8 * MIN_SENDFILE];
        assert!(maps.find(&beyond).is_none(), "not registered");
        drop(reg);
        assert_eq!(maps.live(), 0);
        assert!(maps.find(&mem[..]).is_none(), "unregistered on drop");
    }

    #[tokio::test]
    async fn a_registered_buffer_goes_out_from_the_file_in_order() {
        let maps = Arc::new(Mappings::default());
        let sent = IntCounter::new("t", "t").unwrap();
        let body = pattern(3 * MIN_SENDFILE + 7, 5);
        let (_dir, file) = file_with(&body, true);
        // The memory stands in for a mapping but holds zeros: what arrives shows where the bytes
        // were sent from.
        let mem = vec![0u8; 3 * MIN_SENDFILE];
        let _reg = maps.register(mem.as_ptr() as usize, mem.len(), file, 7);
        let (mut s, mut peer) = pair(maps, sent.clone()).await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        write_all_vectored(&mut s, &[b"head:", &mem, b":tail"]).await;
        s.shutdown().await.unwrap();
        drop(s);
        let got = reader.await.unwrap();
        let mut want = b"head:".to_vec();
        want.extend_from_slice(&body[7..]);
        want.extend_from_slice(b":tail");
        assert!(got == want, "got {} bytes, want {}", got.len(), want.len());
        assert_eq!(sent.get(), mem.len() as u64);
    }

    #[tokio::test]
    async fn a_failing_sendfile_falls_back_to_writing_the_memory() {
        let maps = Arc::new(Mappings::default());
        let sent = IntCounter::new("t", "t").unwrap();
        // Write-only: sendfile from it fails with EBADF.
        let (_dir, file) = file_with(&pattern(2 * MIN_SENDFILE, 1), false);
        let mem = pattern(2 * MIN_SENDFILE, 9);
        let _reg = maps.register(mem.as_ptr() as usize, mem.len(), file, 0);
        let (mut s, mut peer) = pair(maps, sent.clone()).await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        write_all_vectored(&mut s, &[&mem]).await;
        assert!(s.off, "sendfile is off for the rest of the connection");
        write_all_vectored(&mut s, &[b"more", &mem]).await;
        s.shutdown().await.unwrap();
        drop(s);
        let got = reader.await.unwrap();
        let mut want = mem.clone();
        want.extend_from_slice(b"more");
        want.extend_from_slice(&mem);
        assert!(got == want, "got {} bytes, want {}", got.len(), want.len());
        assert_eq!(sent.get(), 0);
    }
}
