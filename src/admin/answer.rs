//! What the three operations answer: the same types whichever way the command went (the API
//! sends them as JSON, the command reads them back), so `berth cache` prints the same either way.
//! Their serde shape is the admin API's and `--json`'s format; times are RFC 3339 strings.
//!
//! Rule of dependency: a leaf of `admin`; imports nothing of the crate. The text tables are in
//! `render`, the operations that fill these in `cache`.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// `ls`: the cached images and what no tag reaches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listing {
    pub images: Vec<Image>,
    /// Cached artifacts no tag points at (signatures, SBOMs pulled as referrers by digest, or
    /// listed by a referrers tag schema index); with `--repo`, those about a listed image (their
    /// subject, or their subject's subject, is part of one). Absent from a berth older than this
    /// field: none.
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    /// Cached manifests no tag reaches (whatever `--repo` says: they belong to no repository).
    pub untagged_manifests: u64,
    /// Cached blobs that are not manifests and that no cached manifest references.
    pub orphan_blobs: u64,
    pub orphan_bytes: u64,
    /// The bucket's totals, with `[storage.s3]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketTotals>,
}

/// What the bucket holds (`ls`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketTotals {
    pub blobs: u64,
    pub manifests: u64,
    pub bytes: u64,
    /// Objects of the bucket that this disk does not hold.
    pub not_local: u64,
}

/// One tag and the image it points at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub upstream: String,
    pub repo: String,
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    /// Bytes of the cached files of the image (manifests, configs, layers; each counted once).
    pub bytes: u64,
    /// How many of its files are cached.
    pub cached: u64,
    /// How many files it references that are not cached (other platforms, layers never pulled).
    pub not_cached: u64,
    /// The newest mtime (last access) among its cached files.
    #[serde(with = "rfc3339")]
    pub last_pulled: Option<SystemTime>,
    /// How many of its files (known from the cached manifests) the bucket holds, with
    /// `[storage.s3]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_bucket: Option<u64>,
    /// When the tag points at an artifact (OCI 1.1): its `artifactType`, or else its config's
    /// media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The manifest the artifact's `subject` names, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// A cached artifact manifest that no tag points at (`ls`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub digest: String,
    /// Its `artifactType`, or else its config's media type.
    pub artifact_type: String,
    /// The manifest its `subject` names (the image a signature signs, say), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Bytes, cached files, files referenced but not cached, and the newest access, as for an
    /// [`Image`].
    pub bytes: u64,
    pub cached: u64,
    pub not_cached: u64,
    #[serde(with = "rfc3339")]
    pub last_pulled: Option<SystemTime>,
}

/// `rm`: what went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removal {
    /// Tags forgotten, as `upstream/repo:tag`.
    pub tags: Vec<String>,
    /// Files removed.
    pub removed: Vec<Removed>,
    /// Bytes of the files removed.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    pub digest: String,
    /// `manifest` or `blob`.
    pub kind: String,
    pub bytes: u64,
    /// With `[storage.s3]`: where it was removed from (`local`, `bucket`, `local+bucket`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// `stats`: the totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The storage directory.
    pub root: String,
    /// Files under `blobs/sha256/` (layers, configs and manifest bytes).
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Cached manifests (of the blobs).
    pub manifests: u64,
    /// Tag answers on disk.
    pub tags: u64,
    /// Temp files of fills in progress (or left by a crash) and their bytes.
    pub tmp_files: u64,
    pub tmp_bytes: u64,
    /// Files `berth verify` moved to `quarantine/`.
    pub quarantined: u64,
    #[serde(with = "rfc3339")]
    pub oldest_access: Option<SystemTime>,
    #[serde(with = "rfc3339")]
    pub newest_access: Option<SystemTime>,
    /// The configured cache size limit, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// The bucket, with `[storage.s3]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketStats>,
}

/// `stats` of the bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketStats {
    pub blobs: u64,
    pub manifests: u64,
    /// Bytes of its blobs and manifests.
    pub bytes: u64,
    /// Tag records.
    pub tags: u64,
    /// The oldest and newest last pull (access markers, else upload time).
    #[serde(with = "rfc3339")]
    pub oldest_pull: Option<SystemTime>,
    #[serde(with = "rfc3339")]
    pub newest_pull: Option<SystemTime>,
    /// `[storage.s3] max_size`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
}

/// Optional times as RFC 3339 strings (`null` when absent).
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_through_json() {
        let s = Stats {
            root: "/x".into(),
            blobs: 1,
            bytes: 2,
            manifests: 3,
            tags: 4,
            tmp_files: 5,
            tmp_bytes: 6,
            quarantined: 7,
            oldest_access: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1)),
            newest_access: None,
            max_size: None,
            bucket: None,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains("\"oldest_access\":\"1970-01-01T00:00:01Z\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Stats>(&json).unwrap(), s);
    }
}
