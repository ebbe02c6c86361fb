//! Scenario files (TOML written by users): parsed or refused with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kestrel_scenarios::Scenario::parse(std::path::Path::new("fuzz.toml"), text);
    }
});
