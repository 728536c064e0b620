//! `[admin]`: the token-protected admin API, its token (read at load) and its socket.
//!
//! Rule of dependency: uses `config::value` only. (That the API needs the metrics listener when it
//! has no socket spans two sections: `config` checks it.)

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::value::Secret;

/// The token-protected admin API (`/admin/...` on the metrics listener).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `/admin/...` on the metrics listener. Needs a token and the metrics listener.
    #[serde(default)]
    pub enabled: bool,
    /// File holding the bearer token (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Serve the admin API on this Unix socket (mode 0600) instead of the metrics listener,
    /// which then answers `/admin/...` with 404. The token is still required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// The token, read from `token_file` or `token_env` at load time when `enabled`.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

impl AdminConfig {
    /// Reads the token and checks the socket's directory, both only when the API is on. On error,
    /// the key and the reason.
    pub(super) fn validate(&mut self) -> Result<(), (String, String)> {
        self.token = match self.enabled {
            false => None,
            true => Some(read_admin_token(self).map_err(|(k, r)| (k.into(), r))?),
        };
        // Like the token, the socket only matters when the API is on.
        if let Some(sock) = self.socket.as_ref().filter(|_| self.enabled) {
            // `parent()` of a bare file name is "": the working directory.
            let dir = sock.parent().filter(|d| !d.as_os_str().is_empty());
            if sock.file_name().is_none() || dir.is_some_and(|d| !d.is_dir()) {
                return Err((
                    "admin.socket".into(),
                    format!(
                        "{}: the directory it goes in does not exist (systemd: RuntimeDirectory=berth makes /run/berth)",
                        sock.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Shortest admin token accepted: 32 bytes (`openssl rand -hex 32` gives 64) put guessing it out of
/// reach; a shorter one is refused at startup rather than guarded by a rate limit.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;

/// The admin token from `token_file` or `token_env`: exactly one of them, at least
/// [`MIN_ADMIN_TOKEN_BYTES`] long. On error, the key and the reason.
fn read_admin_token(a: &AdminConfig) -> Result<Secret, (&'static str, String)> {
    let token = match (&a.token_file, &a.token_env) {
        (Some(_), Some(_)) => {
            return Err((
                "admin.token_file",
                "set token_file or token_env, not both".into(),
            ));
        }
        (None, None) => {
            return Err((
                "admin.token_file",
                "enabled = true needs a token: set token_file or token_env".into(),
            ));
        }
        (Some(f), None) => std::fs::read_to_string(f)
            .map_err(|e| {
                (
                    "admin.token_file",
                    format!("cannot read {}: {e}", f.display()),
                )
            })?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, Some(v)) => std::env::var(v).map_err(|_| {
            (
                "admin.token_env",
                format!("environment variable {v} is not set"),
            )
        })?,
    };
    let key = if a.token_file.is_some() {
        "admin.token_file"
    } else {
        "admin.token_env"
    };
    if token.trim().is_empty() {
        return Err((key, "the token is empty".into()));
    }
    let len = token.trim().len();
    if len < MIN_ADMIN_TOKEN_BYTES {
        return Err((
            key,
            format!(
                "the token has {len} bytes; at least {MIN_ADMIN_TOKEN_BYTES} are needed (e.g. `openssl rand -hex 32`)"
            ),
        ));
    }
    // Surrounding white space never counts, from a file or the environment, as in the request's
    // `Authorization` header.
    Ok(Secret::new(token.trim()))
}
