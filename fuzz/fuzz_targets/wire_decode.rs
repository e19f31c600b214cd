//! The KE data decoder: the first code that sees bytes from an unauthenticated peer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strongswan_qkd::wire::{Request, Response};

fuzz_target!(|data: &[u8]| {
    // Both decoders on every input: a peer may send either kind of KE data in either role.
    let _ = Request::decode(data);
    let _ = Response::decode(data);
});
