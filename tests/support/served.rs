//! The real `berth serve` binary as a child process, for tests of what only the process shows:
//! signals, exit codes, stderr lines, systemd notifications. Its stderr is read line by line on a
//! thread; [`Served::started`] waits for the start-up line and reads the listener addresses from it.
//!
//! In-process tests use [`super::instance`] instead: faster, and they can pause time.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;

/// Bound on every wait for a line: generous for a loaded CI machine, never reached when berth works.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A running `berth serve` and what it writes to stderr; killed when dropped.
pub struct Served {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far (for failure messages and later searches).
    pub seen: Vec<String>,
    /// The registry listener, once [`Served::started`] read it.
    pub registry: SocketAddr,
    /// The metrics listener, once [`Served::started`] read it (unset with metrics disabled).
    pub metrics: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `berth serve --config <config>` with `env` added to an environment cleared of what would
/// change its config, logs or notifications (`BERTH_CONFIG`, `RUST_LOG`, `NOTIFY_SOCKET`,
/// `WATCHDOG_*`).
pub fn serve(config: &Path, env: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("BERTH_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let unset: SocketAddr = "0.0.0.0:0".parse().unwrap();
    Served {
        child,
        lines,
        seen: Vec::new(),
        registry: unset,
        metrics: unset,
    }
}

impl Served {
    /// Waits for a stderr line containing `needle`; returns it.
    pub async fn line(&mut self, needle: &str) -> String {
        self.line_where(needle, |l| l.contains(needle)).await
    }

    /// Waits for a stderr line that `matches` (described as `what` in a failure); returns it.
    pub async fn line_where(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if matches(&l) {
                        return l;
                    }
                }
                Ok(None) => panic!("berth exited before logging {what:?}: {:#?}", self.seen),
                Err(_) => panic!("no line with {what:?} in time: {:#?}", self.seen),
            }
        }
    }

    /// Every line until berth closes stderr (it exited), bounded by [`PATIENCE`].
    pub async fn rest(&mut self) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut rest = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    rest.push(l);
                }
                Ok(None) => return rest,
                Err(_) => panic!("berth still writing after {PATIENCE:?}: {rest:#?}"),
            }
        }
    }

    /// Waits for the start-up line and reads the listener addresses from it (text or JSON).
    pub async fn started(&mut self) -> String {
        let l = self.line("listening").await;
        self.registry = addr_after(&l, "registry");
        if let Some(metrics) = find_addr_after(&l, "metrics") {
            self.metrics = metrics;
        }
        l
    }

    /// Sends `sig` (as `kill` takes it: `-TERM`, `-HUP`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// The `127.0.0.1:port` after `key=http://` or `"key":"http://` in a log line.
pub fn addr_after(line: &str, key: &str) -> SocketAddr {
    find_addr_after(line, key).unwrap_or_else(|| panic!("no {key} address in {line}"))
}

fn find_addr_after(line: &str, key: &str) -> Option<SocketAddr> {
    let start = [
        format!("{key}=http://"),
        format!("{key}=https://"),
        format!("\"{key}\":\"http://"),
    ]
    .iter()
    .find_map(|k| line.find(k.as_str()).map(|i| i + k.len()))?;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
