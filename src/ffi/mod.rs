//! The FFI edge: the only module with `unsafe`.
//!
//! charon sees C structs of function pointers (vtables) whose layouts come from our own
//! declarations in include/strongswan_abi.h (bindgen, see build.rs). Every function charon
//! calls runs inside [`boundary`], checks its pointers, and hands back memory charon frees
//! with libc `free()` (see [`chunk`]). strongSwan's globals (`lib`, `charon`, `dbg`) are
//! looked up at run time ([`symbols`]) so test binaries link without libstrongswan.

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    clippy::all
)]
pub(crate) mod abi {
    include!(concat!(env!("OUT_DIR"), "/strongswan_abi.rs"));
}

mod chunk;
mod ecdh;
mod key_exchange;
mod log;
mod plugin;
mod settings;
mod symbols;
mod version;

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, turning a panic into `fallback` plus a log line: a panic must never unwind
/// into charon (undefined behaviour) nor abort the daemon.
pub(crate) fn boundary<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => value,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            ::log::error!("qkd: internal error in {what}: {msg} (please report this bug)");
            fallback
        }
    }
}
