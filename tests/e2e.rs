//! End-to-end: real clients (skopeo, containerd's ctr, podman, dockerd) pull seeded images from
//! real Distribution registries (one per upstream host: `docker.io`, `quay.io`) through berth, and
//! berth's cache ends up holding what they pulled, each blob fetched from upstream once.
//!
//! Needs the tools `tests/install-deps.sh` installs, and root (containerd, dockerd). Every test is
//! `#[ignore]`d so plain `cargo test` stays fast; `tests/run.sh` runs them with
//! `cargo test --test e2e -- --ignored --test-threads=1`.
//!
//! Each client flow runs twice: through berth (the real test), and straight at the registry
//! (`*_registry_direct`), which checks the seeding and the client set-up on their own, so a
//! failure of the first kind with a pass of the second points at berth. (The referrers tests in
//! `tests/e2e/` have no such twin: the registry has no referrers API to compare with; they check
//! what they pushed against the registry itself before asking berth. Nor have the signature
//! policy's, `tests/e2e/policy.rs`: the registry has no policy; sigstore-js checks the signatures
//! it makes before they are pushed.)
//!
//! `BERTH_E2E_KEEP=1` keeps a failed test's directory (configs, logs, client output).

mod e2e_support;
#[path = "support/ports.rs"]
mod ports;
// Referrers (OCI 1.1) with artifacts pushed to the registry, and a real ORAS client.
#[path = "e2e/oras.rs"]
mod oras;
#[path = "e2e/referrers.rs"]
mod referrers;
// The signature policy, with signatures made by sigstore-js (tests/sigstore/).
#[path = "e2e/policy.rs"]
mod policy;
// Keyless signatures under a test trusted root (tests/support/sigstore.rs, shared with tests/it).
#[path = "e2e/keyless.rs"]
mod keyless;
#[path = "support/sigstore.rs"]
mod sigstore;
// Node mode: containerd pulling through a node berth in front of a central one.
#[path = "e2e/fleet.rs"]
mod fleet;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e_support::harness::{BerthExtra, Env, Via, start_containerd, wait_client};
use e2e_support::proc::{self, Proc};
use e2e_support::seed::{self, Image};

const PULL_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// skopeo

#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn skopeo_through_berth() {
    skopeo(Via::Berth);
}

#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn skopeo_registry_direct() {
    skopeo(Via::Registry);
}

/// What a client names at the mirror, which seeded image that is, and whether to copy all
/// platforms.
struct Case {
    name: String,
    image: &'static Image,
    all: bool,
}

fn skopeo(via: Via) {
    let mut env = Env::start(via);
    let alpine = seed::image("library/alpine");
    let busybox = seed::image("library/busybox");
    let flannel = seed::image("coreos/flannel");
    let app = seed::image("team/app");
    let case = |name: String, image: &'static Image, all| Case { name, image, all };
    let mut cases = vec![
        // Prefix form: /v2/<upstream host>/<repo>/...
        case(
            env.prefixed("docker.io", "library/alpine:3.19"),
            alpine,
            true,
        ),
        case(
            env.prefixed("docker.io", "library/busybox:latest"),
            busybox,
            true,
        ),
        case(
            env.prefixed("quay.io", "coreos/flannel:v0.11.0"),
            flannel,
            false,
        ),
        case(env.prefixed("docker.io", "team/app:1.0"), app, false),
        // Plain form, default upstream; without --all skopeo picks the amd64 instance.
        case("library/busybox:latest".into(), busybox, false),
        case("team/app:1.0".into(), app, false),
    ];
    if via == Via::Berth {
        // A one-part name gets library/ from the default upstream.
        cases.push(case("alpine:3.19".into(), alpine, true));
    }
    if via == Via::Berth {
        // Each upstream's registry holds only its own images: a name routed to the wrong upstream
        // finds nothing.
        for name in [
            "quay.io/library/alpine:3.19",
            "docker.io/coreos/flannel:v0.11.0",
            "coreos/flannel:v0.11.0",
        ] {
            let mut cmd = Command::new("skopeo");
            env.client_env(&mut cmd);
            cmd.args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{}/{name}", env.mirror("docker.io")));
            match proc::try_run(&mut cmd, PULL_LIMIT) {
                Ok(out) => panic!("{name} through berth should not exist, got:\n{out}"),
                // MANIFEST_UNKNOWN or NAME_UNKNOWN, not an outage.
                Err(e) => assert!(e.contains("unknown"), "{name}: {e}"),
            }
        }
    }
    skopeo_copies(&env, &cases, "first");
    for img in seed::images() {
        for p in &img.platforms {
            env.assert_cached(img, p.arch);
        }
        // Each image was copied at least twice (prefix and plain form), every platform at least
        // once: the registry still saw each blob once.
        env.assert_fetched_once(img);
    }
    if via == Via::Berth {
        env.stop_registries();
        skopeo_copies(&env, &cases, "cached");
    }
}

fn skopeo_copies(env: &Env, cases: &[Case], round: &str) {
    for (i, c) in cases.iter().enumerate() {
        let out = env.dir().join(format!("skopeo-{round}-{i}"));
        let mut cmd = Command::new("skopeo");
        env.client_env(&mut cmd);
        cmd.arg("--policy")
            .arg(&env.policy)
            .args(["copy", "-q", "--src-tls-verify=false"]);
        if c.all {
            cmd.arg("--all");
        }
        cmd.arg(format!(
            "docker://{}/{}",
            env.mirror(c.image.upstream),
            c.name
        ))
        .arg(format!("dir:{}", out.display()));
        let started = Instant::now();
        proc::run(&mut cmd, PULL_LIMIT);
        eprintln!("skopeo {round} {} in {:.1?}", c.name, started.elapsed());
        check_dir(&out, c);
    }
}

/// A skopeo `dir:` copy holds exactly the registry's manifests and blobs, byte for byte.
fn check_dir(out: &Path, c: &Case) {
    let img = c.image;
    let read = |name: &str| {
        std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{}: {name}: {e}", c.name))
    };
    let top = seed::sha256_hex(&read("manifest.json"));
    let platforms: Vec<_> = if !img.is_list() {
        assert_eq!(top, img.top.hex(), "{}: manifest digest", c.name);
        img.platforms.iter().collect()
    } else if c.all {
        assert_eq!(top, img.top.hex(), "{}: list digest", c.name);
        for p in &img.platforms {
            let m = read(&format!("{}.manifest.json", p.manifest.hex()));
            assert_eq!(
                seed::sha256_hex(&m),
                p.manifest.hex(),
                "{}: {}",
                c.name,
                p.arch
            );
        }
        img.platforms.iter().collect()
    } else {
        let p = img.platform("amd64");
        assert_eq!(top, p.manifest.hex(), "{}: amd64 manifest digest", c.name);
        vec![p]
    };
    for p in platforms {
        for b in std::iter::once(&p.config).chain(&p.layers) {
            let bytes = read(b.hex());
            assert_eq!(seed::sha256_hex(&bytes), b.hex(), "{}: blob", c.name);
        }
    }
}

/// `berth warm` before a rollout: every image, every platform, is fetched through berth once; with
/// the registries gone, skopeo still copies every platform of every image from the cache.
#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn warm_then_pull_with_the_registries_down() {
    let mut env = Env::start(Via::Berth);
    let refs: Vec<String> = seed::images()
        .iter()
        .map(|img| img.full_reference())
        .collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("warm")
        .arg("--server")
        .arg(format!("http://{}", env.mirror("docker.io")))
        .args(&refs);
    let out = proc::run(&mut cmd, PULL_LIMIT);
    eprintln!("{out}");
    for img in seed::images() {
        for p in &img.platforms {
            env.assert_cached(img, p.arch);
        }
        env.assert_fetched_once(img);
    }
    env.stop_registries();
    let cases: Vec<Case> = seed::images()
        .iter()
        .map(|img| Case {
            name: env.prefixed(img.upstream, &img.reference()),
            image: img,
            all: true,
        })
        .collect();
    skopeo_copies(&env, &cases, "warmed");
}

/// The admin API's warm, asked with curl as a CI pipeline would (no berth binary, no registry
/// login): every image, every platform, fetched through berth once; with the registries gone,
/// skopeo still copies every platform of every image from the cache.
#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn admin_warm_with_curl_then_pull_with_the_registries_down() {
    const TOKEN: &str = "e2e-admin-token-0123456789abcdef0123456789";
    let mut env = Env::start_with(Via::Berth, |dir| {
        let file = dir.join("admin-token");
        std::fs::write(&file, TOKEN).unwrap();
        BerthExtra {
            tables: format!(
                "\n[admin]\nenabled = true\ntoken_file = \"{}\"\n",
                file.display()
            ),
            upstream: vec![],
        }
    });
    let refs: Vec<String> = seed::images()
        .iter()
        .map(|img| img.full_reference())
        .collect();
    let body = serde_json::json!({ "images": refs }).to_string();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail-with-body", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(&body)
        .arg(format!("http://{}/admin/warm", env.metrics_addr));
    let out = proc::run(&mut cmd, PULL_LIMIT);
    eprintln!("{out}");
    let answer: serde_json::Value = serde_json::from_str(out.trim()).expect("a JSON answer");
    assert_eq!(answer["failed"], serde_json::json!([]), "{out}");
    // As berth warm writes them (`docker.io/` is the default upstream, so not written).
    assert_eq!(
        answer["warmed"].as_array().map(Vec::len),
        Some(refs.len()),
        "{out}"
    );
    for img in seed::images() {
        for p in &img.platforms {
            env.assert_cached(img, p.arch);
        }
        env.assert_fetched_once(img);
    }
    env.stop_registries();
    let cases: Vec<Case> = seed::images()
        .iter()
        .map(|img| Case {
            name: env.prefixed(img.upstream, &img.reference()),
            image: img,
            all: true,
        })
        .collect();
    skopeo_copies(&env, &cases, "warmed through the admin API");
}

/// Several clients miss the same blobs at the same moment: berth fetches each from the registry
/// once, and every client gets the whole image.
#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn concurrent_skopeo_misses_fetch_upstream_once() {
    let env = Env::start(Via::Berth);
    let flannel = seed::image("coreos/flannel");
    let busybox = seed::image("library/busybox");
    let mut cases = Vec::new();
    for i in 0..3 {
        let case = |name: &str, image, all| Case {
            name: name.into(),
            image,
            all,
        };
        cases.push(case("quay.io/coreos/flannel:v0.11.0", flannel, false));
        // Mix the forms: both name the default upstream's repository.
        cases.push(case(
            ["docker.io/library/busybox:latest", "library/busybox:latest"][i % 2],
            busybox,
            true,
        ));
    }
    std::thread::scope(|s| {
        let env = &env;
        let handles: Vec<_> = cases
            .chunks(1)
            .enumerate()
            .map(|(i, c)| s.spawn(move || skopeo_copies(env, c, &format!("parallel{i}"))))
            .collect();
        for h in handles {
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    for img in [flannel, busybox] {
        env.assert_fetched_once(img);
        for p in &img.platforms {
            env.assert_cached(img, p.arch);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// containerd

#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn containerd_through_berth() {
    containerd(Via::Berth);
}

#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn containerd_registry_direct() {
    containerd(Via::Registry);
}

fn containerd(via: Via) {
    let env = Env::start(via);
    let (daemon, ctr) = start_containerd(&env);
    let hosts = ctr_hosts_dir(&env, "hosts", "");
    for (reference, img) in [
        (
            "docker.io/library/busybox:latest",
            seed::image("library/busybox"),
        ),
        (
            "quay.io/coreos/flannel:v0.11.0",
            seed::image("coreos/flannel"),
        ),
    ] {
        let started = Instant::now();
        ctr_pull(&ctr, &hosts, &[], reference).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("ctr pull {reference} in {:.1?}", started.elapsed());
        assert_ctr_has(&ctr, reference, img);
        env.assert_cached(img, "amd64");
    }
    drop(daemon);
}

/// A `--hosts-dir` named `name` in the test directory: docker.io has its own hosts.toml, quay.io
/// falls to `_default`. Each names a dead server, so only the mirror host can answer;
/// `mirror_tables` is appended under the mirror host (e.g. its `header` table).
fn ctr_hosts_dir(env: &Env, name: &str, mirror_tables: &str) -> String {
    let hosts = env.dir().join(name);
    for (dir, upstream) in [("docker.io", "docker.io"), ("_default", "quay.io")] {
        std::fs::create_dir_all(hosts.join(dir)).unwrap();
        std::fs::write(
            hosts.join(dir).join("hosts.toml"),
            format!(
                "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{mirror_tables}",
                env.dead,
                env.mirror(upstream)
            ),
        )
        .unwrap();
    }
    hosts.display().to_string()
}

/// `ctr images pull` of the linux/amd64 image through `hosts`, with `args` (e.g. `--user`) added.
fn ctr_pull(
    ctr: impl Fn(&[&str]) -> Command,
    hosts: &str,
    args: &[&str],
    reference: &str,
) -> Result<String, String> {
    let mut all = vec!["images", "pull", "--hosts-dir", hosts];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--snapshotter", "native", "--platform", "linux/amd64"]);
    all.push(reference);
    proc::try_run(&mut ctr(&all), PULL_LIMIT)
}

/// containerd lists `reference` with the digest of `img`'s top manifest.
#[track_caller]
fn assert_ctr_has(ctr: impl Fn(&[&str]) -> Command, reference: &str, img: &Image) {
    let list = proc::run(&mut ctr(&["images", "ls"]), PULL_LIMIT);
    let digest = list
        .lines()
        .find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&reference)).then(|| cols[2].to_owned())
        })
        .unwrap_or_else(|| panic!("{reference} not in `ctr images ls`:\n{list}"));
    assert_eq!(digest, img.top.digest, "{reference}");
}

// ---------------------------------------------------------------------------------------------
// podman

#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn podman_through_berth() {
    podman(Via::Berth);
}

#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn podman_registry_direct() {
    podman(Via::Registry);
}

fn podman(via: Via) {
    let env = Env::start(via);
    let podman = podman_client(&env, None);
    let flannel = seed::image("coreos/flannel");
    podman_pull(&env, &podman, "quay.io/coreos/flannel:v0.11.0", flannel, "");
}

/// A `podman` command with its own storage under the test directory and a `registries.conf`
/// whose quay.io is a dead port with the mirror in front (berth, or quay.io's registry), and
/// `REGISTRY_AUTH_FILE` set to `auth_file` if given.
fn podman_client<'a>(
    env: &'a Env,
    auth_file: Option<&'a Path>,
) -> impl Fn(&[&str]) -> Command + 'a {
    let d = env.dir().join("pm");
    std::fs::create_dir_all(&d).unwrap();
    let conf = d.join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "unqualified-search-registries = []\n\n[[registry]]\nprefix = \"quay.io\"\n\
             location = \"{}\"\ninsecure = true\n\n[[registry.mirror]]\nlocation = \"{}\"\n\
             insecure = true\n",
            env.dead,
            env.mirror_location("quay.io")
        ),
    )
    .unwrap();
    let empty = d.join("containers.conf");
    std::fs::write(&empty, "").unwrap();
    let run_root = d.join("run");
    assert!(
        run_root.as_os_str().len() < 50,
        "podman refuses a runroot of 50 characters or more: {}",
        run_root.display()
    );
    move |args: &[&str]| {
        let mut cmd = Command::new("podman");
        env.client_env(&mut cmd);
        cmd.env("CONTAINERS_REGISTRIES_CONF", &conf)
            .env("CONTAINERS_CONF", &empty);
        if let Some(file) = auth_file {
            cmd.env("REGISTRY_AUTH_FILE", file);
        }
        cmd.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(&run_root)
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args);
        cmd
    }
}

/// `podman pull` of `reference` (`as_whom` for the log): podman stores `img`'s digest and berth
/// cached its amd64 blobs.
fn podman_pull(
    env: &Env,
    podman: impl Fn(&[&str]) -> Command,
    reference: &str,
    img: &Image,
    as_whom: &str,
) {
    let policy = env.policy.display().to_string();
    let started = Instant::now();
    proc::run(
        &mut podman(&["pull", "-q", "--signature-policy", &policy, reference]),
        PULL_LIMIT,
    );
    eprintln!(
        "podman pull {reference}{as_whom} in {:.1?}",
        started.elapsed()
    );
    let digest = proc::run(
        &mut podman(&["image", "inspect", "--format", "{{.Digest}}", reference]),
        PULL_LIMIT,
    );
    assert_eq!(digest.trim(), img.top.digest, "{reference}");
    env.assert_cached(img, "amd64");
}

// ---------------------------------------------------------------------------------------------
// client login ([auth])

/// berth with `[auth]`: `ci` may pull through both upstreams, `alice` only through docker.io
/// (quay.io lists `users = ["ci"]`); `auth_extra` goes into `[auth]`.
fn login_env(auth_extra: &'static str) -> Env {
    Env::start_with(Via::Berth, move |dir| {
        let file = dir.join("htpasswd");
        // Cost 5, what `htpasswd -B` writes by default.
        let entry = |u: &str, p: &str| format!("{u}:{}\n", bcrypt::hash(p, 5).unwrap());
        std::fs::write(&file, entry("ci", "ci-pw") + &entry("alice", "alice-pw")).unwrap();
        BerthExtra {
            tables: format!(
                "\n[auth]\nhtpasswd = \"{}\"\n{auth_extra}\n",
                file.display()
            ),
            upstream: vec![("quay.io", "users = [\"ci\"]".into())],
        }
    })
}

#[track_caller]
fn assert_refused(e: &str, want: &str) {
    let lower = e.to_lowercase();
    assert!(lower.contains(want), "want {want:?}: {e}");
}

/// skopeo's `--src-creds` through berth with `[auth]`: no or wrong credentials get 401, a user
/// not listed on an upstream 403 (cached or not, the registry never asked), the right users copy
/// byte-exact images.
#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn login_skopeo_with_src_creds() {
    let env = login_env("");
    let flannel = seed::image("coreos/flannel");
    let busybox = seed::image("library/busybox");
    let copy = |name: &str, creds: Option<&str>, out: &str| {
        let mut cmd = Command::new("skopeo");
        env.client_env(&mut cmd);
        cmd.arg("--policy")
            .arg(&env.policy)
            .args(["copy", "-q", "--src-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.arg("--src-creds").arg(c);
        }
        cmd.arg(format!("docker://{}/{name}", env.berth_addr()))
            .arg(format!("dir:{}", env.dir().join(out).display()));
        proc::try_run(&mut cmd, PULL_LIMIT)
    };
    let quay = "quay.io/coreos/flannel:v0.11.0";
    let e = copy(quay, None, "anonymous").unwrap_err();
    assert_refused(&e, "unauthorized");
    let e = copy(quay, Some("ci:wrong"), "wrong").unwrap_err();
    assert_refused(&e, "unauthorized");
    let e = copy(quay, Some("alice:alice-pw"), "alice-quay").unwrap_err();
    assert_refused(&e, "denied");
    let manifest = "/v2/coreos/flannel/manifests/v0.11.0";
    assert_eq!(env.upstream_requests("quay.io", "GET", manifest), 0);
    assert_eq!(env.upstream_requests("quay.io", "HEAD", manifest), 0);

    copy(quay, Some("ci:ci-pw"), "ci-quay").unwrap_or_else(|e| panic!("{e}"));
    let case = |name: &str, image| Case {
        name: name.into(),
        image,
        all: false,
    };
    check_dir(&env.dir().join("ci-quay"), &case(quay, flannel));
    env.assert_cached(flannel, "amd64");
    let hub = "docker.io/library/busybox:latest";
    copy(hub, Some("alice:alice-pw"), "alice-hub").unwrap_or_else(|e| panic!("{e}"));
    check_dir(&env.dir().join("alice-hub"), &case(hub, busybox));

    // Cached now: alice is refused just the same.
    let again = copy(quay, Some("alice:alice-pw"), "alice-quay-2").unwrap_err();
    assert_refused(&again, "denied");
}

/// containerd's per-host credentials through berth with `[auth]`: ctr's `--user` goes to the
/// resolver's one authorizer, which answers berth's Basic challenge for every host of the pull
/// (the mirror host included); a hosts.toml has no credentials field, but its `header` table sends
/// an `Authorization` header to the mirror host with every request. No credentials get 401, a user
/// not listed on the upstream 403 (the registry never asked), the right users pull, and berth's
/// request log names them.
#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh and root; run by tests/run.sh"]
fn login_containerd_per_host_credentials() {
    let env = login_env("");
    let (daemon, ctr) = start_containerd(&env);
    let hosts = ctr_hosts_dir(&env, "hosts", "");
    let quay = "quay.io/coreos/flannel:v0.11.0";
    let pull = |args: &[&str], reference| ctr_pull(&ctr, &hosts, args, reference);

    for (args, want) in [
        (&[][..], "401 unauthorized"),
        (&["--user", "ci:wrong"][..], "401 unauthorized"),
        (&["--user", "alice:alice-pw"][..], "403 forbidden"),
    ] {
        let e = pull(args, quay).unwrap_err();
        assert_refused(&e, want);
        eprintln!(
            "ctr pull {args:?}: {}",
            e.lines().last().unwrap_or_default()
        );
    }
    let manifest = "/v2/coreos/flannel/manifests/v0.11.0";
    assert_eq!(env.upstream_requests("quay.io", "GET", manifest), 0);
    assert_eq!(env.upstream_requests("quay.io", "HEAD", manifest), 0);

    let flannel = seed::image("coreos/flannel");
    pull(&["--user", "ci:ci-pw"], quay).unwrap_or_else(|e| panic!("{e}"));
    assert_ctr_has(&ctr, quay, flannel);
    env.assert_cached(flannel, "amd64");
    env.wait_request_logged("repo=\"coreos/flannel\"", "ci");

    // The hosts.toml way: a static header for the mirror host, no `--user`.
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("alice:alice-pw");
    let header = format!(
        "  [host.\"http://{}\".header]\n    Authorization = \"Basic {basic}\"\n",
        env.berth_addr()
    );
    let alice_hosts = ctr_hosts_dir(&env, "hosts-alice", &header);
    let hub = "docker.io/library/busybox:latest";
    ctr_pull(&ctr, &alice_hosts, &[], hub).unwrap_or_else(|e| panic!("{e}"));
    let busybox = seed::image("library/busybox");
    assert_ctr_has(&ctr, hub, busybox);
    env.assert_cached(busybox, "amd64");
    env.wait_request_logged("repo=\"library/busybox\"", "alice");
    // Cached now: alice is refused through quay.io just the same.
    let e = ctr_pull(&ctr, &alice_hosts, &[], quay).unwrap_err();
    assert_refused(&e, "403 forbidden");
    assert!(env.metric_sum("berth_auth_attempts_total{outcome=\"ok\"}") > 0);
    assert!(env.metric_sum("berth_auth_denials_total{reason=\"forbidden\"}") >= 2);
    assert!(env.metric_sum("berth_auth_denials_total{reason=\"login_required\"}") >= 1);
    drop(daemon);
}

/// `podman login` against berth (which checks the password at `/v2/`), then a pull through berth
/// as a mirror with the stored credentials.
#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn login_podman_login_then_pull() {
    let env = login_env("");
    let auth_file = env.dir().join("auth.json");
    // podman refuses a REGISTRY_AUTH_FILE that does not exist.
    std::fs::write(&auth_file, "{}").unwrap();
    let podman = podman_client(&env, Some(&auth_file));
    let berth = env.berth_addr();
    let login = |user: &str, password: &str| {
        proc::try_run(
            &mut podman(&[
                "login",
                "--tls-verify=false",
                "-u",
                user,
                "-p",
                password,
                berth,
            ]),
            PULL_LIMIT,
        )
    };
    let e = login("ci", "wrong").unwrap_err();
    assert_refused(&e, "invalid username/password");
    assert!(!std::fs::read_to_string(&auth_file).unwrap().contains(berth));
    let reference = "quay.io/coreos/flannel:v0.11.0";
    let policy = env.policy.display().to_string();
    // Not logged in: berth refuses, and quay.io itself is a dead port.
    let e = proc::try_run(
        &mut podman(&["pull", "-q", "--signature-policy", &policy, reference]),
        PULL_LIMIT,
    )
    .unwrap_err();
    assert_refused(&e, "unauthorized");

    let out = login("ci", "ci-pw").unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("Login Succeeded"), "{out}");
    podman_pull(
        &env,
        &podman,
        reference,
        seed::image("coreos/flannel"),
        " as ci",
    );
}

/// `docker login` against berth checks the password at `/v2/`, and a pull by berth's own name
/// uses it. skopeo without credentials pulls through the anonymous upstream (containers/image
/// answers a Basic challenge it has no credentials for with empty ones).
#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh and root; run by tests/run.sh"]
fn login_docker_login_and_anonymous_upstream() {
    let env = login_env("anonymous_upstreams = [\"docker.io\"]");
    let busybox = seed::image("library/busybox");
    let mut cmd = Command::new("skopeo");
    env.client_env(&mut cmd);
    let out = env.dir().join("anonymous-hub");
    cmd.arg("--policy")
        .arg(&env.policy)
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!(
            "docker://{}/docker.io/library/busybox:latest",
            env.berth_addr()
        ))
        .arg(format!("dir:{}", out.display()));
    proc::run(&mut cmd, PULL_LIMIT);
    let case = Case {
        name: "docker.io/library/busybox:latest".into(),
        image: busybox,
        all: false,
    };
    check_dir(&out, &case);
    // skopeo answered the challenge with empty credentials: anonymous, not a failed login.
    assert_eq!(env.metric_sum("berth_auth_attempts_total"), 0);

    let (daemon, docker) = start_dockerd(&env);
    let berth = env.berth_addr();
    let flannel = format!("{berth}/quay.io/coreos/flannel:v0.11.0");
    let e = proc::try_run(&mut docker(&["pull", "-q", &flannel]), PULL_LIMIT).unwrap_err();
    assert_refused(&e, "no basic auth credentials");
    let login = |user: &str, password: &str| {
        proc::try_run(
            &mut docker(&["login", "-u", user, "-p", password, berth]),
            PULL_LIMIT,
        )
    };
    let e = login("ci", "wrong").unwrap_err();
    assert_refused(&e, "unauthorized");
    let out = login("ci", "ci-pw").unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("Login Succeeded"), "{out}");
    docker_pull(&env, &docker, &flannel, seed::image("coreos/flannel"));
    drop(daemon);
}

// ---------------------------------------------------------------------------------------------
// dockerd

#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn dockerd_through_berth() {
    dockerd(Via::Berth);
}

#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn dockerd_registry_direct() {
    dockerd(Via::Registry);
}

/// A throwaway dockerd whose `registry-mirrors` is berth (or the registry), answering, and a
/// `docker` command for it.
fn start_dockerd(env: &Env) -> (Proc, impl Fn(&[&str]) -> Command + '_) {
    let d = env.dir().join("dk");
    std::fs::create_dir_all(&d).unwrap();
    let sock = format!("unix://{}", d.join("d.sock").display());
    let cfg = d.join("daemon.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec_pretty(&serde_json::json!({
            "registry-mirrors": [format!("http://{}", env.mirror("docker.io"))],
            "insecure-registries": [env.mirror("docker.io")],
            // Else dockerd 20.10 writes /etc/docker/key.json.
            "deprecated-key-path": d.join("key.json"),
        }))
        .unwrap(),
    )
    .unwrap();
    let mut cmd = Command::new("dockerd");
    // The daemon does the pulling: if the mirror fails it falls back to Docker Hub, which must fail.
    env.client_env(&mut cmd);
    cmd.arg("--config-file")
        .arg(&cfg)
        .arg("--data-root")
        .arg(d.join("data"))
        .arg("--exec-root")
        .arg(d.join("x"))
        .arg("--pidfile")
        .arg(d.join("pid"))
        .args(["-H", &sock])
        .args([
            "--storage-driver=vfs",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--ip-forward=false",
        ]);
    let mut daemon = Proc::spawn("dockerd", cmd, env.dir());
    // The docker.io package's client matches the daemon; another `docker` may come first in PATH.
    let cli = if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    let docker = move |args: &[&str]| {
        let mut cmd = Command::new(cli);
        env.client_env(&mut cmd);
        cmd.env("DOCKER_CONFIG", d.join("cli"))
            .args(["-H", &sock])
            .args(args);
        cmd
    };
    wait_client(&mut daemon, || docker(&["version"]));
    (daemon, docker)
}

fn dockerd(via: Via) {
    let env = Env::start(via);
    let (daemon, docker) = start_dockerd(&env);
    let img = seed::image("library/alpine");
    let digests = docker_pull(&env, &docker, "alpine:3.19", img);
    let want = format!("alpine@{}", img.top.digest);
    assert!(digests.contains(&want), "RepoDigests {digests} lack {want}");
    drop(daemon);
}

/// `docker pull` of `reference`: its `RepoDigests` (returned) name `img`'s digest, and berth cached
/// its amd64 blobs.
fn docker_pull(
    env: &Env,
    docker: impl Fn(&[&str]) -> Command,
    reference: &str,
    img: &Image,
) -> String {
    let started = Instant::now();
    proc::run(&mut docker(&["pull", "-q", reference]), PULL_LIMIT);
    eprintln!("docker pull {reference} in {:.1?}", started.elapsed());
    let digests = proc::run(
        &mut docker(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            reference,
        ]),
        PULL_LIMIT,
    );
    assert!(digests.contains(&img.top.digest), "{digests}");
    env.assert_cached(img, "amd64");
    digests
}

// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// manifest negotiation

/// What clients send as `Accept` (Docker's separate headers joined), and what berth must answer
/// for each kind of seeded image.
const ACCEPTS: &[(&str, Option<&str>)] = &[
    ("none", None),
    ("*/*", Some("*/*")),
    (
        "oci only",
        Some("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"),
    ),
    (
        "docker only",
        Some(
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json",
        ),
    ),
    (
        "index only",
        Some(
            "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
        ),
    ),
    (
        "docker",
        Some(
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
    ),
    (
        "containerd",
        Some(
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*",
        ),
    ),
    (
        "podman",
        Some(
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json",
        ),
    ),
    (
        "schema 1 only",
        Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    ),
];

const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What berth must answer `accept` for `img`: the stored manifest if the client's types include it
/// (or it names none, or a wildcard); Distribution's schema 1 conversion of a Docker image for a
/// client that reads only schema 1; otherwise 404.
fn expected(img: &Image, accept: Option<&str>) -> Result<&'static str, u16> {
    let Some(accept) = accept else {
        return Ok(img.media_type);
    };
    let named: Vec<&str> = accept
        .split(',')
        .map(|t| t.split(';').next().unwrap().trim())
        .collect();
    if named.contains(&"*/*") || named.contains(&img.media_type) {
        Ok(img.media_type)
    } else if named.contains(&SCHEMA1) && img.media_type.contains("docker") {
        Ok(SCHEMA1)
    } else {
        Err(404)
    }
}

/// The digest of a signed schema 1 manifest's payload: its bytes without the `signatures` member,
/// cut out here independently of berth's own JWS parsing.
fn schema1_payload_digest(body: &[u8]) -> String {
    let text = std::str::from_utf8(body).expect("schema 1 is JSON");
    let start = text.find(",\n   \"signatures\"").expect("signed");
    let end = text.rfind("\n}").expect("closing brace");
    let payload = format!("{}{}", &text[..start], &text[end..]);
    format!("sha256:{}", seed::sha256_hex(payload.as_bytes()))
}

/// Against the real Distribution registry (which converts Docker schema 2 to signed schema 1 for
/// clients that do not name it): a fresh berth answers 25 concurrent pulls per tag, with five
/// different `Accept` values, after one upstream request per tag; then every client kind gets the
/// right status, type and digest for every kind of image, HEAD agreeing with GET, and no false
/// digest mismatch is counted.
#[test]
#[ignore = "end-to-end: needs tests/install-deps.sh; run by tests/run.sh"]
fn manifest_negotiation_against_the_distribution_registry() {
    use e2e_support::http::request;
    let env = Env::start(Via::Berth);
    let berth = env.mirror("docker.io").to_owned();
    let path = |img: &Image| format!("/v2/{}/{}/manifests/{}", img.upstream, img.repo, img.tag);
    let mix = [ACCEPTS[0], ACCEPTS[1], ACCEPTS[2], ACCEPTS[5], ACCEPTS[6]];

    std::thread::scope(|s| {
        let mut pulls = Vec::new();
        for img in seed::images() {
            for i in 0..25 {
                let (client, accept) = mix[i % mix.len()];
                let (berth, path) = (&berth, path(img));
                pulls.push(s.spawn(move || {
                    let r = request("GET", berth, &path, accept).expect("berth answers");
                    (img, client, accept, r)
                }));
            }
        }
        for p in pulls {
            let (img, client, accept, r) = p.join().unwrap();
            let what = format!("{client} pulling {}", img.reference());
            match expected(img, accept) {
                Ok(media_type) => {
                    assert_eq!(
                        r.status,
                        200,
                        "{what}: {}",
                        String::from_utf8_lossy(&r.body)
                    );
                    assert_eq!(r.header("content-type"), Some(media_type), "{what}");
                    assert_eq!(r.header("docker-content-digest"), Some(&*img.top.digest));
                    assert_eq!(seed::sha256_hex(&r.body), img.top.hex(), "{what}");
                }
                Err(status) => assert_eq!(r.status, status, "{what}"),
            }
        }
    });
    for img in seed::images() {
        let upstream_path = format!("/v2/{}/manifests/{}", img.repo, img.tag);
        // The registry logs a request after answering it: wait (bounded) for the line.
        let deadline = Instant::now() + Duration::from_secs(10);
        let gets = loop {
            let n = env.upstream_requests(img.upstream, "GET", &upstream_path);
            if n > 0 || Instant::now() > deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(gets, 1, "upstream GETs of {}", img.reference());
        assert_eq!(
            env.upstream_requests(img.upstream, "HEAD", &upstream_path),
            0
        );
    }

    for img in seed::images() {
        for (client, accept) in ACCEPTS {
            let what = format!("{client} asking for {}", img.reference());
            let get = request("GET", &berth, &path(img), *accept).unwrap();
            let head = request("HEAD", &berth, &path(img), *accept).unwrap();
            let text = String::from_utf8_lossy(&get.body).into_owned();
            match expected(img, *accept) {
                Ok(SCHEMA1) => {
                    assert_eq!(get.status, 200, "{what}: {text}");
                    assert_eq!(get.header("content-type"), Some(SCHEMA1), "{what}");
                    let payload = schema1_payload_digest(&get.body);
                    assert_eq!(get.header("docker-content-digest"), Some(&*payload));
                }
                Ok(media_type) => {
                    assert_eq!(get.status, 200, "{what}: {text}");
                    assert_eq!(get.header("content-type"), Some(media_type), "{what}");
                    assert_eq!(get.header("docker-content-digest"), Some(&*img.top.digest));
                    assert_eq!(seed::sha256_hex(&get.body), img.top.hex(), "{what}");
                }
                Err(status) => {
                    assert_eq!(get.status, status, "{what}: {text}");
                    assert!(text.contains("MANIFEST_UNKNOWN"), "{what}: {text}");
                }
            }
            assert_eq!(head.status, get.status, "HEAD, {what}");
            assert!(head.body.is_empty(), "HEAD, {what}");
            for h in ["content-type", "docker-content-digest", "content-length"] {
                if h == "content-length" && get.header("content-type") == Some(SCHEMA1) {
                    continue; // signed afresh for every request
                }
                assert_eq!(head.header(h), get.header(h), "HEAD {h}, {what}");
            }
        }
    }
    assert_eq!(env.metric_sum("berth_digest_mismatches_total"), 0);
}
