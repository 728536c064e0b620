//! How the answers read: the text tables of `ls` (images, with artifact columns when a tag points
//! at an artifact, then untagged artifacts), `rm` and `stats` for people, or JSON for scripts
//! (`--json`, the same shape the admin API sends).
//!
//! Rule of dependency: uses `answer` from `admin`; imports nothing else of the crate and does no
//! I/O (the command prints what this returns).

use std::fmt;
use std::time::SystemTime;

use super::answer::{Listing, Removal, Stats};

/// An answer of any of the three operations.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    List(Listing),
    Remove(Removal),
    Stats(Stats),
}

impl Answer {
    /// The human table, or JSON for scripts.
    pub fn render(&self, json: bool) -> String {
        let j = |r: serde_json::Result<String>| r.expect("answers serialize") + "\n";
        match (self, json) {
            (Answer::List(a), true) => j(serde_json::to_string_pretty(a)),
            (Answer::Remove(a), true) => j(serde_json::to_string_pretty(a)),
            (Answer::Stats(a), true) => j(serde_json::to_string_pretty(a)),
            (Answer::List(a), false) => a.to_string(),
            (Answer::Remove(a), false) => a.to_string(),
            (Answer::Stats(a), false) => a.to_string(),
        }
    }
}

/// Bytes for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn time(t: Option<SystemTime>) -> String {
    t.map_or("-".into(), |t| {
        humantime::format_rfc3339_seconds(t).to_string()
    })
}

/// `sha256:` and the first 12 hex digits: enough to tell digests apart in a table.
fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

/// `3`, or `3 (+2 not cached)`.
fn files(cached: u64, not_cached: u64) -> String {
    match not_cached {
        0 => cached.to_string(),
        n => format!("{cached} (+{n} not cached)"),
    }
}

/// A table: the header, then the rows, columns padded to their widest cell.
fn table(f: &mut fmt::Formatter<'_>, header: &[&str], rows: &[Vec<String>]) -> fmt::Result {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |f: &mut fmt::Formatter<'_>, cells: &[&str]| -> fmt::Result {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = *w));
            }
        }
        writeln!(f, "{}", s.trim_end())
    };
    line(f, header)?;
    for r in rows {
        line(f, &r.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    Ok(())
}

impl fmt::Display for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_bucket = self.bucket.is_some();
        // Artifact columns only when a listed tag points at an artifact.
        let with_artifacts = self.images.iter().any(|i| i.artifact_type.is_some());
        let mut header = vec![
            "UPSTREAM",
            "REPOSITORY",
            "TAG",
            "DIGEST",
            "SIZE",
            "FILES",
            "LAST PULLED",
        ];
        if with_bucket {
            header.insert(6, "IN BUCKET");
        }
        if with_artifacts {
            header.extend(["ARTIFACT TYPE", "SUBJECT"]);
        }
        let rows: Vec<Vec<String>> = self
            .images
            .iter()
            .map(|i| {
                let mut row = vec![
                    i.upstream.clone(),
                    i.repo.clone(),
                    i.tag.clone(),
                    short(&i.digest),
                    human_bytes(i.bytes),
                    files(i.cached, i.not_cached),
                    time(i.last_pulled),
                ];
                if with_bucket {
                    row.insert(6, i.in_bucket.unwrap_or(0).to_string());
                }
                if with_artifacts {
                    row.push(i.artifact_type.clone().unwrap_or_else(|| "-".into()));
                    row.push(i.subject.as_deref().map_or("-".into(), short));
                }
                row
            })
            .collect();
        table(f, &header, &rows)?;
        if !self.artifacts.is_empty() {
            writeln!(f, "untagged artifacts:")?;
            let rows: Vec<Vec<String>> = self
                .artifacts
                .iter()
                .map(|a| {
                    vec![
                        short(&a.digest),
                        a.artifact_type.clone(),
                        a.subject.as_deref().map_or("-".into(), short),
                        human_bytes(a.bytes),
                        files(a.cached, a.not_cached),
                        time(a.last_pulled),
                    ]
                })
                .collect();
            table(
                f,
                &[
                    "DIGEST",
                    "ARTIFACT TYPE",
                    "SUBJECT",
                    "SIZE",
                    "FILES",
                    "LAST PULLED",
                ],
                &rows,
            )?;
        }
        writeln!(
            f,
            "untagged manifests: {}; orphan blobs: {} ({})",
            self.untagged_manifests,
            self.orphan_blobs,
            human_bytes(self.orphan_bytes)
        )?;
        if let Some(b) = &self.bucket {
            writeln!(
                f,
                "bucket: {} blobs, {} manifests ({}); {} not on this disk",
                b.blobs,
                b.manifests,
                human_bytes(b.bytes),
                b.not_local
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tags {
            writeln!(f, "tag       {t}")?;
        }
        for r in &self.removed {
            match &r.location {
                None => writeln!(f, "{:<8}  {}  {}", r.kind, r.digest, human_bytes(r.bytes))?,
                Some(at) => writeln!(
                    f,
                    "{:<8}  {}  {:<10}  {at}",
                    r.kind,
                    r.digest,
                    human_bytes(r.bytes)
                )?,
            }
        }
        let manifests = self.removed.iter().filter(|r| r.kind == "manifest").count();
        writeln!(
            f,
            "removed {} tags, {manifests} manifests, {} blobs: {} entries, {}",
            self.tags.len(),
            self.removed.len() - manifests,
            self.tags.len() + self.removed.len(),
            human_bytes(self.bytes)
        )
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "storage:        {}", self.root)?;
        writeln!(
            f,
            "blobs:          {} ({})",
            self.blobs,
            human_bytes(self.bytes)
        )?;
        if let Some(max) = self.max_size {
            writeln!(f, "max size:       {}", human_bytes(max))?;
        }
        writeln!(f, "manifests:      {}", self.manifests)?;
        writeln!(f, "tags:           {}", self.tags)?;
        writeln!(
            f,
            "temp files:     {} ({})",
            self.tmp_files,
            human_bytes(self.tmp_bytes)
        )?;
        writeln!(f, "quarantined:    {}", self.quarantined)?;
        writeln!(f, "oldest access:  {}", time(self.oldest_access))?;
        writeln!(f, "newest access:  {}", time(self.newest_access))?;
        if let Some(b) = &self.bucket {
            writeln!(
                f,
                "bucket:         {} blobs, {} manifests ({})",
                b.blobs,
                b.manifests,
                human_bytes(b.bytes)
            )?;
            if let Some(max) = b.max_size {
                writeln!(f, "bucket max size: {}", human_bytes(max))?;
            }
            writeln!(f, "bucket tags:    {}", b.tags)?;
            writeln!(f, "bucket oldest pull: {}", time(b.oldest_pull))?;
            writeln!(f, "bucket newest pull: {}", time(b.newest_pull))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::answer::{Artifact, Image};
    use super::*;

    #[test]
    fn artifacts_get_their_columns_and_their_table() {
        let image = |tag: &str, artifact_type: Option<&str>| Image {
            upstream: "registry.test".into(),
            repo: "library/app".into(),
            tag: tag.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            bytes: 2048,
            cached: 3,
            not_cached: 0,
            last_pulled: None,
            in_bucket: None,
            artifact_type: artifact_type.map(str::to_owned),
            subject: artifact_type.map(|_| format!("sha256:{}", "b".repeat(64))),
        };
        let mut ls = Listing {
            images: vec![image("1", None)],
            artifacts: vec![],
            untagged_manifests: 1,
            orphan_blobs: 0,
            orphan_bytes: 0,
            bucket: None,
        };
        let plain = ls.to_string();
        assert!(
            !plain.contains("ARTIFACT") && !plain.contains("untagged artifacts"),
            "{plain}"
        );
        ls.images.push(image("sbom", Some("application/spdx+json")));
        ls.artifacts.push(Artifact {
            digest: format!("sha256:{}", "c".repeat(64)),
            artifact_type: "application/vnd.dev.sigstore.bundle.v0.3+json".into(),
            subject: Some(format!("sha256:{}", "d".repeat(64))),
            bytes: 900,
            cached: 2,
            not_cached: 1,
            last_pulled: None,
        });
        let text = ls.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].ends_with("LAST PULLED  ARTIFACT TYPE          SUBJECT"),
            "{text}"
        );
        let last_two = |line: &str| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            cells[cells.len() - 2..].join(" ")
        };
        assert_eq!(last_two(lines[1]), "- -", "{text}");
        assert_eq!(
            last_two(lines[2]),
            format!("application/spdx+json sha256:{}", "b".repeat(12)),
            "{text}"
        );
        assert_eq!(lines[3], "untagged artifacts:");
        assert!(lines[4].starts_with("DIGEST  "), "{text}");
        assert_eq!(
            lines[5]
                .split("  ")
                .filter(|c| !c.is_empty())
                .map(str::trim)
                .collect::<Vec<_>>(),
            vec![
                format!("sha256:{}", "c".repeat(12)).as_str(),
                "application/vnd.dev.sigstore.bundle.v0.3+json",
                format!("sha256:{}", "d".repeat(12)).as_str(),
                "900 B",
                "2 (+1 not cached)",
                "-"
            ]
        );
        assert!(lines[6].starts_with("untagged manifests: 1;"), "{text}");
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
