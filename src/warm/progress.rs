//! What the operator sees: a live bar on a terminal, plain lines otherwise (one per image on
//! stdout, failures on stderr), and the summary line at the end of a run. Inside a server (the
//! admin API's warm) neither: a log line per image through `tracing`, since berth's stdout may
//! be its log.
//!
//! Rule of dependency: uses `failure` from `warm` (the summary lists them), `indicatif` and
//! `tracing`; it is told what happened and never asks berth anything.

use std::fmt;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use super::failure::Failure;

/// What a run did; printed at the end.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub images: usize,
    pub images_warmed: usize,
    pub manifests: usize,
    /// With `--referrers`: the referrers warmed with the images (their manifests are counted in
    /// `manifests` too).
    pub referrers: Option<usize>,
    pub blobs: usize,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Each failed reference with its reason, in the order given.
    pub failures: Vec<(String, Failure)>,
}

impl Summary {
    /// 0: every image warmed; 1: some failed.
    pub fn exit_code(&self) -> u8 {
        if self.failures.is_empty() { 0 } else { 1 }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "warmed {}/{} images: {}, {}{}, {} in {:.1}s",
            self.images_warmed,
            self.images,
            counted(self.manifests, "manifest"),
            referrers(self.referrers),
            counted(self.blobs, "blob"),
            HumanBytes(self.bytes),
            self.elapsed.as_secs_f64()
        )?;
        if !self.failures.is_empty() {
            let names: Vec<&str> = self.failures.iter().map(|(r, _)| r.as_str()).collect();
            write!(f, "; {} failed: {}", self.failures.len(), names.join(", "))?;
        }
        Ok(())
    }
}

/// `1 blob`, `2 blobs`.
fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// `2 referrers, ` with `--referrers`; nothing without.
fn referrers(n: Option<usize>) -> String {
    n.map(|n| format!("{}, ", counted(n, "referrer")))
        .unwrap_or_default()
}

/// A live bar on a terminal; plain lines otherwise (one per image, on stdout; failures on
/// stderr).
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Log lines (`tracing`) instead of printed ones: the run is inside a server.
    logged: bool,
    counts: std::sync::Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    images: usize,
    images_done: usize,
    refs_resolved: usize,
    blobs: usize,
    blobs_done: usize,
    blobs_failed: usize,
    /// Phase 2 has begun: the bar counts bytes and its message counts images and blobs.
    fetching: bool,
}

impl Progress {
    pub fn new(live: bool) -> Progress {
        Progress {
            bar: live.then(ProgressBar::new_spinner),
            logged: false,
            counts: std::sync::Mutex::new(Counts::default()),
        }
    }

    /// A log line per image, nothing printed: for a run inside a server.
    pub fn logged() -> Progress {
        Progress {
            logged: true,
            ..Progress::new(false)
        }
    }

    /// berth cannot be reached: said once, not once per image.
    pub fn unreachable(&self, e: &Failure) {
        match self.logged {
            true => tracing::warn!(error = %e, "warm: berth cannot be reached"),
            false => eprintln!("berth warm: {e}"),
        }
    }

    pub fn resolving(&self, refs: usize) {
        self.counts.lock().unwrap().images = refs;
        if let Some(bar) = &self.bar {
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] resolving manifests {msg}")
                    .expect("a valid template"),
            );
            bar.set_message(format!("0/{refs}"));
            bar.enable_steady_tick(Duration::from_millis(120));
        }
    }

    pub fn resolved(&self) {
        let mut c = self.counts.lock().unwrap();
        c.refs_resolved += 1;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{}/{}", c.refs_resolved, c.images));
        }
    }

    pub fn fetching(&self, images: usize, blobs: usize, bytes: u64) {
        let mut c = self.counts.lock().unwrap();
        c.images = images;
        c.blobs = blobs;
        c.fetching = true;
        if let Some(bar) = &self.bar {
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .expect("a valid template"),
            );
            bar.set_length(bytes);
            bar.set_message(c.line());
        }
    }

    pub fn bytes(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    pub fn blob_done(&self) {
        let mut c = self.counts.lock().unwrap();
        c.blobs_done += 1;
        if let Some(bar) = &self.bar {
            bar.set_message(c.line());
        }
    }

    pub fn blob_failed(&self) {
        self.counts.lock().unwrap().blobs_failed += 1;
    }

    /// `r` is warmed: its manifests, referrers (with `--referrers`), blobs and their bytes.
    pub fn warmed(
        &self,
        r: &impl fmt::Display,
        manifests: usize,
        with_referrers: Option<usize>,
        blobs: usize,
        bytes: u64,
    ) {
        let line = format!(
            "warmed {r} ({}, {}{}, {})",
            counted(manifests, "manifest"),
            referrers(with_referrers),
            counted(blobs, "blob"),
            HumanBytes(bytes)
        );
        self.image_done();
        match &self.bar {
            _ if self.logged => tracing::info!("{line}"),
            Some(bar) => bar.println(&line),
            None => println!("{line}"),
        }
    }

    /// `r` failed, and why.
    pub fn failed(&self, r: &impl fmt::Display, e: &Failure) {
        let line = format!("failed {r}: {e}");
        self.image_done();
        match &self.bar {
            _ if self.logged => tracing::warn!("{line}"),
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn image_done(&self) {
        let mut c = self.counts.lock().unwrap();
        c.images_done = (c.images_done + 1).min(c.images);
        if let Some(bar) = &self.bar
            && c.fetching
        {
            bar.set_message(c.line());
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Counts {
    fn line(&self) -> String {
        let mut s = format!(
            "images {}/{} · blobs {}/{}",
            self.images_done, self.images, self.blobs_done, self.blobs
        );
        if self.blobs_failed > 0 {
            s.push_str(&format!(" ({} failed)", self.blobs_failed));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_exit_code() {
        let mut s = Summary {
            images: 2,
            images_warmed: 2,
            manifests: 3,
            referrers: None,
            blobs: 4,
            bytes: 2048,
            elapsed: Duration::from_millis(1500),
            failures: vec![],
        };
        assert_eq!(s.exit_code(), 0);
        assert_eq!(
            s.to_string(),
            "warmed 2/2 images: 3 manifests, 4 blobs, 2.00 KiB in 1.5s"
        );
        s.referrers = Some(1);
        assert_eq!(
            s.to_string(),
            "warmed 2/2 images: 3 manifests, 1 referrer, 4 blobs, 2.00 KiB in 1.5s"
        );
        s.images_warmed = 1;
        s.failures
            .push(("ghcr.io/a/b:latest".into(), Failure::new("x")));
        assert_eq!(s.exit_code(), 1);
        assert!(
            s.to_string().ends_with("; 1 failed: ghcr.io/a/b:latest"),
            "{s}"
        );
    }
}
