//! Child processes for the end-to-end suite: started in their own process group, logged to a file,
//! and stopped (whole group, TERM then KILL) when dropped, so a failing test leaves nothing behind.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A long-running daemon (registry, berth, containerd, dockerd).
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr going to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {name} ({cmd:?}): {e}; run tests/install-deps.sh first")
        });
        Proc {
            name: name.to_owned(),
            child,
            log,
            exited: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `sig` (a name `kill` knows: `HUP`, ...) to the process itself, not its group.
    pub fn signal(&mut self, sig: &str) {
        self.assert_running();
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{sig} {}: {status}", self.name);
    }

    /// Panics with the log if the process has already exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            self.exited = Some(status);
            panic!(
                "{} exited early ({status}); its log:\n{}",
                self.name,
                self.log_tail(60)
            );
        }
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the whole process group: SIGTERM, up to 15 s for a clean exit, then SIGKILL.
    pub fn stop(&mut self) {
        if self.exited.is_none() {
            let pgid = self.child.id();
            signal_group(pgid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    self.exited = Some(status);
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!("{} ignored SIGTERM for 15 s; killing it", self.name);
                    signal_group(pgid, "KILL");
                    self.exited = self.child.wait().ok();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Anything left in the group (a helper the daemon forked) goes too.
            signal_group(pgid, "KILL");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `sig` to the process group `pgid` (ours: the leader was started with `process_group(0)`).
fn signal_group(pgid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stderr(Stdio::null())
        .status();
}

/// Runs a client command to completion within `timeout`; returns its stdout, panics with its
/// output on failure or timeout.
pub fn run(cmd: &mut Command, timeout: Duration) -> String {
    try_run(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`run`], but a failure is an `Err` holding the command and its output.
pub fn try_run(cmd: &mut Command, timeout: Duration) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create"))
        .stderr(File::create(&err_path).expect("create"))
        .process_group(0);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; run tests/install-deps.sh first"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > timeout {
            signal_group(child.id(), "KILL");
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(stdout),
        Some(s) => Err(format!(
            "{cmd:?} failed ({s}) after {:.1?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            started.elapsed()
        )),
        None => Err(format!(
            "{cmd:?} timed out after {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        )),
    }
}
