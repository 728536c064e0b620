//! The request router: method + path + query -> Route, on any text. It must never panic, and a
//! route it accepts names a reference and digest that print back to themselves.
#![no_main]

use std::sync::LazyLock;

use berth::config::Config;
use berth::http::error::Answered;
use berth::http::route::{self, Hosts, Route};
use http::Method;
use libfuzzer_sys::fuzz_target;

static HOSTS: LazyLock<Hosts> = LazyLock::new(|| {
    let cfg = Config::parse(
        r#"
        [[upstream]]
        name = "docker.io"
        url = "https://registry-1.docker.io"
        default = true
        aliases = ["registry-1.docker.io"]
        [[upstream]]
        name = "quay.io"
        url = "https://quay.io"
        [[upstream]]
        name = "127.0.0.1:5001"
        url = "http://127.0.0.1:5001"
        "#,
        "fuzz",
    )
    .expect("the fuzz config is valid");
    Hosts::new(&cfg.upstreams)
});

const METHODS: [Method; 4] = [Method::GET, Method::HEAD, Method::PUT, Method::DELETE];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    let method = &METHODS[usize::from(m) % METHODS.len()];
    match route::parse(method, path, query, &HOSTS) {
        Ok(Route::Manifest { reference, .. }) => {
            let again: berth::oci::Reference = reference.to_string().parse().expect("reprints");
            assert_eq!(again, reference);
        }
        Ok(Route::Blob { digest, .. }) => {
            let again: berth::oci::Digest = digest.to_string().parse().expect("reprints");
            assert_eq!(again, digest);
        }
        Ok(_) => {}
        Err(e) => assert!(e.status().is_client_error(), "{e}"),
    }
});
