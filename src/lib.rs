//! strongswan-qkd: a strongSwan 6 plugin (`libstrongswan-qkd.so`) that adds a `qkd` IKEv2
//! key exchange method whose shared secret is a key from a Quantum Key Distribution network
//! (ETSI GS QKD 014 KME), hybridised with an ephemeral ECDH secret.
//!
//! Layers, lowest first: `ids` (key and SAE IDs); `wire` (KE data codec) and `config`
//! (settings); `kme` (key sources, the ETSI 014 client); `supply` (keys in place before an
//! exchange needs them); `ke` (the exchange state machine); `ppk` (RFC 8784 PPKs from the
//! KME for peers without the plugin); `status` (what `qkdctl` shows,
//! the socket server); `installed` (the runtime new exchanges pick up, reloads, the status
//! socket's life cycle).
//! All raw-pointer code, the charon ABI and the exported symbols live in `ffi`, the only
//! module allowed `unsafe` code.

// Every unsafe operation sits in its own `unsafe` block with a SAFETY line, also inside
// `unsafe fn`s.
#![deny(unsafe_op_in_unsafe_fn)]
// `unsafe` (and `#[no_mangle]`) only in `ffi`, the C boundary.
#![deny(unsafe_code)]

pub mod config;
pub mod health;
pub mod ids;
mod installed;
pub mod ke;
pub mod kme;
pub mod ppk;
pub mod status;
pub mod supply;
pub mod version;
pub mod wire;

#[allow(unsafe_code)]
mod ffi;
