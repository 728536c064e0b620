//! `[metrics]`: the metrics listener (`/metrics`, `/healthz`, and the admin API unless it has its
//! own socket) and its defaults. Its TLS pair is checked with `[server]`'s, in `config`.
//!
//! Rule of dependency: a leaf inside `config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[metrics]`: the metrics listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the metrics listener (`/metrics`, `/healthz`). Remove the `[metrics]` table's
    /// `listen` with `enabled = false` to run without it.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// PEM certificate chain; with `tls_key`, the metrics listener (and the admin API on it)
    /// speaks HTTPS. Re-read on reload and when the files change, like `[server] tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
            enabled: true,
            tls_cert: None,
            tls_key: None,
        }
    }
}

fn default_metrics_listen() -> SocketAddr {
    "127.0.0.1:9090".parse().unwrap()
}
fn default_true() -> bool {
    true
}
