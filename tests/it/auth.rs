//! Client login (`[auth]`) over real sockets, in front of the fake registry: the 401 challenge,
//! 403 for users not allowed on an upstream (checked before any cache lookup or upstream
//! request), anonymous upstreams, the bcrypt verdict cache, the htpasswd file re-read on change,
//! and a flood of bad passwords kept bounded.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{Method, StatusCode};

use berth::oci::media;
use support::instance::{Berth, Got, listeners_and_storage, start_reloadable};
use support::{FakeRegistry, random_bytes};

const DOCKER: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","layers":[]}"#;

/// Cost 4: the lowest bcrypt allows, so tests that are not about its cost stay fast.
fn entry(user: &str, password: &str) -> String {
    format!("{user}:{}\n", bcrypt::hash(password, 4).unwrap())
}

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// berth with `[auth]` (the htpasswd file in its data directory holds `users`), and the fake
/// registry as two upstreams: `public.test` (the default) and `private.test` (with
/// `private_extra`, e.g. a `users` list).
async fn start(fake: &FakeRegistry, users: &str, auth_extra: &str, private_extra: &str) -> Berth {
    start_with_reloader(fake, users, auth_extra, private_extra)
        .await
        .0
}

fn config_text(dir: &Path, url: &str, auth_extra: &str, private_extra: &str) -> String {
    format!(
        r#"
        {head}
        [auth]
        htpasswd = "{htpasswd}"
        {auth_extra}
        [[upstream]]
        name = "public.test"
        url = "{url}"
        default = true
        library_prefix = true
        [[upstream]]
        name = "private.test"
        url = "{url}"
        library_prefix = true
        {private_extra}
        "#,
        head = listeners_and_storage(dir),
        htpasswd = dir.join("htpasswd").display(),
    )
}

async fn start_with_reloader(
    fake: &FakeRegistry,
    users: &str,
    auth_extra: &str,
    private_extra: &str,
) -> (Berth, berth::reload::Reloader) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("htpasswd"), users).unwrap();
    let cfg = config_text(dir.path(), &fake.url(), auth_extra, private_extra);
    start_reloadable(&cfg, dir).await
}

/// The fake registry holding `library/app:1`, a Docker manifest without layers.
async fn fake_with_app() -> FakeRegistry {
    let fake = FakeRegistry::start().await;
    fake.put_tagged("library/app", "1", media::DOCKER_MANIFEST, DOCKER);
    fake
}

async fn get_as(b: &Berth, path: &str, auth: Option<&str>) -> Got {
    match auth {
        Some(a) => b.request(Method::GET, path, &[("authorization", a)]).await,
        None => b.get(path).await,
    }
}

async fn attempts(b: &Berth, outcome: &str) -> u64 {
    b.counter(&format!(
        "berth_auth_attempts_total{{outcome=\"{outcome}\"}}"
    ))
    .await
}

fn assert_challenge(g: &Got, what: &str) {
    assert_eq!(g.status, StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(
        g.header("www-authenticate"),
        Some("Basic realm=\"berth\""),
        "{what}"
    );
    assert_eq!(g.code(), "UNAUTHORIZED", "{what}");
}

#[tokio::test]
async fn without_a_login_every_route_answers_401_with_a_basic_challenge() {
    let fake = fake_with_app().await;
    let blob = fake.put_blob("library/app", random_bytes(1000, 1));
    let b = start(&fake, &entry("alice", "secret"), "", "").await;

    let alice = basic("alice", "secret");
    let wrong = basic("alice", "guess");
    let nobody = basic("mallory", "secret");
    for path in [
        "/v2/".to_owned(),
        "/v2/app/manifests/1".to_owned(),
        format!("/v2/app/blobs/{blob}"),
        "/v2/app/tags/list".to_owned(),
        "/v2/private.test/app/manifests/1".to_owned(),
        "/v2/no/such/route".to_owned(),
    ] {
        assert_challenge(&get_as(&b, &path, None).await, &path);
        assert_challenge(&get_as(&b, &path, Some(&wrong)).await, &path);
        assert_challenge(&get_as(&b, &path, Some(&nobody)).await, &path);
        assert_challenge(&get_as(&b, &path, Some("Bearer abc")).await, &path);
    }
    let head = b.request(Method::HEAD, "/v2/", &[]).await;
    assert_eq!(head.status, StatusCode::UNAUTHORIZED);
    assert!(head.header("www-authenticate").is_some());
    assert!(
        fake.requests().is_empty(),
        "nothing reached the upstream: {:?}",
        fake.requests()
    );
    // A wrong password and an unknown user read the same.
    let w = get_as(&b, "/v2/", Some(&wrong)).await;
    let n = get_as(&b, "/v2/", Some(&nobody)).await;
    assert_eq!(w.bytes(), n.bytes());

    // With the login, berth answers as without [auth].
    assert_eq!(get_as(&b, "/v2/", Some(&alice)).await.status, 200);
    let m = get_as(&b, "/v2/app/manifests/1", Some(&alice)).await;
    assert_eq!(m.bytes().as_ref(), DOCKER.as_bytes());
    let l = get_as(&b, &format!("/v2/app/blobs/{blob}"), Some(&alice)).await;
    assert_eq!(l.status, 200);
    assert_eq!(l.bytes().len(), 1000);

    assert_eq!(attempts(&b, "bad_password").await, 7);
    assert_eq!(attempts(&b, "unknown_user").await, 7);
    assert_eq!(attempts(&b, "malformed").await, 6);
    assert_eq!(attempts(&b, "ok").await, 3);
    // The metrics listener is not behind the login.
    assert!(b.counter("berth_auth_users").await == 1);
}

#[tokio::test]
async fn a_user_not_listed_gets_403_before_any_lookup_cached_or_not() {
    let fake = fake_with_app().await;
    let cached = fake.put_blob("library/app", random_bytes(5000, 2));
    let uncached = fake.put_blob("library/app", random_bytes(5000, 3));
    let users = entry("ci", "ci-pw") + &entry("alice", "alice-pw");
    let b = start(&fake, &users, "", r#"users = ["ci"]"#).await;
    let ci = basic("ci", "ci-pw");
    let alice = basic("alice", "alice-pw");
    let private_blob = |digest: &str| format!("/v2/app/blobs/{digest}?ns=private.test");

    // ci caches a manifest and a blob through the private upstream.
    let m = get_as(&b, "/v2/private.test/app/manifests/1", Some(&ci)).await;
    assert_eq!(m.status, 200);
    let l = get_as(&b, &private_blob(&cached), Some(&ci)).await;
    assert_eq!(l.status, 200);
    b.settled().await;
    fake.reset_counts();

    let mut bodies = Vec::new();
    for path in [
        private_blob(&cached),
        private_blob(&uncached),
        "/v2/private.test/app/manifests/1".to_owned(),
        "/v2/private.test/app/manifests/2".to_owned(),
        "/v2/private.test/app/tags/list".to_owned(),
        "/v2/private.test/nothing/here/manifests/latest".to_owned(),
    ] {
        let g = get_as(&b, &path, Some(&alice)).await;
        assert_eq!(g.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(g.code(), "DENIED", "{path}");
        assert!(g.header("www-authenticate").is_none(), "{path}");
        assert!(g.header("docker-content-digest").is_none(), "{path}");
        bodies.push(g.bytes().clone());
        let head = b
            .request(Method::HEAD, &path, &[("authorization", &alice)])
            .await;
        assert_eq!(head.status, StatusCode::FORBIDDEN, "HEAD {path}");
        assert_eq!(head.header("content-length"), g.header("content-length"));
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every 403 reads the same: {bodies:?}"
    );
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    // alice's requests are never looked up in the cache.
    let lookups = b.counter("berth_cache_lookups_total").await;
    get_as(&b, &private_blob(&cached), Some(&alice)).await;
    assert_eq!(b.counter("berth_cache_lookups_total").await, lookups);
    assert_eq!(
        b.counter("berth_auth_denials_total{reason=\"forbidden\"}")
            .await,
        13
    );

    // alice may use the upstream that has no list; ci still gets the cached blob.
    let l = get_as(&b, &format!("/v2/app/blobs/{uncached}"), Some(&alice)).await;
    assert_eq!(l.status, 200);
    let l = get_as(&b, &private_blob(&cached), Some(&ci)).await;
    assert_eq!(l.status, 200);
}

#[tokio::test]
async fn anonymous_upstreams_are_open_and_the_rest_still_needs_a_login() {
    let fake = fake_with_app().await;
    let blob = fake.put_blob("library/app", random_bytes(2000, 4));
    let b = start(
        &fake,
        &entry("alice", "secret"),
        r#"anonymous_upstreams = ["public.test"]"#,
        "",
    )
    .await;

    // `/v2/` needs a login even so: that is how `docker login` checks a password.
    assert_challenge(&b.get("/v2/").await, "/v2/");
    let m = b.get("/v2/app/manifests/1").await;
    assert_eq!(m.status, 200);
    assert_eq!(m.bytes().as_ref(), DOCKER.as_bytes());
    assert_eq!(
        b.get(&format!("/v2/app/blobs/{blob}?ns=public.test"))
            .await
            .status,
        200
    );
    assert_eq!(b.get("/v2/public.test/app/tags/list").await.status, 200);
    assert_challenge(
        &b.get("/v2/private.test/app/manifests/1").await,
        "private, anonymous",
    );
    // Empty Basic credentials (podman and skopeo holding none for berth) are anonymous.
    let empty = "Basic Og==";
    assert_eq!(
        get_as(&b, "/v2/app/manifests/1", Some(empty)).await.status,
        200
    );
    assert_challenge(
        &get_as(&b, "/v2/private.test/app/manifests/1", Some(empty)).await,
        "private, empty credentials",
    );
    assert_eq!(attempts(&b, "malformed").await, 0);
    // Credentials berth does not know (dockerd sends Docker Hub's to a mirror) pull through an
    // anonymous upstream as anonymous; elsewhere, `/v2/` included, they are refused.
    let hub = basic("hub-user", "hub-token");
    let got = get_as(&b, "/v2/app/manifests/1", Some(&hub)).await;
    assert_eq!(got.status, 200);
    assert_challenge(&get_as(&b, "/v2/", Some(&hub)).await, "/v2/, unknown user");
    assert_challenge(
        &get_as(&b, "/v2/private.test/app/manifests/1", Some(&hub)).await,
        "private, unknown user",
    );
    let alice = basic("alice", "secret");
    assert_eq!(
        get_as(&b, "/v2/private.test/app/manifests/1", Some(&alice))
            .await
            .status,
        200
    );
    assert_eq!(
        b.counter("berth_auth_denials_total{reason=\"login_required\"}")
            .await,
        3
    );
}

#[tokio::test]
async fn a_pull_of_many_blobs_costs_one_bcrypt_run() {
    let fake = fake_with_app().await;
    let blobs: Vec<String> = (0..40)
        .map(|i| fake.put_blob("library/app", random_bytes(4096, 100 + i)))
        .collect();
    // A realistic cost: the cache is what keeps this pull fast.
    let users = format!("alice:{}\n", bcrypt::hash("secret", 10).unwrap());
    let b = start(&fake, &users, "", "").await;
    let alice = basic("alice", "secret");

    assert_eq!(get_as(&b, "/v2/", Some(&alice)).await.status, 200);
    assert_eq!(
        get_as(&b, "/v2/app/manifests/1", Some(&alice)).await.status,
        200
    );
    // The layers side by side, as clients fetch them.
    let fetches = blobs.iter().map(|d| {
        let path = format!("/v2/app/blobs/{d}");
        let (b, alice) = (&b, &alice);
        async move { get_as(b, &path, Some(alice)).await.status }
    });
    let statuses = futures_util::future::join_all(fetches).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(b.counter("berth_auth_bcrypt_runs_total").await, 1);
    assert_eq!(
        b.counter("berth_auth_attempts_total{outcome=\"ok\"}").await,
        42
    );

    // Concurrent first logins with the same credentials wait for one check too.
    let fresh = basic("alice", "wrong");
    let tries = (0..20).map(|_| get_as(&b, "/v2/", Some(&fresh)));
    let statuses = futures_util::future::join_all(tries).await;
    assert!(statuses.iter().all(|g| g.status == 401));
    assert_eq!(b.counter("berth_auth_bcrypt_runs_total").await, 2);
}

/// Polls until `path` answers `want` with `auth` (the file is looked at once a second).
async fn until_status(b: &Berth, auth: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = get_as(b, "/v2/", Some(auth)).await.status.as_u16();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn replace(path: &Path, text: &str) {
    // Written next to it and renamed in, as `htpasswd` and config management tools do.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn the_htpasswd_file_is_reread_when_it_changes_and_a_broken_one_is_ignored() {
    let fake = FakeRegistry::start().await;
    let b = start(&fake, &entry("alice", "a-pw"), "", "").await;
    let file = b.dir.path().join("htpasswd");
    let (alice, bob, carol) = (
        basic("alice", "a-pw"),
        basic("bob", "b-pw"),
        basic("carol", "c-pw"),
    );
    assert_eq!(get_as(&b, "/v2/", Some(&alice)).await.status, 200);
    assert_eq!(get_as(&b, "/v2/", Some(&bob)).await.status, 401);

    // bob added, alice removed: both take effect, cached verdicts notwithstanding.
    replace(&file, &(entry("bob", "b-pw") + &entry("carol", "c-pw")));
    until_status(&b, &bob, 200).await;
    assert_eq!(get_as(&b, "/v2/", Some(&alice)).await.status, 401);
    assert_eq!(
        b.counter("berth_auth_reloads_total{outcome=\"ok\"}").await,
        1
    );
    assert_eq!(b.counter("berth_auth_users").await, 2);

    // A broken file (an MD5 line) keeps the users loaded before: carol, never checked yet,
    // still logs in afterwards.
    std::fs::write(
        &file,
        entry("bob", "b-pw") + "dave:$apr1$Vv4pt7Xm$Td3Qh0kz1n7y8ZJX8Xv1U/\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while b
        .counter("berth_auth_reloads_total{outcome=\"error\"}")
        .await
        == 0
    {
        assert!(Instant::now() < deadline, "the broken file was never read");
        assert_eq!(get_as(&b, "/v2/", Some(&bob)).await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_as(&b, "/v2/", Some(&carol)).await.status, 200);
    assert_eq!(get_as(&b, "/v2/", Some(&bob)).await.status, 200);
    assert_eq!(b.counter("berth_auth_users").await, 2);

    // A missing file too.
    std::fs::remove_file(&file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while b
        .counter("berth_auth_reloads_total{outcome=\"error\"}")
        .await
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the missing file was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get_as(&b, "/v2/", Some(&bob)).await.status, 200);
    }
    // Fixed again: read again.
    replace(&file, &entry("erin", "e-pw"));
    until_status(&b, &basic("erin", "e-pw"), 200).await;
    assert_eq!(get_as(&b, "/v2/", Some(&bob)).await.status, 401);
}

#[tokio::test]
async fn a_flood_of_bad_passwords_is_bounded_and_throttled() {
    const FLOOD: usize = 200;
    let fake = FakeRegistry::start().await;
    // Cost 10 (about what `htpasswd -B` writes by default is 5; registries use 10 and more):
    // each check takes long enough that a flood finds every slot and the queue busy.
    let users = format!("alice:{}\n", bcrypt::hash("secret", 10).unwrap());
    // One check at a time, whatever the cores of the machine running the test: then at most 33
    // of the flood (one running, 32 waiting) can be admitted before the first check ends.
    let b = start(&fake, &users, "check_concurrency = 1", "").await;

    let alice = basic("alice", "secret");
    assert_eq!(get_as(&b, "/v2/", Some(&alice)).await.status, 200);

    let tries = (0..FLOOD).map(|i| {
        let auth = basic("alice", &format!("guess-{i}"));
        let b = &b;
        async move { get_as(b, "/v2/", Some(&auth)).await }
    });
    // A client already logged in keeps pulling during the flood: its verdict is cached, it
    // needs no slot.
    let during = async {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(get_as(&b, "/v2/", Some(&alice)).await.status.as_u16());
        }
        statuses
    };
    let (answers, during) = tokio::join!(futures_util::future::join_all(tries), during);
    assert_eq!(during, [200; 5]);
    let throttled: Vec<&Got> = answers.iter().filter(|g| g.status == 429).collect();
    let refused = answers.iter().filter(|g| g.status == 401).count();
    eprintln!(
        "flood of {FLOOD}: {refused} checked (401), {} throttled (429)",
        throttled.len()
    );
    assert_eq!(throttled.len() + refused, FLOOD);
    for g in &throttled {
        assert_eq!(g.code(), "TOOMANYREQUESTS");
        assert_eq!(g.header("retry-after"), Some("1"));
    }
    assert_eq!(attempts(&b, "throttled").await as usize, throttled.len());
    assert_eq!(attempts(&b, "bad_password").await as usize, refused);
    // Every bad password that was not throttled cost one bcrypt run; the throttled cost none.
    assert_eq!(
        b.counter("berth_auth_bcrypt_runs_total").await as usize,
        refused + 1
    );
    // At most the slots plus the queue were ever admitted while the flood arrived at once;
    // the rest were turned away without running bcrypt.
    assert!(
        !throttled.is_empty(),
        "{refused} checked, none throttled: the queue is not bounded"
    );
    assert_eq!(b.counter("berth_auth_checks_waiting").await, 0);

    // Afterwards a login never seen before is checked again.
    assert_eq!(
        get_as(&b, "/v2/", Some(&basic("alice", "guess-again")))
            .await
            .status,
        401
    );
    assert_eq!(
        b.counter("berth_auth_bcrypt_runs_total").await as usize,
        refused + 2
    );
}

/// A small image (a config and one layer) tagged `app:1`.
fn image(fake: &FakeRegistry) {
    let config = bytes::Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
    let layer = random_bytes(3000, 9);
    let (c, l) = (
        fake.put_blob("library/app", config.clone()),
        fake.put_blob("library/app", layer.clone()),
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{c}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{},"digest":"{l}"}}]}}"#,
        media::DOCKER_MANIFEST,
        config.len(),
        layer.len()
    );
    fake.put_tagged("library/app", "1", media::DOCKER_MANIFEST, manifest);
}

/// `berth warm <args>` with `stdin` piped in and `env` set; (exit code, stdout, stderr).
async fn warm(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("warm")
        .args(args)
        .env_remove("BERTH_CONFIG")
        .env_remove("BERTH_USER")
        .env_remove("BERTH_PASSWORD")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    // A berth warm that refuses its options exits without reading: a broken pipe is fine.
    let _ = input.write_all(stdin.as_bytes()).await;
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn berth_warm_logs_in_with_a_password_from_stdin_or_the_environment() {
    let fake = FakeRegistry::start().await;
    image(&fake);
    let b = start(&fake, &entry("ci", "ci-pw"), "", r#"users = ["ci"]"#).await;
    let server = format!("http://{}", b.addr);
    let base = ["--server", server.as_str()];
    let args = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };

    let (code, _, err) = warm(&args(&["private.test/app:1"]), "", &[]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("asks for a login"), "{err}");
    let (code, _, err) = warm(
        &args(&["--user", "ci", "--password-stdin", "private.test/app:1"]),
        "nope\n",
        &[],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused the login"), "{err}");
    assert!(!err.contains("nope"), "{err}");

    let (code, out, err) = warm(
        &args(&["--user", "ci", "--password-stdin", "private.test/app:1"]),
        "ci-pw\n",
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("warmed 1/1 images"), "{out}");
    assert_eq!(fake.hits(Method::GET, "/v2/library/app/manifests/1"), 1);
    let (code, out, err) = warm(
        &args(&["private.test/app:1"]),
        "",
        &[("BERTH_USER", "ci"), ("BERTH_PASSWORD", "ci-pw")],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");

    // Mistakes in the options fetch nothing.
    for (extra, env, want) in [
        (&["--user", "ci", "app:1"][..], &[][..], "BERTH_PASSWORD"),
        (
            &["--user", "ci", "--password-stdin", "--file", "-"][..],
            &[][..],
            "both read stdin",
        ),
        (&["--password-stdin", "app:1"][..], &[][..], "--user"),
        (
            &["--user", "c:i", "app:1"][..],
            &[("BERTH_PASSWORD", "x")][..],
            "':'",
        ),
    ] {
        let (code, _, err) = warm(&args(extra), "ci-pw\n", env).await;
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    assert!(b.counter("berth_auth_attempts_total{outcome=\"ok\"}").await > 0);
}

#[tokio::test]
async fn a_reload_changes_who_may_use_which_upstream_and_new_upstreams_start_closed() {
    let fake = fake_with_app().await;
    let users = entry("ci", "ci-pw") + &entry("alice", "alice-pw");
    let (b, reloader) = start_with_reloader(&fake, &users, "", "").await;
    let (ci, alice) = (basic("ci", "ci-pw"), basic("alice", "alice-pw"));
    let (ci, alice) = (ci.as_str(), alice.as_str());
    let status = |path: &'static str, auth: Option<&str>| {
        let (b, auth) = (&b, auth.map(str::to_owned));
        async move { get_as(b, path, auth.as_deref()).await.status.as_u16() }
    };
    let private = "/v2/private.test/app/manifests/1";
    let public = "/v2/public.test/app/manifests/1";
    let third = "/v2/third.test/app/manifests/1";
    assert_eq!(status(private, Some(alice)).await, 200);
    assert_eq!(status(public, None).await, 401);

    // private.test gets a users list, public.test opens to anonymous clients, and a third
    // upstream comes with a list of its own.
    let url = fake.url();
    let third_upstream = format!(
        "[[upstream]]\nname = \"third.test\"\nurl = \"{url}\"\nlibrary_prefix = true\nusers = [\"alice\"]\n"
    );
    let text = config_text(
        b.dir.path(),
        &url,
        r#"anonymous_upstreams = ["public.test"]"#,
        r#"users = ["ci"]"#,
    ) + &third_upstream;
    let changes = reloader
        .apply(berth::config::Config::parse(&text, "t").unwrap())
        .unwrap();
    assert_eq!(changes.added, ["third.test"]);
    assert!(changes.need_restart.is_empty(), "{changes:?}");
    assert_eq!(status(private, Some(alice)).await, 403);
    assert_eq!(status(private, Some(ci)).await, 200);
    assert_eq!(status(public, None).await, 200);
    assert_eq!(status(third, Some(ci)).await, 403);
    assert_eq!(status(third, Some(alice)).await, 200);
    assert_eq!(status(third, None).await, 401);

    // Turning [auth] off, or pointing it at another file, needs a restart: the login stays.
    let off = text.replace("[auth]", "[nothing]").replace(
        &format!("htpasswd = \"{}\"", b.dir.path().join("htpasswd").display()),
        "",
    );
    let off = off
        .replace("[nothing]", "")
        .replace(r#"anonymous_upstreams = ["public.test"]"#, "");
    let off = off
        .replace(r#"users = ["ci"]"#, "")
        .replace(r#"users = ["alice"]"#, "");
    let changes = reloader
        .apply(berth::config::Config::parse(&off, "t").unwrap())
        .unwrap();
    assert_eq!(changes.need_restart, ["auth"]);
    assert_eq!(status(private, None).await, 401);
    assert_eq!(status("/v2/", None).await, 401);
}
