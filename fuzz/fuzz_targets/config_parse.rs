//! The settings parser, fed with `key=value` lines (`peers.<name>.<key>` for peer sections).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strongswan_qkd::config::{Config, MapSettings};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::load(&MapSettings::from_lines(text));
    }
});
