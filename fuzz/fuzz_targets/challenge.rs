//! `WWW-Authenticate` from upstreams (and anything between): the parser decides where credentials
//! go, so it must never panic, and what it accepts is well formed.
#![no_main]

use berth::upstream::auth::parse_challenges;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(challenges) = parse_challenges(text) {
        for c in challenges {
            assert!(!c.scheme.is_empty());
            for (name, _) in &c.params {
                assert!(
                    !name.is_empty() && *name == name.to_ascii_lowercase(),
                    "{c:?}"
                );
            }
        }
    }
});
