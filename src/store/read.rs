//! Reading a blob: [`read_range`] streams a committed file or follows a fill in progress.
//!
//! Readers never hand out the last byte of a fill before it is committed: a client can only ever
//! see a complete body whose digest was checked. Committed bytes (and bytes of a fill already
//! written) are mapped, not copied: [`zerocopy::map`] makes the mapping (and holds its `unsafe`),
//! this file promises what makes it sound (it maps only final bytes, which berth never rewrites),
//! and `zerocopy` may send those mappings with `sendfile`.
//!
//! Rule of dependency: part of `store`; uses `error`, `zerocopy`, its parent (the [`BlobFile`])
//! and its siblings `pending` (the [`FillState`] it follows) and `spool` (a reader's place);
//! neither imports it. No unsafe code of its own.

use std::io;
use std::os::unix::fs::FileExt;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::watch;

use super::BlobFile;
use super::pending::FillState;
use super::spool::Cursor;
use crate::error::Error;
use crate::zerocopy;

/// Size of one read from a blob file. Large reads keep syscalls and wakeups few.
const READ_CHUNK: usize = 256 * 1024;

/// Where the bytes of a read come from.
pub enum Source {
    /// A committed file: everything up to its length is final.
    File(BlobFile),
    /// A fill in progress: follow it.
    Fill(watch::Receiver<FillState>),
}

/// Streams bytes `start..end` (end exclusive; `None` = to the end of the blob) of a blob.
///
/// From a fill, it reads what has been written so far and waits for more, but holds back the final
/// byte until the fill is committed, so a failed verification always leaves the reader short.
pub fn read_range(
    source: Source,
    start: u64,
    end: Option<u64>,
) -> impl Stream<Item = Result<Bytes, Error>> + Send {
    struct St {
        source: Source,
        pos: u64,
        end: u64,
        done: bool,
        cursor: Option<Cursor>,
    }
    // A reader of a fill is waited for from the moment it exists, not from its first poll: a
    // fill passing through memory (a full disk) drops what no registered reader still needs, and
    // a response whose body is polled a moment after its head must find its bytes still there.
    let cursor = match &source {
        Source::Fill(rx) => match &*rx.borrow() {
            FillState::Writing(p) => Some(p.spool.register(start)),
            _ => None,
        },
        Source::File(_) => None,
    };
    let st = St {
        source,
        pos: start,
        end: end.unwrap_or(u64::MAX),
        done: false,
        cursor,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.done || st.pos >= st.end {
            return None;
        }
        match next_chunk(&mut st.source, st.pos, st.end, &mut st.cursor).await {
            Ok(Some(bytes)) => {
                st.pos += bytes.len() as u64;
                if let Some(c) = &st.cursor {
                    c.advance(st.pos);
                }
                Some((Ok(bytes), st))
            }
            Ok(None) => None,
            Err(e) => {
                st.done = true;
                Some((Err(e), st))
            }
        }
    })
}

/// Bytes handed out per frame from a mapped file. Each frame is its own small mapping, unmapped
/// when the frame has been sent, so the mapped (resident) part of a blob stays a few frames per
/// connection rather than the whole file.
pub(super) const MAP_CHUNK: u64 = 1024 * 1024;

/// The next chunk at `pos` (before `end`), waiting on a fill if needed; `None` at the end of the blob.
/// `cursor` is this reader's place in the fill, registered on its first look at it.
async fn next_chunk(
    source: &mut Source,
    pos: u64,
    end: u64,
    cursor: &mut Option<Cursor>,
) -> Result<Option<Bytes>, Error> {
    // How far we may read now.
    let (file, limit, maps) = loop {
        match source {
            Source::File(b) => break (b.file.clone(), b.len, b.maps.clone()),
            Source::Fill(rx) => {
                let state = rx.borrow_and_update().clone();
                match state {
                    FillState::Verified(b) | FillState::Committed(b) => {
                        *source = Source::File(b);
                        continue;
                    }
                    FillState::Failed(e) => return Err(e),
                    FillState::Writing(p) => {
                        if cursor.is_none() {
                            *cursor = Some(p.spool.register(pos));
                        }
                        // Hold back the last byte until the digest is verified: the blob's, and
                        // the requested range's, so that no response (a 206 included) completes
                        // with bytes that might turn out wrong.
                        let readable = match p.total {
                            _ if p.verified => p.received,
                            Some(t) => p.received.min(t.saturating_sub(1)),
                            None => p.received.saturating_sub(1),
                        };
                        let readable = match p.verified {
                            true => readable,
                            false => readable.min(end.saturating_sub(1)),
                        };
                        if p.verified && pos >= readable {
                            return Ok(None);
                        }
                        if readable > pos {
                            if let Some(bytes) = p.spool.get(pos, end.min(readable)) {
                                return Ok(Some(bytes));
                            }
                            if pos < p.written {
                                break (p.file, p.written.min(readable), p.maps);
                            }
                            if p.pass_through {
                                // Past the file's end and gone from memory: this reader was cut
                                // off for taking nothing while the fill waited for it.
                                return Err(Error::internal(
                                    "fell behind a blob fill that the full disk kept in memory only",
                                ));
                            }
                        }
                    }
                    FillState::Pending => {}
                }
                if rx.changed().await.is_err() {
                    return Err(Error::internal("blob fill ended without a result"));
                }
            }
        }
    };
    let stop = end.min(limit);
    if pos >= stop {
        return Ok(None);
    }
    // Bytes below `limit` are final (verified, or already written and never rewritten): map them.
    match zerocopy::map(&file, pos, (stop - pos).min(MAP_CHUNK), maps.as_ref()) {
        Ok(bytes) => return Ok(Some(bytes)),
        // Mapping is an optimisation; a plain read works without it.
        Err(e) => tracing::debug!(error = %e, "cannot map blob file; reading it instead"),
    }
    let n = (stop - pos).min(READ_CHUNK as u64) as usize;
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::zeroed(n);
        let mut filled = 0;
        while filled < n {
            match file.read_at(&mut buf[filled..], pos + filled as u64) {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf.freeze())
    })
    .await
    .map_err(|e| Error::internal(format!("blob read task: {e}")))?;
    match read {
        Ok(bytes) if bytes.is_empty() => Err(Error::internal(
            "blob file is shorter than its recorded length",
        )),
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) => Err(Error::io("reading blob", &e)),
    }
}
