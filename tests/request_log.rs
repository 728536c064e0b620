//! Request lines written straight to the log writer (`Server::log_requests_to`, as `berth serve`
//! does when stderr is not a terminal): one per request, in the subscriber's format, and none
//! when the level filter is above INFO.

use std::io::{self, Write};
use std::sync::mpsc;

use berth::config::Config;
use berth::logwriter::{BatchWriter, Batching};
use berth::server::Server;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
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
    let requests: Vec<(&str, Option<&str>)> = paths.iter().map(|p| (*p, None)).collect();
    lines_with("", &requests, level).await
}

/// As [`lines_for`], with `extra` config at the top and an `Authorization` header per request.
async fn lines_with(extra: &str, requests: &[(&str, Option<&str>)], level: LevelFilter) -> String {
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
        {extra}
        [[upstream]]
        name = "registry.test"
        url = "http://127.0.0.1:9"
        default = true
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
    for (path, auth) in requests {
        let mut req = http::Request::get(format!("http://{addr}{path}"));
        if let Some(a) = auth {
            req = req.header("authorization", *a);
        }
        let resp = client
            .request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
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
        &format!("[auth]\nhtpasswd = {:?}", file.display().to_string()),
        &[
            ("/v2/", Some(&alice)),
            ("/v2/", None),
            ("/v2/app/manifests/1", Some(&wrong)),
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
