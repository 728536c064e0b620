//! `[storage]` (the cache directory and its limits) and `[storage.s3]` (the bucket tier and its
//! credentials): their defaults and their checks.
//!
//! Rule of dependency: uses `config::value` only.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::value::{Secret, duration, opt_duration, opt_size, percent};

/// `[storage]`: the local cache.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Cache root: blobs live at `<path>/blobs/sha256/<hex>`.
    #[serde(default = "default_storage_path")]
    pub path: PathBuf,
    /// Most bytes of cached blobs and manifests kept on disk (`"50GiB"`, `"500 MB"`, or a number of
    /// bytes). Unset: no limit.
    #[serde(default, with = "opt_size", skip_serializing_if = "Option::is_none")]
    pub max_size: Option<bytesize::ByteSize>,
    /// Eviction starts when the cache passes this share of `max_size` ...
    #[serde(default = "default_high_watermark", with = "percent")]
    pub high_watermark: f64,
    /// ... and stops when it is back under this one.
    #[serde(default = "default_low_watermark", with = "percent")]
    pub low_watermark: f64,
    /// Evict what nobody pulled for this long (`"30d"`). Unset: content is kept while there is room.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// A blob that a manifest served within this window names is never evicted: a client that
    /// just read the manifest is about to ask for it.
    #[serde(default = "default_keep_referenced", with = "duration")]
    pub keep_referenced: Duration,
    /// The object-store tier (`[storage.s3]`): a bucket shared by replicas. Absent: local disk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: default_storage_path(),
            max_size: None,
            high_watermark: default_high_watermark(),
            low_watermark: default_low_watermark(),
            max_age: None,
            keep_referenced: default_keep_referenced(),
            s3: None,
        }
    }
}

impl StorageConfig {
    /// Checks the limits, then `[storage.s3]` (resolving its credentials; `env` as for
    /// [`S3Config::validate`]). On error, the key and the reason.
    pub(super) fn validate(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), (String, String)> {
        if self.low_watermark >= self.high_watermark {
            return Err((
                "storage.low_watermark".into(),
                format!(
                    "must be below high_watermark ({}%)",
                    self.high_watermark * 100.0
                ),
            ));
        }
        if self.max_size.is_some_and(|m| m.as_u64() == 0) {
            return Err((
                "storage.max_size".into(),
                "must be more than 0 (leave it out for no limit)".into(),
            ));
        }
        if self.max_age.is_some_and(|a| a.is_zero()) {
            return Err((
                "storage.max_age".into(),
                "must be more than 0 (leave it out to keep content while there is room)".into(),
            ));
        }
        if let Some(s3) = &mut self.s3 {
            s3.validate(env)?;
        }
        Ok(())
    }
}

fn default_storage_path() -> PathBuf {
    PathBuf::from("./berth-data")
}
fn default_high_watermark() -> f64 {
    0.95
}
fn default_low_watermark() -> f64 {
    0.85
}
fn default_keep_referenced() -> Duration {
    Duration::from_secs(15 * 60)
}

/// The most `[storage.s3] read_streams` takes.
pub const MAX_READ_STREAMS: usize = 16;

/// `[storage.s3]`: an S3-compatible bucket (AWS S3, Ceph RGW, MinIO, Garage) holding blobs,
/// manifests and tag records by digest (see `store::s3`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// The S3 endpoint (`http://127.0.0.1:9103`), addressed path-style. Absent: AWS S3 for `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Url>,
    /// The region requests are signed for (S3-compatible servers mostly take any, `us-east-1` by
    /// convention).
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// A key prefix inside the bucket (`"mirror/"`), so that one bucket can hold other things.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// With `secret_access_key_file`; both absent: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
    /// (and `AWS_SESSION_TOKEN`, if set) from the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<PathBuf>,
    /// The bucket's share, evicted by least recent pull. Unset: no limit.
    #[serde(default, with = "opt_size", skip_serializing_if = "Option::is_none")]
    pub max_size: Option<bytesize::ByteSize>,
    /// Evict from the bucket what nobody pulled for this long. Unset: kept while there is room.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// An object pulled (by any replica) within this long is never evicted from the bucket: a
    /// replica may be streaming it. Longer than the slowest blob read takes.
    #[serde(default = "default_keep_pulled", with = "duration")]
    pub keep_pulled: Duration,
    /// Ranged GETs in flight when a whole blob is read from the bucket (1 to 16; `store::s3`'s
    /// `ranged`): more than one where a single stream is slower than the link (AWS S3). A
    /// reading fill holds up to `(read_streams + 1) * 8 MiB` of its blob in memory.
    #[serde(default = "default_read_streams")]
    pub read_streams: usize,
    /// The credentials, resolved at load from the file or the environment.
    #[serde(skip)]
    pub credentials: Option<S3Credentials>,
}

/// Credentials for `[storage.s3]`, read once at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl S3Config {
    /// The prefix as the bucket's keys use it: without surrounding slashes, `""` for none.
    pub fn key_prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or("").trim_matches('/')
    }

    /// Checks the table and resolves the credentials; `env` looks up an environment variable (the
    /// process environment outside tests). On error, the key under `[storage.s3]` and the reason.
    pub fn validate(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), (String, String)> {
        let key = |k: &str| format!("storage.s3.{k}");
        if !valid_bucket_name(&self.bucket) {
            return Err((
                key("bucket"),
                format!(
                    "{:?} is not a bucket name (3 to 63 of a-z, 0-9, '.', '-', starting and ending \
                     with a letter or digit)",
                    self.bucket
                ),
            ));
        }
        if let Some(e) = &self.endpoint {
            if !matches!(e.scheme(), "http" | "https") || e.host_str().is_none() {
                return Err((key("endpoint"), format!("{e} is not an http(s) URL")));
            }
            if e.query().is_some() || e.path() != "/" {
                return Err((
                    key("endpoint"),
                    format!("{e}: no path or query (the bucket is named by `bucket`)"),
                ));
            }
        }
        if self.region.trim().is_empty() {
            return Err((key("region"), "must not be empty".into()));
        }
        if let Some(p) = &self.prefix {
            let inner = p.trim_matches('/');
            if inner.is_empty()
                || inner
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == ".." || s.contains(char::is_control))
            {
                return Err((
                    key("prefix"),
                    format!(
                        "{p:?} is not a key prefix like \"mirror/\" (no empty, '.' or '..' parts)"
                    ),
                ));
            }
        }
        if self.max_size.is_some_and(|m| m.as_u64() == 0) {
            return Err((
                key("max_size"),
                "must be more than 0 (leave it out for no limit)".into(),
            ));
        }
        if self.max_age.is_some_and(|a| a.is_zero()) {
            return Err((
                key("max_age"),
                "must be more than 0 (leave it out to keep content while there is room)".into(),
            ));
        }
        if !(1..=MAX_READ_STREAMS).contains(&self.read_streams) {
            return Err((
                key("read_streams"),
                format!(
                    "{} is not 1 to {} (ranged GETs in flight per blob read; 1 is one stream)",
                    self.read_streams, MAX_READ_STREAMS
                ),
            ));
        }
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        self.credentials = Some(match (&self.access_key_id, &self.secret_access_key_file) {
            (Some(_), None) => {
                return Err((
                    key("secret_access_key_file"),
                    "access_key_id is set, secret_access_key_file is missing".into(),
                ));
            }
            (None, Some(_)) => {
                return Err((
                    key("access_key_id"),
                    "secret_access_key_file is set, access_key_id is missing".into(),
                ));
            }
            (Some(id), Some(f)) => {
                let secret = std::fs::read_to_string(f).map_err(|e| {
                    (
                        key("secret_access_key_file"),
                        format!("cannot read {}: {e}", f.display()),
                    )
                })?;
                let secret = secret.trim();
                if id.trim().is_empty() || secret.is_empty() {
                    let k = if secret.is_empty() {
                        "secret_access_key_file"
                    } else {
                        "access_key_id"
                    };
                    return Err((key(k), "is empty".into()));
                }
                S3Credentials {
                    access_key_id: id.trim().to_owned(),
                    secret_access_key: Secret::new(secret),
                    session_token: None,
                }
            }
            (None, None) => match (
                nonempty(env("AWS_ACCESS_KEY_ID")),
                nonempty(env("AWS_SECRET_ACCESS_KEY")),
            ) {
                (Some(id), Some(secret)) => S3Credentials {
                    access_key_id: id,
                    secret_access_key: Secret::new(secret),
                    session_token: nonempty(env("AWS_SESSION_TOKEN")).map(Secret::new),
                },
                _ => {
                    return Err((
                        key("access_key_id"),
                        "no credentials: set access_key_id and secret_access_key_file, or the \
                         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables"
                            .into(),
                    ));
                }
            },
        });
        Ok(())
    }
}

/// An S3 bucket name as every S3 server accepts it (the DNS-compatible rules).
fn valid_bucket_name(b: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(b.chars().next())
        && edge(b.chars().last())
        && !b.contains("..")
}

fn default_s3_region() -> String {
    "us-east-1".into()
}

fn default_keep_pulled() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_read_streams() -> usize {
    1
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    #[test]
    fn storage_limits_parse_and_are_checked() {
        let up = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let c = Config::parse(
            &format!("[storage]\nmax_size = \"50 GiB\"\nhigh_watermark = \"90%\"\nlow_watermark = \"70.5%\"\nmax_age = \"30d\"\n{up}"),
            "f.toml",
        )
        .unwrap();
        let st = &c.storage;
        assert_eq!(st.max_size.unwrap().as_u64(), 50 << 30);
        assert_eq!((st.high_watermark, st.low_watermark), (0.9, 0.705));
        assert_eq!(st.max_age, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(st.keep_referenced, Duration::from_secs(900));
        // Round trip through check-config's output.
        let again = Config::parse(&c.to_toml(), "again").unwrap();
        assert_eq!(again.storage.max_size, st.max_size);
        assert_eq!(again.storage.low_watermark, st.low_watermark);

        for (storage, needle) in [
            ("low_watermark = \"95%\"", "storage.low_watermark"),
            ("high_watermark = \"120%\"", "percentage"),
            ("high_watermark = \"0.9\"", "percentage"),
            ("max_size = \"lots\"", "not a size"),
            ("max_size = 0", "storage.max_size"),
            ("max_age = \"0s\"", "storage.max_age"),
        ] {
            let e = Config::parse(&format!("[storage]\n{storage}\n{up}"), "f.toml").unwrap_err();
            assert!(e.to_string().contains(needle), "{storage}: {e}");
        }
    }

    /// `[storage.s3]` with the credentials from a file, and every check naming its key.
    #[test]
    fn s3_table_parses_and_is_checked() {
        let up = "[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n";
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s3-secret");
        std::fs::write(&secret, "testsecret\n").unwrap();
        let creds = format!(
            "access_key_id = \"testkey\"\nsecret_access_key_file = \"{}\"\n",
            secret.display()
        );
        let c = Config::parse(
            &format!(
                "[storage.s3]\nbucket = \"berth\"\nendpoint = \"http://127.0.0.1:9103\"\n\
                 prefix = \"mirror/\"\nmax_size = \"2TiB\"\nmax_age = \"30d\"\n{creds}{up}"
            ),
            "f.toml",
        )
        .unwrap();
        let s3 = c.storage.s3.as_ref().unwrap();
        assert_eq!(s3.bucket, "berth");
        assert_eq!(s3.region, "us-east-1");
        assert_eq!(s3.key_prefix(), "mirror");
        assert_eq!(s3.max_size, Some(bytesize::ByteSize::tib(2)));
        assert_eq!(s3.keep_pulled, Duration::from_secs(15 * 60), "the default");
        assert_eq!(s3.read_streams, 1, "the default: one stream");
        let c3 = Config::parse(
            &format!("[storage.s3]\nbucket = \"berth\"\nread_streams = 16\n{creds}{up}"),
            "f.toml",
        )
        .unwrap();
        assert_eq!(c3.storage.s3.unwrap().read_streams, MAX_READ_STREAMS);
        let c2 = Config::parse(
            &format!("[storage.s3]\nbucket = \"berth\"\nkeep_pulled = \"1h\"\n{creds}{up}"),
            "f.toml",
        )
        .unwrap();
        assert_eq!(
            c2.storage.s3.unwrap().keep_pulled,
            Duration::from_secs(3600)
        );
        assert_eq!(s3.max_age, Some(Duration::from_secs(30 * 86400)));
        let creds_read = s3.credentials.as_ref().unwrap();
        assert_eq!(creds_read.access_key_id, "testkey");
        assert_eq!(creds_read.secret_access_key.expose(), "testsecret");
        assert!(!c.to_toml().contains("testsecret"), "{}", c.to_toml());
        assert!(Config::parse(up, "f.toml").unwrap().storage.s3.is_none());

        let missing = dir.path().join("nope");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        for (table, needle) in [
            (format!("bucket = \"\"\n{creds}"), "storage.s3.bucket"),
            (format!("bucket = \"Up_Per\"\n{creds}"), "storage.s3.bucket"),
            (format!("bucket = \"b\"\n{creds}"), "storage.s3.bucket"),
            (creds.clone(), "bucket"),
            (
                format!("bucket = \"berth\"\nendpoint = \"ftp://x\"\n{creds}"),
                "storage.s3.endpoint",
            ),
            (
                format!("bucket = \"berth\"\nendpoint = \"http://x/berth\"\n{creds}"),
                "storage.s3.endpoint",
            ),
            (
                format!("bucket = \"berth\"\nregion = \"\"\n{creds}"),
                "storage.s3.region",
            ),
            (
                format!("bucket = \"berth\"\nprefix = \"a//b\"\n{creds}"),
                "storage.s3.prefix",
            ),
            (
                format!("bucket = \"berth\"\nprefix = \"../x\"\n{creds}"),
                "storage.s3.prefix",
            ),
            (
                format!("bucket = \"berth\"\nmax_size = 0\n{creds}"),
                "storage.s3.max_size",
            ),
            (
                format!("bucket = \"berth\"\nmax_age = \"0s\"\n{creds}"),
                "storage.s3.max_age",
            ),
            (
                format!("bucket = \"berth\"\nread_streams = 0\n{creds}"),
                "storage.s3.read_streams",
            ),
            (
                format!("bucket = \"berth\"\nread_streams = 17\n{creds}"),
                "storage.s3.read_streams",
            ),
            (format!("bucket = \"berth\"\n{creds}colour = 1\n"), "colour"),
            (
                "bucket = \"berth\"\naccess_key_id = \"k\"\n".into(),
                "storage.s3.secret_access_key_file",
            ),
            (
                format!(
                    "bucket = \"berth\"\nsecret_access_key_file = \"{}\"\n",
                    secret.display()
                ),
                "storage.s3.access_key_id",
            ),
            (
                format!(
                    "bucket = \"berth\"\naccess_key_id = \"k\"\nsecret_access_key_file = \"{}\"\n",
                    missing.display()
                ),
                "storage.s3.secret_access_key_file: cannot read",
            ),
            (
                format!(
                    "bucket = \"berth\"\naccess_key_id = \"k\"\nsecret_access_key_file = \"{}\"\n",
                    empty.display()
                ),
                "storage.s3.secret_access_key_file: is empty",
            ),
        ] {
            let e = Config::parse(&format!("[storage.s3]\n{table}{up}"), "f.toml").unwrap_err();
            assert!(e.to_string().contains(needle), "{table}: {e}");
        }
    }

    /// Without keys in the file, the standard AWS variables (looked up through `env`, so the test
    /// does not touch the process environment); neither: an error naming the key.
    #[test]
    fn s3_credentials_come_from_the_environment() {
        let table = "bucket = \"berth\"\n";
        let mut s3: S3Config = toml::from_str(table).unwrap();
        let env = |v: &str| match v {
            "AWS_ACCESS_KEY_ID" => Some("envkey".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("envsecret".to_owned()),
            _ => None,
        };
        s3.validate(env).unwrap();
        let c = s3.credentials.as_ref().unwrap();
        assert_eq!(c.access_key_id, "envkey");
        assert_eq!(c.secret_access_key.expose(), "envsecret");
        assert!(c.session_token.is_none());

        let mut s3: S3Config = toml::from_str(table).unwrap();
        let only_id = |v: &str| (v == "AWS_ACCESS_KEY_ID").then(|| "envkey".to_owned());
        let (key, reason) = s3.validate(only_id).unwrap_err();
        assert_eq!(key, "storage.s3.access_key_id");
        assert!(reason.contains("AWS_SECRET_ACCESS_KEY"), "{reason}");
    }
}
