//! systemd's notify protocol: `READY=1`, `STATUS=...`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`
//! as datagrams to the socket named by `NOTIFY_SOCKET`.
//!
//! A few lines over `std`'s `UnixDatagram` rather than a crate: the `sd-notify` crate (0.5) connects
//! to `NOTIFY_SOCKET` as a file path only, and systemd hands out abstract sockets (`@/org/...`)
//! in containers and with some service managers. Without `NOTIFY_SOCKET` every call is a no-op,
//! so berth run by hand or under `Type=exec` behaves as before. A failed send is logged at debug
//! and otherwise ignored: the service manager going away must not take the mirror down.
//!
//! Rule of dependency: a leaf; `main` and `server` send through it.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

/// A handle on the service manager's notify socket; cheap to clone. Disabled without
/// `NOTIFY_SOCKET`.
#[derive(Clone, Default)]
pub struct Notifier {
    sock: Option<Arc<UnixDatagram>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

impl Notifier {
    /// Connects to `NOTIFY_SOCKET` if it is set; a socket that cannot be reached is reported and
    /// leaves the notifier disabled.
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        match connect(&path) {
            Ok(sock) => Notifier {
                sock: Some(Arc::new(sock)),
            },
            Err(e) => {
                tracing::warn!(socket = ?path, error = %e, "cannot reach the service manager's NOTIFY_SOCKET; not notifying");
                Notifier::default()
            }
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.sock.is_some()
    }

    /// Sends one message (newline-separated `KEY=value` lines).
    pub fn send(&self, msg: &str) {
        if let Some(sock) = &self.sock
            && let Err(e) = sock.send(msg.as_bytes())
        {
            tracing::debug!(error = %e, msg, "sd_notify send failed");
        }
    }

    /// Start-up or a reload is finished.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// A reload begins; `MONOTONIC_USEC` lets `Type=notify-reload` match it to its `SIGHUP`.
    pub fn reloading(&self) {
        match monotonic_usec() {
            Some(us) => self.send(&format!(
                "RELOADING=1\nMONOTONIC_USEC={us}\nSTATUS=reloading configuration"
            )),
            None => self.send("RELOADING=1\nSTATUS=reloading configuration"),
        }
    }

    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises, when
/// the watchdog is on and meant for this process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(&usec, pid.as_deref(), std::process::id())
}

fn watchdog_interval_from(usec: &str, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// A datagram socket connected to `path`: `@name` is an abstract socket (Linux), anything else a
/// file system path.
fn connect(path: &std::ffi::OsStr) -> io::Result<UnixDatagram> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.connect_addr(&addr)?;
        }
        None => sock.connect(path)?,
    }
    Ok(sock)
}

/// A status is one line: the protocol separates fields by newlines.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn monotonic_usec() -> Option<u64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Some(u64::try_from(t.tv_sec).ok()? * 1_000_000 + u64::try_from(t.tv_nsec).ok()? / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_half_the_interval_and_only_for_this_process() {
        let half = Some(Duration::from_secs(5));
        assert_eq!(watchdog_interval_from("10000000", None, 42), half);
        assert_eq!(watchdog_interval_from("10000000", Some("42"), 42), half);
        assert_eq!(watchdog_interval_from("10000000", Some("43"), 42), None);
        assert_eq!(watchdog_interval_from("0", None, 42), None);
        assert_eq!(watchdog_interval_from("soon", None, 42), None);
    }

    #[test]
    fn messages_reach_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            sock: Some(Arc::new(connect(path.as_os_str()).unwrap())),
        };
        n.ready("serving\nnow");
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving now");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("berth-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            sock: Some(Arc::new(connect(format!("@{name}").as_ref()).unwrap())),
        };
        n.reloading();
        let len = listener.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(got.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{got}");
    }

    #[test]
    fn an_unreachable_socket_is_an_error_and_disabled_sends_nothing() {
        assert!(connect("/surely/not/here.sock".as_ref()).is_err());
        let n = Notifier::default();
        assert!(!n.is_enabled());
        n.ready("nobody listens"); // no socket, no panic
    }
}
