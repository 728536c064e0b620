//! `[server]`: the registry listener (address, TLS, connection and HTTP/2 limits, timeouts), its
//! defaults and its checks.
//!
//! Rule of dependency: uses `config::value` only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::value::duration;

/// `[server]`: the registry listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the registry listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the listener speaks HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// A client must send its whole request head within this time (slowloris guard).
    #[serde(default = "default_header_read_timeout", with = "duration")]
    pub header_read_timeout: Duration,
    /// Most request headers accepted; more get 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// On SIGTERM/SIGINT, running transfers get this long to finish.
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// Most client connections served at once on the registry listener; beyond it new connections
    /// wait in the kernel's accept backlog until one closes (transfers under way go on).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP/2: a PING goes out after this long without a frame from the client...
    #[serde(default = "default_http2_keepalive_interval", with = "duration")]
    pub http2_keepalive_interval: Duration,
    /// ...and a client that does not answer it within this long is disconnected.
    #[serde(default = "default_http2_keepalive_timeout", with = "duration")]
    pub http2_keepalive_timeout: Duration,
    /// HTTP/2: most requests (streams) in flight on one connection.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// A registry connection (HTTP/1 keep-alive or HTTP/2) with no request in flight for this
    /// long is closed gracefully (HTTP/2: GOAWAY); a transfer in flight keeps it open however
    /// long it takes. `"0s"`: never.
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            header_read_timeout: default_header_read_timeout(),
            max_headers: default_max_headers(),
            shutdown_grace: default_shutdown_grace(),
            max_connections: default_max_connections(),
            http2_keepalive_interval: default_http2_keepalive_interval(),
            http2_keepalive_timeout: default_http2_keepalive_timeout(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

impl ServerConfig {
    /// The limits that must leave room for at least one of each. On error, the key and the reason.
    /// (The TLS pair is checked with `[metrics]`'s, in `config`.)
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        for (key, n) in [
            ("server.max_headers", self.max_headers),
            ("server.max_connections", self.max_connections),
            (
                "server.http2_max_concurrent_streams",
                self.http2_max_concurrent_streams as usize,
            ),
        ] {
            if n == 0 {
                return Err((key.into(), "must be at least 1".into()));
            }
        }
        // tokio's semaphore holds at most usize::MAX >> 3 permits.
        if self.max_connections > 1 << 24 {
            return Err((
                "server.max_connections".into(),
                "must be at most 16777216".into(),
            ));
        }
        Ok(())
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:5000".parse().unwrap()
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    4096
}
fn default_http2_keepalive_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_http2_keepalive_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_http2_max_concurrent_streams() -> u32 {
    256
}
fn default_max_headers() -> usize {
    100
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn tls_pair_and_limits_name_the_key() {
        let base = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let cases = [
            (
                "[server]\ntls_cert = \"/x\"\n".to_owned() + base,
                "server.tls_key",
            ),
            (
                "[server]\nmax_connections = 0\n".to_owned() + base,
                "server.max_connections: must be at least 1",
            ),
            (
                "[server]\nmax_connections = 16777217\n".to_owned() + base,
                "server.max_connections: must be at most",
            ),
            (
                "[server]\nhttp2_max_concurrent_streams = 0\n".to_owned() + base,
                "server.http2_max_concurrent_streams",
            ),
            (
                "[server]\nmax_headers = 0\n".to_owned() + base,
                "server.max_headers",
            ),
        ];
        for (text, key) in cases {
            let e = Config::parse(&text, "f.toml").unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }
}
