//! A listener's certificate (the registry listener's, and the metrics listener's when it has
//! one): loaded at start, re-read on reload and when its files change, swapped for new
//! connections while open ones keep theirs. Both pairs count in the one
//! `berth_tls_reloads_total`; the log line of a reload names the file.
//!
//! rustls asks a [`ResolvesServerCert`] for the certificate at each handshake; [`Certs`] answers
//! with the `Arc<CertifiedKey>` it holds now, so a swap takes effect at the next handshake and an
//! established connection is untouched. A new pair is only taken when it parses and the key
//! matches the certificate; otherwise it is refused (logged, counted in
//! `berth_tls_reloads_total{outcome="failure"}`) and the old pair keeps serving.
//!
//! Watching: cert-manager and certbot replace the files in place, often by swapping a symlink
//! (`..data -> ..2026_11_30...`), and write the certificate and the key one after the other. A
//! poll of both paths every [`POLL_EVERY`] (following symlinks: device, inode, size, mtime) sees
//! either; inotify would need a watch on every directory along a symlink chain, for a file that
//! changes every few weeks. A pair caught half-written fails the key check and is retried at the
//! next change of either file, so the final state is always picked up.
//!
//! Rule of dependency: a leaf (rustls, prometheus); `assemble` builds it, `server` serves with it,
//! `reload` calls it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, Opts, Registry};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the certificate and key files are checked for a change.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// The certificate and key berth serves, and where they come from.
pub struct Certs {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// What the files looked like when last read (whether or not that read was taken).
    seen: Mutex<Option<Stamp>>,
    reloads: IntCounterVec,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

/// Registers `berth_tls_reloads_total` (once per registry: every pair counts in it).
pub fn reload_counter(registry: &Registry) -> Result<IntCounterVec, String> {
    let reloads = IntCounterVec::new(
        Opts::new(
            "berth_tls_reloads_total",
            "TLS certificate reloads (on SIGHUP or a change of the files), by outcome.",
        ),
        &["outcome"],
    )
    .map_err(|e| e.to_string())?;
    registry
        .register(Box::new(reloads.clone()))
        .map_err(|e| e.to_string())?;
    for o in ["success", "failure"] {
        reloads.with_label_values(&[o]);
    }
    Ok(reloads)
}

/// Identity and version of both files.
type Stamp = [(u64, u64, u64, i64, i64); 2];

impl Certs {
    /// Loads the pair, registering `berth_tls_reloads_total` in `registry`; an error names the
    /// file and the reason.
    pub fn load(cert: &Path, key: &Path, registry: &Registry) -> Result<Certs, String> {
        Certs::load_counted(cert, key, reload_counter(registry)?)
    }

    /// Loads the pair, counting its reloads in `reloads` (from [`reload_counter`]).
    pub fn load_counted(cert: &Path, key: &Path, reloads: IntCounterVec) -> Result<Certs, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = stamp(cert, key);
        let ck = read_pair(cert, key, &provider)?;
        Ok(Certs {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(ck),
            seen: Mutex::new(seen),
            reloads,
            provider,
        })
    }

    /// Re-reads the pair and swaps it in if it is good; else logs, counts, and keeps the old one.
    pub fn reload(&self, why: &str) -> Result<(), String> {
        *self.seen.lock().unwrap() = stamp(&self.cert, &self.key);
        match read_pair(&self.cert, &self.key, &self.provider) {
            Ok(ck) => {
                self.current.store(Arc::new(ck));
                self.reloads.with_label_values(&["success"]).inc();
                tracing::info!(cert = %self.cert.display(), why, "TLS certificate reloaded; new connections get it");
                Ok(())
            }
            Err(e) => {
                self.reloads.with_label_values(&["failure"]).inc();
                tracing::error!(cert = %self.cert.display(), why, error = %e, "TLS certificate reload refused; the current certificate keeps serving");
                Err(e)
            }
        }
    }

    /// Reloads when either file changed since it was last read.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.cert, &self.key);
        if now.is_some() && now != *self.seen.lock().unwrap() {
            let _ = self.reload("the certificate or key file changed");
        }
    }

    /// Polls the files every [`POLL_EVERY`] until the task is aborted.
    pub fn watch(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
            }
        })
    }

    /// The rustls server config that serves whatever pair is current.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Both files' device, inode, size and mtime (symlinks followed); `None` if either is missing.
fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
    };
    Some([one(cert)?, one(key)?])
}

/// Parses the pair and checks that the key belongs to the certificate.
fn read_pair(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let ck = CertifiedKey::from_der(certs, key_der, provider)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    Ok(ck)
}

// The integration tests' way of making a test pair, so that there is one.
#[cfg(test)]
#[path = "../tests/support/certs.rs"]
mod test_certs;

#[cfg(test)]
mod tests {
    use super::test_certs::self_signed;
    use super::*;

    #[test]
    fn a_changed_pair_is_taken_and_a_broken_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = self_signed(dir.path(), "one", &["one"]);
        let (c, k) = (&one.cert, &one.key);
        let registry = Registry::new();
        let certs = Certs::load(c, k, &registry).unwrap();
        let first = certs.current.load_full();
        assert_eq!(first.cert[0], one.der);

        // Unchanged files: nothing happens.
        certs.reload_if_changed();
        assert!(Arc::ptr_eq(&first, &certs.current.load_full()));

        // A new pair in place (as certbot writes it).
        let two = self_signed(dir.path(), "two", &["two"]);
        std::fs::rename(&two.cert, c).unwrap();
        std::fs::rename(&two.key, k).unwrap();
        certs.reload_if_changed();
        let second = certs.current.load_full();
        assert_eq!(second.cert[0], two.der);

        // A key that does not match its certificate: refused, counted, the old pair stays.
        let three = self_signed(dir.path(), "three", &["three"]);
        std::fs::rename(&three.key, k).unwrap();
        certs.reload_if_changed();
        assert!(Arc::ptr_eq(&second, &certs.current.load_full()));
        // Garbage: refused too.
        std::fs::write(c, "not a certificate").unwrap();
        assert!(certs.reload("test").is_err());
        assert!(Arc::ptr_eq(&second, &certs.current.load_full()));
        let text = crate::metrics::render(&registry);
        assert!(
            text.contains("berth_tls_reloads_total{outcome=\"failure\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("berth_tls_reloads_total{outcome=\"success\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_file_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let e = Certs::load(
            &dir.path().join("no.crt"),
            &dir.path().join("no.key"),
            &Registry::new(),
        )
        .unwrap_err();
        assert!(e.contains("no.crt"), "{e}");
    }
}
