//! Crash safety: SIGKILL the real `berth serve` in the middle of blob fills, again and
//! again on the same storage, and check after every restart that no temp file survived start-up
//! and that every file at a final path is exactly the bytes its name says.
//!
//! Fills are provably mid-transfer when berth dies: the fake upstream only sends as many bytes as
//! the test's gate allows, and the test has read part of berth's response before it kills. No
//! sleeps: the test waits on berth's "listening" log line and on bytes arriving, each bounded by a
//! timeout.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use berth::oci::Digest;
use support::served::{Served, serve};
use support::{FakeRegistry, Fault, random_bytes};

/// Blobs in the fake; each round completes one fill and kills two.
const BLOBS: usize = 10;
const BLOB_SIZE: usize = 3 * 1024 * 1024;
const ROUNDS: usize = 8;
/// How many bytes of a killed fill the upstream sends, and how many of them the test reads first.
const RELEASED: usize = 1024 * 1024;
const READ_BEFORE_KILL: usize = 256 * 1024;
/// Bound on every wait (start-up, bytes arriving).
const WAIT: Duration = Duration::from_secs(60);
const REPO: &str = "crash/app";

/// A running `berth serve`; killed (SIGKILL) when dropped, so a failing test leaves no process.
struct Berth {
    served: Served,
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Berth {
    /// Starts berth on `config` and waits for its "listening" line, which names the port.
    async fn start(config: &Path) -> Berth {
        let mut served = serve(config, &[("RUST_LOG", "info")]);
        served.started().await;
        Berth {
            base: format!("http://{}", served.registry),
            served,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Waits until berth logs that `digest` is cached (renamed into place: the client got its last
    /// byte a little earlier, when the digest matched).
    async fn cached(&mut self, digest: &str) {
        self.served
            .line_where(digest, |l| l.contains("blob cached") && l.contains(digest))
            .await;
    }

    /// GET a blob; the response, status checked.
    async fn get(&self, digest: &str) -> hyper::body::Incoming {
        let uri = format!("{}/v2/{REPO}/blobs/{digest}", self.base)
            .parse()
            .unwrap();
        let resp = tokio::time::timeout(WAIT, self.client.get(uri))
            .await
            .expect("response headers in time")
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body()
    }

    /// SIGKILL, and reap.
    fn kill(mut self) {
        self.served.child.kill().unwrap(); // SIGKILL on Unix
        self.served.child.wait().unwrap();
    }
}

/// Reads `body` until at least `n` bytes arrived; returns them.
async fn read_at_least(body: &mut hyper::body::Incoming, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < n {
            let frame = body
                .frame()
                .await
                .expect("body ended early")
                .expect("body failed");
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
    })
    .await
    .expect("bytes in time");
    got
}

async fn read_all(body: hyper::body::Incoming) -> Bytes {
    tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body in time")
        .expect("body complete")
        .to_bytes()
}

fn names(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// The invariants after a start: `tmp/` is empty, every blob file hashes to its name. Returns the
/// cached digests.
fn check_store(root: &Path, round: usize) -> Vec<String> {
    let tmp = names(&root.join("tmp"));
    assert!(
        tmp.is_empty(),
        "round {round}: temp files survived start-up: {tmp:?}"
    );
    let mut cached = Vec::new();
    for path in names(&root.join("blobs/sha256")) {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let actual = Digest::of(&std::fs::read(&path).unwrap());
        assert_eq!(
            actual.hex(),
            name,
            "round {round}: {} is corrupt",
            path.display()
        );
        cached.push(format!("sha256:{name}"));
    }
    cached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_fill_never_leaves_a_wrong_or_temp_file() {
    let fake = FakeRegistry::start().await;
    let blobs: Vec<(String, Bytes)> = (0..BLOBS)
        .map(|i| {
            let data = random_bytes(BLOB_SIZE, i as u64 + 1);
            (fake.put_blob(REPO, data.clone()), data)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nenabled = false\n[storage]\npath = \"{}\"\n[[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n",
            root.display(),
            fake.url()
        ),
    )
    .unwrap();
    // Gates stay open until the end: the fake expects its gates to outlive its transfers.
    let mut gates: Vec<watch::Sender<usize>> = Vec::new();

    for round in 0..ROUNDS {
        let mut b = Berth::start(&config).await;
        let cached = check_store(&root, round);
        // Exactly the fills that ran to the end are cached; none of the killed ones.
        assert_eq!(cached.len(), round, "round {round}: {cached:?}");
        let uncached: Vec<&(String, Bytes)> =
            blobs.iter().filter(|(d, _)| !cached.contains(d)).collect();
        assert!(
            uncached.len() >= 3,
            "round {round}: too few blobs left to fill"
        );
        // The two to kill rotate, so a blob killed once is filled again in a later round.
        let (doomed, done) = (
            [uncached[round % 3], uncached[(round + 1) % 3]],
            uncached[(round + 2) % 3],
        );

        let mut open = Vec::new();
        for (digest, data) in doomed {
            let (release, gate) = watch::channel(0usize);
            fake.fault_times(&format!("/v2/{REPO}/blobs/{digest}"), Fault::Gated(gate), 1);
            // Two clients on one fill: a leader and a follower reading the growing file.
            let mut first = b.get(digest).await;
            let mut second = b.get(digest).await;
            release.send_replace(RELEASED);
            for body in [&mut first, &mut second] {
                let got = read_at_least(body, READ_BEFORE_KILL).await;
                assert_eq!(&got[..], &data[..got.len()], "round {round}: early bytes");
            }
            open.push((first, second));
            gates.push(release);
        }
        // One fill runs to the end while the others hang mid-transfer.
        let (digest, data) = done;
        assert_eq!(read_all(b.get(digest).await).await, *data, "round {round}");
        b.cached(digest).await;

        // The doomed fills are mid-transfer: upstream sent RELEASED of BLOB_SIZE bytes.
        let leftovers = names(&root.join("tmp"));
        assert!(
            !leftovers.is_empty(),
            "round {round}: no fill in progress at the kill"
        );
        b.kill();
        drop(open);
        assert!(
            !names(&root.join("tmp")).is_empty(),
            "round {round}: the kill left no temp file to clean"
        );
    }

    // Last start: the store is sound, and every blob comes out right.
    let mut b = Berth::start(&config).await;
    let cached = check_store(&root, ROUNDS);
    assert_eq!(cached.len(), ROUNDS);
    for (digest, data) in &blobs {
        assert_eq!(read_all(b.get(digest).await).await, *data, "{digest}");
        if !cached.contains(digest) {
            b.cached(digest).await;
        }
    }
    b.kill();
    let report = berth::verify::run(&root).unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(report.checked as usize, BLOBS, "{report}");
}
