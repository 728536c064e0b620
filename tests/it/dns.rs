//! SSRF through DNS: an upstream's redirect or token realm names a host by a DNS name that resolves
//! to a loopback or private address, and berth's upstream client (its `GuardedResolver`, see
//! `src/upstream/guard.rs`) refuses to connect there, unless the upstream itself is on such an
//! address or `allow_private_redirects = true`. The URL check alone cannot see this: the names
//! here are neither `localhost` nor address literals.
//!
//! The resolver is the system's (glibc's `getaddrinfo`: `/etc/nsswitch.conf`, `/etc/hosts`,
//! `/etc/resolv.conf`), so each test runs in a network and mount namespace of its own: the test
//! binary runs again, for that one test, under `unshare --net --mount`; inside, loopback is brought
//! up with two more addresses (198.51.100.7, public-looking, for the upstream; 10.20.30.40,
//! private), the three files are bind-mounted over with ones naming only the DNS server started
//! here on 127.0.0.1:53, and berth runs in process in front of the fake registry, serving real
//! pulls. That needs root, so the tests are `#[ignore]`d: `cargo test --test it dns:: --
//! --ignored` (tests/run.sh does). Without root they fail, saying so; they never pass unrun (the
//! outer test checks that the inner one ran and passed).

use crate::support;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use support::instance::{Berth, berth, same};
use support::{FakeRegistry, Fault, Host, TokenAuth, random_bytes};

/// Set in the environment of the test binary run inside the namespace.
const INSIDE: &str = "BERTH_TEST_IN_NETNS";

/// The upstream's address when it is public: TEST-NET-2, which `is_private` does not cover.
const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// The upstream's address when it is on the private network.
const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 20, 30, 40);
/// Where the other host (the redirect target, the token realm) listens: every address of the
/// namespace, so that it is reachable as 127.0.0.1 and as 10.20.30.40 alike.
const ANY: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

/// Names the DNS server answers, and their addresses.
const EVIL_LOOPBACK: &str = "evil-lo.berth.test";
const EVIL_PRIVATE: &str = "evil-ten.berth.test";
const REGISTRY: &str = "registry.berth.test";
const NAMES: [(&str, Ipv4Addr); 3] = [
    (EVIL_LOOPBACK, Ipv4Addr::LOCALHOST),
    (EVIL_PRIVATE, PRIVATE),
    (REGISTRY, PRIVATE),
];

const REFUSED: &str = "resolves only to loopback, private or link-local addresses";

/// Outside the namespace: runs this module's test `name` again in a namespace of its own and
/// asserts that it ran there and passed. Inside: sets the namespace up and runs `body`.
fn in_namespace<F: Future<Output = ()>>(name: &str, body: impl FnOnce() -> F) {
    if std::env::var_os(INSIDE).is_none() {
        let test = format!("dns::{name}");
        let out = Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([
                &test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INSIDE, "1")
            .output()
            .expect("run unshare(1)");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        print!("{stdout}");
        eprint!("{stderr}");
        assert!(
            out.status.success(),
            "{test} failed in its namespace (unshare --net --mount needs root: run as root, as \
             tests/run.sh does): {}",
            out.status
        );
        assert!(
            stdout.contains("test result: ok. 1 passed"),
            "{test} did not run in its namespace"
        );
        return;
    }
    let _files = set_up_namespace();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(body());
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// Loopback up with the two extra addresses; `/etc/nsswitch.conf`, `/etc/hosts` and
/// `/etc/resolv.conf` replaced (in this mount namespace only) so that names go to the files and
/// then to the DNS server on 127.0.0.1:53, and no hosts line answers the test's names. The files
/// live in the directory returned.
fn set_up_namespace() -> tempfile::TempDir {
    run("ip", &["link", "set", "lo", "up"]);
    for a in [PUBLIC, PRIVATE] {
        run("ip", &["addr", "add", &format!("{a}/32"), "dev", "lo"]);
    }
    let dir = tempfile::tempdir().unwrap();
    for (file, text) in [
        ("nsswitch.conf", "hosts: files dns\n"),
        ("hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        (
            "resolv.conf",
            "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n",
        ),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        run(
            "mount",
            &["--bind", path.to_str().unwrap(), &format!("/etc/{file}")],
        );
    }
    dir
}

/// A DNS server over UDP on 127.0.0.1:53: A records for [`NAMES`], an empty answer for their other
/// types (AAAA), NXDOMAIN for any other name. It records the names it was asked.
struct Dns {
    asked: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dns {
    async fn start() -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:53").await.unwrap();
        let names: HashMap<String, Ipv4Addr> =
            NAMES.iter().map(|(n, a)| (n.to_string(), *a)).collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if let Some((name, reply)) = answer(&buf[..n], &names) {
                    log.lock().unwrap().push(name);
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        let dns = Dns { asked, task };
        // The namespace's resolver really asks this server, and nothing else answers.
        for (name, addr) in NAMES {
            let found: Vec<IpAddr> = tokio::net::lookup_host((name, 0))
                .await
                .unwrap()
                .map(|a| a.ip())
                .collect();
            assert_eq!(found, vec![IpAddr::V4(addr)], "{name}");
            assert!(dns.was_asked(name), "{name} answered by something else");
        }
        dns.asked.lock().unwrap().clear();
        dns
    }

    fn was_asked(&self, name: &str) -> bool {
        self.asked.lock().unwrap().iter().any(|n| n == name)
    }
}

/// The reply to one query (one question), and the name asked; `None` for what is not a query.
fn answer(query: &[u8], names: &HashMap<String, Ipv4Addr>) -> Option<(String, Vec<u8>)> {
    let header = query.get(..12)?;
    let is_query = header[2] & 0x80 == 0;
    if !is_query || u16::from_be_bytes([header[4], header[5]]) != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(std::str::from_utf8(query.get(at..at + len)?).ok()?);
        at += len;
    }
    let question = query.get(12..at + 4)?;
    let qtype = u16::from_be_bytes([query[at], query[at + 1]]);
    let name = labels.join(".").to_ascii_lowercase();
    let found = names.get(&name);
    let answers: Vec<Ipv4Addr> = match (found, qtype) {
        (Some(addr), 1) => vec![*addr],
        _ => Vec::new(),
    };
    let mut reply = Vec::with_capacity(12 + question.len() + 16 * answers.len());
    reply.extend_from_slice(&header[..2]); // id
    reply.push(0x84 | (header[2] & 0x01)); // response, authoritative, recursion desired as asked
    reply.push(if found.is_some() { 0x80 } else { 0x83 }); // recursion available; NXDOMAIN
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    for addr in answers {
        // The question's name (a pointer to offset 12), A, IN, TTL 0, 4 bytes of address.
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        reply.extend_from_slice(&addr.octets());
    }
    Some((name, reply))
}

/// Puts a blob the upstream redirects (307) to the other host's `/cdn/<digest>`; returns the path
/// to pull it through berth, and its bytes.
fn redirected_blob(fake: &FakeRegistry, seed: u64) -> (String, bytes::Bytes) {
    let layer = random_bytes(100_000, seed);
    let digest = fake.put_blob("library/app", layer.clone());
    fake.fault(
        &format!("/v2/library/app/blobs/{digest}"),
        Fault::RedirectToOther,
    );
    (format!("/v2/app/blobs/{digest}"), layer)
}

async fn refused(b: &Berth, path: &str, dns: &Dns, name: &str) {
    let r = b.get(path).await;
    let body = String::from_utf8_lossy(r.bytes()).into_owned();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{name}: {body}");
    assert!(body.contains(REFUSED), "{name}: {body}");
    assert!(dns.was_asked(name), "{name} was resolved");
}

#[test]
#[ignore = "needs root: a network and mount namespace of its own"]
fn a_redirect_to_a_name_that_resolves_to_a_private_address_is_refused() {
    in_namespace(
        "a_redirect_to_a_name_that_resolves_to_a_private_address_is_refused",
        || async {
            let dns = Dns::start().await;
            let fake = FakeRegistry::start_at(PUBLIC.into(), ANY.into()).await;
            let b = berth(&fake, "").await;
            for (seed, name) in [(1, EVIL_LOOPBACK), (2, EVIL_PRIVATE)] {
                fake.rename(Host::Other, name);
                let (path, _) = redirected_blob(&fake, seed);
                refused(&b, &path, &dns, name).await;
                assert_eq!(fake.connections(Host::Other), 0, "{name}");
            }
            // Allowed, the same redirects are followed (the target is there, and reachable).
            let allowed = berth(&fake, "allow_private_redirects = true\n").await;
            for (seed, name) in [(1, EVIL_LOOPBACK), (2, EVIL_PRIVATE)] {
                fake.rename(Host::Other, name);
                let (path, layer) = redirected_blob(&fake, seed);
                same(allowed.get(&path).await.bytes(), &layer);
            }
            assert_eq!(fake.connections(Host::Other), 2);
        },
    );
}

#[test]
#[ignore = "needs root: a network and mount namespace of its own"]
fn a_token_realm_on_a_name_that_resolves_to_a_private_address_is_refused() {
    in_namespace(
        "a_token_realm_on_a_name_that_resolves_to_a_private_address_is_refused",
        || async {
            let dns = Dns::start().await;
            let fake = FakeRegistry::start_at(PUBLIC.into(), ANY.into()).await;
            fake.require_token_auth(TokenAuth {
                realm: Host::Other,
                ..TokenAuth::default()
            });
            fake.rename(Host::Other, EVIL_LOOPBACK);
            let layer = random_bytes(100_000, 3);
            let path = format!(
                "/v2/app/blobs/{}",
                fake.put_blob("library/app", layer.clone())
            );
            let b = berth(&fake, "").await;
            refused(&b, &path, &dns, EVIL_LOOPBACK).await;
            assert!(fake.token_requests().is_empty());
            assert_eq!(fake.connections(Host::Other), 0);

            let allowed = berth(&fake, "allow_private_redirects = true\n").await;
            same(allowed.get(&path).await.bytes(), &layer);
            assert_eq!(fake.token_requests().len(), 1);
        },
    );
}

#[test]
#[ignore = "needs root: a network and mount namespace of its own"]
fn an_upstream_on_a_private_address_may_redirect_to_a_name_on_the_private_network() {
    in_namespace(
        "an_upstream_on_a_private_address_may_redirect_to_a_name_on_the_private_network",
        || async {
            let dns = Dns::start().await;
            // The upstream is named by DNS too: it is known to be private once resolved.
            let fake = FakeRegistry::start_at(PRIVATE.into(), ANY.into()).await;
            fake.rename(Host::Main, REGISTRY);
            fake.rename(Host::Other, EVIL_LOOPBACK);
            let b = berth(&fake, "").await;
            let (path, layer) = redirected_blob(&fake, 4);
            same(b.get(&path).await.bytes(), &layer);
            assert!(dns.was_asked(REGISTRY) && dns.was_asked(EVIL_LOOPBACK));
            assert_eq!(fake.connections(Host::Other), 1);

            // `false` refuses it even so.
            let strict = berth(&fake, "allow_private_redirects = false\n").await;
            let (path, _) = redirected_blob(&fake, 5);
            refused(&strict, &path, &dns, EVIL_LOOPBACK).await;
            assert_eq!(fake.connections(Host::Other), 1);
        },
    );
}
