//! The unit tests of `access`: Basic credentials parsed, the policy per principal and upstream,
//! the login cache (checked once, keyed), and the htpasswd hash kinds refused.

use super::*;
use crate::error::Kind;

/// `htpasswd -nbB -C 4 alice secret`
const ALICE: &str = "$2y$04$ScBQEWenuutfoWG5lloQieGzpdoAdmEdri.H1XtTWWQxp9mtJggTa";

fn access(dir: &Path, anonymous: Vec<bool>, users: Vec<Option<&[&str]>>) -> Access {
    let file = dir.join("htpasswd");
    std::fs::write(&file, format!("alice:{ALICE}\n")).unwrap();
    let users = users
        .into_iter()
        .map(|u| u.map(|l| l.iter().map(|s| s.to_string()).collect()))
        .collect();
    let settings = Settings {
        htpasswd: file,
        anonymous,
        users,
        check_concurrency: None,
    };
    Access::new(settings, &Registry::new()).unwrap()
}

fn header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

#[test]
fn basic_credentials_are_parsed_and_anything_else_refused() {
    let h = basic_header("alice", &Secret::new("pa:ss word"));
    let (user, password) = basic_credentials(&header(&h)).unwrap();
    assert_eq!((user.as_str(), password.expose()), ("alice", "pa:ss word"));
    let lower = h.replacen("Basic", "basic", 1);
    assert!(basic_credentials(&header(&lower)).is_some());
    for bad in [
        "Bearer abc",
        "Basic",
        "Basic !!!",
        "Basic bm9jb2xvbg==", // "nocolon"
        "Basic OnB3",         // ":pw", no user
    ] {
        assert!(basic_credentials(&header(bad)).is_none(), "{bad}");
    }
    assert_eq!(format!("{:?}", password), "<redacted>");
}

#[test]
fn policy_per_principal_and_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let ci: &[&str] = &["ci"];
    let a = access(
        dir.path(),
        vec![true, false, false],
        vec![None, None, Some(ci)],
    );
    let anon = Principal::Anonymous;
    let alice = Principal::User("alice".into());
    let ci = Principal::User("ci".into());
    let status = |r: Result<(), Error>| r.err().map(|e| e.kind);
    // `/v2/` itself: a login is needed, whatever the anonymous upstreams.
    assert_eq!(status(a.authorize(&anon, None)), Some(Kind::LoginRequired));
    assert_eq!(status(a.authorize(&alice, None)), None);
    assert_eq!(status(a.authorize(&anon, Some(0))), None);
    assert_eq!(
        status(a.authorize(&anon, Some(1))),
        Some(Kind::LoginRequired)
    );
    assert_eq!(status(a.authorize(&alice, Some(1))), None);
    assert_eq!(status(a.authorize(&alice, Some(2))), Some(Kind::Denied));
    assert_eq!(status(a.authorize(&ci, Some(2))), None);
    // An index past the list (never made by the router) is refused, not allowed.
    assert_eq!(
        status(a.authorize(&anon, Some(9))),
        Some(Kind::LoginRequired)
    );
    assert_eq!(status(a.authorize(&alice, Some(9))), Some(Kind::Denied));
    // The admin API's warm: every upstream, whatever its users list; not a slot never told of.
    for upstream in [None, Some(0), Some(1), Some(2)] {
        assert_eq!(status(a.authorize(&Principal::Admin, upstream)), None);
    }
    assert_eq!(
        status(a.authorize(&Principal::Admin, Some(9))),
        Some(Kind::Denied)
    );
    assert_eq!(Principal::Admin.name(), "admin:warm");
    // A refused login passes where anonymous clients may, and keeps its answer elsewhere.
    let throttled = Principal::Refused(Error::login_throttled(Duration::from_secs(1)));
    assert_eq!(status(a.authorize(&throttled, Some(0))), None);
    for upstream in [None, Some(1), Some(2)] {
        assert_eq!(
            status(a.authorize(&throttled, upstream)),
            Some(Kind::RateLimited {
                retry_after: Some(Duration::from_secs(1))
            }),
            "{upstream:?}"
        );
    }
}

#[tokio::test]
async fn logins_are_checked_once_then_answered_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let a = access(dir.path(), vec![false], vec![None]);
    let good = header(&basic_header("alice", &Secret::new("secret")));
    let wrong = header(&basic_header("alice", &Secret::new("nope")));
    let nobody = header(&basic_header("mallory", &Secret::new("secret")));
    for _ in 0..3 {
        let who = a.authenticate(Some(&good)).await;
        assert!(
            matches!(&who, Principal::User(u) if &**u == "alice"),
            "{who:?}"
        );
    }
    assert_eq!(a.metrics.bcrypt_runs.get(), 1);
    let refused = |p: Principal| match p {
        Principal::Refused(e) => e,
        other => panic!("not refused: {other:?}"),
    };
    let e = refused(a.authenticate(Some(&wrong)).await);
    let f = refused(a.authenticate(Some(&nobody)).await);
    // The same answer for a wrong password and an unknown user.
    assert_eq!(
        (e.kind, &e.message, &e.detail),
        (f.kind, &f.message, &f.detail)
    );
    assert_eq!(e.kind, Kind::LoginRequired);
    assert_eq!(a.metrics.bcrypt_runs.get(), 3);
    let outcome = |o: &str| a.metrics.attempts.with_label_values(&[o]).get();
    assert_eq!(
        (
            outcome("ok"),
            outcome("bad_password"),
            outcome("unknown_user")
        ),
        (3, 1, 1)
    );
    assert!(matches!(a.authenticate(None).await, Principal::Anonymous));
    let empty = header("Basic Og==");
    assert!(matches!(
        a.authenticate(Some(&empty)).await,
        Principal::Anonymous
    ));
    let e = refused(a.authenticate(Some(&header("Bearer x"))).await);
    assert_eq!(e.kind, Kind::LoginRequired);
    assert_eq!(outcome("malformed"), 1);
}

#[test]
fn the_cache_key_is_keyed_and_separates_its_parts() {
    let dir = tempfile::tempdir().unwrap();
    let a = access(dir.path(), vec![false], vec![None]);
    let b = access(dir.path(), vec![false], vec![None]);
    let k = a.cache_key(0, "ab", &Secret::new("c"));
    assert_ne!(k, a.cache_key(0, "a", &Secret::new("bc")));
    assert_ne!(k, a.cache_key(1, "ab", &Secret::new("c")));
    // Another process (another random key) gets another key for the same login.
    assert_ne!(k, b.cache_key(0, "ab", &Secret::new("c")));
}

#[test]
fn a_file_with_other_hash_kinds_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, format!("alice:{ALICE}\nbob:$apr1$x$y\n")).unwrap();
    let settings = Settings {
        htpasswd: file.clone(),
        anonymous: vec![],
        users: vec![],
        check_concurrency: None,
    };
    let e = Access::new(settings, &Registry::new()).unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");
    assert!(e.to_string().contains(&file.display().to_string()), "{e}");
}
