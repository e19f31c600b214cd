//! Typed plugin settings (`<ns>.plugins.qkd.*` in strongswan.conf) and their validation.
//!
//! Values are read as strings through [`SettingsSource`] (strongSwan's `lib->settings` in
//! charon, a map in tests: [`source`]), parsed value by value ([`values`]) and assembled
//! into the [`Config`] model here by [`Config::load`] ([`load`]), so every refusal names
//! the exact key.

mod load;
mod source;
mod values;

pub use source::{MapSettings, SettingsSource};
pub use values::{method_name, parse_duration, ML_KEM_1024, ML_KEM_512, ML_KEM_768};

use crate::ids::SaeId;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings for talking to one KME (possibly a redundant group of nodes sharing one key
/// store, see [`KmeSettings::nodes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmeSettings {
    /// Base URL up to and excluding `/api/v1/...`, e.g. `https://kme-a.example:8443`: the
    /// first (preferred) node.
    pub url: String,
    /// Further nodes of the same KME (`kme.url` is a comma-separated list), tried in this
    /// order after `url`. Same CA, certificate, key and timeout.
    pub standby_urls: Vec<String>,
    /// PEM file with the CA certificate(s) that sign the KME's server certificate.
    pub ca: String,
    /// PEM file with our SAE client certificate (chain).
    pub cert: String,
    /// PEM file with the private key of `cert`.
    pub key: String,
    /// Upper bound for one HTTP request including connect and TLS handshake.
    pub timeout: Duration,
}

impl KmeSettings {
    /// The settings of each node, in the order they are tried: one entry per URL, each
    /// without standby URLs.
    pub fn nodes(&self) -> Vec<KmeSettings> {
        std::iter::once(&self.url)
            .chain(&self.standby_urls)
            .map(|url| KmeSettings {
                url: url.clone(),
                standby_urls: Vec::new(),
                ..self.clone()
            })
            .collect()
    }
}

/// Prefix shown in messages; the real lookup goes through `lib->ns` (charon, charon-systemd).
pub const PREFIX: &str = "charon.plugins.qkd";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// QKD is mandatory: no key, no SA.
    None,
    /// Accept the in-method ECDH secret alone when both peers allow it.
    Dh,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fallback::None => "none",
            Fallback::Dh => "dh",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// swanctl connection name (section name under `peers`).
    pub name: String,
    pub sae_id: SaeId,
    /// If set, a responder accepts this peer's SAE ID only from this address.
    pub remote: Option<IpAddr>,
    /// KME override for this peer (else the global `kme`).
    pub kme: Option<KmeSettings>,
    /// Answer strongSwan's RFC 8784 PPK lookups for this connection whose PPK_ID is a KME
    /// key ID with that key (dec_keys, this peer as ETSI master): `peers.<conn>.ppk`.
    pub ppk: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub sae_id: SaeId,
    pub method_id: u16,
    pub key_size: u32,
    pub fallback: Fallback,
    pub wait_timeout: Duration,
    /// strongSwan key exchange method for the in-method ECDH share; None = no ECDH.
    pub dh_group: Option<u16>,
    /// strongSwan key exchange method of the in-method post-quantum KEM (ML-KEM); its
    /// secret follows the ECDH secret. None = no KEM.
    pub kem: Option<u16>,
    /// Key sets kept ready per peer and direction: the outbound queue (our keys as master,
    /// announced to the peer) and the inbound cache (the peer's announced keys, fetched
    /// ahead). 0 = fetch on demand in the exchange.
    pub buffer: usize,
    /// Most outbound key sets per peer when the measured demand asks for more than
    /// `buffer` (and the inbound cache's bound); >= buffer.
    pub buffer_max: usize,
    /// Most outbound key sets above the `buffer` floors over all peers together (memory).
    pub buffer_total: usize,
    /// Buffered keys older than this are wiped unused (and counted as wasted).
    pub key_ttl: Duration,
    /// KME requests charon's worker threads may have in flight at once; beyond it an
    /// exchange fails fast instead of tying up another thread.
    pub max_kme_requests: usize,
    /// Where `qkdctl` reads status and metrics (a UNIX socket); None = no status socket.
    pub status_socket: Option<PathBuf>,
    pub kme: Option<KmeSettings>,
    pub peers: Vec<PeerConfig>,
}

pub const DEFAULT_METHOD_ID: u16 = 1042;
pub const DEFAULT_KEY_SIZE: u32 = 256;
const DEFAULT_KME_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_BUFFER: usize = 4;
/// Enough for ~500 new SAs/s with the KME 50 ms away (depth = demand × delay × 2).
pub const DEFAULT_BUFFER_MAX: usize = 64;
const MAX_BUFFER_MAX: usize = 4096;
/// 4096 sets of 256-bit keys: 128 KiB of key material above the floors.
pub const DEFAULT_BUFFER_TOTAL: usize = 4096;
const DEFAULT_KEY_TTL: Duration = Duration::from_secs(3600);
/// Well below charon's 16 worker threads, so DPD, rekeys and vici keep threads.
const DEFAULT_MAX_KME_REQUESTS: usize = 4;
/// The status socket's default and syntax are the status protocol's, which `qkdctl` shares.
pub use qkd_status::{parse_status_socket, DEFAULT_STATUS_SOCKET};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}.{}: {}", self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The key exchanges carried inside the qkd method, in the order their shares travel
    /// and their secrets follow the QKD key: dh_group, then kem.
    pub fn inner_methods(&self) -> Vec<u16> {
        self.dh_group.into_iter().chain(self.kem).collect()
    }

    pub fn peer_named(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }

    pub fn peers_with_sae<'a>(&'a self, sae: &'a SaeId) -> impl Iterator<Item = &'a PeerConfig> {
        self.peers.iter().filter(move |p| &p.sae_id == sae)
    }

    /// The KME this gateway uses for `peer`.
    pub fn kme_for<'a>(&'a self, peer: &'a PeerConfig) -> &'a KmeSettings {
        peer.kme
            .as_ref()
            .or(self.kme.as_ref())
            .expect("Config::load guarantees a KME per peer")
    }
}

#[cfg(test)]
mod tests;
