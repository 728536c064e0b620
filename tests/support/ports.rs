//! Loopback ports for tests: one that refuses connections, held so that nothing else takes it,
//! and one a child process is told to listen on. A server in the test's own process takes a
//! listener bound to port 0 instead (`instance::start_on_listener`, the fake registry), so that
//! no other socket can take its port between the choice and the bind.
//!
//! Needs only std and tokio, so the end-to-end suite's support includes it by path.

use std::net::SocketAddr;

/// A loopback port that refuses connections for as long as this lives: a socket is bound to it
/// and never listens, so the kernel answers a connection with a reset, and no other socket (a
/// listener of another test, an outgoing connection's local port) can take the port meanwhile,
/// as one could take a port that was bound and released.
pub struct Dead(tokio::net::TcpSocket);

impl Dead {
    pub fn new() -> Dead {
        let s = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        s.bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind 127.0.0.1:0");
        Dead(s)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr().expect("a bound socket has an address")
    }
}

/// A loopback port that was free a moment ago (bound, then released), for a child process that
/// must be told where to listen and cannot be handed a bound socket: berth has no socket
/// activation (it reads no `LISTEN_FDS`), nor do docker-registry and Prometheus, and a container
/// is given a port on its command line. Another socket may take the port before the child binds
/// it; the child then fails to start, and says so.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
