//! One test's world: a seeded Distribution registry per upstream host, and (unless the test points
//! clients straight at the registries to check the harness itself) berth in front of them. Everything lives in one
//! temporary directory and every process stops when the `Env` is dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::http;
use super::proc::{self, Proc};
use super::seed::{self, Image};
use crate::ports::{Dead, free_port};

/// Where clients are pointed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Berth, with the registry as its upstream: the real tests.
    Berth,
    /// The registry itself: checks the seeding and each client flow without berth.
    Registry,
}

/// How long a daemon gets to come up.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// The upstream hosts berth mirrors in these tests. Each has its own registry holding only its own
/// images, so a request routed to the wrong upstream finds nothing.
pub const UPSTREAMS: [&str; 2] = ["docker.io", "quay.io"];

/// One Distribution registry standing in for an upstream host.
struct Registry {
    host: &'static str,
    proc: Option<Proc>,
    addr: String,
    log: PathBuf,
    /// Length of its log once seeding was checked: later lines are the clients' (berth's) requests.
    seeded_log_len: usize,
}

pub struct Env {
    pub via: Via,
    // Fields drop in order: berth, then the registries, then the directory. Client daemons a test
    // starts are its locals, declared after the `Env`, so they stop first.
    berth: Option<Proc>,
    registries: Vec<Registry>,
    berth_addr: String,
    /// berth's metrics listener (`/metrics`, `/healthz`).
    pub metrics_addr: String,
    /// Berth's cache root (`[storage] path`).
    pub storage: PathBuf,
    /// A loopback port nothing listens on: where "the real registry" and proxies point.
    pub dead: String,
    /// Holds `dead`, so that no other socket takes its port.
    _dead: Dead,
    pub policy: PathBuf,
    /// Extra berth config: top-level tables (e.g. `[auth]`), then keys per upstream host.
    extra: BerthExtra,
    tmp: Option<tempfile::TempDir>,
}

/// Config added to berth's: `tables` after the upstreams, `upstream` keys by host.
#[derive(Default)]
pub struct BerthExtra {
    pub tables: String,
    pub upstream: Vec<(&'static str, String)>,
}

impl Env {
    pub fn start(via: Via) -> Env {
        Env::start_with(via, |_| BerthExtra::default())
    }

    /// As [`Env::start`], with config added to berth's, made from the test directory (where a
    /// test writes the files its config names).
    pub fn start_with(via: Via, extra: impl FnOnce(&Path) -> BerthExtra) -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("berth-e2e")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let dir = tmp.path().to_owned();
        let policy = dir.join("policy.json");
        seed::write_policy(&policy);
        seed::images(); // generated once per process, before any daemon starts

        let mut registries = Vec::new();
        for host in UPSTREAMS {
            // The registry is told its port: it cannot be handed a bound socket.
            let addr = format!("127.0.0.1:{}", free_port());
            let cfg = dir.join(format!("registry-{host}.yml"));
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {addr}\n",
                    dir.join(format!("registry-{host}-data")).display()
                ),
            )
            .unwrap();
            let name = format!("registry-{host}");
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve").arg(&cfg);
            registries.push(Registry {
                host,
                proc: Some(Proc::spawn(&name, cmd, &dir)),
                addr,
                log: dir.join(format!("{name}.log")),
                seeded_log_len: 0,
            });
        }
        let mut pushes = Vec::new();
        for r in &mut registries {
            wait_ready(r.proc.as_mut().unwrap(), &r.addr, "/v2/");
            pushes.extend(seed::images_of(r.host).map(|img| (r.addr.clone(), img)));
        }
        seed::push(&pushes, &policy);
        for r in &mut registries {
            r.seeded_log_len = read_log(&r.log).len();
        }

        let dead = Dead::new();
        let mut env = Env {
            via,
            berth: None,
            registries,
            berth_addr: String::new(),
            metrics_addr: String::new(),
            storage: dir.join("berth-data"),
            dead: dead.addr().to_string(),
            _dead: dead,
            policy,
            extra: extra(&dir),
            tmp: Some(tmp),
        };
        if via == Via::Berth {
            env.start_berth();
        }
        env
    }

    pub fn dir(&self) -> &Path {
        self.tmp.as_ref().expect("tmp").path()
    }

    fn registry(&self, host: &str) -> &Registry {
        self.registries
            .iter()
            .find(|r| r.host == host)
            .unwrap_or_else(|| panic!("no registry for {host}"))
    }

    fn start_berth(&mut self) {
        // A child process without socket activation: told its ports.
        self.berth_addr = format!("127.0.0.1:{}", free_port());
        self.metrics_addr = format!("127.0.0.1:{}", free_port());
        let cfg = self.write_berth_config();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info,berth=debug")
            .env("NO_COLOR", "1");
        let mut berth = Proc::spawn("berth", cmd, self.dir());
        wait_ready(&mut berth, &self.metrics_addr, "/healthz");
        self.berth = Some(berth);
    }

    /// Writes berth's config (its listeners, the registries as upstreams, `extra`); its path.
    fn write_berth_config(&self) -> PathBuf {
        let cfg = self.dir().join("berth.toml");
        let mut text = format!(
            "[server]\nlisten = \"{}\"\n\n[metrics]\nlisten = \"{}\"\n\n\
             [storage]\npath = \"{}\"\n",
            self.berth_addr,
            self.metrics_addr,
            self.storage.display()
        );
        for r in &self.registries {
            text += &format!(
                "\n[[upstream]]\nname = \"{}\"\nurl = \"http://{}\"\n",
                r.host, r.addr
            );
            if r.host == "docker.io" {
                text += "default = true\nlibrary_prefix = true\n";
            }
            for (host, keys) in &self.extra.upstream {
                if *host == r.host {
                    text += keys;
                    text += "\n";
                }
            }
        }
        text += &self.extra.tables;
        std::fs::write(&cfg, text).unwrap();
        cfg
    }

    /// Replaces the top-level tables of berth's config (`BerthExtra::tables`) and sends the
    /// running berth `SIGHUP`; returns once it counted the reload a success (panics, with its log,
    /// if it counted a failure or nothing within 10 s).
    pub fn reload_berth(&mut self, tables: &str) {
        let success = "berth_config_reloads_total{outcome=\"success\"}";
        let failure = "berth_config_reloads_total{outcome=\"failure\"}";
        let (ok, failed) = (self.metric_sum(success), self.metric_sum(failure));
        self.extra.tables = tables.to_owned();
        self.write_berth_config();
        let berth = self.berth.as_mut().expect("berth runs");
        berth.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tail = || self.berth.as_ref().unwrap().log_tail(30);
            assert_eq!(
                self.metric_sum(failure),
                failed,
                "reload refused:\n{}",
                tail()
            );
            if self.metric_sum(success) > ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no reload after 10 s:\n{}",
                tail()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// berth's registry listener, `host:port`.
    pub fn berth_addr(&self) -> &str {
        &self.berth_addr
    }

    /// `host:port` a client pulls `host`'s images from: berth, or that host's registry.
    pub fn mirror(&self, host: &str) -> &str {
        match self.via {
            Via::Berth => &self.berth_addr,
            Via::Registry => &self.registry(host).addr,
        }
    }

    /// The repository path a client names at the mirror for `repo` on upstream `host`: with the
    /// host prefix for berth (`docker.io/library/alpine`), bare for the registry.
    pub fn prefixed(&self, host: &str, repo: &str) -> String {
        match self.via {
            Via::Berth => format!("{host}/{repo}"),
            Via::Registry => repo.to_owned(),
        }
    }

    /// `host:port[/prefix]`, for a mirror location that names upstream `host` in its path.
    pub fn mirror_location(&self, host: &str) -> String {
        match self.via {
            Via::Berth => format!("{}/{host}", self.berth_addr),
            Via::Registry => self.registry(host).addr.clone(),
        }
    }

    /// `host:port` of `host`'s registry itself, whoever the clients go to: where a test pushes.
    pub fn registry_addr(&self, host: &str) -> &str {
        &self.registry(host).addr
    }

    /// Stops berth and starts it again on the same config and cache (on new ports): what it
    /// answers then comes from its disk, not its memory.
    pub fn restart_berth(&mut self) {
        assert_eq!(self.via, Via::Berth, "no berth to restart");
        if let Some(mut b) = self.berth.take() {
            b.stop();
        }
        self.start_berth();
    }

    /// Stops berth (for a test where another berth in front of it must do without it).
    pub fn stop_berth(&mut self) {
        if let Some(mut b) = self.berth.take() {
            b.stop();
        }
    }

    /// Stops the registries: from now on only berth's cache can answer.
    pub fn stop_registries(&mut self) {
        for r in &mut self.registries {
            if let Some(mut p) = r.proc.take() {
                p.stop();
            }
        }
    }

    /// Environment for client processes: any attempt to leave the machine goes to a dead port.
    pub fn client_env(&self, cmd: &mut Command) {
        let proxy = format!("http://{}", self.dead);
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            cmd.env(k, &proxy);
        }
        for k in ["NO_PROXY", "no_proxy"] {
            cmd.env(k, "127.0.0.1,localhost");
        }
        cmd.env("HOME", self.dir().join("home"));
        cmd.env_remove("DOCKER_HOST");
    }

    /// Waits (at most 20 s) until berth runs no fill: a verified blob is renamed into place just
    /// after its last byte is released, so a client (or a warm) can finish a moment before the
    /// file is there.
    pub fn settled(&self) {
        let started = std::time::Instant::now();
        loop {
            let r = http::get(&self.metrics_addr, "/metrics", None);
            let idle = r.as_ref().is_ok_and(|r| {
                String::from_utf8_lossy(&r.body)
                    .lines()
                    .any(|l| l == "berth_fills_in_flight 0")
            });
            if idle {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "berth still runs fills after 20 s"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// After a client pulled `img` for `arch`: berth's cache holds its config and layers, each
    /// file with the right sha256. (Nothing to check when clients went to the registry.)
    pub fn assert_cached(&self, img: &Image, arch: &str) {
        if self.via != Via::Berth {
            return;
        }
        self.settled();
        let p = img.platform(arch);
        for b in std::iter::once(&p.config).chain(&p.layers) {
            let path = self.storage.join("blobs/sha256").join(b.hex());
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "berth did not cache {} of {} ({arch}): {}: {e}",
                    b.digest,
                    img.reference(),
                    path.display()
                )
            });
            assert_eq!(
                seed::sha256_hex(&bytes),
                b.hex(),
                "{} holds other bytes",
                path.display()
            );
        }
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Env {
    /// How many times each blob (by hex digest) was fetched from `host`'s registry since seeding,
    /// from its access log lines: `"GET /v2/<name>/blobs/sha256:<hex>[?...] HTTP/1.1" <status>`.
    pub fn upstream_blob_gets(&self, host: &str) -> HashMap<String, usize> {
        let r = self.registry(host);
        let log = read_log(&r.log);
        let mut counts = HashMap::new();
        for line in log[r.seeded_log_len.min(log.len())..].lines() {
            let Some((_, request)) = line.split_once("\"GET /v2/") else {
                continue;
            };
            let Some((_, rest)) = request.split_once("/blobs/sha256:") else {
                continue;
            };
            let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
            *counts.entry(hex).or_insert(0) += 1;
        }
        counts
    }

    /// How many `<method> <path>` requests (path without query) `host`'s registry logged since
    /// seeding.
    pub fn upstream_requests(&self, host: &str, method: &str, path: &str) -> usize {
        let r = self.registry(host);
        let log = read_log(&r.log);
        let plain = format!("\"{method} {path} ");
        let queried = format!("\"{method} {path}?");
        log[r.seeded_log_len.min(log.len())..]
            .lines()
            .filter(|l| l.contains(&plain) || l.contains(&queried))
            .count()
    }

    /// The sum of berth's metric samples whose line starts with `prefix` (a family name, or a
    /// name with its full label set).
    pub fn metric_sum(&self, prefix: &str) -> u64 {
        let r = http::get(&self.metrics_addr, "/metrics", None).expect("metrics");
        String::from_utf8_lossy(&r.body)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Waits (bounded) until berth's request log holds a `200` line containing `needle` with
    /// `user="<user>"`: log lines are written in batches, after the response.
    #[track_caller]
    pub fn wait_request_logged(&self, needle: &str, user: &str) {
        let log = self.dir().join("berth.log");
        let want = format!(" user=\"{user}\"");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = read_log(&log);
            let found = text.lines().any(|l| {
                l.contains("request method=")
                    && l.contains(needle)
                    && l.contains(" status=200 ")
                    && l.contains(&want)
            });
            if found {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no request line with {needle} and{want} in berth's log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every blob of `img` (all platforms) was fetched from the registry exactly once.
    pub fn assert_fetched_once(&self, img: &Image) {
        if self.via != Via::Berth {
            return;
        }
        let counts = self.upstream_blob_gets(img.upstream);
        for p in &img.platforms {
            for b in std::iter::once(&p.config).chain(&p.layers) {
                let n = counts.get(b.hex()).copied().unwrap_or(0);
                assert_eq!(
                    n,
                    1,
                    "berth fetched {} of {} ({}) from {}'s registry {n} times",
                    b.digest,
                    img.reference(),
                    p.arch,
                    img.upstream
                );
            }
        }
    }
}

fn wait_ready(p: &mut Proc, addr: &str, path: &str) {
    let started = std::time::Instant::now();
    loop {
        p.assert_running();
        match http::wait_for(addr, path, 200, Duration::from_millis(250)) {
            Ok(()) => return,
            Err(e) if started.elapsed() > READY_LIMIT => {
                panic!("{} not ready: {e}\nits log:\n{}", p.name(), p.log_tail(60))
            }
            Err(_) => {}
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let registries = self.registries.iter_mut().filter_map(|r| r.proc.as_mut());
        for p in self.berth.as_mut().into_iter().chain(registries) {
            if failed {
                eprintln!("---- {} log (tail) ----\n{}", p.name(), p.log_tail(40));
            }
            p.stop();
        }
        if let Some(tmp) = self.tmp.take()
            && failed
            && std::env::var_os("BERTH_E2E_KEEP").is_some()
        {
            eprintln!("kept {}", tmp.keep().display());
        }
    }
}

/// A throwaway containerd (own root, state and socket in the test directory, no CRI), answering,
/// and a `ctr` command for it.
pub fn start_containerd(env: &Env) -> (Proc, impl Fn(&[&str]) -> Command + '_) {
    let d = env.dir().join("ctrd");
    let sock = d.join("c.sock");
    std::fs::create_dir_all(&d).unwrap();
    let cfg = d.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = sock.display(),
            opt = d.join("opt").display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new("containerd");
    cmd.arg("--config").arg(&cfg);
    let mut daemon = Proc::spawn("containerd", cmd, env.dir());
    let ctr = move |args: &[&str]| {
        let mut cmd = Command::new("ctr");
        env.client_env(&mut cmd);
        cmd.arg("--address").arg(&sock).args(args);
        cmd
    };
    wait_client(&mut daemon, || ctr(&["version"]));
    (daemon, ctr)
}

/// Retries a client command until its daemon answers (bounded), failing early if the daemon died.
pub fn wait_client(daemon: &mut Proc, cmd: impl Fn() -> Command) {
    let started = Instant::now();
    loop {
        daemon.assert_running();
        match proc::try_run(&mut cmd(), Duration::from_secs(10)) {
            Ok(_) => return,
            Err(e) if started.elapsed() > Duration::from_secs(60) => {
                panic!(
                    "{} not answering after 60 s: {e}\nits log:\n{}",
                    daemon.name(),
                    daemon.log_tail(60)
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
