//! Where log lines go: appended to a shared buffer, written out by one thread in batches.
//!
//! berth logs one line per request. At tens of thousands of cached-manifest answers a second,
//! handing each line to a writer thread on its own (a channel send, a thread wakeup and a
//! `write(2)` per line, as `tracing-appender` does) costs about as much as answering the request.
//! Here a line is a `memcpy` into a buffer under a mutex; the writer thread is woken once per
//! batch (when the first line lands in an empty buffer, or the buffer passes [`Batching::flush_at`])
//! and writes what gathered in one call, so a line reaches stderr at most
//! [`Batching::gather`] after it was logged. Requests never wait on stderr: past
//! [`Batching::max_pending`] unwritten bytes (stderr stuck), lines are dropped and counted, and the
//! count is written once the sink takes bytes again.
//!
//! The request log can also skip `tracing-subscriber`'s formatting ([`BatchWriter::info`]): the
//! line it writes reads as the subscriber's would (uncoloured), without its per-field formatting
//! and escaping pass, which cost more than the rest of a cached manifest answer's logging.
//!
//! Rule of dependency: a leaf; `main` plugs it into `tracing-subscriber` as its writer.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;

/// How lines are batched.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// After the first line of a batch, how long the writer gathers more before writing.
    pub gather: Duration,
    /// Unwritten bytes that wake the writer at once.
    pub flush_at: usize,
    /// Unwritten bytes beyond which new lines are dropped.
    pub max_pending: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            gather: Duration::from_millis(50),
            flush_at: 64 * 1024,
            max_pending: 4 * 1024 * 1024,
        }
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    batching: Batching,
}

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    dropped: u64,
    closed: bool,
}

/// The `MakeWriter` for `tracing-subscriber`: cheap to clone, one per process.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Writes what is left and stops the writer thread when dropped (keep it for the life of `main`).
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BatchWriter {
    /// Starts the writer thread, writing to `sink`.
    pub fn spawn(sink: impl Write + Send + 'static, batching: Batching) -> (BatchWriter, Guard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            batching,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("berth-log".into())
            .spawn(move || write_batches(&s, sink))
            .expect("spawning the log writer thread");
        (
            BatchWriter {
                shared: shared.clone(),
            },
            Guard {
                shared,
                thread: Some(thread),
            },
        )
    }
}

impl BatchWriter {
    /// Writes one line as `tracing-subscriber`'s default format does without colours:
    /// `<UTC time to the microsecond>  INFO <target>: <message>`. `message` is trusted to hold no
    /// control characters (the caller escapes what a client sent).
    pub fn info(&self, target: &str, message: &str) {
        let mut line = String::with_capacity(40 + target.len() + message.len());
        timestamp(SystemTime::now(), &mut line);
        line.push_str("  INFO ");
        line.push_str(target);
        line.push_str(": ");
        line.push_str(message);
        line.push('\n');
        let _ = self.make_writer().write_all(line.as_bytes());
    }

    /// Writes one line as `tracing-subscriber`'s JSON format does with flattened events:
    /// `{"timestamp":...,"level":"INFO","message":<message>,<fields>...,"target":<target>}`.
    pub fn info_json(&self, target: &str, message: &str, fields: &[(&str, JsonValue<'_>)]) {
        let mut line = String::with_capacity(200);
        line.push_str("{\"timestamp\":\"");
        timestamp(SystemTime::now(), &mut line);
        line.push_str("\",\"level\":\"INFO\",\"message\":");
        json_str(&mut line, message);
        for (k, v) in fields {
            line.push(',');
            json_str(&mut line, k);
            line.push(':');
            match v {
                JsonValue::Str(s) => json_str(&mut line, s),
                JsonValue::Num(n) => {
                    use std::fmt::Write;
                    let _ = write!(line, "{n}");
                }
                JsonValue::Bool(b) => line.push_str(if *b { "true" } else { "false" }),
            }
        }
        line.push_str(",\"target\":");
        json_str(&mut line, target);
        line.push_str("}\n");
        let _ = self.make_writer().write_all(line.as_bytes());
    }
}

/// A field value of a JSON log line.
#[derive(Debug, Clone, Copy)]
pub enum JsonValue<'a> {
    Str(&'a str),
    Num(u64),
    Bool(bool),
}

/// `s` as a JSON string (quoted, escaped).
fn json_str(out: &mut String, s: &str) {
    // serde_json's escaping writes into a Vec; a String's bytes are one.
    let mut buf = std::mem::take(out).into_bytes();
    let _ = serde_json::to_writer(&mut buf, s);
    *out = String::from_utf8(buf).expect("serde_json writes UTF-8");
}

/// `t` as RFC 3339 in UTC with microseconds, as `tracing-subscriber` writes it:
/// `2026-11-29T05:00:28.785913Z`.
fn timestamp(t: SystemTime, out: &mut String) {
    use std::fmt::Write;
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm, years from 0000-03-01).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        d.subsec_micros()
    );
}

/// The writer thread: waits for a batch, takes it, writes it outside the lock.
fn write_batches(shared: &Shared, mut sink: impl Write) {
    let mut out = Vec::new();
    loop {
        let (dropped, closed) = {
            let mut st = shared.state.lock().unwrap();
            while st.lines.is_empty() && st.dropped == 0 && !st.closed {
                st = shared.wake.wait(st).unwrap();
            }
            if !st.closed && st.lines.len() < shared.batching.flush_at {
                st = shared
                    .wake
                    .wait_timeout(st, shared.batching.gather)
                    .unwrap()
                    .0;
            }
            // The emptied buffer of the last batch goes back, so neither side allocates.
            std::mem::swap(&mut st.lines, &mut out);
            (std::mem::take(&mut st.dropped), st.closed)
        };
        // A failing stderr has nowhere to report to; the lines are lost either way.
        let _ = sink.write_all(&out);
        if dropped > 0 {
            let _ = writeln!(
                sink,
                "berth: {dropped} log lines dropped: stderr was not keeping up"
            );
        }
        let _ = sink.flush();
        out.clear();
        if closed {
            return;
        }
    }
}

/// The writer of one event's line (`tracing-subscriber` writes a whole line at once).
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = self.0;
        let mut st = shared.state.lock().unwrap();
        let before = st.lines.len();
        if before + line.len() > shared.batching.max_pending {
            st.dropped += 1;
            return Ok(line.len());
        }
        st.lines.extend_from_slice(line);
        let flush_at = shared.batching.flush_at;
        if before == 0 || (before < flush_at && st.lines.len() >= flush_at) {
            shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.shared)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().closed = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that hands every write to the test, optionally after waiting for a permit.
    struct Sink {
        out: mpsc::Sender<Vec<u8>>,
        permits: Option<mpsc::Receiver<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if let Some(p) = &self.permits {
                let _ = p.recv();
            }
            let _ = self.out.send(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(w: &BatchWriter, text: &str) {
        w.make_writer().write_all(text.as_bytes()).unwrap();
    }

    fn written(rx: &mpsc::Receiver<Vec<u8>>) -> String {
        String::from_utf8(rx.try_iter().flatten().collect()).unwrap()
    }

    #[test]
    fn timestamps_read_as_the_subscriber_writes_them() {
        let at = |secs: u64, micros: u64| {
            let mut s = String::new();
            timestamp(
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros),
                &mut s,
            );
            s
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_795_928_428, 785_913), "2026-11-29T05:00:28.785913Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    }

    #[test]
    fn info_lines_have_the_subscribers_prefix() {
        let (tx, rx) = mpsc::channel();
        let (w, guard) = BatchWriter::spawn(
            Sink {
                out: tx,
                permits: None,
            },
            Batching::default(),
        );
        w.info("berth::http", "request method=GET");
        drop(guard);
        let out = written(&rx);
        let (time, rest) = out.split_once("  ").unwrap();
        assert_eq!(time.len(), "2026-11-29T05:00:28.785913Z".len(), "{out}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{out}");
        assert_eq!(rest, "INFO berth::http: request method=GET\n");
    }

    #[test]
    fn json_lines_parse_with_their_fields() {
        let (tx, rx) = mpsc::channel();
        let (w, guard) = BatchWriter::spawn(
            Sink {
                out: tx,
                permits: None,
            },
            Batching::default(),
        );
        w.info_json(
            "berth::http",
            "request",
            &[
                ("path", JsonValue::Str("/v2/a\"b\n")),
                ("status", JsonValue::Num(200)),
                ("complete", JsonValue::Bool(true)),
            ],
        );
        drop(guard);
        let out = written(&rx);
        assert!(out.ends_with("}\n") && out.lines().count() == 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["message"], "request");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "berth::http");
        assert_eq!(v["path"], "/v2/a\"b\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["complete"], true);
        assert_eq!(v["timestamp"].as_str().unwrap().len(), 27);
    }

    #[test]
    fn lines_come_out_in_order_and_all_are_written_on_drop() {
        let (tx, rx) = mpsc::channel();
        let batching = Batching {
            // Longer than the test: only the guard's drop can end the gathering.
            gather: Duration::from_secs(3600),
            ..Batching::default()
        };
        let (w, guard) = BatchWriter::spawn(
            Sink {
                out: tx,
                permits: None,
            },
            batching,
        );
        for i in 0..1000 {
            line(&w, &format!("line {i}\n"));
        }
        drop(guard);
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(written(&rx), want);
    }

    #[test]
    fn a_full_buffer_wakes_the_writer_without_waiting_for_the_gather_time() {
        let (tx, rx) = mpsc::channel();
        let batching = Batching {
            gather: Duration::from_secs(3600),
            flush_at: 100,
            max_pending: 1 << 20,
        };
        let (w, _guard) = BatchWriter::spawn(
            Sink {
                out: tx,
                permits: None,
            },
            batching,
        );
        let text = "x".repeat(99) + "\n";
        line(&w, &text);
        line(&w, &text);
        // Blocks until the writer wrote the batch: the hour-long gather was cut short.
        let got = rx.recv().unwrap();
        assert!(got.len() >= 100, "{} bytes", got.len());
    }

    #[test]
    fn a_stuck_sink_drops_lines_beyond_the_bound_and_says_so() {
        let (tx, rx) = mpsc::channel();
        let (permit, permits) = mpsc::channel();
        let batching = Batching {
            gather: Duration::ZERO,
            flush_at: 10,
            max_pending: 100,
        };
        let (w, guard) = BatchWriter::spawn(
            Sink {
                out: tx,
                permits: Some(permits),
            },
            batching,
        );
        // The first batch: the writer takes it and blocks in the sink.
        line(&w, "first\n");
        while !w.shared.state.lock().unwrap().lines.is_empty() {
            std::thread::yield_now();
        }
        let ten = "0123456789\n"; // 11 bytes: nine fit under 100, the tenth does not
        for _ in 0..12 {
            line(&w, ten);
        }
        assert_eq!(w.shared.state.lock().unwrap().dropped, 3);
        for _ in 0..10 {
            let _ = permit.send(());
        }
        drop(permit);
        drop(guard);
        let out = written(&rx);
        assert_eq!(out.matches(ten).count(), 9, "{out}");
        assert!(out.starts_with("first\n"), "{out}");
        assert!(
            out.ends_with("berth: 3 log lines dropped: stderr was not keeping up\n"),
            "{out}"
        );
    }
}
