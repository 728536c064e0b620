//! Node mode end to end: the Distribution registries as upstreams, the env's berth as the central
//! berth (the parent, with `[fleet] secret_file`), a node berth process in front of it whose
//! config names no upstream at all, and containerd's `ctr` pulling through the node with one
//! `_default/hosts.toml` (as deploy/kubernetes/node/ installs it) whose fallback server is a dead
//! port. Both images arrive whole, each blob verified on the node's disk, fetched from its
//! registry once; then the node, restarted with the parent gone, still serves them from disk.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::e2e_support::harness::{BerthExtra, Env, Via, start_containerd};
use crate::e2e_support::http;
use crate::e2e_support::proc::Proc;
use crate::e2e_support::seed::{self, Image};
use crate::ports::free_port;

/// A node berth process: its config (parent, itself as the only node, the secret), its
/// listeners and cache; ready when its `/healthz` says 200.
struct Node {
    proc: Proc,
    addr: String,
    storage: std::path::PathBuf,
}

fn start_node(env: &Env, parent: &str, name: &str) -> Node {
    let dir = env.dir();
    let addr = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let storage = dir.join("node-data");
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"{addr}\"\n[metrics]\nlisten = \"{metrics}\"\n\
             [storage]\npath = \"{}\"\n[fleet]\nparent = \"http://{parent}\"\n\
             self = \"http://{addr}\"\npeers = [\"http://{addr}\"]\nsecret_file = \"{}\"\n",
            storage.display(),
            dir.join("fleet-secret").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info,berth=debug")
        .env("NO_COLOR", "1");
    let mut proc = Proc::spawn(name, cmd, dir);
    let started = Instant::now();
    loop {
        proc.assert_running();
        if http::wait_for(&metrics, "/healthz", 200, Duration::from_millis(250)).is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{name} not ready:\n{}",
            proc.log_tail(60)
        );
    }
    Node {
        proc,
        addr,
        storage,
    }
}

/// `--hosts-dir` with only `_default`: the node berth, a dead fallback.
fn node_hosts(env: &Env, node: &Node, name: &str) -> String {
    let hosts = env.dir().join(name);
    std::fs::create_dir_all(hosts.join("_default")).unwrap();
    std::fs::write(
        hosts.join("_default/hosts.toml"),
        format!(
            "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            env.dead, node.addr
        ),
    )
    .unwrap();
    hosts.display().to_string()
}

/// The node's disk holds `img`'s amd64 config and layers, each with its digest.
fn assert_on_node(node: &Node, img: &Image) {
    let p = img.platform("amd64");
    for b in std::iter::once(&p.config).chain(&p.layers) {
        let path = node.storage.join("blobs/sha256").join(b.hex());
        let started = Instant::now();
        // A verified blob is renamed into place just after its last byte went out.
        while !path.exists() && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(25));
        }
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{} not on the node: {e}", b.digest));
        assert_eq!(seed::sha256_hex(&bytes), b.hex(), "{}", b.digest);
    }
}

#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn containerd_through_a_node_berth() {
    let mut env = Env::start_with(Via::Berth, |dir: &Path| {
        let secret = dir.join("fleet-secret");
        std::fs::write(&secret, "fleet-e2e-secret-0123456789abcdef-0123").unwrap();
        BerthExtra {
            tables: format!("\n[fleet]\nsecret_file = \"{}\"\n", secret.display()),
            ..Default::default()
        }
    });
    let parent = env.berth_addr().to_owned();
    let mut node = start_node(&env, &parent, "berth-node");
    let images = [
        (
            "docker.io/library/busybox:latest",
            seed::image("library/busybox"),
        ),
        (
            "quay.io/coreos/flannel:v0.11.0",
            seed::image("coreos/flannel"),
        ),
    ];
    {
        let (daemon, ctr) = start_containerd(&env);
        let hosts = node_hosts(&env, &node, "node-hosts");

        for (reference, img) in images {
            let started = Instant::now();
            crate::ctr_pull(&ctr, &hosts, &[], reference)
                .unwrap_or_else(|e| panic!("{e}\nnode log:\n{}", node.proc.log_tail(40)));
            eprintln!(
                "ctr pull {reference} through the node in {:.1?}",
                started.elapsed()
            );
            crate::assert_ctr_has(&ctr, reference, img);
            assert_on_node(&node, img);
            env.assert_cached(img, "amd64");
        }
        env.settled();
        for (_, img) in images {
            let counts = env.upstream_blob_gets(img.upstream);
            let p = img.platform("amd64");
            for b in std::iter::once(&p.config).chain(&p.layers) {
                assert_eq!(counts.get(b.hex()).copied(), Some(1), "{}", b.digest);
            }
        }
        assert!(node.storage.join("fleet/upstreams.json").exists());
        drop(daemon);
    }

    // The parent and the registries gone, the node restarted: its disk and its saved list serve.
    node.proc.stop();
    env.stop_registries();
    env.stop_berth();
    let node = start_node(&env, &parent, "berth-node-again");
    for (_, img) in images {
        let p = img.platform("amd64");
        for b in std::iter::once(&p.config).chain(&p.layers) {
            let path = format!("/v2/{}/blobs/{}?ns={}", img.repo, b.digest, img.upstream);
            let r = http::get(&node.addr, &path, None).unwrap();
            assert_eq!(r.status, 200, "{}", b.digest);
            assert_eq!(seed::sha256_hex(&r.body), b.hex());
        }
    }
}
