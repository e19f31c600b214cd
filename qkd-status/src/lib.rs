//! The qkd plugin's status protocol, shared by the plugin (which serves it) and `qkdctl`
//! (which asks): a [`Snapshot`] of one plugin runtime (counters, buffer levels, KME
//! statistics), the request and answer encoding of the status socket, the two renderings
//! (`qkdctl status`, `qkdctl metrics`) and the client side.
//!
//! Protocol: the client sends one JSON line, `{"command":"status"}` (at most
//! [`MAX_REQUEST`] bytes), and reads one JSON document until the server closes: a
//! [`Snapshot`], or `{"error":"..."}`. `protocol` in the snapshot is bumped on incompatible
//! changes. The snapshot is JSON, not text, so one plugin serves every rendering and
//! scripts get the numbers as they are.
//!
//! This crate depends on serde only, so `qkdctl` builds without the plugin (no TLS, HTTP
//! client or bindgen).

mod client;
mod protocol;
mod render;

pub use client::request_status;
pub use protocol::{answer, error_reply, parse_answer, status_request, ErrorReply};
pub use render::{render_metrics, render_table};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const PROTOCOL: u32 = 1;
/// Longest request line the server reads; anything longer is refused.
pub const MAX_REQUEST: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub protocol: u32,
    pub plugin_version: String,
    /// The plugin's clock when the snapshot was taken (ages are relative to it).
    pub now_unix: u64,
    /// When this runtime was built: plugin load, or the last reload that changed settings.
    /// The counters count from then.
    pub since_unix: u64,
    pub sae_id: String,
    pub method_id: u16,
    pub key_size: u32,
    pub buffer: usize,
    pub fallback: String,
    /// The key exchanges inside the qkd method (dh_group, kem), e.g. "curve25519 + mlkem768".
    #[serde(default)]
    pub in_method: String,
    pub exchanges: ExchangeCounters,
    pub buffered_keys: BufferCounters,
    pub kmes: Vec<KmeStatus>,
    pub peers: Vec<PeerStatus>,
    /// Panics caught and poisoned locks recovered since the plugin was loaded
    /// (the plugin's `health` module): each was logged as an internal error; should stay 0.
    #[serde(default)]
    pub internal_errors: u64,
}

/// The plugin's exchange counters (`ke::Counters`): key exchanges by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeCounters {
    pub qkd_secrets: u64,
    pub dh_fallbacks: u64,
    pub no_key_sent: u64,
    pub no_key_refused: u64,
    pub failures: u64,
    /// Of the failures: key confirmation found different keys under the same key IDs.
    pub key_mismatches: u64,
    /// Exchanges refused as responder before the peer was authenticated (IKE_SA_INIT,
    /// IKE_INTERMEDIATE), for any reason: anyone can drive this one, so it is kept apart
    /// from `no_key_refused` and `failures`.
    #[serde(default)]
    pub unauthenticated_refused: u64,
}

/// The key supply's counters (`supply::SupplyCounters`): buffered keys (counted per key, not per set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferCounters {
    pub buffered: u64,
    pub used: u64,
    pub wasted: u64,
    pub announce_failures: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KmeStatus {
    /// One node of a KME (`kme.url` may list several, tried in order).
    pub url: String,
    pub state: KmeState,
    /// Since when the node is down.
    pub down_since_unix: Option<u64>,
    /// enc_keys and dec_keys requests of the plugin, answered or not. One request for a
    /// batch of key sets may be several HTTP requests (the client follows the KME's
    /// max_key_per_request), so a KME may count more.
    pub requests: u64,
    pub errors: u64,
    /// Keys the KME delivered (to exchanges and to the buffers).
    pub keys: u64,
    /// Time spent in those requests, in microseconds (integers: JSON keeps them exact).
    pub latency_us_total: u64,
    /// Over the most recent requests; None before the first.
    pub latency: Option<Latency>,
    pub last_success_unix: Option<u64>,
    pub last_error: Option<LastError>,
}

/// What a KME node is to the plugin. In JSON the strings every plugin has sent: `active`,
/// `standby`, `down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KmeState {
    /// Requests go here.
    Active,
    /// Another node of the same KME is active.
    Standby,
    /// Failed, skipped until it answers a probe.
    Down,
}

impl KmeState {
    /// The JSON string, also what `qkdctl status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            KmeState::Active => "active",
            KmeState::Standby => "standby",
            KmeState::Down => "down",
        }
    }
}

impl std::fmt::Display for KmeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_us: u64,
    pub p99_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub at_unix: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// swanctl connection name (`peers.<name>`).
    pub name: String,
    pub local_sae_id: String,
    pub peer_sae_id: String,
    /// URL of the KME node serving this peer now (an entry of `kmes`).
    pub kme: String,
    /// Key sets ready for exchanges this gateway starts (master, enc_keys).
    pub outbound_sets: usize,
    /// Keys the peer announced, fetched from our KME (slave, dec_keys).
    pub inbound_keys: usize,
    /// Announced keys not fetched yet.
    pub pending_keys: usize,
    /// Outbound sets the depth controller keeps in place now (demand × KME delay), and its
    /// cap (`buffer_max`). Fields from here on are absent in older plugins' snapshots.
    #[serde(default)]
    pub target_sets: usize,
    #[serde(default)]
    pub cap_sets: usize,
    /// Key sets this gateway's exchanges take per second (smoothed).
    #[serde(default)]
    pub demand_per_second: f64,
    /// Keys the KME delivers into the outbound queue per second (smoothed).
    #[serde(default)]
    pub supply_per_second: f64,
    /// Seconds until the outbound queue runs dry at the current demand (None: no demand).
    #[serde(default)]
    pub dry_in_seconds: Option<f64>,
    /// The KME pair replaces keys the slave has not fetched (detected): one set at a time.
    #[serde(default)]
    pub replacing_kme: bool,
}

impl Snapshot {
    pub fn kme(&self, url: &str) -> Option<&KmeStatus> {
        self.kmes.iter().find(|k| k.url == url)
    }
}

/// Where the plugin serves the protocol unless `charon.plugins.qkd.socket` says otherwise:
/// next to charon's own `charon.vici` (Debian: /var/run -> /run).
pub const DEFAULT_STATUS_SOCKET: &str = "unix:///var/run/charon.qkd";

/// `unix:///absolute/path` (the form of charon.vici's `socket`), or `none`.
pub fn parse_status_socket(v: &str) -> Result<Option<PathBuf>, String> {
    if v == "none" {
        return Ok(None);
    }
    match v.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') && path.len() > 1 => Ok(Some(PathBuf::from(path))),
        _ => Err(format!(
            "'{v}': use unix:///absolute/path (e.g. {DEFAULT_STATUS_SOCKET}) or none"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kme_states_are_the_strings_plugins_send() {
        for state in [KmeState::Active, KmeState::Standby, KmeState::Down] {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<KmeState>(&json).unwrap(), state);
        }
        assert_eq!(
            ["active", "standby", "down"],
            [KmeState::Active, KmeState::Standby, KmeState::Down].map(KmeState::as_str)
        );
        assert!(serde_json::from_str::<KmeState>("\"Active\"").is_err());
    }
}
