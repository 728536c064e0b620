//! The config loader on any text: an error naming the problem, never a panic. (A config that names
//! files reads them, as berth would; the seeds name none that exist.)
#![no_main]

use berth::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::parse(text, "fuzz") {
        // What berth writes back out (`berth config`) reads back in.
        let again = cfg.to_toml();
        Config::parse(&again, "fuzz again").expect("a printed config parses");
    }
});
