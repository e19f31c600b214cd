//! strongswan-qkd: a strongSwan 6 plugin (`libstrongswan-qkd.so`) that adds a `qkd` IKEv2
//! key exchange method whose shared secret is a key from a Quantum Key Distribution network
//! (ETSI GS QKD 014 KME), hybridised with an ephemeral ECDH secret.
//!
//! Layers, lowest first: `ids` (key and SAE IDs); `wire` (KE data codec) and `config`
//! (settings); `kme` (key sources, the ETSI 014 client); `supply` (keys in place before an
//! exchange needs them); `ke` (the exchange state machine).
//! All raw-pointer code, the charon ABI and the exported symbols live in `ffi`.

// Every unsafe operation sits in its own `unsafe` block with a SAFETY line, also inside
// `unsafe fn`s.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod config;
pub mod health;
pub mod ids;
pub mod ke;
pub mod kme;
pub mod status;
pub mod supply;
pub mod version;
pub mod wire;

mod ffi;
