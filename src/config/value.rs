//! The values several sections share: how a duration, a size and a percentage are written in the
//! file, the [`Secret`] that never prints, and the checks of a registry URL, a CA bundle and a
//! listener's TLS pair.
//!
//! Rule of dependency: a leaf inside `config`. Every section file may use it; it uses none of them.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

/// A secret string: never printed, never serialized in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// An upstream, token realm or peer URL: http or https, a host, no credentials in it.
pub(super) fn check_registry_url(u: &Url) -> Result<(), String> {
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("{u}: scheme must be http or https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{u}: no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "{}: put credentials in username/password_file, not in the URL",
            u.host_str().unwrap_or("")
        ));
    }
    Ok(())
}

/// A shared secret from `file` (surrounding white space ignored), at least `min` bytes long. On
/// error, the reason (the caller names the key).
pub(super) fn read_secret(file: &Path, min: usize) -> Result<Secret, String> {
    let secret = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let secret = secret.trim();
    if secret.len() < min {
        return Err(format!(
            "the secret has {} bytes; at least {min} are needed (e.g. `openssl rand -hex 32`)",
            secret.len()
        ));
    }
    Ok(Secret::new(secret))
}

/// A CA bundle must be readable and hold at least one PEM certificate; the upstream client parses
/// it again when it is built, so a bad file fails here, before any port is bound.
pub(super) fn check_ca_file(f: &Path) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let certs = CertificateDer::pem_file_iter(f)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", f.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", f.display()));
    }
    Ok(())
}

/// A listener's TLS pair (`[server]`, `[metrics]`): both files or neither. On error, the key under
/// `table` and the reason.
pub(super) fn check_tls_pair(
    table: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<(), (String, String)> {
    match (cert, key) {
        (Some(_), None) => Err((
            format!("{table}.tls_key"),
            "tls_cert is set, tls_key is missing".into(),
        )),
        (None, Some(_)) => Err((
            format!("{table}.tls_cert"),
            "tls_key is set, tls_cert is missing".into(),
        )),
        _ => Ok(()),
    }
}

/// The pair's files are there (the listener reads them when it starts, and again on reload).
pub(super) fn check_tls_files(
    table: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<(), (String, String)> {
    for (k, p) in [("tls_cert", cert), ("tls_key", key)] {
        if let Some(p) = p
            && let Err(e) = std::fs::metadata(p)
        {
            return Err((
                format!("{table}.{k}"),
                format!("cannot read {}: {e}", p.display()),
            ));
        }
    }
    Ok(())
}

/// Durations as humantime strings: `"30s"`, `"5m"`, `"1h 30m"`.
pub(super) mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like \"30s\" or \"5m\": {e}"
            ))
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// An optional humantime duration.
pub(super) mod opt_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

/// Sizes as `"50GiB"`, `"500 MB"` or a number of bytes.
pub(super) mod opt_size {
    use super::*;
    use bytesize::ByteSize;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Some(ByteSize::b(n))),
            Raw::Text(s) => s.parse::<ByteSize>().map(Some).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a size like \"50GiB\", \"500MB\" or a number of bytes"
                ))
            }),
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<ByteSize>, s: S) -> Result<S::Ok, S::Error> {
        // Exact, and readable where a binary unit divides it.
        let Some(n) = v.map(|b| b.as_u64()) else {
            return s.serialize_none();
        };
        let unit = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ]
        .into_iter()
        .find(|(_, u)| n % u == 0);
        match unit {
            Some((name, u)) => s.serialize_str(&format!("{}{name}", n / u)),
            None => s.serialize_u64(n),
        }
    }
}

/// Shares as percent strings: `"95%"` is 0.95.
pub(super) mod percent {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let s = String::deserialize(d)?;
        s.trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|p| *p > 0.0 && *p <= 100.0)
            .map(|p| p / 100.0)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a percentage between 0% and 100%, like \"90%\""
                ))
            })
    }

    pub fn serialize<S: Serializer>(p: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}%", p * 100.0))
    }
}
