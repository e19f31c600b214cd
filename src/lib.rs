//! strongswan-qkd: a strongSwan 6 plugin (`libstrongswan-qkd.so`) that adds a `qkd` IKEv2
//! key exchange method whose shared secret is a key from a Quantum Key Distribution network
//! (ETSI GS QKD 014 KME), hybridised with an ephemeral ECDH secret.
//!
//! Layout: `wire` (KE data codec), `ke` (the exchange state machine), `kme` (key sources,
//! the ETSI 014 client), `config` (settings). All raw-pointer code, the charon ABI and the
//! exported symbols live in `ffi`.

pub mod config;
pub mod ke;
pub mod kme;
pub mod version;
pub mod wire;

mod ffi;
