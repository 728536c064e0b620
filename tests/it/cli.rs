//! The `berth` command line: help, version, check-config, and refusing a bad config before binding.

use crate::support;

use std::net::TcpListener;
use std::process::{Command, Stdio};

use support::served::{Served, serve};

fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

/// `berth <subcommand> --config <cfg>`, run to its end (stdin closed).
fn run_with_config(subcommand: &str, cfg: &std::path::Path) -> std::process::Output {
    berth()
        .args([subcommand, "--config"])
        .arg(cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Writes a config file into `dir`.
fn config_file(dir: &tempfile::TempDir, name: &str, text: impl AsRef<str>) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text.as_ref()).unwrap();
    path
}

/// A config file `name` in `dir`: both listeners on port 0, `server_extra` added to `[server]`,
/// storage in `dir/data`.
fn any_port_config(dir: &tempfile::TempDir, name: &str, server_extra: &str) -> std::path::PathBuf {
    config_file(
        dir,
        name,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [storage]\npath = \"{}\"\n[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n",
            dir.path().join("data").display()
        ),
    )
}

/// `berth serve` (logging at info) on [`any_port_config`].
fn serve_on_any_port(dir: &tempfile::TempDir, server_extra: &str) -> Served {
    serve(
        &any_port_config(dir, "c.toml", server_extra),
        &[("RUST_LOG", "info")],
    )
}

#[test]
fn help_and_version() {
    let out = berth().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "check-config", "verify", "registry-mirrors"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    let out = berth().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret-value\n").unwrap();
    let cfg = config_file(
        &dir,
        "c.toml",
        format!(
            "[[upstream]]\nname = \"registry.example.com\"\nurl = \"https://registry.example.com\"\nusername = \"bot\"\npassword_file = \"{}\"\n",
            dir.path().join("pw").display()
        ),
    );
    let out = run_with_config("check-config", &cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("registry.example.com") && text.contains("tag_ttl = \"30s\""),
        "{text}"
    );
    assert!(text.contains("<redacted>"), "{text}");
    assert!(!text.contains("s3cret-value"), "secret printed: {text}");
}

#[test]
fn check_config_names_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        &dir,
        "bad.toml",
        "[[upstream]]\nname = \"a.io\"\nurl = \"ftp://a.io\"\n",
    );
    let out = run_with_config("check-config", &cfg);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("upstream[0].url") && err.contains("scheme"),
        "{err}"
    );
}

#[test]
fn serve_refuses_a_bad_config_before_binding() {
    // Hold a port; a bad config must fail on the config, not on the port.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        &dir,
        "bad.toml",
        format!(
            "[server]\nlisten = \"{}\"\nlisten_typo = 1\n[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n",
            holder.local_addr().unwrap()
        ),
    );
    let out = run_with_config("serve", &cfg);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_typo"), "{err}");
}

/// A config file that cannot be read is named in the error by every subcommand that takes
/// --config (it once said `-: cannot read: ...`, a placeholder where a key goes).
#[test]
fn every_subcommand_names_a_config_file_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent.toml");
    let want = format!("cannot read {}: ", missing.display());
    for args in [
        &["serve"][..],
        &["check-config"],
        &["verify"],
        &["cache", "stats"],
        &["warm", "nginx:1.25"],
    ] {
        let out = berth()
            .args(args)
            .arg("--config")
            .arg(&missing)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: {err}");
        assert!(!err.contains(": -:"), "{args:?}: {err}");
    }
}

#[test]
fn serve_reports_a_busy_port() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        &dir,
        "c.toml",
        format!(
            "[server]\nlisten = \"{}\"\n[metrics]\nenabled = false\n[storage]\npath = \"{}\"\n[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n",
            holder.local_addr().unwrap(),
            dir.path().join("data").display()
        ),
    );
    let out = run_with_config("serve", &cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on"), "{err}");
}

#[tokio::test]
async fn sigterm_stops_serving_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_on_any_port(&dir, "shutdown_grace = \"5s\"\n");
    // The start-up line says where it listens; SIGTERM only after that.
    served.started().await;
    served.signal("-TERM");
    let rest = served.rest().await;
    let exit = served.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("SIGTERM")), "{rest:?}");
}

/// `berth health` is the container HEALTHCHECK (no curl in a scratch image): 0 on 2xx, 1 on any
/// other answer or none, 2 on a URL it cannot probe.
#[tokio::test]
async fn health_probe_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_on_any_port(&dir, "");
    served.started().await;
    let metrics = format!("http://{}", served.metrics);
    let health = |url: &str, timeout: &str| {
        berth()
            .args(["health", "--url", url, "--timeout", timeout])
            .output()
            .unwrap()
    };

    let out = health(&format!("{metrics}/healthz"), "5s");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("200") && text.contains("ok"), "{text}");

    let out = health(&format!("{metrics}/nothing-here"), "5s");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));

    served.signal("-TERM");
    let _ = served.child.wait();

    // Refused: nothing listens there.
    let dead = support::ports::Dead::new();
    let out = health(&format!("http://{}/healthz", dead.addr()), "5s");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Accepted by the kernel but never answered: the timeout decides.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let out = health(
        &format!("http://{}/healthz", silent.local_addr().unwrap()),
        "300ms",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer within"));

    // https is probed like http (here: refused); other schemes are a usage error.
    let out = health(&format!("https://{}/healthz", dead.addr()), "1s");
    assert_eq!(out.status.code(), Some(1));
    let out = health("ftp://127.0.0.1:1/healthz", "1s");
    assert_eq!(out.status.code(), Some(2));
    // A --ca-file that holds no certificate: a usage error, named.
    let out = berth()
        .args([
            "health",
            "--url",
            "https://127.0.0.1:1/healthz",
            "--ca-file",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--ca-file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = health("not a url", "1s");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_and_serve_refuse_an_htpasswd_file_with_other_hash_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let good = format!("ci:{}\n", bcrypt::hash("pw", 4).unwrap());
    let cfg = config_file(
        &dir,
        "c.toml",
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [storage]\npath = \"{}\"\n[auth]\nhtpasswd = \"{}\"\n\
             [[upstream]]\nname = \"registry.example.com\"\nurl = \"https://registry.example.com\"\n\
             users = [\"ci\"]\n",
            dir.path().join("data").display(),
            htpasswd.display()
        ),
    );
    std::fs::write(&htpasswd, &good).unwrap();
    let out = run_with_config("check-config", &cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("users = [\"ci\"]"), "{text}");
    assert!(!text.contains("$2"), "the hash is not printed: {text}");

    // An MD5 entry (htpasswd -m) on line 2.
    std::fs::write(
        &htpasswd,
        good + "bob:$apr1$Vv4pt7Xm$Td3Qh0kz1n7y8ZJX8Xv1U/\n",
    )
    .unwrap();
    // check-config exits 2 on a bad config, serve 1 when it cannot start, as for any config.
    for (cmd, code) in [("check-config", 2), ("serve", 1)] {
        let out = run_with_config(cmd, &cfg);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{cmd}: {err}");
        assert!(
            err.contains("line 2") && err.contains("MD5"),
            "{cmd}: {err}"
        );
        assert!(
            err.contains(&htpasswd.display().to_string()),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn verify_bucket_needs_a_bucket_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data/blobs/sha256")).unwrap();
    let cfg = config_file(
        &dir,
        "berth.toml",
        format!(
            "[storage]\npath = \"{}\"\n[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\n",
            dir.path().join("data").display()
        ),
    );
    let out = berth()
        .args(["verify", "--bucket", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--bucket needs [storage.s3]"), "{err}");
    // Without the flag, the same config verifies the disk as before.
    let out = run_with_config("verify", &cfg);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("files checked: 0"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("bucket"));
}

/// Two berths on one storage directory would each evict by its own index: the second refuses to
/// start, naming the directory and the process that holds it, and binds nothing. `berth verify`
/// still works beside the running one, and once it exits the directory is free again.
#[tokio::test]
async fn a_second_berth_on_one_storage_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = serve_on_any_port(&dir, "shutdown_grace = \"5s\"\n");
    first.started().await;
    let data = dir.path().join("data");

    // Its own config file (ports 0: the failure cannot be a port clash), same storage.
    let cfg = any_port_config(&dir, "second.toml", "");
    let out = run_with_config("serve", &cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&data.display().to_string()), "{err}");
    assert!(err.contains(&format!("pid {}", first.child.id())), "{err}");
    assert!(!err.contains("listening"), "{err}");

    let out = run_with_config("verify", &cfg);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    first.signal("-TERM");
    first.rest().await;
    assert_eq!(first.child.wait().unwrap().code(), Some(0));
    let mut again = serve(&cfg, &[("RUST_LOG", "info")]);
    again.started().await;
}
