//! The KME answer parsers: status, key container and error bodies come from the network
//! (a KME, or whoever sits between us and it until TLS is verified... and after).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strongswan_qkd::kme::json;

fuzz_target!(|data: &[u8]| {
    let _ = json::parse_status(data);
    let _ = json::parse_keys(data);
    let _ = json::parse_error(data);
});
