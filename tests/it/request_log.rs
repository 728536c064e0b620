//! Request lines written straight to the log writer (`Server::log_requests_to`, as `berth serve`
//! does when stderr is not a terminal): one per request, in the subscriber's format, and none
//! when the level filter is above INFO; `complete=` says whether every byte of the body went out.

use crate::support;

use std::io::{self, Write};
use std::sync::mpsc;

use berth::config::Config;
use berth::logwriter::{BatchWriter, Batching};
use berth::server::Server;
use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{FakeRegistry, Fault, random_bytes};
use tracing::level_filters::LevelFilter;

struct Sink(mpsc::Sender<Vec<u8>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let _ = self.0.send(b.to_vec());
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serves `paths` once each with request lines going to a writer, under a subscriber at `level`;
/// returns what was written.
async fn lines_for(paths: &[&str], level: LevelFilter) -> String {
    let requests: Vec<_> = paths.iter().map(|p| (Method::GET, *p, None)).collect();
    lines_with("http://127.0.0.1:9", "", &requests, level).await
}

/// A request: method, path, one extra header (name, value).
type Req<'a> = (Method, &'a str, Option<(&'a str, &'a str)>);

/// Sends `requests` (method, path, one extra header: `Range`, `Authorization`) one after the
/// other to a berth whose upstream is at `upstream` (with `upstream_extra` keys, which may end
/// with tables of their own), reading each body to its end or its failure.
async fn lines_with(
    upstream: &str,
    upstream_extra: &str,
    requests: &[Req<'_>],
    level: LevelFilter,
) -> String {
    // A current-thread runtime (tokio::test): every task runs on this thread, under this default.
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(io::sink)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [metrics]
        enabled = false
        [storage]
        path = "{}"
        [[upstream]]
        name = "registry.test"
        url = "{upstream}"
        default = true
        {upstream_extra}
        "#,
        dir.path().display()
    );
    let (tx, rx) = mpsc::channel();
    let (writer, guard) = BatchWriter::spawn(Sink(tx), Batching::default());
    let server = Server::bind(&Config::parse(&cfg, "test").unwrap())
        .await
        .unwrap()
        .log_requests_to(Some(writer));
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    for (method, path, header) in requests {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some((name, value)) = header {
            req = req.header(*name, *value);
        }
        let resp = client.request(req.body(Empty::new()).unwrap()).await;
        // A failed transfer ends in a body error, which is what some requests here are for.
        if let Ok(resp) = resp {
            let _ = resp.into_body().collect().await;
        }
    }
    drop(client);
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    drop(guard);
    String::from_utf8(rx.try_iter().flatten().collect()).unwrap()
}

#[tokio::test]
async fn each_request_gets_one_line_in_the_subscribers_format() {
    let out = lines_for(&["/v2/", "/nope"], LevelFilter::INFO).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    // <time>  INFO ...; ms= is whatever it took.
    let (time, rest) = lines[0].split_once("  ").unwrap();
    assert!(time.ends_with('Z'), "{out}");
    assert!(
        rest.starts_with(
            "INFO berth::http: request method=GET path=/v2/ route=\"base\" upstream=\"-\" \
             repo=\"-\" reference=\"-\" outcome=\"-\" status=200 bytes=0 complete=true ms="
        ),
        "{out}"
    );
    assert!(lines[1].contains("path=/nope route=\"unknown\""), "{out}");
    assert!(lines[1].contains(" status=404 "), "{out}");
}

#[tokio::test]
async fn no_lines_below_the_level_filter() {
    assert_eq!(lines_for(&["/v2/"], LevelFilter::WARN).await, "");
}

/// The one line for `method` on `path` (with a `status=`), or a panic naming all of them.
fn line_for<'a>(out: &'a str, method: &str, path: &str, status: u16) -> &'a str {
    let found: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.contains(&format!(" method={method} path={path} "))
                && l.contains(&format!(" status={status} "))
        })
        .collect();
    assert_eq!(found.len(), 1, "{method} {path} {status} in:\n{out}");
    found[0]
}

#[tokio::test]
async fn blob_bodies_that_went_out_whole_are_complete_and_broken_ones_are_not() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(300_000, 7);
    let blob = fake.put_blob("team/app", layer);
    let broken = fake.put_blob("team/app", random_bytes(200_000, 8));
    fake.fault(
        &format!("/v2/team/app/blobs/{broken}"),
        Fault::CloseAfter(1000),
    );
    let path = format!("/v2/team/app/blobs/{blob}");
    let broken_path = format!("/v2/team/app/blobs/{broken}");
    let out = lines_with(
        &fake.url(),
        "resume_attempts = 0",
        &[
            // A miss (streamed from the fill), then hits (from the file), whole and in part.
            (Method::GET, &path, None),
            (Method::GET, &path, None),
            (Method::GET, &path, Some(("range", "bytes=10-99"))),
            (Method::HEAD, &path, None),
            (Method::GET, &broken_path, None),
        ],
        LevelFilter::INFO,
    )
    .await;
    let gets: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(&format!(" method=GET path={path} ")) && l.contains(" status=200 "))
        .collect();
    assert_eq!(gets.len(), 2, "{out}");
    for line in gets {
        assert!(line.contains(" bytes=300000 complete=true "), "{line}");
    }
    let ranged = line_for(&out, "GET", &path, 206);
    assert!(ranged.contains(" bytes=90 complete=true "), "{ranged}");
    let head = line_for(&out, "HEAD", &path, 200);
    assert!(head.contains(" bytes=0 complete=true "), "{head}");
    let short = line_for(&out, "GET", &broken_path, 200);
    assert!(short.contains(" complete=false "), "{short}");
}

#[tokio::test]
async fn with_auth_the_line_names_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(
        &file,
        format!("alice:{}\n", bcrypt::hash("secret", 4).unwrap()),
    )
    .unwrap();
    let basic = |user_password: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
    };
    let (alice, wrong) = (basic("alice:secret"), basic("alice:nope"));
    let out = lines_with(
        "http://127.0.0.1:9",
        // A table after the upstream's keys: the [auth] section.
        &format!("[auth]\nhtpasswd = {:?}", file.display().to_string()),
        &[
            (Method::GET, "/v2/", Some(("authorization", &alice))),
            (Method::GET, "/v2/", None),
            (
                Method::GET,
                "/v2/app/manifests/1",
                Some(("authorization", &wrong)),
            ),
        ],
        LevelFilter::INFO,
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains(" status=200 "), "{out}");
    assert!(lines[0].ends_with(" user=\"alice\""), "{out}");
    assert!(lines[1].contains(" status=401 "), "{out}");
    assert!(lines[1].ends_with(" user=\"-\""), "{out}");
    // A failed login is logged under its route, with no user.
    assert!(lines[2].contains("route=\"manifest\""), "{out}");
    assert!(lines[2].contains(" status=401 "), "{out}");
    assert!(lines[2].ends_with(" user=\"-\""), "{out}");
    assert!(!out.contains("secret") && !out.contains("nope"), "{out}");
}

/// Peer requests are logged like any other, except a good health probe (one per peer every
/// `health_interval`), which is counted but not logged.
#[tokio::test]
async fn good_peer_health_probes_are_not_logged() {
    use berth::cluster::{HEALTH_PATH, auth::PeerKey};
    let secret = "0123456789abcdef0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, secret).unwrap();
    let cluster = format!(
        "[cluster]\nself = \"http://127.0.0.1:1\"\npeers = [\"http://127.0.0.1:1\"]\nsecret_file = {:?}\n",
        file.display().to_string()
    );
    let proof = PeerKey::new(&berth::config::Secret::new(secret)).sign(
        "GET",
        HEALTH_PATH,
        berth::cluster::auth::now(),
    );
    let proof = proof.to_str().unwrap();
    let out = lines_with(
        "http://127.0.0.1:9",
        &cluster,
        &[
            (Method::GET, HEALTH_PATH, Some(("authorization", proof))),
            (Method::GET, HEALTH_PATH, None),
            (Method::GET, "/v2/", None),
        ],
        LevelFilter::INFO,
    )
    .await;
    assert_eq!(out.lines().count(), 2, "{out}");
    let refused = line_for(&out, "GET", HEALTH_PATH, 401);
    assert!(
        refused.contains(" route=\"peer\" ") && refused.contains(" outcome=\"refused\" "),
        "{refused}"
    );
    line_for(&out, "GET", "/v2/", 200);
}
